//! A training loop's steady state creates nothing on the GPU and its memory
//! stays flat.

mod common;

use cinder::nn::{
    Adam, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, Module, Optimizer, ReLU, Sequential,
};
use cinder::tensor::Conv2dOptions;
use cinder::{Result, Tensor};

/// Runs `steps` training steps of `model` on batches from `batch(i)` and
/// asserts that from the second step on nothing is created on the GPU.
fn assert_steady(
    model: &dyn Module,
    batch: impl Fn(usize) -> Result<(Tensor, Tensor)>,
    steps: usize,
) -> Result<()> {
    let mut opt = Adam::new(model.parameters(), 1e-3)?;
    assert_steady_steps(
        |i| {
            let (x, y) = batch(i)?;
            let loss = model.forward(&x)?.cross_entropy(&y)?;
            opt.step(&loss.backward()?)?;
            loss.item()?;
            Ok(())
        },
        steps,
    )
}

/// Runs `step(i)` for `i` in `0..steps` (each a whole training step that
/// reads its results once) and asserts that from the second step on
/// nothing is created on the GPU.
fn assert_steady_steps(mut step: impl FnMut(usize) -> Result<()>, steps: usize) -> Result<()> {
    let device = common::device();
    step(0)?;
    let after_first = device.stats();
    for i in 1..steps {
        step(i)?;
        let now = device.stats();
        assert_eq!(
            now.pipelines_created, after_first.pipelines_created,
            "step {i} created a pipeline"
        );
        assert_eq!(
            now.shader_modules_created, after_first.shader_modules_created,
            "step {i} created a shader module"
        );
        assert_eq!(
            now.bind_groups_created, after_first.bind_groups_created,
            "step {i} created a bind group"
        );
        assert_eq!(
            now.buffers_created, after_first.buffers_created,
            "step {i} created a buffer"
        );
        assert_eq!(
            now.textures_created, after_first.textures_created,
            "step {i} created a texture"
        );
        // (It may shrink: buffers only the first step's set-up used age
        // out of the pool.)
        assert!(
            now.bytes_allocated <= after_first.bytes_allocated,
            "step {i} grew memory: {} bytes after {}",
            now.bytes_allocated,
            after_first.bytes_allocated
        );
        assert_eq!(
            now.plans_compiled, after_first.plans_compiled,
            "step {i} compiled a plan"
        );
    }
    let end = device.stats();
    // Each step is one submit for the whole training step and one for reading the loss.
    assert_eq!(end.submits - after_first.submits, 2 * (steps as u64 - 1));
    Ok(())
}

fn batch_of(i: usize, batch: usize, shape: &[usize], classes: usize) -> Result<(Tensor, Tensor)> {
    let per: usize = shape.iter().product();
    let xs: Vec<f32> = (0..batch * per)
        .map(|j| ((i * 31 + j * 7) % 17) as f32 / 17.0)
        .collect();
    let ys: Vec<i32> = (0..batch).map(|j| ((i + j) % classes) as i32).collect();
    let mut full = vec![batch];
    full.extend_from_slice(shape);
    let device = common::device();
    Ok((
        Tensor::from_slice(&device, &xs, &full)?,
        Tensor::from_slice(&device, &ys, &[batch])?,
    ))
}

#[test]
fn training_steps_create_nothing_after_the_first() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    device.manual_seed(1);
    let model = Sequential::new()
        .add(Linear::new(&device, 64, 128, true)?)
        .add(ReLU)
        .add(Linear::new(&device, 128, 10, true)?);
    assert_steady(&model, |i| batch_of(i, 32, &[64], 10), 300)
}

/// Convolutions, batch norm (whose running statistics are written in place
/// during each step) and pooling keep the steady state too.
#[test]
fn cnn_training_steps_create_nothing_after_the_first() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    device.manual_seed(2);
    let model = Sequential::new()
        .add(Conv2d::new(
            &device,
            1,
            6,
            3,
            Conv2dOptions::default().padding(1),
            false,
        )?)
        .add(BatchNorm2d::new(&device, 6)?)
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten)
        .add(Linear::new(&device, 6 * 4 * 4, 10, true)?);
    assert_steady(&model, |i| batch_of(i, 16, &[1, 8, 8], 10), 100)
}

/// A CNN whose second convolution's products take the texture kernels (on
/// a CPU adapter), with its unfolded input and output gradient computed
/// straight into textures: those textures, too, are created once.
#[test]
fn cnn_with_texture_operands_creates_nothing_after_the_first() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    device.manual_seed(4);
    let conv = |cin, cout| {
        Conv2d::new(
            &device,
            cin,
            cout,
            3,
            Conv2dOptions::default().padding(1),
            true,
        )
    };
    let model = Sequential::new()
        .add(conv(1, 8)?)
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(conv(8, 64)?)
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten)
        .add(Linear::new(&device, 64 * 4 * 4, 10, true)?);
    let before = device.stats().texture_products;
    assert_steady(&model, |i| batch_of(i, 16, &[1, 16, 16], 10), 8)?;
    assert_eq!(
        device.stats().texture_products > before,
        device.texture_matmul()
    );
    Ok(())
}

/// Products big enough to pack their operands into textures (on a CPU
/// adapter) reuse the same textures every step.
#[test]
fn texture_matmul_steps_create_nothing_after_the_first() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    device.manual_seed(3);
    let before = device.stats().textures_created;
    // 1024 x 512 x 512: each of the first layer's three products is 2^28
    // multiply-adds, the least that takes the texture kernel.
    let model = Sequential::new()
        .add(Linear::new(&device, 512, 512, true)?)
        .add(ReLU)
        .add(Linear::new(&device, 512, 10, true)?);
    assert_steady(&model, |i| batch_of(i, 1024, &[512], 10), 8)?;
    assert_eq!(
        device.stats().textures_created > before,
        device.texture_matmul()
    );
    Ok(())
}

/// A recurrent classifier's step (an LSTM unrolled over its steps, read
/// back through time) is one plan too, replayed with nothing created.
#[test]
fn lstm_training_steps_create_nothing_after_the_first() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    device.manual_seed(3);
    let model = cinder::rnn::SequenceSpec::lstm(6, 5, 12, 4).build(&device)?;
    assert_steady(&model, |i| batch_of(i, 8, &[6, 5], 4), 20)
}

/// The segmentation task's whole step: a U-Net (transposed convolutions,
/// concatenated skips), class-weighted cross-entropy over pixels, the Dice
/// term and the pixel accuracy it reports.
#[test]
fn segmentation_training_steps_create_nothing_after_the_first() -> Result<()> {
    use cinder::cnn::segment::{scene_batch, SegmentLoss, SegmentTask, UNetSpec};
    use cinder::data::{DigitScenes, Mnist, SceneConfig};
    use cinder::train::{Step, Task};
    let _serial = common::serial();
    let device = common::device();
    device.manual_seed(4);
    let spec = UNetSpec {
        in_channels: 1,
        classes: DigitScenes::MASK_CLASSES,
        width: 4,
        depth: 2,
    };
    let config = SceneConfig {
        canvas: 16,
        digits: (1, 1),
        size: (8.0, 12.0),
        ..SceneConfig::default()
    };
    let scenes =
        DigitScenes::with_config(std::sync::Arc::new(Mnist::bundled()?.test), 64, 0, config)?;
    let loss = SegmentLoss::balanced(&scenes, spec.classes, 0.5, &device)?;
    let mut task = SegmentTask::new(
        spec.build(&device)?,
        loss,
        std::sync::Arc::new(scenes.clone()),
        1e-3,
        0.0,
        &device,
    )?;
    assert_steady_steps(
        |i| {
            let batch: Vec<_> = (0..4).map(|k| scenes.scene(4 * i + k)).collect();
            let mut step = Step::standalone();
            task.train_step(scene_batch(&batch, &device)?, &mut step)?;
            let values: Vec<&Tensor> = step.recorded().iter().map(|(_, v)| v).collect();
            cinder::tensor::read_all(&values)?;
            Ok(())
        },
        12,
    )
}

/// The detection task's whole step: the detector (strided convolutions,
/// the upsampled pyramid level), the focal loss, the boxes gathered at the
/// centres with their GIoU and L1 losses.
#[test]
fn detection_training_steps_create_nothing_after_the_first() -> Result<()> {
    use cinder::cnn::detect::{DetectBatch, DetectLoss, DetectTask, DetectionScenes, DetectorSpec};
    use cinder::data::{DigitScenes, Mnist, SceneConfig};
    use cinder::train::{Step, Task};
    let _serial = common::serial();
    let device = common::device();
    device.manual_seed(4);
    let spec = DetectorSpec {
        in_channels: 1,
        classes: 10,
        width: 4,
    };
    let config = SceneConfig {
        canvas: 16,
        digits: (1, 2),
        size: (8.0, 12.0),
        ..SceneConfig::default()
    };
    let scenes = |seed| -> Result<DetectionScenes> {
        let digits = std::sync::Arc::new(Mnist::bundled()?.test);
        let scenes = DigitScenes::with_config(digits, 64, seed, config.clone())?;
        Ok(DetectionScenes::new(
            std::sync::Arc::new(scenes),
            spec.classes,
        ))
    };
    let train = scenes(0)?;
    let mut task = DetectTask::new(
        spec.build(&device)?,
        DetectLoss::default(),
        scenes(1)?,
        1e-3,
        0.0,
        &device,
    )?;
    assert_steady_steps(
        |i| {
            let batch = DetectBatch::of(&train, 4 * i..4 * i + 4, &device)?;
            let mut step = Step::standalone();
            task.train_step(batch, &mut step)?;
            let values: Vec<&Tensor> = step.recorded().iter().map(|(_, v)| v).collect();
            cinder::tensor::read_all(&values)?;
            Ok(())
        },
        12,
    )
}
