//! Trains a small convolutional network on the bundled handwritten digits,
//! saves it, and classifies one held-out digit from the saved file.
//!
//!     cargo run --release --example digits_cnn

use cinder::cnn::models::ModelSpec;
use cinder::cnn::train::{load_model, train, TrainOptions};
use cinder::prelude::*;
use cinder::train::classify::format_confusion;
use cinder::train::{EpochRow, Observer, Schedule, Start};

/// Prints one line per epoch; `cinder train cnn` draws progress bars instead.
struct EpochLines;

impl Observer for EpochLines {
    fn epoch_finished(&mut self, row: &EpochRow, seconds: f64) {
        println!(
            "epoch {:2}  train loss {:.4}  held-out accuracy {:.2}%  ({seconds:.1} s)",
            row.epoch,
            row.get("train_loss").unwrap_or(f64::NAN),
            100.0 * row.get("test_accuracy").unwrap_or(f64::NAN),
        );
    }
}

fn main() -> Result<()> {
    let device = Device::new()?;
    device.manual_seed(0);
    println!("adapter: {} ({})", device.adapter_name(), device.backend());

    // 1437 training and 360 held-out 8x8 images, shaped [1, 8, 8].
    let split = Digits::load()?.split_images();
    let first_image = split.test.features[..64].to_vec();
    let first_label = split.test.labels[0];

    // conv 3x3 (32) - ReLU - max-pool - conv 3x3 (64) - ReLU - max-pool - 128 - 10.
    let spec = ModelSpec::lenet(8, 8, 10);
    // AdamW with a cosine schedule; a checkpoint after every epoch in runs/digits_cnn
    // (run the example again and it starts afresh: Start::Overwrite).
    let options = TrainOptions {
        epochs: 12,
        batch_size: 32,
        lr: 2e-3,
        weight_decay: 0.01,
        schedule: Schedule::cosine(0.0),
        clip_grad_norm: None,
        augment: false,
        label_smoothing: 0.0,
        seed: 0,
        data: "digits".into(),
        out_dir: "runs/digits_cnn".into(),
        start: Start::Overwrite,
    };
    let (_history, evaluation) = train(&spec, split, &options, &device, &mut EpochLines)?;
    println!("held-out accuracy: {:.2}%", 100.0 * evaluation.accuracy);
    print!("{}", format_confusion(&evaluation.confusion));

    // Load the saved weights into a fresh network and classify one image.
    let (_spec, restored) = load_model("runs/digits_cnn/model.safetensors".as_ref(), &device)?;
    let image = Tensor::from_slice(&device, &first_image, &[1, 1, 8, 8])?;
    let _no_grad = no_grad();
    let probabilities = restored.forward(&image)?.softmax(-1)?.to_vec::<f32>()?;
    let (best, p) = probabilities
        .iter()
        .enumerate()
        .fold((0, 0.0f32), |b, (i, &p)| if p > b.1 { (i, p) } else { b });
    println!(
        "first held-out image: label {first_label}, predicted {best} ({:.1}%)",
        100.0 * p
    );
    Ok(())
}
