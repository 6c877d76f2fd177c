//! A run's per-epoch values (learning rates, training means, held-out
//! metrics) and `metrics.csv`, written and read with the `csv` crate.

use cinder_tensor::{Error, Result};

/// One finished epoch: its number (1-based) and its named values, in the
/// order they were reported.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochRow {
    pub epoch: usize,
    pub values: Vec<(String, f64)>,
}

impl EpochRow {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }
}

/// Every finished epoch of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub rows: Vec<EpochRow>,
}

impl History {
    /// The value names, in order of first appearance.
    pub fn columns(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for row in &self.rows {
            for (name, _) in &row.values {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }

    /// `(epoch, value)` of every epoch that has a finite `name`.
    pub fn series(&self, name: &str) -> Vec<(usize, f64)> {
        self.rows
            .iter()
            .filter_map(|r| r.get(name).filter(|v| v.is_finite()).map(|v| (r.epoch, v)))
            .collect()
    }

    /// `metrics.csv`: a header `epoch,<names...>`, one row per epoch, an
    /// empty field where an epoch lacks a value. Numbers are written as the
    /// shortest text that reads back to the same value, so the file is the
    /// same for the same run, and a resumed run reads its history exactly.
    pub fn to_csv(&self) -> Result<Vec<u8>> {
        let columns = self.columns();
        let mut w = csv::Writer::from_writer(Vec::new());
        let bad = |e: csv::Error| Error::invalid("metrics.csv", e.to_string());
        let mut header = vec!["epoch".to_string()];
        header.extend(columns.iter().cloned());
        w.write_record(&header).map_err(bad)?;
        for row in &self.rows {
            let mut record = vec![row.epoch.to_string()];
            record.extend(
                columns
                    .iter()
                    .map(|c| row.get(c).map_or(String::new(), |v| v.to_string())),
            );
            w.write_record(&record).map_err(bad)?;
        }
        w.into_inner()
            .map_err(|e| Error::invalid("metrics.csv", e.to_string()))
    }

    /// Reads back what [`History::to_csv`] wrote; a malformed line is an
    /// error naming its 1-based line.
    pub fn from_csv(bytes: &[u8]) -> Result<History> {
        let mut r = csv::Reader::from_reader(bytes);
        let header = r
            .headers()
            .map_err(|e| Error::invalid("metrics.csv", format!("line 1: {e}")))?
            .clone();
        if header.get(0) != Some("epoch") {
            return Err(Error::invalid(
                "metrics.csv",
                "line 1: the first column must be `epoch`",
            ));
        }
        let mut rows = Vec::new();
        for (i, record) in r.records().enumerate() {
            let line = i + 2;
            let record =
                record.map_err(|e| Error::invalid("metrics.csv", format!("line {line}: {e}")))?;
            let bad = |what: String| Error::invalid("metrics.csv", format!("line {line}: {what}"));
            let epoch = record
                .get(0)
                .and_then(|e| e.parse().ok())
                .ok_or_else(|| bad("the epoch is not a whole number".into()))?;
            let mut values = Vec::new();
            for (name, field) in header.iter().zip(record.iter()).skip(1) {
                if field.is_empty() {
                    continue;
                }
                let v = field
                    .parse()
                    .map_err(|_| bad(format!("`{name}` = `{field}` is not a number")))?;
                values.push((name.to_string(), v));
            }
            rows.push(EpochRow { epoch, values });
        }
        Ok(History { rows })
    }
}

#[cfg(test)]
mod tests {
    use super::{EpochRow, History};

    #[test]
    fn metrics_round_trip_exactly_with_gaps() {
        let history = History {
            rows: vec![
                EpochRow {
                    epoch: 1,
                    values: vec![("lr".into(), 2e-3), ("train_loss".into(), 0.1 + 0.2)],
                },
                EpochRow {
                    epoch: 2,
                    values: vec![
                        ("lr".into(), 1.9e-3),
                        ("train_loss".into(), f64::NAN),
                        ("test_accuracy".into(), 0.987654321),
                    ],
                },
            ],
        };
        let csv = history.to_csv().unwrap(); // ok: a test; a panic is its failure
        let text = String::from_utf8(csv.clone()).unwrap(); // ok: a test; a panic is its failure
        assert_eq!(
            text.lines().next(),
            Some("epoch,lr,train_loss,test_accuracy")
        );
        assert!(text.lines().nth(1).is_some_and(|l| l.ends_with(',')));
        let back = History::from_csv(&csv).unwrap(); // ok: a test; a panic is its failure
        assert_eq!(back.rows[0], history.rows[0]);
        assert_eq!(back.rows[1].get("test_accuracy"), Some(0.987654321));
        assert!(back.rows[1].get("train_loss").is_some_and(f64::is_nan));
        assert_eq!(back.series("train_loss"), vec![(1, 0.1 + 0.2)]);
        assert!(History::from_csv(b"epoch,lr\n1,abc\n")
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }
}
