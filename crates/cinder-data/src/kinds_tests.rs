//! One loader, the sample kinds of the issue: image and class, image and mask,
//! image and a varying number of boxes, a sequence and its label, a sequence and a
//! target sequence. No GPU needed; `tests/tensors.rs` uploads a batch.

use std::sync::Arc;

use cinder_tensor::{DType, Result};

use crate::collate::{BatchField, Collate};
use crate::dataset::{from_fn, InMemoryDataset};
use crate::idx::Mnist;
use crate::loader::{DataLoader, Loader};
use crate::sample::{Field, Sample};
use crate::transform::{
    Normalize, RandomAffine, RandomCrop, RandomHorizontalFlip, RandomVerticalFlip,
};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn f32s(f: &BatchField) -> Result<Vec<f32>> {
    Ok(f.values().values::<f32>("test")?.to_vec())
}

fn i32s(f: &BatchField) -> Result<Vec<i32>> {
    Ok(f.values().values::<i32>("test")?.to_vec())
}

#[test]
fn image_and_class_bundled_mnist() -> TestResult {
    let train = Arc::new(Mnist::bundled()?.train);
    // Without transforms the generic loader yields DataLoader's batches.
    let plain = Loader::new(Arc::clone(&train), 64, true, 3)?;
    let classic = DataLoader::new(Arc::clone(&train), 64, true, 3)?;
    for (new, old) in plain.epoch(1).zip(classic.epoch(1)).take(2) {
        let new = new?;
        let input = new.field(InMemoryDataset::INPUT)?;
        assert_eq!(input.values().shape(), old.input_shape);
        assert_eq!(f32s(input)?, old.inputs);
        assert_eq!(i32s(new.field(InMemoryDataset::TARGET)?)?, old.targets);
    }

    let (mean, std) = (0.1307f32, 0.3081f32);
    let augmented = plain
        .transform(RandomCrop::new(InMemoryDataset::INPUT, [28, 28], 2))
        .transform(
            RandomAffine::new(InMemoryDataset::INPUT)
                .degrees(10.0)
                .translate(0.1, 0.1),
        )
        .transform(Normalize::new(InMemoryDataset::INPUT, &[mean], &[std])?);
    // Two batches, then the rest of the epoch is dropped.
    for batch in augmented.epoch(0).take(2) {
        let batch = batch?;
        let image = batch.field(InMemoryDataset::INPUT)?;
        assert_eq!(image.values().shape(), [64, 1, 28, 28]);
        assert_eq!(image.values().dtype(), DType::F32);
        assert!(!image.is_padded());
        let pixels = f32s(image)?;
        let background = (0.0 - mean) / std;
        assert!(pixels
            .iter()
            .all(|&p| p >= background - 1e-6 && p <= (1.0 - mean) / std + 1e-6));
        assert!(pixels.contains(&background));
        let class = batch.field(InMemoryDataset::TARGET)?;
        assert_eq!(class.values().shape(), [64]);
        assert_eq!(class.values().dtype(), DType::I32);
        let expected: Vec<i32> = batch.indices().iter().map(|&i| train.labels[i]).collect();
        assert_eq!(i32s(class)?, expected, "classes are left alone");
    }
    Ok(())
}

/// A generated scene: an 8x8 grey image with a bright rectangle, and its mask (1 on
/// the rectangle, 0 elsewhere).
fn scene(i: usize) -> Result<Sample> {
    let (top, left) = (i % 5, (i * 3) % 5);
    let (h, w) = (2 + i % 3, 3);
    let inside = |y: usize, x: usize| (top..top + h).contains(&y) && (left..left + w).contains(&x);
    let pixels = (0..64).map(|p| if inside(p / 8, p % 8) { 1.0 } else { 0.25 });
    let labels = (0..64).map(|p| u32::from(inside(p / 8, p % 8)));
    Ok(Sample::new()
        .with(
            "image",
            Field::new(pixels.collect::<Vec<f32>>(), &[1, 8, 8])?,
        )
        .with("mask", Field::new(labels.collect::<Vec<u32>>(), &[8, 8])?))
}

#[test]
fn image_and_mask_move_together() -> TestResult {
    let loader = Loader::new(Arc::new(from_fn(40, scene)), 8, true, 1)?
        .transform(RandomCrop::new("image", [8, 8], 2).with_mask("mask"))
        .transform(RandomHorizontalFlip::new("image", 0.5).with_mask("mask"))
        .transform(RandomVerticalFlip::new("image", 0.5).with_mask("mask"))
        .transform(
            RandomAffine::new("image")
                .translate(0.25, 0.25)
                .with_mask("mask"),
        );
    let mut moved = 0;
    for epoch in 0..2 {
        for batch in loader.epoch(epoch) {
            let batch = batch?;
            let image = batch.field("image")?;
            let mask = batch.field("mask")?;
            assert_eq!(image.values().shape(), [8, 1, 8, 8]);
            assert_eq!(mask.values().shape(), [8, 8, 8]);
            assert_eq!(mask.values().dtype(), DType::U32);
            let pixels = f32s(image)?;
            let labels = mask.values().values::<u32>("test")?;
            // Whole-pixel moves keep values exact: the rectangle is where the mask is.
            for (p, l) in pixels.iter().zip(labels) {
                assert_eq!(*p == 1.0, *l == 1, "image {p} under mask {l}");
            }
            for (k, &i) in batch.indices().iter().enumerate() {
                let original = scene(i)?;
                let before = original.get("mask").and_then(|m| m.as_slice::<u32>());
                moved += usize::from(before != Some(&labels[k * 64..(k + 1) * 64]));
            }
        }
    }
    assert!(moved > 40, "only {moved} of 80 masks changed");
    Ok(())
}

/// `i % 4` boxes `[x0, y0, x1, y1]` with a class each.
fn boxes(i: usize) -> Result<Sample> {
    let k = i % 4;
    let coords: Vec<f32> = (0..k)
        .flat_map(|j| {
            let x = (i + j) as f32;
            [x, x + 1.0, x + 2.0, x + 3.0]
        })
        .collect();
    let classes: Vec<i32> = (0..k).map(|j| (i + j) as i32 % 3).collect();
    Ok(Sample::new()
        .with("image", Field::new(vec![i as f32; 3 * 4 * 4], &[3, 4, 4])?)
        .with("boxes", Field::new(coords, &[k, 4])?)
        .with("classes", Field::new(classes, &[k])?))
}

#[test]
fn image_and_varying_boxes() -> TestResult {
    let loader = Loader::new(Arc::new(from_fn(10, boxes)), 4, false, 0)?
        .collate(Collate::new().pad("classes", -1.0));
    let batches: Vec<_> = loader.epoch(0).collect::<Result<_>>()?;
    assert_eq!(batches.len(), 3);
    // Samples 0..4 have 0, 1, 2 and 3 boxes.
    let first = &batches[0];
    assert_eq!(first.field("image")?.values().shape(), [4, 3, 4, 4]);
    let b = first.field("boxes")?;
    assert_eq!(b.values().shape(), [4, 3, 4]);
    assert_eq!(b.lengths(0)?, [0, 1, 2, 3]);
    assert_eq!(b.padded_dims(), [0]);
    #[rustfmt::skip]
    let expected = [
        0.0, 0.0, 0.0, 0.0,  0.0, 0.0, 0.0, 0.0,  0.0, 0.0, 0.0, 0.0,
        1.0, 2.0, 3.0, 4.0,  0.0, 0.0, 0.0, 0.0,  0.0, 0.0, 0.0, 0.0,
        2.0, 3.0, 4.0, 5.0,  3.0, 4.0, 5.0, 6.0,  0.0, 0.0, 0.0, 0.0,
        3.0, 4.0, 5.0, 6.0,  4.0, 5.0, 6.0, 7.0,  5.0, 6.0, 7.0, 8.0,
    ];
    assert_eq!(f32s(b)?, expected);
    let c = first.field("classes")?;
    assert_eq!(c.values().shape(), [4, 3]);
    assert_eq!(i32s(c)?, [-1, -1, -1, 1, -1, -1, 2, 0, -1, 0, 1, 2]);
    assert_eq!(c.lengths(0)?, b.lengths(0)?);
    assert_eq!(
        c.mask(0)?.as_slice::<f32>(),
        Some(&[0., 0., 0., 1., 0., 0., 1., 1., 0., 1., 1., 1.][..])
    );
    // The last batch, samples 8 and 9 (0 and 1 boxes), pads only to 1.
    let last = batches[2].field("boxes")?;
    assert_eq!(last.values().shape(), [2, 1, 4]);
    assert_eq!(last.lengths(0)?, [0, 1]);
    Ok(())
}

#[test]
fn varying_sequence_and_label() -> TestResult {
    // Sequence i: 1 + i % 5 steps of 3 features, all i + 1; label i % 2.
    let data = from_fn(12, |i| {
        let t = 1 + i % 5;
        Ok(Sample::new()
            .with("seq", Field::new(vec![(i + 1) as f32; t * 3], &[t, 3])?)
            .with("label", Field::scalar((i % 2) as i32)))
    });
    let loader = Loader::new(Arc::new(data), 5, true, 4)?;
    let mut seen = 0;
    for batch in loader.epoch(0) {
        let batch = batch?;
        let seq = batch.field("seq")?;
        let lengths = seq.lengths(0)?;
        let expected: Vec<usize> = batch.indices().iter().map(|i| 1 + i % 5).collect();
        assert_eq!(lengths, expected);
        let longest = lengths.iter().copied().max().unwrap_or(0);
        assert_eq!(seq.values().shape(), [batch.len(), longest, 3]);
        let values = f32s(seq)?;
        let mask = seq.mask(0)?;
        let mask = mask.as_slice::<f32>().unwrap_or(&[]);
        for (k, &i) in batch.indices().iter().enumerate() {
            for t in 0..longest {
                let step = &values[(k * longest + t) * 3..(k * longest + t + 1) * 3];
                let real = t < lengths[k];
                assert_eq!(step, [if real { (i + 1) as f32 } else { 0.0 }; 3]);
                assert_eq!(mask[k * longest + t], if real { 1.0 } else { 0.0 });
            }
        }
        let label = batch.field("label")?;
        assert_eq!(label.values().shape(), [batch.len()]);
        let expected: Vec<i32> = batch.indices().iter().map(|&i| (i % 2) as i32).collect();
        assert_eq!(i32s(label)?, expected);
        seen += batch.len();
    }
    assert_eq!(seen, 12);
    Ok(())
}

#[test]
fn sequence_and_target_sequence() -> TestResult {
    // Tokens 1..=t (u32) and the next-token targets 2..=t+1 (i32), t = 2 + i % 3.
    let data = from_fn(6, |i| {
        let t = 2 + i % 3;
        let tokens: Vec<u32> = (1..=t as u32).collect();
        let targets: Vec<i32> = (2..=t as i32 + 1).collect();
        Ok(Sample::new()
            .with("tokens", Field::new(tokens, &[t])?)
            .with("targets", Field::new(targets, &[t])?))
    });
    let loader =
        Loader::new(Arc::new(data), 3, false, 0)?.collate(Collate::new().pad("targets", -100.0));
    let batch = loader.epoch(0).next().transpose()?.ok_or("no batch")?;
    let tokens = batch.field("tokens")?;
    let targets = batch.field("targets")?;
    assert_eq!(tokens.values().shape(), [3, 4]);
    assert_eq!(tokens.values().dtype(), DType::U32);
    assert_eq!(
        tokens.values().as_slice::<u32>(),
        Some(&[1, 2, 0, 0, 1, 2, 3, 0, 1, 2, 3, 4][..])
    );
    assert_eq!(targets.values().dtype(), DType::I32);
    assert_eq!(
        i32s(targets)?,
        [2, 3, -100, -100, 2, 3, 4, -100, 2, 3, 4, 5]
    );
    assert_eq!(tokens.lengths(0)?, [2, 3, 4]);
    assert_eq!(targets.lengths(0)?, [2, 3, 4]);
    assert_eq!(
        targets.lengths_field(0)?,
        Field::new(vec![2i32, 3, 4], &[3])?
    );
    Ok(())
}
