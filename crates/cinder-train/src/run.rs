//! A run's folder, its settings, and the rules that keep a finished run from
//! being lost: a folder that holds a run is only continued (`Start::Resume`,
//! with the same settings) or replaced on request (`Start::Overwrite`).

use std::path::{Path, PathBuf};

use cinder_tensor::{Error, Result};

/// Where a run's files go.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn new(dir: impl Into<PathBuf>) -> RunDir {
        RunDir { dir: dir.into() }
    }

    /// Every model's weights, every optimizer's state, the progress, the
    /// random state and the history: what a resume reads.
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.safetensors")
    }

    /// One model's weights alone, under PyTorch's names.
    pub fn model(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.safetensors"))
    }

    /// Per-epoch values (no wall times: two identical runs write the same file).
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }

    pub fn curves(&self) -> PathBuf {
        self.dir.join("curves.png")
    }

    /// Wall time per epoch (the one file that differs between identical runs).
    pub fn timings(&self) -> PathBuf {
        self.dir.join("timings.csv")
    }

    /// The settings, and a line for each resume.
    pub fn settings(&self) -> PathBuf {
        self.dir.join("settings.txt")
    }

    pub fn holds_a_run(&self) -> bool {
        self.checkpoint().exists()
    }

    /// The folder of a task's per-epoch pictures (`samples/epoch_NNN.png`).
    pub fn samples(&self) -> PathBuf {
        self.dir.join("samples")
    }

    /// Removes the loop's own files (the checkpoint first, so that a folder
    /// never looks like it holds a run it does not) and the samples folder,
    /// whose later epochs the new run might never overwrite. Model files and
    /// a task's other files are replaced when the first epoch ends.
    pub fn remove_files(&self) -> Result<()> {
        for path in [
            self.checkpoint(),
            self.metrics(),
            self.curves(),
            self.timings(),
            self.settings(),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        match std::fs::remove_dir_all(self.samples()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(self.samples(), e)),
        }
    }
}

/// How a run treats its folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run; refused where the folder already holds one.
    New,
    /// A new run that replaces the one in the folder.
    Overwrite,
    /// Continue the run in the folder, with the same settings.
    Resume,
}

/// What made a run (architecture, learning rate, batch size, seed, data...),
/// as `key = value` text: recorded in the checkpoint and `settings.txt`,
/// and compared when the run resumes. Kept sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    entries: Vec<(String, String)>,
}

/// Settings a resume may change: how far the run goes.
const RESUMABLE: [&str; 1] = ["epochs"];

impl Settings {
    pub fn new() -> Settings {
        Settings::default()
    }

    /// Adds (or replaces) `key`.
    pub fn with(mut self, key: &str, value: impl std::fmt::Display) -> Settings {
        self.set(key, value);
        self
    }

    pub fn set(&mut self, key: &str, value: impl std::fmt::Display) {
        let value = value.to_string();
        match self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key)) {
            Ok(i) => self.entries[i].1 = value,
            Err(i) => self.entries.insert(i, (key.to_string(), value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// `key = value` lines.
    pub fn to_text(&self) -> String {
        self.entries
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    }

    /// Changes from `old` to `self` that a resume may not make, as
    /// `key: old -> new` (a missing value reads `(none)`).
    pub fn changes_from(&self, old: &Settings) -> Vec<String> {
        let mut keys: Vec<&str> = self
            .entries
            .iter()
            .chain(&old.entries)
            .map(|(k, _)| k.as_str())
            .filter(|k| !RESUMABLE.contains(k))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .filter_map(|k| {
                let (a, b) = (old.get(k), self.get(k));
                (a != b).then(|| {
                    format!(
                        "{k}: {} -> {}",
                        a.unwrap_or("(none)"),
                        b.unwrap_or("(none)")
                    )
                })
            })
            .collect()
    }
}

/// Checks `dir` against `start` before any work: a new run into a folder
/// that holds a run is refused (naming `--resume` and `--overwrite`); a
/// resume needs a run to resume.
pub fn check_start(dir: &RunDir, start: Start) -> Result<()> {
    match start {
        Start::New if dir.holds_a_run() => Err(Error::invalid(
            "train",
            format!(
                "{} already holds a run ({}); continue it with --resume, or replace it with \
                 --overwrite, or choose another --out",
                dir.dir.display(),
                dir.checkpoint().display()
            ),
        )),
        Start::Resume if !dir.holds_a_run() => Err(Error::invalid(
            "train",
            format!(
                "--resume: there is no run to resume in {} (no {}); train without --resume first",
                dir.dir.display(),
                dir.checkpoint().display()
            ),
        )),
        _ => Ok(()),
    }
}

/// The refusal of a resume whose settings differ from the run's.
pub(crate) fn changed_settings(dir: &Path, changes: &[String]) -> Error {
    Error::invalid(
        "train",
        format!(
            "--resume: the run in {} was made with other settings ({}); resume with the same \
             settings, or start over with --overwrite",
            dir.display(),
            changes.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::{check_start, RunDir, Settings, Start};

    #[test]
    fn settings_list_what_a_resume_changed() {
        let old = Settings::new()
            .with("lr", 0.002)
            .with("batch_size", 32)
            .with("epochs", 6)
            .with("arch", "lenet");
        let new = Settings::new()
            .with("lr", 0.001)
            .with("batch_size", 32)
            .with("epochs", 10)
            .with("seed", 1);
        assert_eq!(
            new.changes_from(&old),
            vec![
                "arch: lenet -> (none)",
                "lr: 0.002 -> 0.001",
                "seed: (none) -> 1"
            ]
        );
        // More epochs is a longer run, not another one.
        assert!(old.clone().with("epochs", 12).changes_from(&old).is_empty());
        assert_eq!(
            old.to_text(),
            "arch = lenet\nbatch_size = 32\nepochs = 6\nlr = 0.002\n"
        );
    }

    #[test]
    fn a_folder_with_a_run_is_not_reused_silently() {
        let dir = std::env::temp_dir().join(format!("cinder-train-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap(); // ok: a test; a panic is its failure
        let run = RunDir::new(&dir);
        assert!(check_start(&run, Start::New).is_ok());
        assert!(check_start(&run, Start::Resume).is_err());
        std::fs::write(run.checkpoint(), b"x").unwrap(); // ok: a test; a panic is its failure
        let err = check_start(&run, Start::New).unwrap_err().to_string();
        assert!(
            err.contains("--resume") && err.contains("--overwrite"),
            "{err}"
        );
        assert!(check_start(&run, Start::Overwrite).is_ok());
        assert!(check_start(&run, Start::Resume).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
