//! Training for any model: a loop that drives a [`Task`] (one or several
//! models and optimizers, any step the user writes) over [`Batches`], with
//! learning-rate [`Schedule`]s, gradient clipping, a guard against NaN and
//! infinite values that names the step, progress bars, `metrics.csv` and
//! `curves.png` for whatever the task reports, a checkpoint of every model,
//! optimizer and the random state after each epoch, and a resume that ends
//! bit for bit where an uninterrupted run would. A folder that holds a run
//! is only continued with the same settings or replaced on request.
//!
//! [`classify::Classifier`] is the task for classifiers; model crates bring
//! their own tasks.

pub mod batches;
pub mod classify;
pub mod curves;
pub mod history;
pub mod progress;
pub mod run;
pub mod schedule;
pub mod trainer;

pub use batches::{OrderedBatches, ShuffledBatches};
pub use classify::{ClassBatch, Classifier, Evaluation, TrainOptions};
pub use history::{EpochRow, History};
pub use progress::Progress;
pub use run::{RunDir, Settings, Start};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{Batches, Observer, Silent, Step, Task, Trainer};
