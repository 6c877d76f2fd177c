//! Learning-rate schedules, as PyTorch's schedulers define them.

use cinder_tensor::{Error, Result};

/// How the learning rate moves over a run, per epoch (as PyTorch's
/// schedulers step once per epoch), after an optional linear warm-up over
/// the first optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// `LinearLR(start_factor = 1 / warmup_steps)` over the first
    /// `warmup_steps` optimizer steps, multiplying the epoch's rate; 0 for
    /// none.
    pub warmup_steps: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScheduleKind {
    Constant,
    /// `StepLR`: multiply by `gamma` every `step_size` epochs.
    Step {
        step_size: usize,
        gamma: f64,
    },
    /// `CosineAnnealingLR` with `T_max` = the run's epochs.
    Cosine {
        min_lr: f64,
    },
}

impl Schedule {
    pub fn constant() -> Schedule {
        Schedule {
            kind: ScheduleKind::Constant,
            warmup_steps: 0,
        }
    }

    pub fn step(step_size: usize, gamma: f64) -> Schedule {
        Schedule {
            kind: ScheduleKind::Step { step_size, gamma },
            warmup_steps: 0,
        }
    }

    pub fn cosine(min_lr: f64) -> Schedule {
        Schedule {
            kind: ScheduleKind::Cosine { min_lr },
            warmup_steps: 0,
        }
    }

    /// The same schedule after a linear warm-up of `steps` optimizer steps.
    pub fn with_warmup(mut self, steps: u64) -> Schedule {
        self.warmup_steps = steps;
        self
    }

    /// Rejects settings PyTorch would reject or that cannot train: a step
    /// size of 0, a decay outside (0, 1], a negative or non-finite floor.
    pub fn validate(&self) -> Result<()> {
        match self.kind {
            ScheduleKind::Constant => Ok(()),
            ScheduleKind::Step { step_size, gamma } => {
                if step_size == 0 {
                    return Err(Error::invalid(
                        "schedule",
                        "the step schedule's step size must be at least 1 epoch",
                    ));
                }
                if !(gamma > 0.0 && gamma <= 1.0) {
                    return Err(Error::invalid(
                        "schedule",
                        format!("the step schedule's gamma must be in (0, 1], got {gamma}"),
                    ));
                }
                Ok(())
            }
            ScheduleKind::Cosine { min_lr } if min_lr.is_finite() && min_lr >= 0.0 => Ok(()),
            ScheduleKind::Cosine { min_lr } => Err(Error::invalid(
                "schedule",
                format!(
                    "the cosine schedule's minimum must be finite and at least 0, got {min_lr}"
                ),
            )),
        }
    }

    /// The rate for `epoch` (0-based) of `epochs`, at optimizer step
    /// `step` (0-based, counted over the whole run), from `base`.
    pub fn lr(&self, base: f64, epoch: usize, epochs: usize, step: u64) -> f64 {
        let per_epoch = match self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step { step_size, gamma } => {
                base * gamma.powi((epoch / step_size.max(1)) as i32)
            }
            ScheduleKind::Cosine { min_lr } => {
                let t = epoch as f64 / epochs.max(1) as f64;
                min_lr + (base - min_lr) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        };
        if step < self.warmup_steps {
            per_epoch * (step + 1) as f64 / self.warmup_steps as f64
        } else {
            per_epoch
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn schedules_follow_pytorch() {
        // StepLR(step_size=2, gamma=0.5): 1, 1, .5, .5, .25
        let s = Schedule::step(2, 0.5);
        let lrs: Vec<f64> = (0..5).map(|e| s.lr(1.0, e, 5, 1000)).collect();
        assert_eq!(lrs, [1.0, 1.0, 0.5, 0.5, 0.25]);
        // CosineAnnealingLR(T_max=4, eta_min=0.1) at epochs 0 and 2.
        let c = Schedule::cosine(0.1);
        assert!((c.lr(1.0, 0, 4, 1000) - 1.0).abs() < 1e-12);
        assert!((c.lr(1.0, 2, 4, 1000) - 0.55).abs() < 1e-12);
        // Warm-up: steps 0..4 at 1/4, 2/4, 3/4, then the schedule's rate.
        let w = Schedule::constant().with_warmup(4);
        let lrs: Vec<f64> = (0..6).map(|step| w.lr(2.0, 0, 1, step)).collect();
        assert_eq!(lrs, [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]);
    }

    #[test]
    fn settings_that_cannot_train_are_rejected() {
        assert!(Schedule::step(0, 0.5).validate().is_err());
        assert!(Schedule::step(3, 0.0).validate().is_err());
        assert!(Schedule::step(3, 1.5).validate().is_err());
        assert!(Schedule::cosine(-1.0).validate().is_err());
        assert!(Schedule::cosine(f64::NAN).validate().is_err());
        assert!(Schedule::step(3, 0.5).validate().is_ok());
    }
}
