//! Samples made of named fields, each a host array of any shape with dtype f32, i32
//! or u32.

use cinder_tensor::{DType, Error, Result};

use crate::dataset::checked_product;

/// The element types a [`Field`] can hold: the three dtypes cinder's tensors have.
/// Sealed, because [`FieldData`] has exactly these variants.
pub trait FieldElement: cinder_tensor::Element + PartialEq + private::Sealed {
    /// Wraps a vector in the matching [`FieldData`] variant.
    fn wrap(data: Vec<Self>) -> FieldData;
    /// The values, if `data` holds this type.
    fn slice(data: &FieldData) -> Option<&[Self]>;
    /// `value` as this type, if it is exactly representable (used for pad values).
    fn from_f64(value: f64) -> Option<Self>;
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for i32 {}
    impl Sealed for u32 {}
}

impl FieldElement for f32 {
    fn wrap(data: Vec<Self>) -> FieldData {
        FieldData::F32(data)
    }
    fn slice(data: &FieldData) -> Option<&[Self]> {
        match data {
            FieldData::F32(v) => Some(v),
            _ => None,
        }
    }
    fn from_f64(value: f64) -> Option<Self> {
        // Any f64 is a fine f32 pad value (rounded), NaN and infinities included.
        Some(value as f32)
    }
}

impl FieldElement for i32 {
    fn wrap(data: Vec<Self>) -> FieldData {
        FieldData::I32(data)
    }
    fn slice(data: &FieldData) -> Option<&[Self]> {
        match data {
            FieldData::I32(v) => Some(v),
            _ => None,
        }
    }
    fn from_f64(value: f64) -> Option<Self> {
        let v = value as i32;
        (f64::from(v) == value).then_some(v)
    }
}

impl FieldElement for u32 {
    fn wrap(data: Vec<Self>) -> FieldData {
        FieldData::U32(data)
    }
    fn slice(data: &FieldData) -> Option<&[Self]> {
        match data {
            FieldData::U32(v) => Some(v),
            _ => None,
        }
    }
    fn from_f64(value: f64) -> Option<Self> {
        let v = value as u32;
        (f64::from(v) == value).then_some(v)
    }
}

/// The values of a [`Field`], row-major, in one of the three dtypes.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldData {
    F32(Vec<f32>),
    I32(Vec<i32>),
    U32(Vec<u32>),
}

impl FieldData {
    pub fn dtype(&self) -> DType {
        match self {
            FieldData::F32(_) => DType::F32,
            FieldData::I32(_) => DType::I32,
            FieldData::U32(_) => DType::U32,
        }
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            FieldData::F32(v) => v.len(),
            FieldData::I32(v) => v.len(),
            FieldData::U32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: FieldElement> From<Vec<T>> for FieldData {
    fn from(data: Vec<T>) -> Self {
        T::wrap(data)
    }
}

/// One host array of a sample: an image `[C, H, W]`, a class `[]`, a mask `[H, W]`,
/// boxes `[k, 4]`, a sequence `[t, features]`, ...
///
/// The shape always matches the number of values (the constructors check it), so
/// collation and transforms can rely on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    data: FieldData,
    shape: Vec<usize>,
}

impl Field {
    /// A field of `shape` holding `data` row-major. Fails if `data` does not have
    /// `shape`'s product of values.
    pub fn new(data: impl Into<FieldData>, shape: &[usize]) -> Result<Field> {
        let data = data.into();
        if checked_product(shape) != Some(data.len()) {
            return Err(Error::shape(
                "Field::new",
                format!("{} values cannot have shape {shape:?}", data.len()),
            ));
        }
        Ok(Field {
            data,
            shape: shape.to_vec(),
        })
    }

    /// A rank-0 field (shape `[]`), such as a class index.
    pub fn scalar<T: FieldElement>(value: T) -> Field {
        Field {
            data: T::wrap(vec![value]),
            shape: Vec::new(),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn data(&self) -> &FieldData {
        &self.data
    }

    /// The number of values (the product of the shape).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The values, if they are of type `T`.
    pub fn as_slice<T: FieldElement>(&self) -> Option<&[T]> {
        T::slice(&self.data)
    }

    /// The values as `T`, or an [`Error::DType`] naming `op` if they are of another
    /// type.
    pub fn values<T: FieldElement>(&self, op: &'static str) -> Result<&[T]> {
        self.as_slice().ok_or_else(|| Error::DType {
            op,
            expected: T::DTYPE.to_string(),
            got: self.dtype().to_string(),
        })
    }

    pub fn into_parts(self) -> (FieldData, Vec<usize>) {
        (self.data, self.shape)
    }

    /// A device tensor of the same shape and dtype.
    pub fn to_tensor(&self, device: &cinder_tensor::Device) -> Result<cinder_tensor::Tensor> {
        use cinder_tensor::Tensor;
        match &self.data {
            FieldData::F32(v) => Tensor::from_slice(device, v, &self.shape),
            FieldData::I32(v) => Tensor::from_slice(device, v, &self.shape),
            FieldData::U32(v) => Tensor::from_slice(device, v, &self.shape),
        }
    }
}

/// One example of a dataset: named fields in a fixed order, such as
/// `image` and `class`, or `tokens` and `label`.
///
/// Every sample of a dataset should have the same field names in the same order;
/// collation reports a sample that does not.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    fields: Vec<(String, Field)>,
}

impl Sample {
    pub fn new() -> Sample {
        Sample::default()
    }

    /// The sample with `field` added under `name`, or put in the place of a field
    /// already named so.
    pub fn with(mut self, name: impl Into<String>, field: Field) -> Sample {
        self.insert(name, field);
        self
    }

    /// Adds `field` under `name` at the end, or replaces the field already named so
    /// in its place.
    pub fn insert(&mut self, name: impl Into<String>, field: Field) {
        let name = name.into();
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => *existing = field,
            None => self.fields.push((name, field)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, f)| f)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Field> {
        self.fields
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f)
    }

    /// The field `name`, or an error naming `op` and the fields there are.
    pub fn field(&self, name: &str, op: &'static str) -> Result<&Field> {
        self.get(name).ok_or_else(|| self.missing(name, op))
    }

    /// Like [`Sample::field`], mutable.
    pub fn field_mut(&mut self, name: &str, op: &'static str) -> Result<&mut Field> {
        let missing = self.missing(name, op);
        self.get_mut(name).ok_or(missing)
    }

    fn missing(&self, name: &str, op: &'static str) -> Error {
        Error::invalid(
            op,
            format!(
                "the sample has no field {name:?} (its fields: {:?})",
                self.names().collect::<Vec<_>>()
            ),
        )
    }

    /// The field names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(n, _)| n.as_str())
    }

    /// `(name, field)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Field)> {
        self.fields.iter().map(|(n, f)| (n.as_str(), f))
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn into_fields(self) -> Vec<(String, Field)> {
        self.fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_checks_its_shape() {
        let f = Field::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).expect("fits"); // ok: fixture
        assert_eq!(f.shape(), [2, 3]);
        assert_eq!(f.dtype(), DType::F32);
        assert_eq!(f.as_slice::<f32>().map(<[f32]>::len), Some(6));
        assert_eq!(f.as_slice::<i32>(), None);
        let err = f.values::<i32>("test").unwrap_err();
        assert!(matches!(err, Error::DType { .. }), "{err}");
        let err = Field::new(vec![1i32, 2, 3], &[2, 2]).unwrap_err();
        assert!(err
            .to_string()
            .contains("3 values cannot have shape [2, 2]"));
        let err = Field::new(Vec::<u32>::new(), &[usize::MAX, 2]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let empty = Field::new(Vec::<u32>::new(), &[0, 4]).expect("empty boxes"); // ok: fixture
        assert!(empty.is_empty());
        let class = Field::scalar(7i32);
        assert_eq!((class.shape(), class.len()), (&[][..], 1));
    }

    #[test]
    fn pad_values_must_be_representable() {
        assert_eq!(i32::from_f64(-100.0), Some(-100));
        assert_eq!(i32::from_f64(0.5), None);
        assert_eq!(i32::from_f64(3e10), None);
        assert_eq!(u32::from_f64(-1.0), None);
        assert_eq!(u32::from_f64(255.0), Some(255));
        assert!(f32::from_f64(f64::NAN).is_some_and(f32::is_nan));
    }

    #[test]
    fn sample_fields_keep_their_order() {
        let mut s = Sample::new()
            .with("image", Field::scalar(1.0f32))
            .with("class", Field::scalar(3i32));
        s.insert("image", Field::scalar(2.0f32));
        assert_eq!(s.names().collect::<Vec<_>>(), ["image", "class"]);
        assert_eq!(s.get("image"), Some(&Field::scalar(2.0f32)));
        let err = s.field("mask", "test").unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"no field "mask" (its fields: ["image", "class"])"#),
            "{err}"
        );
    }
}
