//! cinder-train's loop driving a task of its own kind: a small GAN (two
//! models with dropout, two optimizers, noise drawn from the device's random
//! stream). An interrupted and resumed run ends bit for bit where an
//! uninterrupted one does; two identical runs write the same bytes; a NaN
//! stops the run naming the value, the step and the epoch; a finished run is
//! never replaced or continued with other settings silently.

mod common;

use std::path::{Path, PathBuf};

use cinder::nn::{Adam, Dropout, Linear, Module, Optimizer, ReLU, Sequential};
use cinder::prelude::Reduction;
use cinder::train::{Batches, Schedule, Settings, Silent, Start, Step, Task, Trainer};
use cinder::{Device, Result, Tensor};

/// Points on a ring, 16 to a batch, visited in an order fixed per epoch.
struct Ring {
    points: Vec<f32>,
    device: Device,
}

const BATCH: usize = 16;

impl Ring {
    fn new(device: &Device) -> Ring {
        let points = (0..96)
            .flat_map(|i| {
                let a = i as f32 * 0.37;
                [a.cos(), a.sin()]
            })
            .collect();
        Ring {
            points,
            device: device.clone(),
        }
    }
}

impl Batches for Ring {
    type Batch = Tensor;

    fn len(&self) -> usize {
        self.points.len() / 2 / BATCH
    }

    fn epoch(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<Tensor>> + '_> {
        let n = self.points.len() / 2;
        // Every epoch its own order: a resume must replay the right one.
        let order: Vec<usize> = (0..n).map(|i| (i * 7 + epoch * 13) % n).collect();
        Box::new((0..self.len()).map(move |b| {
            let rows: Vec<f32> = order[b * BATCH..(b + 1) * BATCH]
                .iter()
                .flat_map(|&i| [self.points[2 * i], self.points[2 * i + 1]])
                .collect();
            Tensor::from_slice(&self.device, &rows, &[BATCH, 2])
        }))
    }
}

struct Gan {
    generator: Sequential,
    discriminator: Sequential,
    g_opt: Adam,
    d_opt: Adam,
    device: Device,
    /// Makes the generator's loss NaN at this run step (the guard's test).
    poison_at: Option<u64>,
}

impl Gan {
    fn new(device: &Device) -> Result<Gan> {
        let generator = Sequential::new()
            .add(Linear::new(device, 4, 16, true)?)
            .add(ReLU)
            .add(Dropout::new(0.2)?)
            .add(Linear::new(device, 16, 2, true)?);
        let discriminator = Sequential::new()
            .add(Linear::new(device, 2, 16, true)?)
            .add(ReLU)
            .add(Dropout::new(0.3)?)
            .add(Linear::new(device, 16, 1, true)?);
        let g_opt = Adam::new(generator.parameters(), 2e-3)?;
        let d_opt = Adam::adamw(discriminator.parameters(), 1e-3)?;
        Ok(Gan {
            generator,
            discriminator,
            g_opt,
            d_opt,
            device: device.clone(),
            poison_at: None,
        })
    }
}

fn bce(logits: &Tensor, target: f32) -> Result<Tensor> {
    let t = Tensor::full(logits.device(), logits.shape(), target);
    logits.binary_cross_entropy_with_logits(&t, None, None, Reduction::Mean)
}

impl Task for Gan {
    type Batch = Tensor;

    fn models(&mut self) -> Vec<(&str, &mut dyn Module)> {
        vec![
            ("generator", &mut self.generator),
            ("discriminator", &mut self.discriminator),
        ]
    }

    fn optimizers(&mut self) -> Vec<(&str, &mut dyn Optimizer)> {
        vec![
            ("generator", &mut self.g_opt),
            ("discriminator", &mut self.d_opt),
        ]
    }

    fn train_step(&mut self, real: Tensor, step: &mut Step) -> Result<()> {
        let noise = Tensor::randn(&self.device, &[BATCH, 4])?;
        let fake = self.generator.forward(&noise)?;
        let d_loss = bce(&self.discriminator.forward(&real)?, 1.0)?
            .add(&bce(&self.discriminator.forward(&fake.detach())?, 0.0)?)?;
        let mut d_grads = d_loss.backward()?;
        step.clip(&mut d_grads, &self.discriminator.parameters())?;
        step.record("d_loss", &d_loss)?;
        step.optimize(&mut self.d_opt, &d_grads)?;

        let mut g_loss = bce(&self.discriminator.forward(&fake)?, 1.0)?;
        if self.poison_at == Some(step.global) {
            g_loss = g_loss.mul(&Tensor::full(&self.device, &[], f32::NAN))?;
        }
        let g_grads = g_loss.backward()?;
        step.record("g_loss", &g_loss)?;
        step.set_samples(BATCH);
        step.optimize(&mut self.g_opt, &g_grads)
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        // How far generated points lie from the unit ring.
        let noise = Tensor::randn_seeded(&self.device, &[64, 4], 0.0, 1.0, 7)?;
        let fake = self.generator.forward(&noise)?;
        let radius = fake.mul(&fake)?.sum(&[-1], false)?.sqrt()?;
        let miss = radius.sub(&Tensor::ones(&self.device, &[64]))?.abs()?;
        Ok(vec![(
            "ring_distance".into(),
            miss.mean_all()?.item()? as f64,
        )])
    }

    fn model_metadata(&self, name: &str) -> Vec<(String, String)> {
        vec![("gan.part".into(), name.into())]
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cinder-train-loop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn trainer(dir: &Path, epochs: usize, start: Start) -> Trainer {
    let mut t = Trainer::new(dir, epochs);
    t.title = "ring GAN".into();
    t.schedule = Schedule::cosine(1e-4).with_warmup(3);
    t.clip_grad_norm = Some(5.0);
    t.start = start;
    t.settings = Settings::new().with("seed", 0).with("batch_size", BATCH);
    t
}

/// Trains from a freshly seeded device, as a new process would.
fn run(device: &Device, trainer: &Trainer, poison_at: Option<u64>) -> Result<Gan> {
    device.manual_seed(0);
    let mut gan = Gan::new(device)?;
    gan.poison_at = poison_at;
    trainer.fit(&mut gan, &Ring::new(device), device, &mut Silent)?;
    Ok(gan)
}

fn weights(gan: &mut Gan) -> Vec<(String, Vec<u32>)> {
    let mut all = Vec::new();
    for (model, m) in gan.models() {
        for (name, t) in m.state_dict() {
            let bits = t
                .to_vec::<f32>()
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|v| v.to_bits())
                .collect();
            all.push((format!("{model}.{name}"), bits));
        }
    }
    all
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Files that must be the same bytes in two runs that trained the same.
const SAME_FILES: [&str; 5] = [
    "checkpoint.safetensors",
    "generator.safetensors",
    "discriminator.safetensors",
    "metrics.csv",
    "curves.png",
];

#[test]
fn a_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let whole = scratch("whole");
    let parts = scratch("parts");

    let mut uninterrupted = run(&device, &trainer(&whole, 3, Start::New), None)?;
    run(&device, &trainer(&parts, 1, Start::New), None)?;
    // Another process's stream state: the resume must restore the run's.
    device.manual_seed(12345);
    let mut resumed = Gan::new(&device)?;
    trainer(&parts, 3, Start::Resume).fit(
        &mut resumed,
        &Ring::new(&device),
        &device,
        &mut Silent,
    )?;

    let (a, b) = (weights(&mut uninterrupted), weights(&mut resumed));
    assert_eq!(a.len(), 8);
    assert!(
        a == b,
        "resumed weights differ from the uninterrupted run's"
    );
    for file in SAME_FILES {
        assert!(
            read(whole.join(file)) == read(parts.join(file)),
            "{file} differs between the resumed and the uninterrupted run"
        );
    }
    let metrics = String::from_utf8(read(whole.join("metrics.csv"))).unwrap_or_default();
    assert_eq!(
        metrics.lines().next(),
        Some("epoch,lr_generator,lr_discriminator,train_d_loss,train_g_loss,ring_distance")
    );
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    let settings = String::from_utf8(read(parts.join("settings.txt"))).unwrap_or_default();
    assert!(
        settings.contains("# resumed after epoch 1, to run to epoch 3"),
        "{settings}"
    );
    let meta = cinder::nn::checkpoint::read_metadata(whole.join("generator.safetensors"))?;
    assert_eq!(meta.get("gan.part").map(String::as_str), Some("generator"));

    // A finished run asked to resume to where it already is says so.
    let err = trainer(&whole, 3, Start::Resume)
        .fit(
            &mut Gan::new(&device)?,
            &Ring::new(&device),
            &device,
            &mut Silent,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("finished its 3 epochs"), "{err}");
    let _ = std::fs::remove_dir_all(whole);
    let _ = std::fs::remove_dir_all(parts);
    Ok(())
}

#[test]
fn two_identical_runs_write_the_same_bytes() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let first = scratch("first");
    let second = scratch("second");
    run(&device, &trainer(&first, 2, Start::New), None)?;
    run(&device, &trainer(&second, 2, Start::New), None)?;
    for file in SAME_FILES.iter().chain(&["settings.txt"]) {
        assert!(
            read(first.join(file)) == read(second.join(file)),
            "{file} differs between two identical runs"
        );
    }
    // Only the wall times may differ, and they live in their own file.
    let timings = String::from_utf8(read(first.join("timings.csv"))).unwrap_or_default();
    assert!(
        timings.starts_with("epoch,seconds,samples_per_second\n1,"),
        "{timings}"
    );
    let _ = std::fs::remove_dir_all(first);
    let _ = std::fs::remove_dir_all(second);
    Ok(())
}

#[test]
fn a_nan_stops_the_run_naming_the_loss_and_the_step_and_keeps_the_last_epoch() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let dir = scratch("nan");
    // 6 steps an epoch: run step 8 is epoch 2's third.
    run(&device, &trainer(&dir, 1, Start::New), None)?;
    let before = read(dir.join("checkpoint.safetensors"));
    let err = run(&device, &trainer(&dir, 3, Start::Resume), Some(8))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("`g_loss` became NaN at epoch 2, step 3 (step 9 of the run)"),
        "{err}"
    );
    assert!(err.contains("after epoch 1"), "{err}");
    assert!(
        read(dir.join("checkpoint.safetensors")) == before,
        "the checkpoint of the last good epoch must stay"
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[test]
fn a_run_is_never_replaced_or_continued_with_other_settings_silently() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let dir = scratch("guard");
    run(&device, &trainer(&dir, 2, Start::New), None)?;
    let files: Vec<Vec<u8>> = SAME_FILES.iter().map(|f| read(dir.join(f))).collect();

    // Again into the same folder: refused before any work.
    let err = run(&device, &trainer(&dir, 1, Start::New), None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );

    // A resume with another batch size and clipping: refused, naming both.
    let mut changed = trainer(&dir, 4, Start::Resume);
    changed.settings.set("batch_size", 32);
    changed.clip_grad_norm = Some(1.0);
    let err = run(&device, &changed, None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("batch_size: 16 -> 32") && err.contains("clip_grad_norm: 5 -> 1"),
        "{err}"
    );
    let after: Vec<Vec<u8>> = SAME_FILES.iter().map(|f| read(dir.join(f))).collect();
    assert!(
        files == after,
        "a refused start must not touch the run's files"
    );

    // A stale temporary file of a killed run goes at the next start;
    // --overwrite replaces the run.
    let stale = dir.join(".metrics.csv.4242-7.cinder-tmp");
    std::fs::write(&stale, b"half").unwrap_or_else(|e| panic!("{e}"));
    run(&device, &trainer(&dir, 1, Start::Overwrite), None)?;
    assert!(!stale.exists(), "{} was left behind", stale.display());
    let metrics = String::from_utf8(read(dir.join("metrics.csv"))).unwrap_or_default();
    assert_eq!(
        metrics.lines().count(),
        2,
        "one epoch after --overwrite: {metrics}"
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
