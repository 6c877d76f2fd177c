//! Sequence classification on cinder-train's loop: the run's settings with
//! the model's description, training, and loading a trained model.

use std::path::Path;
use std::sync::Arc;

use cinder_data::{DataLoader, RandomAffine, Split};
use cinder_nn::checkpoint::{check_finite, load_tensors, read_metadata};
use cinder_nn::Module;
use cinder_tensor::{Device, Error, Result};
use cinder_train::classify::fit_classifier;
use cinder_train::{Evaluation, History, Observer, Settings, TrainOptions, Trainer};

use crate::models::{SequenceClassifier, SequenceSpec};

/// Rejects a model description or settings that cannot train, and a folder
/// that holds a run not asked to be continued or replaced: what to check
/// before any work.
pub fn check(spec: &SequenceSpec, options: &TrainOptions) -> Result<()> {
    spec.validate()?;
    options.validate()?;
    trainer(spec, options).check()
}

/// The loop for `options`, with the model's description in the settings.
pub(crate) fn trainer(spec: &SequenceSpec, options: &TrainOptions) -> Trainer {
    let model = Settings::new()
        .with("arch", spec.arch_name())
        .with("input", format!("{}x{}", spec.steps, spec.input_size))
        .with("classes", spec.classes)
        .with("dropout", spec.dropout);
    options.trainer(&spec.arch_name(), model)
}

/// Trains a [`SequenceClassifier`] of `spec` on `split.train`, each sample
/// read as `spec.steps` steps of `spec.input_size` values (an MNIST image's
/// 28 rows of 28 pixels), evaluating on `split.test` after every epoch,
/// into `options.out_dir` (`model.safetensors`, the checkpoint,
/// `metrics.csv`, `curves.png`, `confusion.txt`); `options.augment` jitters
/// the images first ([`RandomAffine::handwriting`]). The caller seeds the
/// device (`manual_seed`) before.
pub fn train(
    spec: &SequenceSpec,
    split: Split,
    options: &TrainOptions,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<(History, Evaluation)> {
    check(spec, options)?;
    let per_sample = spec.steps * spec.input_size;
    if split.train.feature_len() != per_sample || split.test.feature_len() != per_sample {
        return Err(Error::shape(
            "train",
            format!(
                "the data's samples are {:?}, the model reads {} steps of {} values",
                split.train.feature_shape, spec.steps, spec.input_size
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
        // The images' own jitter, before they are read row by row.
        if split.test.feature_shape.len() != 3 {
            return Err(Error::invalid(
                "train",
                "augmentation jitters images; these samples are not [C, H, W] images",
            ));
        }
        loader = loader.with_transform(RandomAffine::handwriting())?;
    }
    fit_classifier(
        &trainer(spec, options),
        Box::new(model),
        spec.to_metadata().into_iter().collect(),
        spec.classes,
        loader,
        split.test,
        options,
        device,
        observer,
    )
}

/// The sequence model in a `model.safetensors` written by a run, with its
/// weights, in evaluation mode. Training checkpoints and weights with NaN
/// or infinite values are refused.
pub fn load_model(path: &Path, device: &Device) -> Result<SequenceClassifier> {
    let meta = read_metadata(path)?;
    if meta.contains_key("cinder.global_step") || meta.contains_key("cinder.optimizer_steps") {
        return Err(Error::bad_file(
            path,
            "a training checkpoint (for --resume); pass the model.safetensors next to it",
        ));
    }
    let spec =
        SequenceSpec::from_metadata(&meta).map_err(|e| Error::bad_file(path, e.to_string()))?;
    let mut model = spec.build(device)?;
    load_tensors(path, &model.state_dict())?;
    check_finite(&model.state_dict()).map_err(|e| Error::bad_file(path, e.to_string()))?;
    model.eval();
    Ok(model)
}
