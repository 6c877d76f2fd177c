//! Progress bars for a run (indicatif): one for the run, one for the epoch
//! with its running means and samples per second, and a line per epoch.

use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::history::EpochRow;
use crate::trainer::Observer;

/// The progress bars; on a terminal they redraw in place, elsewhere only the
/// per-epoch lines are printed.
pub struct Progress {
    multi: MultiProgress,
    run: Option<ProgressBar>,
    epoch: Option<ProgressBar>,
    started: Instant,
    samples: usize,
    sums: Vec<(String, f64)>,
    steps: usize,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            multi: MultiProgress::new(),
            run: None,
            epoch: None,
            started: Instant::now(),
            samples: 0,
            sums: Vec::new(),
            steps: 0,
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Observer for Progress {
    fn run_started(&mut self, title: &str, first_epoch: usize, epochs: usize) {
        let bar = self.multi.add(ProgressBar::new(epochs as u64));
        bar.set_style(style(
            "{prefix} {bar:30.green/white} {pos}/{len} epochs [{elapsed_precise}]",
        ));
        bar.set_prefix(title.to_string());
        bar.set_position(first_epoch as u64);
        self.run = Some(bar);
        self.started = Instant::now();
    }

    fn epoch_started(&mut self, epoch: usize, batches: usize, lrs: &[(String, f64)]) {
        let bar = self.multi.add(ProgressBar::new(batches as u64));
        bar.set_style(style(
            "epoch {prefix:>3} {bar:30.cyan/blue} {pos}/{len} {msg}",
        ));
        bar.set_prefix(format!("{}", epoch + 1));
        let lr: Vec<String> = lrs.iter().map(|(_, lr)| format!("{lr:.2e}")).collect();
        bar.set_message(format!("lr {}", lr.join("/")));
        self.epoch = Some(bar);
        self.sums.clear();
        self.steps = 0;
    }

    fn step_finished(&mut self, values: &[(String, f32)], samples: usize) {
        self.samples += samples;
        self.steps += 1;
        for (name, v) in values {
            match self.sums.iter_mut().find(|(n, _)| n == name) {
                Some((_, s)) => *s += *v as f64,
                None => self.sums.push((name.clone(), *v as f64)),
            }
        }
        if let Some(bar) = &self.epoch {
            bar.inc(1);
            let rate = self.samples as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            let means: Vec<String> = self
                .sums
                .iter()
                .map(|(n, s)| format!("{n} {:.4}", s / self.steps as f64))
                .collect();
            bar.set_message(format!("{} {rate:.0} samples/s", means.join(" ")));
        }
    }

    fn epoch_finished(&mut self, row: &EpochRow, seconds: f64) {
        if let Some(bar) = self.epoch.take() {
            bar.finish_and_clear();
        }
        if let Some(bar) = &self.run {
            bar.inc(1);
        }
        let values: Vec<String> = row
            .values
            .iter()
            .map(|(n, v)| {
                if n.contains("accuracy") {
                    format!("{n} {:.2}%", 100.0 * v)
                } else if n.starts_with("lr") {
                    format!("{n} {v:.2e}")
                } else {
                    format!("{n} {v:.4}")
                }
            })
            .collect();
        let _ = self.multi.println(format!(
            "epoch {:3}  {}  {seconds:.1} s",
            row.epoch,
            values.join("  ")
        ));
    }
}
