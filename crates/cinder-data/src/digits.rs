//! The handwritten digits bundled with cinder: 1797 grey-scale 8x8 images of the
//! digits 0–9.
//!
//! Source: "Optical Recognition of Handwritten Digits", E. Alpaydin and C. Kaynak
//! (1998), UCI Machine Learning Repository, CC BY 4.0, in the copy scikit-learn
//! distributes. See `data/README.md` in the repository.

use std::path::Path;

use cinder_tensor::{Error, Result};

use crate::dataset::{InMemoryDataset, Split};
use crate::gzip::gunzip;
use crate::rng::{permutation, SplitMix64};

/// Embedded so that a program using the digits runs from any working directory and
/// without network access.
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// How errors name the embedded file; it has no path on the user's machine.
const SOURCE: &str = "data/digits.csv.gz (embedded in cinder-data)";

/// The bundled digits: all 1797 samples, each 64 pixel values scaled from 0..=16 to
/// [0, 1] (row-major 8x8), with its label 0..=9.
#[derive(Debug, Clone, PartialEq)]
pub struct Digits {
    // Invariant (checked by `load`): exactly ROWS samples of NUM_FEATURES values.
    all: InMemoryDataset,
}

impl Digits {
    /// Samples in the bundled file.
    pub const ROWS: usize = 1797;
    /// Rows in the training set.
    pub const TRAIN_ROWS: usize = Self::ROWS - Self::TEST_ROWS;
    /// Rows (20%) in the held-out test set.
    pub const TEST_ROWS: usize = 360;
    /// The seed of the fixed shuffle that picks the test rows.
    pub const SPLIT_SEED: u64 = 20_260_101;
    /// Pixels per image.
    pub const NUM_FEATURES: usize = 64;
    /// The per-sample shape of [`Digits::split_images`]: channels, rows, columns.
    pub const IMAGE_SHAPE: [usize; 3] = [1, 8, 8];
    pub const NUM_CLASSES: usize = 10;
    /// Pixel values in the file run from 0 to this; features are pixel / MAX_PIXEL.
    pub const MAX_PIXEL: u8 = 16;

    /// Decompresses and parses the embedded CSV. Each call parses it afresh, so
    /// load once and share the result.
    pub fn load() -> Result<Digits> {
        let path = Path::new(SOURCE);
        let all = parse_csv(&gunzip(DIGITS_CSV_GZ, path)?, path)?;
        if all.len() != Self::ROWS {
            // The documented split counts rows, so a different file would silently
            // change what "the digits test set" means.
            return Err(Error::bad_file(
                path,
                format!("{} rows, expected {}", all.len(), Self::ROWS),
            ));
        }
        Ok(Digits { all })
    }

    /// All 1797 samples with feature shape `[64]`, in file order.
    pub fn all(&self) -> &InMemoryDataset {
        &self.all
    }

    /// The fixed split used throughout cinder: a seeded shuffle of the 1797 rows
    /// (SplitMix64 with seed [`Digits::SPLIT_SEED`], Fisher–Yates) puts 360 rows
    /// (20%) in the test set and the other 1437 in the training set, each kept in
    /// file order. The file's rows come in blocks by writer, so a plain "last 20%"
    /// split would test on writers never seen in training; the shuffle mixes them
    /// while keeping the split identical for every program and version. Feature
    /// shape `[64]`.
    pub fn split(&self) -> Split {
        let order = permutation(Self::ROWS, &mut SplitMix64::new(Self::SPLIT_SEED));
        let mut test_rows = order[..Self::TEST_ROWS].to_vec();
        let mut train_rows = order[Self::TEST_ROWS..].to_vec();
        test_rows.sort_unstable();
        train_rows.sort_unstable();
        let part = |rows: &[usize]| {
            let mut features = Vec::with_capacity(rows.len() * Self::NUM_FEATURES);
            let mut labels = Vec::with_capacity(rows.len());
            for &r in rows {
                // ok: `load` checked that there are ROWS rows of NUM_FEATURES values,
                // and every r < ROWS.
                features.extend_from_slice(
                    &self.all.features[r * Self::NUM_FEATURES..(r + 1) * Self::NUM_FEATURES],
                );
                labels.push(self.all.labels[r]);
            }
            InMemoryDataset {
                features,
                feature_shape: vec![Self::NUM_FEATURES],
                labels,
                num_classes: Self::NUM_CLASSES,
            }
        };
        Split {
            train: part(&train_rows),
            test: part(&test_rows),
        }
    }

    /// The rows of the test set, in file order.
    pub fn test_rows() -> Vec<usize> {
        let order = permutation(Self::ROWS, &mut SplitMix64::new(Self::SPLIT_SEED));
        let mut rows = order[..Self::TEST_ROWS].to_vec();
        rows.sort_unstable();
        rows
    }

    /// [`Digits::split`] with each sample shaped `[1, 8, 8]` for convolutional models.
    pub fn split_images(&self) -> Split {
        let Split {
            mut train,
            mut test,
        } = self.split();
        // Set directly: 1 * 8 * 8 == 64, so the data already has this layout.
        train.feature_shape = Self::IMAGE_SHAPE.to_vec();
        test.feature_shape = Self::IMAGE_SHAPE.to_vec();
        Split { train, test }
    }
}

/// Parses rows of 64 pixels (0..=16) and a label (0..=9). `path` only names the
/// source in errors. Blank lines (such as a final newline) are skipped.
fn parse_csv(bytes: &[u8], path: &Path) -> Result<InMemoryDataset> {
    const FIELDS: usize = Digits::NUM_FEATURES + 1;
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Error::bad_file(path, format!("not UTF-8 text: {e}")))?;
    let mut features = Vec::with_capacity(Digits::ROWS * Digits::NUM_FEATURES);
    let mut labels = Vec::with_capacity(Digits::ROWS);
    let mut values = Vec::with_capacity(FIELDS);
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        values.clear();
        for (field_no, field) in line.split(',').enumerate() {
            let field = field.trim();
            let value: i64 = field.parse().map_err(|_| {
                Error::bad_file(
                    path,
                    format!(
                        "line {line_no}, field {}: `{field}` is not an integer",
                        field_no + 1
                    ),
                )
            })?;
            values.push(value);
        }
        if values.len() != FIELDS {
            return Err(Error::bad_file(
                path,
                format!(
                    "line {line_no}: {} fields, expected {FIELDS} (64 pixels and a label)",
                    values.len()
                ),
            ));
        }
        // ok: the length was checked just above.
        let (pixels, label) = values.split_at(Digits::NUM_FEATURES);
        for (pixel_no, &pixel) in pixels.iter().enumerate() {
            if !(0..=i64::from(Digits::MAX_PIXEL)).contains(&pixel) {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "line {line_no}: pixel {} is {pixel}, outside 0..={}",
                        pixel_no + 1,
                        Digits::MAX_PIXEL
                    ),
                ));
            }
            features.push(pixel as f32 / f32::from(Digits::MAX_PIXEL));
        }
        let label = label[0]; // ok: FIELDS = NUM_FEATURES + 1 leaves exactly one value.
        if !(0..Digits::NUM_CLASSES as i64).contains(&label) {
            return Err(Error::bad_file(
                path,
                format!(
                    "line {line_no}: label {label} is outside 0..={}",
                    Digits::NUM_CLASSES - 1
                ),
            ));
        }
        labels.push(label as i32); // the range check above makes this lossless
    }
    Ok(InMemoryDataset {
        features,
        feature_shape: vec![Digits::NUM_FEATURES],
        labels,
        num_classes: Digits::NUM_CLASSES,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn digits() -> Digits {
        Digits::load().expect("the embedded digits parse") // ok: test fixture; a failure fails the test
    }

    #[test]
    fn loads_all_rows_in_range() -> TestResult {
        let d = digits();
        let all = d.all();
        assert_eq!(all.len(), 1797);
        assert_eq!(all.feature_shape, [64]);
        assert_eq!(all.features.len(), 1797 * 64);
        assert_eq!(all.num_classes, 10);
        all.validate()?;
        assert!(all.features.iter().all(|&v| (0.0..=1.0).contains(&v)));
        // Full range used: both ends of 0..=16 occur, so the /16 scaling reaches 0 and 1.
        assert!(all.features.contains(&0.0) && all.features.contains(&1.0));
        assert!(all.labels.iter().all(|&l| (0..10).contains(&l)));
        Ok(())
    }

    #[test]
    fn first_and_last_rows_match_the_file() -> TestResult {
        // First line: 0,0,5,13,9,1,0,0,... label 0; last line ends with label 8.
        let d = digits();
        let (first, label) = d.all().sample(0).ok_or("row 0 missing")?;
        assert_eq!(&first[..4], &[0.0, 0.0, 5.0 / 16.0, 13.0 / 16.0]);
        assert_eq!(label, 0);
        assert_eq!(d.all().labels[1796], 8);
        Ok(())
    }

    #[test]
    fn split_is_a_fixed_seeded_shuffle() -> TestResult {
        let d = digits();
        let split = d.split();
        assert_eq!(split.train.len(), 1437);
        assert_eq!(split.test.len(), 360);
        assert_eq!(Digits::TRAIN_ROWS + Digits::TEST_ROWS, Digits::ROWS);
        split.train.validate()?;
        split.test.validate()?;
        let test_rows = Digits::test_rows();
        assert_eq!(test_rows.len(), 360);
        assert!(
            test_rows.windows(2).all(|w| w[0] < w[1]),
            "sorted, no repeats"
        );
        assert_eq!(test_rows, Digits::test_rows(), "the split is fixed");
        assert_eq!(split.test.sample(0), d.all().sample(test_rows[0]));
        assert_eq!(split.test.sample(359), d.all().sample(test_rows[359]));
        // Train and test together are every row exactly once.
        let train_rows: Vec<usize> = (0..Digits::ROWS)
            .filter(|r| test_rows.binary_search(r).is_err())
            .collect();
        assert_eq!(train_rows.len(), 1437);
        assert_eq!(split.train.sample(0), d.all().sample(train_rows[0]));
        assert_eq!(split.train.sample(1436), d.all().sample(train_rows[1436]));
        // The shuffle reaches into every part of the file.
        assert!(test_rows[0] < 20 && test_rows[359] > 1777);
        // Every class is represented on both sides of the split.
        for class in 0..10 {
            let in_test = split.test.labels.iter().filter(|&&l| l == class).count();
            let in_train = split.train.labels.iter().filter(|&&l| l == class).count();
            assert!(
                in_test >= 30 && in_train >= 130,
                "class {class}: {in_train}/{in_test}"
            );
        }
        Ok(())
    }

    #[test]
    fn image_view_has_same_data() -> TestResult {
        let d = digits();
        let flat = d.split();
        let images = d.split_images();
        assert_eq!(images.train.feature_shape, [1, 8, 8]);
        assert_eq!(images.test.feature_shape, [1, 8, 8]);
        assert_eq!(images.train.features, flat.train.features);
        assert_eq!(images.test.labels, flat.test.labels);
        assert_eq!(flat.with_feature_shape(&Digits::IMAGE_SHAPE)?, images);
        Ok(())
    }

    fn parse_err(text: &str) -> String {
        let path = Path::new("digits-test.csv");
        match parse_csv(text.as_bytes(), path) {
            Err(Error::BadFile { path: p, reason }) => {
                assert_eq!(p, path);
                reason
            }
            other => panic!("expected BadFile, got {other:?}"),
        }
    }

    fn row(pixel: &str, label: &str) -> String {
        let mut fields = vec!["0"; 63];
        fields.insert(5, pixel);
        format!("{},{label}\n", fields.join(","))
    }

    #[test]
    fn parse_accepts_valid_rows_and_blank_lines() -> TestResult {
        let text = format!("{}\r\n{}\n\n", row("16", "9").trim_end(), row("3", "0"));
        let ds = parse_csv(text.as_bytes(), Path::new("x"))?;
        assert_eq!(ds.labels, [9, 0]);
        assert_eq!(ds.features[5], 1.0);
        assert_eq!(ds.features[64 + 5], 3.0 / 16.0);
        Ok(())
    }

    #[test]
    fn parse_rejects_bad_rows() {
        let good = row("1", "1");
        let reason = parse_err(&format!("{good}0,1,2\n"));
        assert!(reason.contains("line 2: 3 fields, expected 65"), "{reason}");
        let reason = parse_err(&row("x7", "1"));
        assert!(
            reason.contains("line 1, field 6: `x7` is not an integer"),
            "{reason}"
        );
        let reason = parse_err(&row("17", "1"));
        assert!(
            reason.contains("line 1: pixel 6 is 17, outside 0..=16"),
            "{reason}"
        );
        let reason = parse_err(&row("-1", "1"));
        assert!(reason.contains("pixel 6 is -1"), "{reason}");
        let reason = parse_err(&format!("{good}{}", row("0", "10")));
        assert!(
            reason.contains("line 2: label 10 is outside 0..=9"),
            "{reason}"
        );
        let reason = parse_err(&format!("{good}{}", row("0", "1.5")));
        assert!(
            reason.contains("field 65: `1.5` is not an integer"),
            "{reason}"
        );
    }

    #[test]
    fn error_message_names_the_source() {
        let err = parse_csv(b"1,2\n", Path::new(SOURCE))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data/digits.csv.gz (embedded in cinder-data)"),
            "{err}"
        );
        assert!(err.contains("2 fields, expected 65"), "{err}");
        let err = gunzip(b"not gzip", Path::new(SOURCE))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid gzip stream"), "{err}");
    }
}
