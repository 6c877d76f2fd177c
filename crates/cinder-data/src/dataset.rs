use cinder_tensor::{Error, Result};

use crate::sample::{Field, Sample};

/// A source of [`Sample`]s that a [`Loader`](crate::Loader) can batch.
///
/// Implement it for data that lives anywhere: in memory, in files read on demand,
/// or generated from the index. `get` runs on the loader's background thread, hence
/// `Send + Sync`; it takes `&self`, so a dataset that caches needs its own lock.
///
/// ```
/// use cinder_data::{Dataset, Field, Sample};
///
/// /// Sequence `i` counts up to `i + 1`; its label is its length's parity.
/// struct Counting;
///
/// impl Dataset for Counting {
///     fn len(&self) -> usize {
///         10
///     }
///     fn get(&self, i: usize) -> cinder_tensor::Result<Sample> {
///         let steps: Vec<f32> = (0..=i).map(|t| t as f32).collect();
///         Ok(Sample::new()
///             .with("steps", Field::new(steps, &[i + 1, 1])?)
///             .with("label", Field::scalar((i % 2) as i32)))
///     }
/// }
/// assert_eq!(Counting.get(2)?.get("steps").map(|f| f.shape().to_vec()), Some(vec![3, 1]));
/// # Ok::<(), cinder_tensor::Error>(())
/// ```
pub trait Dataset: Send + Sync {
    /// The number of samples; `get` accepts `0..len()`.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index`. An error (a missing file, a corrupt record, an index past
    /// the end) reaches the loader's consumer as that batch's `Err`.
    fn get(&self, index: usize) -> Result<Sample>;
}

/// A list of ready samples is a dataset; `get` clones one.
impl Dataset for Vec<Sample> {
    fn len(&self) -> usize {
        <[Sample]>::len(self)
    }

    fn get(&self, index: usize) -> Result<Sample> {
        <[Sample]>::get(self, index)
            .cloned()
            .ok_or_else(|| past_the_end("Vec<Sample>", index, <[Sample]>::len(self)))
    }
}

/// A dataset whose sample `i` is `make(i)`, for generated data (see [`from_fn`]).
pub struct FromFn<F> {
    len: usize,
    make: F,
}

/// A dataset of `len` samples, sample `i` being `make(i)`: synthetic scenes,
/// sequences computed from the index, or a view that reads files lazily.
pub fn from_fn<F>(len: usize, make: F) -> FromFn<F>
where
    F: Fn(usize) -> Result<Sample> + Send + Sync,
{
    FromFn { len, make }
}

impl<F> Dataset for FromFn<F>
where
    F: Fn(usize) -> Result<Sample> + Send + Sync,
{
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len {
            return Err(past_the_end("from_fn", index, self.len));
        }
        (self.make)(index)
    }
}

impl<F> std::fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FromFn").field("len", &self.len).finish()
    }
}

fn past_the_end(op: &'static str, index: usize, len: usize) -> Error {
    Error::invalid(
        op,
        format!("sample {index} is past the end ({len} samples)"),
    )
}

/// A labelled classification dataset held entirely in host memory.
///
/// Sample `i` is the row-major block `features[i * f .. (i + 1) * f]`, where
/// `f = feature_shape.iter().product()`, and its class is `labels[i]`.
///
/// The fields are public so a caller can build or inspect a dataset directly;
/// [`InMemoryDataset::new`] and [`DataLoader::new`](crate::DataLoader::new) check that
/// they agree with each other.
#[derive(Debug, Clone, PartialEq)]
pub struct InMemoryDataset {
    /// `len() * feature_len()` values, one sample after another.
    pub features: Vec<f32>,
    /// The shape of one sample, without a batch dimension: `[64]` for flat digits,
    /// `[1, 8, 8]` or `[1, 28, 28]` for images (channels, rows, columns).
    pub feature_shape: Vec<usize>,
    /// One class index per sample, each in `0..num_classes`. `i32` because that is
    /// the index type cinder's loss functions take.
    pub labels: Vec<i32>,
    pub num_classes: usize,
}

impl InMemoryDataset {
    /// The name of a [`Sample`]'s features (f32, `feature_shape`) when the dataset is
    /// read through the [`Dataset`] trait.
    pub const INPUT: &'static str = "input";
    /// The name of a [`Sample`]'s class (i32, shape `[]`).
    pub const TARGET: &'static str = "target";

    /// Builds a dataset after checking that its parts agree (see [`Self::validate`]).
    pub fn new(
        features: Vec<f32>,
        feature_shape: Vec<usize>,
        labels: Vec<i32>,
        num_classes: usize,
    ) -> Result<Self> {
        let dataset = InMemoryDataset {
            features,
            feature_shape,
            labels,
            num_classes,
        };
        dataset.validate()?;
        Ok(dataset)
    }

    /// Checks that `features` holds exactly one `feature_shape` block per label and
    /// that every label lies in `0..num_classes`.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "InMemoryDataset";
        let feature_len = checked_product(&self.feature_shape).ok_or_else(|| {
            Error::invalid(
                OP,
                format!(
                    "feature shape {:?} has too many elements",
                    self.feature_shape
                ),
            )
        })?;
        let expected = self.labels.len().checked_mul(feature_len).ok_or_else(|| {
            Error::invalid(
                OP,
                format!(
                    "{} samples of shape {:?} have too many elements",
                    self.labels.len(),
                    self.feature_shape
                ),
            )
        })?;
        if self.features.len() != expected {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} labels of feature shape {:?} need {expected} feature values, found {}",
                    self.labels.len(),
                    self.feature_shape,
                    self.features.len()
                ),
            ));
        }
        let out_of_range =
            self.labels.iter().enumerate().find(|&(_, &label)| {
                usize::try_from(label).map_or(true, |l| l >= self.num_classes)
            });
        if let Some((index, label)) = out_of_range {
            return Err(Error::invalid(
                OP,
                format!(
                    "label {label} of sample {index} is outside 0..{} (num_classes = {})",
                    self.num_classes, self.num_classes
                ),
            ));
        }
        Ok(())
    }

    /// The first `rows` samples (all of them where there are fewer): a
    /// small copy for a quick run or a test.
    pub fn head(&self, rows: usize) -> InMemoryDataset {
        let rows = rows.min(self.len());
        let per = self.feature_len();
        InMemoryDataset {
            features: self.features[..rows * per].to_vec(),
            feature_shape: self.feature_shape.clone(),
            labels: self.labels[..rows].to_vec(),
            num_classes: self.num_classes,
        }
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The number of values in one sample, the product of `feature_shape`.
    /// Saturates instead of overflowing for a nonsensical shape, which
    /// [`Self::validate`] rejects.
    pub fn feature_len(&self) -> usize {
        self.feature_shape
            .iter()
            .fold(1usize, |acc, &d| acc.saturating_mul(d))
    }

    /// The features and label of sample `index`, or `None` past the end (or if the
    /// fields disagree).
    pub fn sample(&self, index: usize) -> Option<(&[f32], i32)> {
        let f = self.feature_len();
        let start = index.checked_mul(f)?;
        let features = self.features.get(start..start.checked_add(f)?)?;
        Some((features, *self.labels.get(index)?))
    }

    /// The same samples with another per-sample shape of the same size, e.g. digits as
    /// `[1, 8, 8]` images instead of 64 flat values. Moves the data, copies nothing.
    pub fn with_feature_shape(mut self, feature_shape: &[usize]) -> Result<Self> {
        if checked_product(feature_shape) != Some(self.feature_len()) {
            return Err(Error::shape(
                "InMemoryDataset::with_feature_shape",
                format!(
                    "samples of shape {:?} ({} values) cannot be viewed as shape {feature_shape:?}",
                    self.feature_shape,
                    self.feature_len()
                ),
            ));
        }
        self.feature_shape = feature_shape.to_vec();
        Ok(self)
    }
}

/// Samples with two fields: [`InMemoryDataset::INPUT`] (f32 of `feature_shape`)
/// and [`InMemoryDataset::TARGET`] (the i32 class, shape `[]`), so the classic
/// image-and-class data works with [`Loader`](crate::Loader) and its transforms.
impl Dataset for InMemoryDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (features, label) = self
            .sample(index)
            .ok_or_else(|| past_the_end("InMemoryDataset", index, InMemoryDataset::len(self)))?;
        Ok(Sample::new()
            .with(
                Self::INPUT,
                Field::new(features.to_vec(), &self.feature_shape)?,
            )
            .with(Self::TARGET, Field::scalar(label)))
    }
}

/// A dataset's training part and its held-out test part.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub train: InMemoryDataset,
    pub test: InMemoryDataset,
}

impl Split {
    /// Both parts with another per-sample shape of the same size
    /// (see [`InMemoryDataset::with_feature_shape`]).
    pub fn with_feature_shape(self, feature_shape: &[usize]) -> Result<Split> {
        Ok(Split {
            train: self.train.with_feature_shape(feature_shape)?,
            test: self.test.with_feature_shape(feature_shape)?,
        })
    }
}

pub(crate) fn checked_product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn small() -> InMemoryDataset {
        InMemoryDataset::new(
            (0..12).map(|v| v as f32).collect(),
            vec![4],
            vec![0, 1, 2],
            3,
        )
        .expect("consistent dataset") // ok: test fixture; a failure fails the test
    }

    #[test]
    fn sample_and_len() {
        let ds = small();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.feature_len(), 4);
        assert_eq!(ds.sample(1), Some((&[4.0, 5.0, 6.0, 7.0][..], 1)));
        assert_eq!(ds.sample(3), None);
    }

    #[test]
    fn rejects_inconsistent_parts() {
        let err = InMemoryDataset::new(vec![0.0; 11], vec![4], vec![0, 1, 2], 3).unwrap_err();
        assert!(
            err.to_string().contains("need 12 feature values, found 11"),
            "{err}"
        );
        let err = InMemoryDataset::new(vec![0.0; 12], vec![4], vec![0, 3, 2], 3).unwrap_err();
        assert!(err.to_string().contains("label 3 of sample 1"), "{err}");
        let err = InMemoryDataset::new(vec![0.0; 12], vec![4], vec![0, -1, 2], 3).unwrap_err();
        assert!(err.to_string().contains("label -1 of sample 1"), "{err}");
    }

    #[test]
    fn reshape_keeps_data() -> TestResult {
        let ds = small().with_feature_shape(&[1, 2, 2])?;
        assert_eq!(ds.feature_shape, [1, 2, 2]);
        assert_eq!(ds.features[5], 5.0);
        let err = ds.with_feature_shape(&[3]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        Ok(())
    }
}
