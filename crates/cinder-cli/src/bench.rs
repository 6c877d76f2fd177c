//! `cinder bench`: medians of repeated runs; the machine is shared and noisy,
//! so min and max are printed too.

use std::time::{Duration, Instant};

use cinder::data::Digits;
use cinder::nn::{Adam, CellKind, Module, Optimizer};
use cinder::rnn::models::SequenceSpec;
use cinder::{Device, Result, Tensor};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// GFLOP/s of square matmuls, and the digits MLP's training steps per second.
    Matmul {
        /// Square sizes to time.
        #[arg(long, value_delimiter = ',', default_values_t = vec![256, 512, 1024, 2048])]
        sizes: Vec<usize>,
        /// Timed repetitions per size (after one warm-up).
        #[arg(long, default_value_t = 7)]
        reps: usize,
    },
    /// Milliseconds per training step of the MNIST-shaped LeNet (batch 64 of
    /// 1x28x28; forward, backward, Adam), the first step on its own, and
    /// conv2d forward GFLOP/s for a few layer shapes.
    Cnn {
        /// Timed training steps (after the first, which compiles everything).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Timed repetitions per conv2d shape.
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Milliseconds per training step of recurrent classifiers over 28 steps
    /// of 28 inputs (batch 64; forward, backward through time, Adam): an
    /// LSTM(28 -> 128) + Linear(128 -> 10), the same with a GRU, and a
    /// 2-layer bidirectional LSTM; the first step of each on its own.
    Lstm {
        /// Timed training steps (after the first, which compiles everything).
        #[arg(long, default_value_t = 20)]
        steps: usize,
    },
    /// Milliseconds per DCGAN training step on 28x28 images at batch 64:
    /// the discriminator on real and generated images and its Adam update,
    /// then the generator's (cinder-gan's recipe, the losses read); the
    /// first step on its own.
    Gan {
        /// Timed training steps (after the first, which compiles everything).
        #[arg(long, default_value_t = 20)]
        steps: usize,
    },
    /// Milliseconds per U-Net training step (cinder train segment's
    /// network, loss and AdamW) at batch 16 on 96x96 scenes of digits, the
    /// loss read; the first step on its own.
    Segment {
        /// Timed training steps (after the first, which compiles everything).
        #[arg(long, default_value_t = 20)]
        steps: usize,
    },
    /// Milliseconds per detector training step (cinder train detect's
    /// network, focal + GIoU + L1 loss and AdamW) at batch 16 on 96x96
    /// scenes of digits, the losses read; the first step on its own; then
    /// the held-out decoding (forward, peaks, top-k, reading the boxes, NMS).
    Detect {
        /// Timed training steps (after the first, which compiles everything).
        #[arg(long, default_value_t = 20)]
        steps: usize,
    },
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Matmul { sizes, reps } => {
            let device = Device::new()?;
            println!("adapter: {} ({})", device.adapter_name(), device.backend());
            for n in sizes {
                matmul(&device, n, reps.max(1))?;
            }
            mlp_steps(&device, reps.max(1))
        }
        BenchCommand::Cnn { steps, reps } => {
            let device = Device::new()?;
            println!("adapter: {} ({})", device.adapter_name(), device.backend());
            cnn_steps(&device, steps.max(1))?;
            for (n, c, hw, k, co) in [
                (64, 1, 28, 3, 32),
                (64, 32, 14, 3, 64),
                (16, 64, 56, 3, 64),
                (32, 128, 14, 1, 128),
            ] {
                conv_forward(&device, [n, c, hw, hw], [co, c, k, k], reps.max(1))?;
            }
            Ok(())
        }
        BenchCommand::Lstm { steps } => {
            let device = Device::new()?;
            println!("adapter: {} ({})", device.adapter_name(), device.backend());
            let lstm = SequenceSpec::lstm(28, 28, 128, 10);
            let gru = SequenceSpec {
                cell: CellKind::Gru,
                ..lstm
            };
            let deep = SequenceSpec {
                num_layers: 2,
                bidirectional: true,
                ..lstm
            };
            for spec in [lstm, gru, deep] {
                recurrent_steps(&device, &spec, steps.max(1))?;
            }
            Ok(())
        }
        BenchCommand::Gan { steps } => {
            let device = Device::new()?;
            println!("adapter: {} ({})", device.adapter_name(), device.backend());
            gan_steps(&device, steps.max(1))
        }
        BenchCommand::Segment { steps } => {
            let device = Device::new()?;
            println!("adapter: {} ({})", device.adapter_name(), device.backend());
            segment_steps(&device, steps.max(1))
        }
        BenchCommand::Detect { steps } => {
            let device = Device::new()?;
            println!("adapter: {} ({})", device.adapter_name(), device.backend());
            detect_steps(&device, steps.max(1))
        }
    }
}

fn detect_steps(device: &Device, steps: usize) -> Result<()> {
    use cinder::cnn::detect::{
        detect, DetectBatch, DetectLoss, DetectTask, DetectionScenes, DetectorSpec, MIN_SCORE,
    };
    use cinder::data::{DigitScenes, Mnist};
    let spec = DetectorSpec::digit_scenes();
    let batch = 16;
    let (train, held_out) = DigitScenes::from_split(Mnist::bundled()?, batch, batch, 0)?;
    let (train, held_out) = (
        DetectionScenes::new(std::sync::Arc::new(train), spec.classes),
        DetectionScenes::new(std::sync::Arc::new(held_out), spec.classes),
    );
    device.manual_seed(0);
    let model = spec.build(device)?;
    let mut task = DetectTask::new(model, DetectLoss::default(), held_out, 2e-3, 0.01, device)?;
    let data = DetectBatch::of(&train, 0..batch, device)?;
    let fields = [
        &data.images,
        &data.heat,
        &data.cells,
        &data.centres,
        &data.boxes,
        &data.present,
    ];
    device.realize(&fields.map(|t| t.node().clone()))?;
    let timing = task_steps(&mut task, steps, || data.clone())?;
    print_steps(
        &format!(
            "{} training step, batch {batch} of 1x96x96 (focal + GIoU + L1, AdamW)",
            spec.arch_name()
        ),
        batch,
        "images",
        timing,
    );
    task.model.eval();
    let timing = time_steps(steps, || {
        detect(&task.model, &data.images, MIN_SCORE).map(drop)
    })?;
    print_steps(
        &format!(
            "{} detection (forward, decoding on the device, NMS), batch {batch}",
            spec.arch_name()
        ),
        batch,
        "images",
        timing,
    );
    Ok(())
}

fn segment_steps(device: &Device, steps: usize) -> Result<()> {
    use cinder::cnn::segment::{scene_batch, SceneBatch, SegmentLoss, SegmentTask, UNetSpec};
    use cinder::data::{DigitScenes, Mnist};
    let spec = UNetSpec::digit_scenes();
    let batch = 16;
    let split = Mnist::bundled()?;
    let (train, held_out) = DigitScenes::from_split(split, batch, 1, 0)?;
    device.manual_seed(0);
    let loss = SegmentLoss::balanced(&train, spec.classes, 0.5, device)?;
    let held_out = std::sync::Arc::new(held_out);
    let mut task = SegmentTask::new(spec.build(device)?, loss, held_out, 2e-3, 0.01, device)?;
    let scenes: Vec<_> = (0..batch).map(|i| train.scene(i)).collect();
    let SceneBatch { images, masks } = scene_batch(&scenes, device)?;
    device.realize(&[images.node().clone(), masks.node().clone()])?;
    let (first, med, min, max) = task_steps(&mut task, steps, || SceneBatch {
        images: images.clone(),
        masks: masks.clone(),
    })?;
    print_steps(
        &format!(
            "{} training step, batch {batch} of 1x96x96 (weighted cross-entropy + Dice, AdamW)",
            spec.arch_name()
        ),
        batch,
        "images",
        (first, med, min, max),
    );
    Ok(())
}

fn gan_steps(device: &Device, steps: usize) -> Result<()> {
    use cinder::gan::train::{GanTask, LR};
    use cinder::train::ClassBatch;
    let spec = cinder::gan::GanSpec::dcgan(28, 100);
    let batch = 64;
    device.manual_seed(0);
    let held_out =
        cinder::data::InMemoryDataset::new(vec![0.0; 784], vec![1, 28, 28], vec![0], 10)?;
    let mut task = GanTask::new(&spec, held_out, LR, 0.0, None, device)?;
    let x = Tensor::rand_seeded(device, &[batch, 1, 28, 28], 0.0, 1.0, 7)?;
    let labels: Vec<i32> = (0..batch as i32).map(|i| i % 10).collect();
    let y = Tensor::from_slice(device, &labels, &[batch])?;
    device.realize(&[x.node().clone()])?;
    let (first, med, min, max) = task_steps(&mut task, steps, || ClassBatch {
        x: x.clone(),
        y: y.clone(),
    })?;
    print_steps(
        &format!(
            "{} training step, batch {batch} of 1x28x28 (D on real and fake, G; Adam)",
            spec.arch_name()
        ),
        batch,
        "images",
        (first, med, min, max),
    );
    Ok(())
}

fn recurrent_steps(device: &Device, spec: &SequenceSpec, steps: usize) -> Result<()> {
    let model = spec.build(device)?;
    let batch = 64;
    let (first, med, min, max) =
        training_steps(device, &model, &[batch, spec.steps, spec.input_size], steps)?;
    print_steps(
        &format!(
            "{} + linear training step, batch {batch} of {} steps x {} inputs (Adam)",
            spec.arch_name(),
            spec.steps,
            spec.input_size
        ),
        batch,
        "sequences",
        (first, med, min, max),
    );
    Ok(())
}

fn cnn_steps(device: &Device, steps: usize) -> Result<()> {
    let spec = cinder::cnn::models::ModelSpec::lenet(28, 28, 10);
    let model = spec.build(device)?;
    let batch = 64;
    let (first, med, min, max) =
        training_steps(device, model.as_ref(), &[batch, 1, 28, 28], steps)?;
    print_steps(
        &format!(
            "cnn training step, batch {batch} of 1x28x28 (conv32-pool-conv64-pool-fc128-fc10, Adam)"
        ),
        batch,
        "samples",
        (first, med, min, max),
    );
    Ok(())
}

fn conv_forward(device: &Device, x: [usize; 4], w: [usize; 4], reps: usize) -> Result<()> {
    let opts = cinder::tensor::Conv2dOptions::default().padding(w[2] / 2);
    let input = Tensor::rand_seeded(device, &x, -1.0, 1.0, 1)?;
    let weight = Tensor::rand_seeded(device, &w, -1.0, 1.0, 2)?;
    device.realize(&[input.node().clone(), weight.node().clone()])?;
    let mut times = Vec::with_capacity(reps);
    for i in 0..=reps {
        device.synchronize()?;
        let t = Instant::now();
        input.conv2d(&weight, None, opts)?.realize()?;
        device.synchronize()?;
        if i > 0 {
            times.push(t.elapsed());
        }
    }
    let (med, min, max) = summary(&mut times);
    let flops = 2.0 * (x[0] * w[0] * x[2] * x[3] * w[1] * w[2] * w[3]) as f64 / 1e9;
    println!(
        "conv2d {x:?} * {w:?} pad {}: median {:6.2} GFLOP/s (min {:6.2}, max {:6.2}), {:.2} ms",
        w[2] / 2,
        flops / med.as_secs_f64(),
        flops / max.as_secs_f64(),
        flops / min.as_secs_f64(),
        med.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Times `steps` training steps of `model` (forward, cross-entropy,
/// backward, Adam, the loss read) on fixed random inputs of `shape` with 10
/// classes, after a first step timed on its own: (first, median, min, max).
fn training_steps(
    device: &Device,
    model: &dyn Module,
    shape: &[usize],
    steps: usize,
) -> Result<(Duration, Duration, Duration, Duration)> {
    let mut opt = Adam::new(model.parameters(), 1e-3)?;
    let batch = shape[0];
    let x = Tensor::rand_seeded(device, shape, 0.0, 1.0, 7)?;
    let labels: Vec<i32> = (0..batch as i32).map(|i| i % 10).collect();
    let y = Tensor::from_slice(device, &labels, &[batch])?;
    device.realize(&[x.node().clone()])?;
    time_steps(steps, || {
        let loss = model.forward(&x)?.cross_entropy(&y)?;
        opt.step(&loss.backward()?)?;
        loss.item()?;
        Ok(())
    })
}

/// One line for a timed step: `what`, then the median, min and max in ms,
/// the median's rate of `unit`s a second at `batch` per step, and the first
/// step in seconds.
fn print_steps(
    what: &str,
    batch: usize,
    unit: &str,
    (first, med, min, max): (Duration, Duration, Duration, Duration),
) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what}: median {:.1} ms (min {:.1}, max {:.1}), {:.0} {unit}/s; first step {:.2} s",
        ms(med),
        ms(min),
        ms(max),
        batch as f64 / med.as_secs_f64(),
        first.as_secs_f64()
    );
}

/// Times `steps` training steps of `task` as its run takes them (the
/// values it records read back), after a first step timed on its own:
/// (first, median, min, max).
fn task_steps<T: cinder::train::Task>(
    task: &mut T,
    steps: usize,
    batch: impl Fn() -> T::Batch,
) -> Result<(Duration, Duration, Duration, Duration)> {
    time_steps(steps, || {
        let mut step = cinder::train::Step::standalone();
        task.train_step(batch(), &mut step)?;
        for (_, value) in step.recorded() {
            value.item()?;
        }
        Ok(())
    })
}

/// Runs `step` once on its own (it compiles everything), then `steps`
/// times: (first, median, min, max).
fn time_steps(
    steps: usize,
    mut step: impl FnMut() -> Result<()>,
) -> Result<(Duration, Duration, Duration, Duration)> {
    let mut times = Vec::with_capacity(steps + 1);
    for _ in 0..=steps {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed());
    }
    let first = times.remove(0);
    let (med, min, max) = summary(&mut times);
    Ok((first, med, min, max))
}

fn summary(times: &mut [Duration]) -> (Duration, Duration, Duration) {
    times.sort();
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

fn matmul(device: &Device, n: usize, reps: usize) -> Result<()> {
    let a = Tensor::rand_seeded(device, &[n, n], -1.0, 1.0, 1)?;
    let b = Tensor::rand_seeded(device, &[n, n], -1.0, 1.0, 2)?;
    device.realize(&[a.node().clone(), b.node().clone()])?;
    let mut times = Vec::with_capacity(reps);
    for i in 0..=reps {
        device.synchronize()?;
        let t = Instant::now();
        let c = a.matmul(&b)?;
        c.realize()?;
        device.synchronize()?;
        if i > 0 {
            times.push(t.elapsed());
        }
    }
    let flops = 2.0 * (n as f64).powi(3) / 1e9;
    let (med, min, max) = summary(&mut times);
    println!(
        "matmul {n:5}x{n}x{n}: median {:7.2} GFLOP/s  (min {:7.2}, max {:7.2})  {:8.2} ms median",
        flops / med.as_secs_f64(),
        flops / max.as_secs_f64(),
        flops / min.as_secs_f64(),
        med.as_secs_f64() * 1e3
    );
    Ok(())
}

fn mlp_steps(device: &Device, reps: usize) -> Result<()> {
    let split = Digits::load()?.split();
    let model = cinder::cnn::models::ModelSpec::mlp(8, 8, 128, 10).build(device)?;
    let mut opt = Adam::adamw(model.parameters(), 3e-3)?;
    let batch = 32;
    let x = Tensor::from_slice(device, &split.train.features[..batch * 64], &[batch, 64])?;
    let y = Tensor::from_slice(device, &split.train.labels[..batch], &[batch])?;
    let steps = 100;
    let mut rates = Vec::with_capacity(reps);
    for i in 0..=reps {
        let t = Instant::now();
        for _ in 0..steps {
            let loss = model.forward(&x)?.cross_entropy(&y)?;
            opt.step(&loss.backward()?)?;
            loss.item()?;
        }
        if i > 0 {
            rates.push(t.elapsed());
        }
    }
    let (med, min, max) = summary(&mut rates);
    let per = |d: Duration| steps as f64 / d.as_secs_f64();
    println!(
        "mlp 64-128-10 batch {batch} training step (forward, backward, AdamW, loss read): median {:.0} steps/s (min {:.0}, max {:.0}), {:.2} ms/step",
        per(med),
        per(max),
        per(min),
        med.as_secs_f64() * 1e3 / steps as f64
    );
    Ok(())
}
