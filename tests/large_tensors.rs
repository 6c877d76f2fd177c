//! Tensors larger than the adapter's storage-binding limit (128 MiB on many
//! adapters, lavapipe included) are bound as several ranges and stay correct.

mod common;

use cinder::{Result, Tensor};

#[test]
fn elementwise_and_reduce_beyond_the_binding_limit() -> Result<()> {
    let device = common::device();
    let limit = device.limits().max_storage_buffer_binding_size as usize;
    // Just over one binding, and not a multiple of anything convenient.
    let n = limit / 4 + 1_000_003;
    let x = Tensor::arange_i32(&device, n)?.to_dtype(cinder::DType::F32)?;
    let y = x.mul_scalar(0.5)?.add_scalar(1.0)?;
    let values = y.to_vec::<f32>()?;
    assert_eq!(values.len(), n);
    for &i in &[0usize, 1, limit / 4 - 1, limit / 4, limit / 4 + 1, n - 1] {
        assert_eq!(values[i], (i as f32) * 0.5 + 1.0, "element {i}");
    }
    // Reductions that read across the boundary: integer sums are exact, float
    // sums agree to f32 rounding.
    let count = Tensor::full_dtype(&device, &[n], cinder::DType::I32, 1.0)
        .sum_all()?
        .to_vec::<i32>()?;
    assert_eq!(count, vec![n as i32]);
    let total = y.sum_all()?.item()? as f64;
    let want: f64 = (0..n).map(|i| ((i as f32) * 0.5 + 1.0) as f64).sum();
    assert!((total - want).abs() <= 1e-5 * want, "sum {total} vs {want}");
    // Arg-reductions over a long axis, with the winner near the end (f32
    // rounding makes the last few values equal; the first of them wins).
    let top = values.iter().cloned().fold(f32::MIN, f32::max);
    let first_top = values.iter().position(|&v| v == top).unwrap_or(0) as i32;
    assert!(first_top as usize > n - 16);
    assert_eq!(y.argmax(0, false)?.to_vec::<i32>()?, vec![first_top]);
    assert_eq!(y.neg()?.argmin(0, false)?.to_vec::<i32>()?, vec![first_top]);
    let max = y.max(&[], false)?.item()?;
    assert_eq!(max, ((n - 1) as f32) * 0.5 + 1.0);
    Ok(())
}
