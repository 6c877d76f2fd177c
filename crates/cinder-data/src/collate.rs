//! Stacking samples into a batch, padding the fields whose sizes differ.

use cinder_tensor::{Error, Result};

use crate::dataset::checked_product;
use crate::sample::{Field, FieldData, FieldElement, Sample};

const OP: &str = "collate";

/// How samples become a [`SampleBatch`]: each field is stacked along a new leading
/// batch dimension; where the samples' sizes of a field differ, each is padded at
/// the end of every dimension to the batch's largest size, filled with the field's
/// pad value (0 unless set with [`Collate::pad`]).
///
/// For a sequence field `[t_i, f]` this is PyTorch's
/// `pad_sequence(batch_first=True, padding_value=pad)`: the result is
/// `[b, max t_i, f]`. Unlike `pad_sequence`, any dimension may differ (boxes
/// `[k_i, 4]`, images `[c, h_i, w_i]`); only the rank and dtype must agree. Each
/// sample's own shape is kept in the batch, so [`BatchField::lengths`] and
/// [`BatchField::mask`] tell real values from padding.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Collate {
    pads: Vec<(String, f64)>,
}

impl Collate {
    /// Pads every field with 0.
    pub fn new() -> Collate {
        Collate::default()
    }

    /// Pads field `name` with `value` instead of 0: say -100 for a target sequence
    /// read by a loss with `ignore_index = -100`. For an integer field the value
    /// must be a whole number in the dtype's range; collation reports one that is
    /// not.
    pub fn pad(mut self, name: impl Into<String>, value: f64) -> Collate {
        let name = name.into();
        self.pads.retain(|(n, _)| *n != name);
        self.pads.push((name, value));
        self
    }

    /// The value that pads field `name`.
    pub fn pad_value(&self, name: &str) -> f64 {
        self.pads
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |&(_, v)| v)
    }

    /// Stacks `samples` (at least one, all with the same field names in the same
    /// order, each field of one dtype and rank) into a batch whose
    /// [`SampleBatch::indices`] are `0..samples.len()`.
    pub fn collate(&self, samples: &[Sample]) -> Result<SampleBatch> {
        self.collate_indexed(samples, (0..samples.len()).collect())
    }

    /// Like [`Collate::collate`], recording the dataset index of each sample (used in
    /// error messages and kept in the batch).
    pub(crate) fn collate_indexed(
        &self,
        samples: &[Sample],
        indices: Vec<usize>,
    ) -> Result<SampleBatch> {
        let Some(first) = samples.first() else {
            return Err(Error::invalid(OP, "a batch needs at least one sample"));
        };
        let index = |k: usize| indices.get(k).copied().unwrap_or(k);
        for (k, sample) in samples.iter().enumerate().skip(1) {
            if !sample.names().eq(first.names()) {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "sample {} has fields {:?} but sample {} has {:?}; every sample of a \
                         batch needs the same fields in the same order",
                        index(k),
                        sample.names().collect::<Vec<_>>(),
                        index(0),
                        first.names().collect::<Vec<_>>()
                    ),
                ));
            }
        }
        let mut fields = Vec::with_capacity(first.len());
        for (position, (name, _)) in first.iter().enumerate() {
            let parts: Vec<&Field> = samples
                .iter()
                .filter_map(|s| s.iter().nth(position).map(|(_, f)| f))
                .collect();
            fields.push(self.stack_field(name, &parts, &index)?);
        }
        Ok(SampleBatch { indices, fields })
    }

    fn stack_field(
        &self,
        name: &str,
        parts: &[&Field],
        index: &dyn Fn(usize) -> usize,
    ) -> Result<BatchField> {
        let first = parts[0];
        let rank = first.shape().len();
        for (k, part) in parts.iter().enumerate().skip(1) {
            if part.dtype() != first.dtype() {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "field {name:?} is {} in sample {} but {} in sample {}; a field needs \
                         one dtype in every sample",
                        part.dtype(),
                        index(k),
                        first.dtype(),
                        index(0)
                    ),
                ));
            }
            if part.shape().len() != rank {
                return Err(Error::shape(
                    OP,
                    format!(
                        "field {name:?} has shape {:?} in sample {} but {:?} in sample {}; \
                         padding can even out sizes, not ranks",
                        part.shape(),
                        index(k),
                        first.shape(),
                        index(0)
                    ),
                ));
            }
        }
        let mut max_shape = first.shape().to_vec();
        for part in &parts[1..] {
            for (m, &d) in max_shape.iter_mut().zip(part.shape()) {
                *m = (*m).max(d);
            }
        }
        let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
        let mut batch_shape = Vec::with_capacity(rank + 1);
        batch_shape.push(parts.len());
        batch_shape.extend_from_slice(&max_shape);
        let total = checked_product(&batch_shape).ok_or_else(|| {
            Error::shape(
                OP,
                format!("field {name:?} padded to {batch_shape:?} has too many values"),
            )
        })?;
        let pad = self.pad_value(name);
        let data = match first.data() {
            FieldData::F32(_) => stack::<f32>(name, parts, &shapes, &max_shape, pad, total)?,
            FieldData::I32(_) => stack::<i32>(name, parts, &shapes, &max_shape, pad, total)?,
            FieldData::U32(_) => stack::<u32>(name, parts, &shapes, &max_shape, pad, total)?,
        };
        Ok(BatchField {
            name: name.to_string(),
            values: Field::new(data, &batch_shape)?,
            shapes: shapes.iter().map(|s| s.to_vec()).collect(),
        })
    }
}

/// The samples' values of one field, each padded to `max_shape`, one after another.
fn stack<T: FieldElement>(
    name: &str,
    parts: &[&Field],
    shapes: &[&[usize]],
    max_shape: &[usize],
    pad: f64,
    total: usize,
) -> Result<FieldData> {
    let values: Vec<&[T]> = parts
        .iter()
        .map(|p| p.values::<T>(OP))
        .collect::<Result<_>>()?;
    if shapes.iter().all(|s| *s == max_shape) {
        return Ok(T::wrap(values.concat()));
    }
    let pad = T::from_f64(pad).ok_or_else(|| {
        Error::invalid(
            OP,
            format!(
                "field {name:?} is {} and cannot be padded with {pad}",
                T::DTYPE
            ),
        )
    })?;
    let per_sample = total / parts.len();
    let mut out = vec![pad; total];
    // Row-major strides of the padded sample; the source rows (last dimension) are
    // contiguous, so each is one copy to its padded place.
    let mut strides = vec![1usize; max_shape.len()];
    for d in (0..max_shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * max_shape[d + 1];
    }
    for (k, (src, shape)) in values.iter().zip(shapes).enumerate() {
        let base = k * per_sample;
        let Some((&row_len, outer)) = shape.split_last() else {
            out[base] = src[0];
            continue;
        };
        if row_len == 0 {
            continue;
        }
        let mut at = vec![0usize; outer.len()];
        for row in src.chunks_exact(row_len) {
            let offset: usize = at.iter().zip(&strides).map(|(i, s)| i * s).sum();
            out[base + offset..base + offset + row_len].copy_from_slice(row);
            // Advance the multi-index over the outer dimensions, last fastest.
            for d in (0..outer.len()).rev() {
                at[d] += 1;
                if at[d] < outer[d] {
                    break;
                }
                at[d] = 0;
            }
        }
    }
    Ok(T::wrap(out))
}

/// One field of a [`SampleBatch`]: the samples' values stacked (and padded where
/// their sizes differ) with a leading batch dimension, and each sample's own shape.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchField {
    name: String,
    values: Field,
    shapes: Vec<Vec<usize>>,
}

impl BatchField {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `[b, ...]`: the largest size of each dimension over the batch.
    pub fn values(&self) -> &Field {
        &self.values
    }

    pub fn into_values(self) -> Field {
        self.values
    }

    /// Each sample's shape before padding, in batch order.
    pub fn sample_shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// The sample dimensions (0 is a sample's first, the batch's second) in which some
    /// sample was padded; empty where the field simply stacked.
    pub fn padded_dims(&self) -> Vec<usize> {
        let padded = &self.values.shape()[1..];
        (0..padded.len())
            .filter(|&d| self.shapes.iter().any(|s| s[d] != padded[d]))
            .collect()
    }

    pub fn is_padded(&self) -> bool {
        !self.padded_dims().is_empty()
    }

    /// Each sample's size in sample dimension `dim` (0 is the sample's first
    /// dimension, the batch tensor's dimension 1): the sequence lengths of a
    /// `[t, f]` field at `dim = 0`, as `pad_sequence`'s callers keep them. Reported
    /// whether or not this batch happened to need padding.
    pub fn lengths(&self, dim: usize) -> Result<Vec<usize>> {
        self.check_dim(dim)?;
        Ok(self.shapes.iter().map(|s| s[dim]).collect())
    }

    /// [`BatchField::lengths`] as an i32 field of shape `[b]`, ready for a tensor.
    pub fn lengths_field(&self, dim: usize) -> Result<Field> {
        let lengths = self
            .lengths(dim)?
            .into_iter()
            .map(|l| {
                i32::try_from(l).map_err(|_| {
                    Error::invalid(
                        "BatchField::lengths_field",
                        format!("length {l} > i32::MAX"),
                    )
                })
            })
            .collect::<Result<Vec<i32>>>()?;
        let b = lengths.len();
        Field::new(lengths, &[b])
    }

    /// An f32 `[b, n]` field, `n` the padded size of sample dimension `dim`: 1 where
    /// position `j < lengths(dim)[i]` holds a value of sample `i`, 0 over padding.
    /// Multiply a per-step loss by it to ignore padded steps.
    pub fn mask(&self, dim: usize) -> Result<Field> {
        self.check_dim(dim)?;
        let n = self.values.shape()[dim + 1];
        let mask: Vec<f32> = self
            .shapes
            .iter()
            .flat_map(|s| (0..n).map(move |j| if j < s[dim] { 1.0 } else { 0.0 }))
            .collect();
        Field::new(mask, &[self.shapes.len(), n])
    }

    fn check_dim(&self, dim: usize) -> Result<()> {
        let rank = self.values.shape().len() - 1;
        if dim >= rank {
            return Err(Error::invalid(
                "BatchField::lengths",
                format!(
                    "field {:?} has samples of rank {rank}, so it has no sample dimension {dim}",
                    self.name
                ),
            ));
        }
        Ok(())
    }
}

/// A collated batch: one [`BatchField`] per field of the samples, in the samples'
/// field order, and the dataset index of each sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleBatch {
    indices: Vec<usize>,
    fields: Vec<BatchField>,
}

impl SampleBatch {
    /// The number of samples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The dataset index of each sample, in batch order.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    pub fn fields(&self) -> &[BatchField] {
        &self.fields
    }

    pub fn into_fields(self) -> Vec<BatchField> {
        self.fields
    }

    pub fn get(&self, name: &str) -> Option<&BatchField> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The field `name`, or an error listing the batch's fields.
    pub fn field(&self, name: &str) -> Result<&BatchField> {
        self.get(name).ok_or_else(|| {
            Error::invalid(
                "SampleBatch::field",
                format!(
                    "the batch has no field {name:?} (its fields: {:?})",
                    self.fields.iter().map(|f| f.name()).collect::<Vec<_>>()
                ),
            )
        })
    }

    /// One device tensor per field, in field order, each of its
    /// [`BatchField::values`]' shape and dtype. Lengths and masks are separate:
    /// [`BatchField::lengths_field`] and [`BatchField::mask`] give fields to upload.
    pub fn to_tensors(&self, device: &cinder_tensor::Device) -> Result<Vec<cinder_tensor::Tensor>> {
        self.fields
            .iter()
            .map(|f| f.values.to_tensor(device))
            .collect()
    }

    /// The device tensor of field `name`.
    pub fn tensor(
        &self,
        name: &str,
        device: &cinder_tensor::Device,
    ) -> Result<cinder_tensor::Tensor> {
        self.field(name)?.values.to_tensor(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_tensor::DType;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn seq(len: usize, start: f32, label: i32) -> Result<Sample> {
        // Two features per step: (start + t, -(start + t)).
        let v: Vec<f32> = (0..len)
            .flat_map(|t| [start + t as f32, -(start + t as f32)])
            .collect();
        Ok(Sample::new()
            .with("seq", Field::new(v, &[len, 2])?)
            .with("label", Field::scalar(label)))
    }

    #[test]
    fn equal_shapes_stack() -> TestResult {
        let samples = vec![seq(2, 0.0, 1)?, seq(2, 10.0, 0)?];
        let batch = Collate::new().collate(&samples)?;
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.indices(), [0, 1]);
        let s = batch.field("seq")?;
        assert_eq!(s.values().shape(), [2, 2, 2]);
        assert_eq!(
            s.values().as_slice::<f32>(),
            Some(&[0.0, -0.0, 1.0, -1.0, 10.0, -10.0, 11.0, -11.0][..])
        );
        assert!(!s.is_padded());
        assert_eq!(s.lengths(0)?, [2, 2]);
        let label = batch.field("label")?;
        assert_eq!(label.values().shape(), [2]);
        assert_eq!(label.values().dtype(), DType::I32);
        assert_eq!(label.values().as_slice::<i32>(), Some(&[1, 0][..]));
        Ok(())
    }

    #[test]
    fn sequences_pad_like_pad_sequence() -> TestResult {
        let samples = vec![seq(1, 0.0, 0)?, seq(3, 10.0, 1)?, seq(0, 5.0, 2)?];
        let batch = Collate::new().pad("seq", -1.0).collate(&samples)?;
        let s = batch.field("seq")?;
        assert_eq!(s.values().shape(), [3, 3, 2]);
        // torch.nn.utils.rnn.pad_sequence([a, b, c], batch_first=True, padding_value=-1)
        #[rustfmt::skip]
        let expected = [
            0.0, -0.0,   -1.0, -1.0,  -1.0, -1.0,
            10.0, -10.0, 11.0, -11.0, 12.0, -12.0,
            -1.0, -1.0,  -1.0, -1.0,  -1.0, -1.0,
        ];
        assert_eq!(s.values().as_slice::<f32>(), Some(&expected[..]));
        assert_eq!(s.lengths(0)?, [1, 3, 0]);
        assert_eq!(s.lengths(1)?, [2, 2, 2]);
        assert_eq!(s.padded_dims(), [0]);
        assert_eq!(s.sample_shapes(), [vec![1, 2], vec![3, 2], vec![0, 2]]);
        let mask = s.mask(0)?;
        assert_eq!(mask.shape(), [3, 3]);
        assert_eq!(
            mask.as_slice::<f32>(),
            Some(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0][..])
        );
        assert_eq!(s.lengths_field(0)?, Field::new(vec![1i32, 3, 0], &[3])?);
        assert!(s.lengths(2).is_err());
        assert!(
            batch.field("label")?.lengths(0).is_err(),
            "a scalar has no dims"
        );
        Ok(())
    }

    #[test]
    fn every_dimension_can_pad() -> TestResult {
        // Images of different heights and widths: [1, h, w].
        let a = Field::new(vec![1u32, 2, 3, 4, 5, 6], &[1, 2, 3])?;
        let b = Field::new(vec![7u32, 8, 9], &[1, 3, 1])?;
        let samples = vec![Sample::new().with("img", a), Sample::new().with("img", b)];
        let batch = Collate::new().pad("img", 99.0).collate(&samples)?;
        let img = batch.field("img")?;
        assert_eq!(img.values().shape(), [2, 1, 3, 3]);
        #[rustfmt::skip]
        let expected = [
            1, 2, 3,   4, 5, 6,    99, 99, 99,
            7, 99, 99, 8, 99, 99,  9, 99, 99,
        ];
        assert_eq!(img.values().as_slice::<u32>(), Some(&expected[..]));
        assert_eq!(img.padded_dims(), [1, 2]);
        assert_eq!(img.lengths(1)?, [2, 3]);
        assert_eq!(img.lengths(2)?, [3, 1]);
        Ok(())
    }

    #[test]
    fn mismatches_are_errors() -> TestResult {
        let rank = vec![
            Sample::new().with("x", Field::new(vec![1.0f32; 4], &[4])?),
            Sample::new().with("x", Field::new(vec![1.0f32; 4], &[2, 2])?),
        ];
        let err = Collate::new()
            .collate_indexed(&rank, vec![8, 9])
            .unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(r#"field "x" has shape [2, 2] in sample 9 but [4] in sample 8"#),
            "{err}"
        );

        let dtype = vec![
            Sample::new().with("x", Field::scalar(1.0f32)),
            Sample::new().with("x", Field::scalar(1i32)),
        ];
        let err = Collate::new().collate(&dtype).unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"field "x" is i32 in sample 1 but f32 in sample 0"#),
            "{err}"
        );

        let names = vec![
            Sample::new().with("x", Field::scalar(1.0f32)),
            Sample::new().with("y", Field::scalar(1.0f32)),
        ];
        let err = Collate::new().collate(&names).unwrap_err();
        assert!(err.to_string().contains(r#"has fields ["y"]"#), "{err}");

        let ragged = vec![
            Sample::new().with("t", Field::new(vec![1i32], &[1])?),
            Sample::new().with("t", Field::new(vec![1i32, 2], &[2])?),
        ];
        let err = Collate::new().pad("t", 0.5).collate(&ragged).unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"field "t" is i32 and cannot be padded with 0.5"#),
            "{err}"
        );
        let ok = Collate::new().pad("t", -100.0).collate(&ragged)?;
        assert_eq!(
            ok.field("t")?.values().as_slice::<i32>(),
            Some(&[1, -100, 1, 2][..])
        );

        assert!(Collate::new().collate(&[]).is_err());
        Ok(())
    }
}
