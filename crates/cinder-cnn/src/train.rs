//! Image classification on cinder-train's loop: the data as batches, the
//! classifier task with the model's description in its files, and the run's
//! settings.

use std::sync::Arc;

use cinder_data::{DataLoader, RandomAffine, Split};
use cinder_nn::checkpoint::{check_finite, load_tensors, read_metadata};
use cinder_nn::Module;
use cinder_tensor::{Device, Error, Result};
use cinder_train::classify::fit_classifier;
use cinder_train::{Evaluation, History, Observer, Settings, Trainer};
pub use cinder_train::{OrderedBatches, ShuffledBatches, TrainOptions};

use crate::models::ModelSpec;

/// The training images' augmentation ([`RandomAffine::handwriting`]).
pub fn augmentation() -> RandomAffine {
    RandomAffine::handwriting()
}

/// Rejects a model description or settings that cannot train, and a folder
/// that holds a run not asked to be continued or replaced: what to check
/// before any work.
pub fn check(spec: &ModelSpec, options: &TrainOptions) -> Result<()> {
    spec.validate()?;
    options.validate()?;
    trainer(spec, options).check()
}

/// The loop for `options`, with the model's description in the settings.
fn trainer(spec: &ModelSpec, options: &TrainOptions) -> Trainer {
    let model = Settings::new()
        .with("arch", spec.arch_name())
        .with("input", format!("{:?}", spec.input_shape()))
        .with("classes", spec.classes)
        .with("dropout", spec.dropout);
    options.trainer(&spec.arch_name(), model)
}

/// Trains a model of `spec` on `split.train`, evaluating on `split.test`
/// after every epoch, into `options.out_dir`: `model.safetensors` (with the
/// model's description, for `cinder eval` and `predict`), the checkpoint,
/// `metrics.csv`, `curves.png`, `confusion.txt`. The caller seeds the
/// device (`manual_seed`) before, so the initialisation is reproducible.
pub fn train(
    spec: &ModelSpec,
    split: Split,
    options: &TrainOptions,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<(History, Evaluation)> {
    options.validate()?;
    let trainer = trainer(spec, options);
    trainer.check()?;
    if split.train.feature_shape != spec.input_shape() {
        return Err(Error::shape(
            "train",
            format!(
                "the data's images are {:?}, the model takes {:?}",
                split.train.feature_shape,
                spec.input_shape()
            ),
        ));
    }
    let model = spec.build(device)?;
    let mut loader = DataLoader::new(
        Arc::new(split.train),
        options.batch_size,
        true,
        options.seed,
    )?;
    if options.augment {
        loader = loader.with_transform(augmentation())?;
    }
    fit_classifier(
        &trainer,
        model,
        spec.to_metadata().into_iter().collect(),
        spec.classes,
        loader,
        split.test,
        options,
        device,
        observer,
    )
}

/// The model in a `model.safetensors` written by a run (its description is
/// in the file's header), with its weights, in evaluation mode. A training
/// checkpoint (the one `--resume` continues) is refused with a pointer to
/// the model file next to it, and so are weights with NaN or infinite
/// values (see [`check_finite`]): a diverged run's model would otherwise
/// "predict" with NaN probabilities.
pub fn load_model(path: &std::path::Path, device: &Device) -> Result<(ModelSpec, Box<dyn Module>)> {
    let meta = read_metadata(path)?;
    let spec = ModelSpec::from_metadata(&meta)?;
    if meta.contains_key("cinder.global_step") || meta.contains_key("cinder.optimizer_steps") {
        return Err(Error::bad_file(
            path,
            "a training checkpoint (for --resume); pass the model.safetensors next to it",
        ));
    }
    let mut model = spec.build(device)?;
    load_tensors(path, &model.state_dict())?;
    // The file is the culprit, so the error names it.
    check_finite(&model.state_dict()).map_err(|e| Error::bad_file(path, e.to_string()))?;
    model.eval();
    Ok((spec, model))
}
