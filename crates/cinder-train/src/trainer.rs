//! The loop: epochs of a [`Task`]'s steps over [`Batches`], evaluation,
//! the run's files after every epoch, and an exact resume.

use std::collections::HashMap;
use std::time::Instant;

use cinder_nn::checkpoint::{
    load_tensors, remove_stale_temp_files, save_tensors_with_metadata, write_atomic,
};
use cinder_nn::module::prefixed;
use cinder_nn::{Module, Optimizer};
use cinder_tensor::{no_grad, read_all, Device, Error, Gradients, Result, Tensor};

use crate::curves::curves_png;
use crate::history::{EpochRow, History};
use crate::run::{changed_settings, check_start, RunDir, Settings, Start};
use crate::schedule::Schedule;

/// A source of batches, epoch by epoch: a data loader, or anything that can
/// replay an epoch's batches in a fixed order.
pub trait Batches {
    type Batch;
    /// Batches in one epoch.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The batches of `epoch` (0-based), in the order that epoch always has:
    /// a resumed run must see what an uninterrupted one would.
    fn epoch(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<Self::Batch>> + '_>;
}

/// What a run trains: its models and optimizers, by name, and one step.
/// A classifier has one of each; a GAN two of each.
pub trait Task {
    type Batch;

    /// The models, by name. Each is checkpointed, saved alone as
    /// `<name>.safetensors`, and switched between training and evaluation.
    fn models(&mut self) -> Vec<(&str, &mut dyn Module)>;

    /// The optimizers, by name. Their learning rates follow the run's
    /// schedule from the rate each had when the run began.
    fn optimizers(&mut self) -> Vec<(&str, &mut dyn Optimizer)>;

    /// One training step on `batch`: forward, backward, the optimizers'
    /// updates ([`Step::optimize`]), and the values to report
    /// ([`Step::record`]).
    fn train_step(&mut self, batch: Self::Batch, step: &mut Step) -> Result<()>;

    /// Held-out metrics after an epoch (models in evaluation mode, no
    /// gradients recorded), as `(name, value)`: `test_loss`, say.
    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }

    /// Header metadata for model `name`'s file (what built it).
    fn model_metadata(&self, name: &str) -> Vec<(String, String)> {
        let _ = name;
        Vec::new()
    }

    /// Files of the task's own, written into the run folder after epoch
    /// `epoch` (1-based): a confusion matrix, a grid of samples. Names may
    /// hold folders (`samples/epoch_003.png`).
    fn epoch_files(&mut self, epoch: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let _ = epoch;
        Ok(Vec::new())
    }
}

/// One step in progress: where it is, and what it reports.
pub struct Step {
    /// 0-based epoch, batch within the epoch, and optimizer steps before
    /// this one in the whole run.
    pub epoch: usize,
    pub batch: usize,
    pub global: u64,
    clip_grad_norm: Option<f32>,
    recorded: Vec<(String, Tensor)>,
    realized: usize,
    kept: Vec<Tensor>,
    samples: usize,
}

impl Step {
    /// A step outside a [`Trainer`]'s loop (a benchmark's, a test's): the
    /// run's first, without clipping.
    pub fn standalone() -> Step {
        Step {
            epoch: 0,
            batch: 0,
            global: 0,
            clip_grad_norm: None,
            recorded: Vec::new(),
            realized: 0,
            kept: Vec::new(),
            samples: 1,
        }
    }

    /// The values recorded so far, by name.
    pub fn recorded(&self) -> &[(String, Tensor)] {
        &self.recorded
    }

    /// Reports a scalar of this step (a loss, an accuracy): read with the
    /// step's others once the step is done, averaged over the epoch weighted
    /// by each step's samples, checked for NaN and infinity.
    pub fn record(&mut self, name: &str, value: &Tensor) -> Result<()> {
        if value.numel() != 1 {
            return Err(Error::shape(
                "record",
                format!("`{name}` must be a scalar, got shape {:?}", value.shape()),
            ));
        }
        self.recorded.push((name.to_string(), value.clone()));
        Ok(())
    }

    /// How many samples this step trained on (for epoch means and rates).
    pub fn set_samples(&mut self, samples: usize) {
        self.samples = samples;
    }

    /// Clips `grads`' joint norm over `params` to the run's
    /// `clip_grad_norm`, if it has one.
    pub fn clip(&self, grads: &mut Gradients, params: &[Tensor]) -> Result<()> {
        if let Some(max_norm) = self.clip_grad_norm {
            grads.clip_grad_norm(params, max_norm)?;
        }
        Ok(())
    }

    /// A value of this step that a later one reads (a recurrent state
    /// carried to the next batch): computed with the next
    /// [`Step::optimize`], before the update overwrites the parameters it
    /// was computed from.
    pub fn keep(&mut self, value: &Tensor) {
        self.kept.push(value.clone());
    }

    /// `opt`'s update from `grads`, with the values recorded or kept so far
    /// computed in the same submit: they read the parameters this update
    /// overwrites.
    pub fn optimize(&mut self, opt: &mut dyn Optimizer, grads: &Gradients) -> Result<()> {
        let pending: Vec<&Tensor> = self.recorded[self.realized..]
            .iter()
            .map(|(_, t)| t)
            .chain(&self.kept)
            .collect();
        opt.step_realizing(grads, &pending)?;
        self.realized = self.recorded.len();
        self.kept.clear();
        Ok(())
    }
}

/// What a run reports as it goes (progress bars: [`crate::Progress`]).
pub trait Observer {
    fn run_started(&mut self, _title: &str, _first_epoch: usize, _epochs: usize) {}
    fn epoch_started(&mut self, _epoch: usize, _batches: usize, _lrs: &[(String, f64)]) {}
    fn step_finished(&mut self, _values: &[(String, f32)], _samples: usize) {}
    fn epoch_finished(&mut self, _row: &EpochRow, _seconds: f64) {}
}

/// Reports nothing.
pub struct Silent;

impl Observer for Silent {}

/// A run: where its files go and how it trains.
pub struct Trainer {
    pub run: RunDir,
    /// Names the run on its curves.
    pub title: String,
    pub epochs: usize,
    pub schedule: Schedule,
    pub clip_grad_norm: Option<f32>,
    pub start: Start,
    /// What made the run besides the above (architecture, data, batch size,
    /// seed, learning rates): recorded, and compared on resume.
    pub settings: Settings,
}

impl Trainer {
    pub fn new(dir: impl Into<std::path::PathBuf>, epochs: usize) -> Trainer {
        let run = RunDir::new(dir);
        Trainer {
            title: run.dir.display().to_string(),
            run,
            epochs,
            schedule: Schedule::constant(),
            clip_grad_norm: None,
            start: Start::New,
            settings: Settings::new(),
        }
    }

    /// The settings, with the loop's own.
    fn all_settings(&self) -> Settings {
        let mut s = self.settings.clone();
        s.set("epochs", self.epochs);
        s.set("schedule", format!("{:?}", self.schedule.kind));
        s.set("warmup_steps", self.schedule.warmup_steps);
        s.set(
            "clip_grad_norm",
            self.clip_grad_norm.map_or("none".into(), |c| c.to_string()),
        );
        s
    }

    /// Checks the settings and the folder, before any work.
    pub fn check(&self) -> Result<()> {
        self.check_settings()?;
        check_start(&self.run, self.start)
    }

    /// Checks the loop's settings (epochs, clipping, schedule).
    pub fn check_settings(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("train", "epochs must be at least 1"));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::invalid(
                    "train",
                    format!("the gradient clipping norm must be positive, got {c}"),
                ));
            }
        }
        self.schedule.validate()
    }

    /// Trains `task` on `data` for the run's epochs (from where its
    /// checkpoint left off, when resuming), evaluating and writing the run's
    /// files after every epoch. Returns the whole history.
    pub fn fit<T: Task>(
        &self,
        task: &mut T,
        data: &dyn Batches<Batch = T::Batch>,
        device: &Device,
        observer: &mut dyn Observer,
    ) -> Result<History> {
        self.check()?;
        // A killed run's half-written files would otherwise sit beside the
        // run forever; nothing else writes into a run's folder meanwhile.
        remove_stale_temp_files(&self.run.dir)?;
        if self.start == Start::Overwrite {
            // Until its first epoch ends, the folder must not pair this
            // run's settings with the replaced run's checkpoint and curves.
            self.run.remove_files()?;
        }
        let settings = self.all_settings();
        let bases: Vec<(String, f64)> = task
            .optimizers()
            .into_iter()
            .map(|(n, o)| (n.to_string(), o.lr()))
            .collect();
        let mut progress = RunState::default();
        if self.start == Start::Resume {
            progress = self.restore(task, device, &settings)?;
        } else {
            write_atomic(&self.run.settings(), settings.to_text().as_bytes())?;
        }
        let first = progress.history.rows.len();
        observer.run_started(&self.title, first, self.epochs);
        for epoch in first..self.epochs {
            let started = Instant::now();
            let lrs = self.set_lrs(task, &bases, epoch, progress.global);
            for (_, m) in task.models() {
                m.train();
            }
            observer.epoch_started(epoch, data.len(), &lrs);
            let mut sums: Vec<(String, f64)> = Vec::new();
            let mut samples = 0usize;
            for (index, batch) in data.epoch(epoch).enumerate() {
                let batch = batch?;
                if self.schedule.warmup_steps > progress.global {
                    self.set_lrs(task, &bases, epoch, progress.global);
                }
                let mut step = Step {
                    epoch,
                    batch: index,
                    global: progress.global,
                    clip_grad_norm: self.clip_grad_norm,
                    recorded: Vec::new(),
                    realized: 0,
                    kept: Vec::new(),
                    samples: 1,
                };
                task.train_step(batch, &mut step)?;
                let tensors: Vec<&Tensor> = step.recorded.iter().map(|(_, t)| t).collect();
                let read = read_all(&tensors)?;
                let values: Vec<(String, f32)> = step
                    .recorded
                    .iter()
                    .zip(&read)
                    .map(|((n, _), v)| (n.clone(), v.first().copied().unwrap_or(f32::NAN)))
                    .collect();
                if let Some((name, v)) = values.iter().find(|(_, v)| !v.is_finite()) {
                    let kept = if epoch == 0 {
                        "no epoch had finished, so nothing was saved".to_string()
                    } else {
                        format!(
                            "{} still holds the run after epoch {epoch}",
                            self.run.checkpoint().display()
                        )
                    };
                    return Err(Error::invalid(
                        "train",
                        format!(
                            "`{name}` became {v} at epoch {}, step {} (step {} of the run); \
                             stopped before saving: {kept}. Lower the learning rate or clip \
                             the gradients",
                            epoch + 1,
                            index + 1,
                            progress.global + 1,
                        ),
                    ));
                }
                for (name, v) in &values {
                    let weighted = *v as f64 * step.samples as f64;
                    match sums.iter_mut().find(|(n, _)| n == name) {
                        Some((_, s)) => *s += weighted,
                        None => sums.push((name.clone(), weighted)),
                    }
                }
                samples += step.samples;
                progress.global += 1;
                observer.step_finished(&values, step.samples);
            }
            for (_, m) in task.models() {
                m.eval();
            }
            let held_out = {
                let _no_grad = no_grad();
                task.evaluate()?
            };
            let mut row = EpochRow {
                epoch: epoch + 1,
                values: Vec::new(),
            };
            for (name, lr) in &lrs {
                let column = if lrs.len() == 1 {
                    "lr".to_string()
                } else {
                    format!("lr_{name}")
                };
                row.values.push((column, *lr));
            }
            for (name, sum) in sums {
                row.values
                    .push((format!("train_{name}"), sum / samples.max(1) as f64));
            }
            row.values.extend(held_out);
            progress.history.rows.push(row.clone());
            let seconds = started.elapsed().as_secs_f64();
            progress
                .timings
                .push((epoch + 1, seconds, samples as f64 / seconds));
            progress.rng = device.seed_state();
            self.save(task, &settings, &progress)?;
            observer.epoch_finished(&row, seconds);
        }
        Ok(progress.history)
    }

    /// Sets every optimizer's rate for `epoch` at run step `global`.
    fn set_lrs<T: Task>(
        &self,
        task: &mut T,
        bases: &[(String, f64)],
        epoch: usize,
        global: u64,
    ) -> Vec<(String, f64)> {
        let mut lrs = Vec::new();
        for ((name, opt), (_, base)) in task.optimizers().into_iter().zip(bases) {
            let lr = self.schedule.lr(*base, epoch, self.epochs, global);
            opt.set_lr(lr);
            lrs.push((name.to_string(), lr));
        }
        lrs
    }

    /// Every tensor a checkpoint holds, by name.
    fn checkpoint_tensors<T: Task>(task: &mut T) -> Result<Vec<(String, Tensor)>> {
        let mut all = Vec::new();
        for (name, m) in task.models() {
            all.extend(prefixed(&format!("model.{name}"), m.state_dict()));
        }
        for (name, o) in task.optimizers() {
            all.extend(prefixed(&format!("optimizer.{name}"), o.state_tensors()?));
        }
        Ok(all)
    }

    fn save<T: Task>(&self, task: &mut T, settings: &Settings, progress: &RunState) -> Result<()> {
        let metrics = progress.history.to_csv()?;
        let mut meta = HashMap::new();
        for (k, v) in settings.entries() {
            meta.insert(format!("setting.{k}"), v.clone());
        }
        meta.insert("cinder.global_step".into(), progress.global.to_string());
        meta.insert("cinder.rng".into(), progress.rng.to_string());
        meta.insert(
            "cinder.history".into(),
            String::from_utf8_lossy(&metrics).into_owned(),
        );
        for (name, o) in task.optimizers() {
            let counters: Vec<String> = o.counters().iter().map(|c| c.to_string()).collect();
            meta.insert(format!("cinder.counters.{name}"), counters.join(","));
        }
        // The run's other files first: the checkpoint, written last, is
        // never older than them.
        let names: Vec<String> = task.models().iter().map(|(n, _)| n.to_string()).collect();
        for name in names {
            let metadata: HashMap<String, String> =
                task.model_metadata(&name).into_iter().collect();
            let state = task
                .models()
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, m)| m.state_dict())
                .unwrap_or_default();
            save_tensors_with_metadata(self.run.model(&name), &state, metadata)?;
        }
        write_atomic(&self.run.metrics(), &metrics)?;
        write_atomic(
            &self.run.curves(),
            &curves_png(&progress.history, &self.title)?,
        )?;
        let mut timings = String::from("epoch,seconds,samples_per_second\n");
        for (epoch, seconds, rate) in &progress.timings {
            timings.push_str(&format!("{epoch},{seconds:.3},{rate:.1}\n"));
        }
        write_atomic(&self.run.timings(), timings.as_bytes())?;
        for (file, bytes) in task.epoch_files(progress.history.rows.len())? {
            write_atomic(&self.run.dir.join(file), &bytes)?;
        }
        save_tensors_with_metadata(
            self.run.checkpoint(),
            &Self::checkpoint_tensors(task)?,
            meta,
        )
    }

    /// Loads every model and optimizer and the run's progress, after
    /// checking that the run was made with these settings.
    fn restore<T: Task>(
        &self,
        task: &mut T,
        device: &Device,
        settings: &Settings,
    ) -> Result<RunState> {
        let path = self.run.checkpoint();
        let targets = Self::checkpoint_tensors(task)?;
        let meta = load_tensors(&path, &targets)?;
        let bad = |what: &str| Error::bad_file(&path, format!("bad or missing {what}"));
        let mut stored = Settings::new();
        for (k, v) in &meta {
            if let Some(key) = k.strip_prefix("setting.") {
                stored.set(key, v);
            }
        }
        let changes = settings.changes_from(&stored);
        if !changes.is_empty() {
            return Err(changed_settings(&self.run.dir, &changes));
        }
        let history = History::from_csv(
            meta.get("cinder.history")
                .ok_or_else(|| bad("history"))?
                .as_bytes(),
        )?;
        let done = history.rows.len();
        if done >= self.epochs {
            return Err(Error::invalid(
                "train",
                format!(
                    "--resume: the run in {} has finished its {done} epochs; ask for more with --epochs",
                    self.run.dir.display()
                ),
            ));
        }
        let number = |key: &str| -> Result<u64> {
            meta.get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(key))
        };
        let global = number("cinder.global_step")?;
        let rng = number("cinder.rng")?;
        for (name, o) in task.optimizers() {
            let key = format!("cinder.counters.{name}");
            let text = meta.get(&key).ok_or_else(|| bad(&key))?;
            let counters = text
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| bad(&key))?;
            o.set_counters(&counters)?;
        }
        device.manual_seed(rng);
        let mut timings = Vec::new();
        if let Ok(text) = std::fs::read_to_string(self.run.timings()) {
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split(',').collect();
                if let [e, s, r] = f[..] {
                    if let (Ok(e), Ok(s), Ok(r)) = (e.parse(), s.parse(), r.parse()) {
                        if e <= done {
                            timings.push((e, s, r));
                        }
                    }
                }
            }
        }
        // The settings file keeps the run's history of resumes.
        let mut text = std::fs::read_to_string(self.run.settings()).unwrap_or_default();
        text.push_str(&format!(
            "# resumed after epoch {done}, to run to epoch {}\n",
            self.epochs
        ));
        write_atomic(&self.run.settings(), text.as_bytes())?;
        Ok(RunState {
            history,
            global,
            rng,
            timings,
        })
    }
}

/// Where a run stands between epochs.
#[derive(Default)]
struct RunState {
    history: History,
    global: u64,
    rng: u64,
    /// (epoch, seconds, samples per second)
    timings: Vec<(usize, f64, f64)>,
}
