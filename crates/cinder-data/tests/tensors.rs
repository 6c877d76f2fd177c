//! A padded batch of several dtypes reaches the device as one tensor per field,
//! plus its lengths and mask.

use cinder_data::{Collate, Field, Sample};
use cinder_tensor::{DType, Device, Result};

#[test]
fn a_padded_batch_becomes_tensors() -> Result<()> {
    let device = Device::new()?;
    let sample = |t: usize, class: i32| -> Result<Sample> {
        Ok(Sample::new()
            .with("seq", Field::new(vec![t as f32; t * 2], &[t, 2])?)
            .with(
                "tokens",
                Field::new((1..=t as u32).collect::<Vec<_>>(), &[t])?,
            )
            .with("class", Field::scalar(class)))
    };
    let batch = Collate::new()
        .pad("seq", -1.0)
        .collate(&[sample(1, 4)?, sample(3, 7)?])?;
    let tensors = batch.to_tensors(&device)?;
    assert_eq!(tensors.len(), 3);
    assert_eq!(tensors[0].shape(), [2, 3, 2]);
    assert_eq!(tensors[0].dtype(), DType::F32);
    assert_eq!(
        tensors[0].to_vec::<f32>()?,
        [1.0, 1.0, -1.0, -1.0, -1.0, -1.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    );
    assert_eq!(tensors[1].dtype(), DType::U32);
    assert_eq!(tensors[1].to_vec::<u32>()?, [1, 0, 0, 1, 2, 3]);
    assert_eq!(tensors[2].shape(), [2]);
    assert_eq!(tensors[2].to_vec::<i32>()?, [4, 7]);
    assert_eq!(batch.tensor("class", &device)?.to_vec::<i32>()?, [4, 7]);

    let seq = batch.field("seq")?;
    let lengths = seq.lengths_field(0)?.to_tensor(&device)?;
    assert_eq!(
        (lengths.dtype(), lengths.to_vec::<i32>()?),
        (DType::I32, vec![1, 3])
    );
    let mask = seq.mask(0)?.to_tensor(&device)?;
    assert_eq!(mask.shape(), [2, 3]);
    assert_eq!(mask.to_vec::<f32>()?, [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    Ok(())
}
