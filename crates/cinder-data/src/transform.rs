//! Seeded transforms of samples: random crop, flips, affine jitter and
//! normalisation for images `[..., H, W]` (usually `[C, H, W]`), each applied to a
//! chosen field.
//!
//! The geometric ones can move other fields with the image: masks and class maps
//! (`with_mask`, any dtype, `[..., H, W]` of the image's size, read by nearest
//! pixel) and boxes (`with_boxes`, f32 `[..., 4]` rows of `[x0, y0, x1, y1]` in
//! pixels, clamped to the image). Fields not named this way (classes, sequences)
//! are left as they are, which is right for a class but means that, say, keypoints
//! do not follow the image.
//!
//! A [`Loader`](crate::Loader) (and a [`DataLoader`](crate::DataLoader) with
//! transforms) gives sample `index` of epoch `epoch` the generator
//! `Rng::new(sample_seed(seed, epoch, index))`, so a run's augmentations depend on
//! nothing but the loader seed, the epoch and the sample; a resumed run, or an epoch
//! started at a later batch, sees the same ones. Inside a [`Compose`] each transform
//! draws from its own stream, so adding or removing one transform leaves the
//! others' draws as they were.
//!
//! The functions [`crop`], [`hflip`], [`vflip`], [`affine`] and [`normalize`] do
//! the work with given parameters, like `torchvision.transforms.functional`.

use std::sync::Arc;

use cinder_tensor::{Error, Result};

use crate::dataset::checked_product;
use crate::rng::{mix64, SplitMix64};
use crate::sample::{Field, FieldData, Sample};

/// Where the seeds of augmentations leave the shuffle's: the same loader seed
/// must not give correlated sample orders and augmentations.
const AUGMENT_KEY: u64 = 0xA5A5_0C1D_E12A_2026;

/// The seed of sample `index`'s transforms in epoch `epoch` of a loader seeded with
/// `seed`: `mix64(mix64(mix64(seed ^ K) ^ epoch) ^ index)`, with SplitMix64's output
/// function `mix64` and a fixed key `K`. A pure function, fixed across versions of
/// cinder, so that augmentations can be reproduced outside a loader.
pub fn sample_seed(seed: u64, epoch: usize, index: usize) -> u64 {
    // usize -> u64 is lossless on every supported platform.
    let h = mix64(seed ^ AUGMENT_KEY);
    let h = mix64(h ^ epoch as u64);
    mix64(h ^ index as u64)
}

/// The random source handed to a [`Transform`]: SplitMix64, the same on every
/// platform and version.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A uniform integer in `0..n`, unbiased; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.0.below(n)
    }

    /// A uniform value in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform value in `[lo, hi)` (exactly `lo` when `lo == hi`).
    pub fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// True with probability `p` (never for `p <= 0`, always for `p >= 1`).
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
}

/// A change to a sample, random or not. Any
/// `Fn(&mut Sample, &mut Rng) -> Result<()>` closure is one.
///
/// Runs on the loader's background thread, hence `Send + Sync`. A transform should
/// draw its randomness from `rng` only, so that a seed reproduces it.
pub trait Transform: Send + Sync {
    fn apply(&self, sample: &mut Sample, rng: &mut Rng) -> Result<()>;
}

impl<F> Transform for F
where
    F: Fn(&mut Sample, &mut Rng) -> Result<()> + Send + Sync,
{
    fn apply(&self, sample: &mut Sample, rng: &mut Rng) -> Result<()> {
        self(sample, rng)
    }
}

/// A shared transform, so that one built once (from a run's options, say) can be
/// handed to several loaders.
impl<T: Transform + ?Sized> Transform for Arc<T> {
    fn apply(&self, sample: &mut Sample, rng: &mut Rng) -> Result<()> {
        (**self).apply(sample, rng)
    }
}

/// Transforms applied one after another. Transform `j` draws from a generator
/// seeded from one draw of the given `rng` and `j`, so each has its own stream.
#[derive(Clone, Default)]
pub struct Compose {
    transforms: Vec<Arc<dyn Transform>>,
}

impl Compose {
    pub fn new() -> Compose {
        Compose::default()
    }

    /// This list with `transform` appended.
    pub fn then(mut self, transform: impl Transform + 'static) -> Compose {
        self.push(transform);
        self
    }

    pub fn push(&mut self, transform: impl Transform + 'static) {
        self.transforms.push(Arc::new(transform));
    }

    pub fn len(&self) -> usize {
        self.transforms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.transforms.is_empty()
    }
}

impl Transform for Compose {
    fn apply(&self, sample: &mut Sample, rng: &mut Rng) -> Result<()> {
        if self.transforms.is_empty() {
            return Ok(());
        }
        let base = rng.next_u64();
        for (j, transform) in self.transforms.iter().enumerate() {
            let mut own = Rng::new(mix64(base ^ j as u64));
            transform.apply(sample, &mut own)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Compose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compose")
            .field("transforms", &self.transforms.len())
            .finish()
    }
}

/// How [`affine`] reads between pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// The four nearest pixels, weighted (f32 fields only), as `grid_sample`'s
    /// `bilinear` with `align_corners=False`.
    Bilinear,
    /// The nearest pixel, ties to even, as `grid_sample`'s `nearest`: for masks and
    /// class maps, whose values must not blend. Any dtype.
    Nearest,
}

/// The field a geometric transform changes, and the masks and boxes that follow
/// it.
#[derive(Debug, Clone)]
struct Targets {
    image: String,
    masks: Vec<String>,
    boxes: Vec<String>,
}

impl Targets {
    fn new(image: impl Into<String>) -> Targets {
        Targets {
            image: image.into(),
            masks: Vec::new(),
            boxes: Vec::new(),
        }
    }

    /// The image's `(h, w)`, after checking that every mask has the same.
    fn size(&self, sample: &Sample, op: &'static str) -> Result<(usize, usize)> {
        let (_, h, w) = planes(sample.field(&self.image, op)?, op)?;
        for mask in &self.masks {
            let (_, mh, mw) = planes(sample.field(mask, op)?, op)?;
            if (mh, mw) != (h, w) {
                return Err(Error::shape(
                    op,
                    format!(
                        "mask {mask:?} is {mh}x{mw} but image {:?} is {h}x{w}; a mask must \
                         cover its image pixel for pixel",
                        self.image
                    ),
                ));
            }
        }
        // Checked before anything changes, so that a bad box field leaves the
        // sample as it was.
        for name in &self.boxes {
            check_boxes(sample.field(name, op)?, name, op)?;
        }
        Ok((h, w))
    }

    /// Replaces the image by `image_op` of it, every mask by `mask_op` of it and
    /// every box `[x0, y0, x1, y1]` by `box_op` of it.
    fn update(
        &self,
        sample: &mut Sample,
        op: &'static str,
        image_op: impl Fn(&Field) -> Result<Field>,
        mask_op: impl Fn(&Field) -> Result<Field>,
        box_op: impl Fn([f32; 4]) -> [f32; 4],
    ) -> Result<()> {
        let field = sample.field_mut(&self.image, op)?;
        *field = image_op(field)?;
        for mask in &self.masks {
            let field = sample.field_mut(mask, op)?;
            *field = mask_op(field)?;
        }
        for name in &self.boxes {
            let field = sample.field_mut(name, op)?;
            *field = map_boxes(field, name, op, &box_op)?;
        }
        Ok(())
    }
}

/// The values of a box field: f32 `[..., 4]`.
fn check_boxes<'a>(field: &'a Field, name: &str, op: &'static str) -> Result<&'a [f32]> {
    if field.shape().last() != Some(&4) {
        return Err(Error::shape(
            op,
            format!(
                "box field {name:?} has shape {:?}; boxes are [..., 4] rows of \
                 [x0, y0, x1, y1]",
                field.shape()
            ),
        ));
    }
    field.values::<f32>(op)
}

/// `field`'s boxes, each replaced by `f` of it.
fn map_boxes(
    field: &Field,
    name: &str,
    op: &'static str,
    f: &dyn Fn([f32; 4]) -> [f32; 4],
) -> Result<Field> {
    let values = check_boxes(field, name, op)?;
    let moved: Vec<f32> = values
        .chunks_exact(4)
        .flat_map(|b| f([b[0], b[1], b[2], b[3]]))
        .collect();
    Field::new(moved, field.shape())
}

/// A box clamped to the `w x h` image: a box pushed partly out is cut at the
/// edge, one pushed wholly out ends up with no width or height (and is kept,
/// so that a field of classes stays aligned with the boxes).
fn clamp_box([x0, y0, x1, y1]: [f32; 4], w: usize, h: usize) -> [f32; 4] {
    let (w, h) = (w as f32, h as f32);
    [
        x0.clamp(0.0, w),
        y0.clamp(0.0, h),
        x1.clamp(0.0, w),
        y1.clamp(0.0, h),
    ]
}

/// Crops a random `size = [height, width]` window out of the image after padding
/// it with `padding` zeros on every side, like torchvision's
/// `RandomCrop(size, padding)`: the window's top-left corner is uniform over the
/// padded image's valid positions.
#[derive(Debug, Clone)]
pub struct RandomCrop {
    targets: Targets,
    size: [usize; 2],
    padding: usize,
}

impl RandomCrop {
    pub fn new(field: impl Into<String>, size: [usize; 2], padding: usize) -> RandomCrop {
        RandomCrop {
            targets: Targets::new(field),
            size,
            padding,
        }
    }

    /// Crops mask field `name` (any dtype, `[..., H, W]`) at the same place.
    pub fn with_mask(mut self, name: impl Into<String>) -> RandomCrop {
        self.targets.masks.push(name.into());
        self
    }

    /// Moves box field `name` (see [`RandomAffine::with_boxes`]) with the window,
    /// clamping the boxes to it.
    pub fn with_boxes(mut self, name: impl Into<String>) -> RandomCrop {
        self.targets.boxes.push(name.into());
        self
    }
}

impl Transform for RandomCrop {
    fn apply(&self, sample: &mut Sample, rng: &mut Rng) -> Result<()> {
        const OP: &str = "RandomCrop";
        let (h, w) = self.targets.size(sample, OP)?;
        let [th, tw] = self.size;
        let p = self.padding;
        let padded = |d: usize| p.checked_mul(2).and_then(|p2| d.checked_add(p2));
        let (Some(ph), Some(pw), Ok(shift)) = (padded(h), padded(w), isize::try_from(p)) else {
            return Err(Error::invalid(OP, format!("padding {p} is too large")));
        };
        if th > ph || tw > pw {
            return Err(Error::shape(
                OP,
                format!(
                    "a {th}x{tw} crop does not fit in the {h}x{w} image {:?} padded by {p}",
                    self.targets.image
                ),
            ));
        }
        // Lossless: the draws are below ph and pw, which fit in isize as p and the
        // image's sizes do.
        let top = rng.below((ph - th + 1) as u64) as isize - shift;
        let left = rng.below((pw - tw + 1) as u64) as isize - shift;
        let cut = |f: &Field| crop(f, top, left, th, tw);
        let (dy, dx) = (top as f32, left as f32);
        let shift =
            |[x0, y0, x1, y1]: [f32; 4]| clamp_box([x0 - dx, y0 - dy, x1 - dx, y1 - dy], tw, th);
        self.targets.update(sample, OP, cut, cut, shift)
    }
}

/// Mirrors the image left to right with probability `p`.
#[derive(Debug, Clone)]
pub struct RandomHorizontalFlip {
    targets: Targets,
    p: f64,
}

impl RandomHorizontalFlip {
    pub fn new(field: impl Into<String>, p: f64) -> RandomHorizontalFlip {
        RandomHorizontalFlip {
            targets: Targets::new(field),
            p,
        }
    }

    /// Flips mask field `name` with the image.
    pub fn with_mask(mut self, name: impl Into<String>) -> RandomHorizontalFlip {
        self.targets.masks.push(name.into());
        self
    }

    /// Flips box field `name` (see [`RandomAffine::with_boxes`]) with the image.
    pub fn with_boxes(mut self, name: impl Into<String>) -> RandomHorizontalFlip {
        self.targets.boxes.push(name.into());
        self
    }
}

impl Transform for RandomHorizontalFlip {
    fn apply(&self, sample: &mut Sample, rng: &mut Rng) -> Result<()> {
        const OP: &str = "RandomHorizontalFlip";
        let (_, w) = self.targets.size(sample, OP)?;
        if rng.chance(self.p) {
            let w = w as f32;
            let mirror = |[x0, y0, x1, y1]: [f32; 4]| [w - x1, y0, w - x0, y1];
            self.targets.update(sample, OP, hflip, hflip, mirror)?;
        }
        Ok(())
    }
}

/// Mirrors the image top to bottom with probability `p`.
#[derive(Debug, Clone)]
pub struct RandomVerticalFlip {
    targets: Targets,
    p: f64,
}

impl RandomVerticalFlip {
    pub fn new(field: impl Into<String>, p: f64) -> RandomVerticalFlip {
        RandomVerticalFlip {
            targets: Targets::new(field),
            p,
        }
    }

    /// Flips mask field `name` with the image.
    pub fn with_mask(mut self, name: impl Into<String>) -> RandomVerticalFlip {
        self.targets.masks.push(name.into());
        self
    }

    /// Flips box field `name` (see [`RandomAffine::with_boxes`]) with the image.
    pub fn with_boxes(mut self, name: impl Into<String>) -> RandomVerticalFlip {
        self.targets.boxes.push(name.into());
        self
    }
}

impl Transform for RandomVerticalFlip {
    fn apply(&self, sample: &mut Sample, rng: &mut Rng) -> Result<()> {
        const OP: &str = "RandomVerticalFlip";
        let (h, _) = self.targets.size(sample, OP)?;
        if rng.chance(self.p) {
            let h = h as f32;
            let mirror = |[x0, y0, x1, y1]: [f32; 4]| [x0, h - y1, x1, h - y0];
            self.targets.update(sample, OP, vflip, vflip, mirror)?;
        }
        Ok(())
    }
}

/// A small random rotation, translation and scaling about the image centre, like
/// torchvision's `RandomAffine(degrees, translate, scale)` without shear: the angle
/// is uniform in the rotation range, the shift uniform in
/// `±translate * (width, height)` (or `±` a number of pixels) rounded to whole
/// pixels, the scale uniform in the scale range. The image is sampled bilinearly
/// (it must be f32), masks by nearest pixel; what comes from outside the image
/// is 0. Boxes become the bounding boxes of their moved corners.
///
/// [`RandomAffine::new`] starts with no jitter at all (the identity).
#[derive(Debug, Clone)]
pub struct RandomAffine {
    targets: Targets,
    degrees: (f64, f64),
    translate: Shift,
    scale: (f64, f64),
}

/// The largest shift of a [`RandomAffine`].
#[derive(Debug, Clone, Copy)]
enum Shift {
    /// Fractions of the width and height.
    Fraction(f64, f64),
    /// Pixels, whatever the image's size.
    Pixels(f64, f64),
}

impl RandomAffine {
    /// The jitter a hand puts into a digit, for [`InMemoryDataset`]'s
    /// images: rotations within ±10 degrees, shifts within ±7% of the size
    /// (2 pixels of MNIST's 28) and scalings by 0.9 to 1.1 (no flips: a
    /// flipped 2 is no 2).
    ///
    /// [`InMemoryDataset`]: crate::InMemoryDataset
    pub fn handwriting() -> RandomAffine {
        RandomAffine::new(crate::InMemoryDataset::INPUT)
            .degrees(10.0)
            .translate(0.07, 0.07)
            .scale(0.9, 1.1)
    }

    pub fn new(field: impl Into<String>) -> RandomAffine {
        RandomAffine {
            targets: Targets::new(field),
            degrees: (0.0, 0.0),
            translate: Shift::Pixels(0.0, 0.0),
            scale: (1.0, 1.0),
        }
    }

    /// Angles uniform in `[-degrees, degrees]`.
    pub fn degrees(self, degrees: f64) -> RandomAffine {
        self.rotation(-degrees, degrees)
    }

    /// Angles uniform in `[lo, hi]` degrees; positive turns the content clockwise as
    /// displayed (rows going down), as torchvision's `affine` does.
    pub fn rotation(mut self, lo: f64, hi: f64) -> RandomAffine {
        self.degrees = (lo, hi);
        self
    }

    /// Shifts up to `fx` of the width horizontally and `fy` of the height vertically
    /// (fractions in `[0, 1]`).
    pub fn translate(mut self, fx: f64, fy: f64) -> RandomAffine {
        self.translate = Shift::Fraction(fx, fy);
        self
    }

    /// Shifts up to `dx` pixels horizontally and `dy` vertically (both `>= 0`),
    /// whatever the image's size: `translate_pixels(2.0, 2.0)` is MNIST's usual
    /// ±2 px.
    pub fn translate_pixels(mut self, dx: f64, dy: f64) -> RandomAffine {
        self.translate = Shift::Pixels(dx, dy);
        self
    }

    /// Scale factors uniform in `[lo, hi]` (both above 0).
    pub fn scale(mut self, lo: f64, hi: f64) -> RandomAffine {
        self.scale = (lo, hi);
        self
    }

    /// Moves mask field `name` with the image, by nearest pixel.
    pub fn with_mask(mut self, name: impl Into<String>) -> RandomAffine {
        self.targets.masks.push(name.into());
        self
    }

    /// Moves box field `name` with the image: f32 `[..., 4]` rows of
    /// `[x0, y0, x1, y1]` in pixels, pixel `(y, x)` covering `[x, x + 1) x [y, y + 1)`
    /// (so `[0, 0, W, H]` is the whole image). Each box becomes the bounding box of
    /// its four moved corners (a rotated box grows, as torchvision's v2 transforms
    /// do it), clamped to the image; a box moved wholly out keeps its place in the
    /// field with no width or height, so that its class stays aligned.
    pub fn with_boxes(mut self, name: impl Into<String>) -> RandomAffine {
        self.targets.boxes.push(name.into());
        self
    }

    fn check(&self) -> Result<()> {
        let (lo, hi) = self.scale;
        let (dlo, dhi) = self.degrees;
        let problem = match self.translate {
            _ if !(lo > 0.0 && lo <= hi && hi.is_finite()) => {
                format!("the scale range ({lo}, {hi}) must be finite, positive and ordered")
            }
            _ if !(dlo <= dhi && dlo.is_finite() && dhi.is_finite()) => {
                format!("the rotation range ({dlo}, {dhi}) must be finite and ordered")
            }
            Shift::Fraction(fx, fy)
                if !((0.0..=1.0).contains(&fx) && (0.0..=1.0).contains(&fy)) =>
            {
                format!("translate ({fx}, {fy}) must be fractions in [0, 1]")
            }
            Shift::Pixels(dx, dy)
                if !(dx >= 0.0 && dy >= 0.0 && dx.is_finite() && dy.is_finite()) =>
            {
                format!("translate_pixels ({dx}, {dy}) must be finite and at least 0")
            }
            _ => return Ok(()),
        };
        Err(Error::invalid("RandomAffine", problem))
    }
}

impl Transform for RandomAffine {
    fn apply(&self, sample: &mut Sample, rng: &mut Rng) -> Result<()> {
        const OP: &str = "RandomAffine";
        self.check()?;
        let (h, w) = self.targets.size(sample, OP)?;
        // Drawn in torchvision's order: angle, shift, scale.
        let angle = rng.uniform_in(self.degrees.0, self.degrees.1);
        let (max_dx, max_dy) = match self.translate {
            Shift::Fraction(fx, fy) => (fx * w as f64, fy * h as f64),
            Shift::Pixels(dx, dy) => (dx, dy),
        };
        let tx = rng.uniform_in(-max_dx, max_dx).round_ties_even();
        let ty = rng.uniform_in(-max_dy, max_dy).round_ties_even();
        let scale = rng.uniform_in(self.scale.0, self.scale.1);
        self.targets.update(
            sample,
            OP,
            |f| affine(f, angle, (tx, ty), scale, Interpolation::Bilinear),
            |f| affine(f, angle, (tx, ty), scale, Interpolation::Nearest),
            |b| affine_box(b, (w, h), angle, (tx, ty), scale),
        )
    }
}

/// Per-channel `(x - mean[c]) / std[c]` of an f32 image `[..., C, H, W]`, as
/// torchvision's `Normalize(mean, std)`. One mean and one std apply to every
/// value, whatever the field's rank.
#[derive(Debug, Clone)]
pub struct Normalize {
    field: String,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Normalize {
    /// Fails if the lists are empty, of different lengths, or a std is 0 (or not
    /// finite).
    pub fn new(field: impl Into<String>, mean: &[f32], std: &[f32]) -> Result<Normalize> {
        if mean.is_empty() || mean.len() != std.len() {
            return Err(Error::invalid(
                "Normalize",
                format!(
                    "needs one mean and one std per channel, got {} means and {} stds",
                    mean.len(),
                    std.len()
                ),
            ));
        }
        if let Some(s) = std.iter().find(|s| **s == 0.0 || !s.is_finite()) {
            return Err(Error::invalid(
                "Normalize",
                format!("std {s} would divide by zero or by a non-finite number"),
            ));
        }
        Ok(Normalize {
            field: field.into(),
            mean: mean.to_vec(),
            std: std.to_vec(),
        })
    }
}

impl Transform for Normalize {
    fn apply(&self, sample: &mut Sample, _rng: &mut Rng) -> Result<()> {
        let field = sample.field_mut(&self.field, "Normalize")?;
        *field = normalize(field, &self.mean, &self.std)?;
        Ok(())
    }
}

/// `(planes, h, w)` of a field `[..., h, w]`.
fn planes(field: &Field, op: &'static str) -> Result<(usize, usize, usize)> {
    match *field.shape() {
        [ref lead @ .., h, w] => Ok((lead.iter().product(), h, w)),
        _ => Err(Error::shape(
            op,
            format!(
                "expects an image [..., H, W] of rank 2 or more, got shape {:?}",
                field.shape()
            ),
        )),
    }
}

/// Builds an `out_h x out_w` field from `field` plane by plane: output pixel
/// `(y, x)` takes source pixel `pick(y, x)`, or 0 where that is `None`.
fn remap(
    field: &Field,
    op: &'static str,
    out_h: usize,
    out_w: usize,
    pick: &dyn Fn(usize, usize) -> Option<(usize, usize)>,
) -> Result<Field> {
    let (n, h, w) = planes(field, op)?;
    let mut shape = field.shape().to_vec();
    let rank = shape.len();
    shape[rank - 2] = out_h;
    shape[rank - 1] = out_w;
    if checked_product(&shape).is_none() {
        return Err(Error::shape(
            op,
            format!("an output of shape {shape:?} is too large"),
        ));
    }
    fn go<T: Copy + Default>(
        src: &[T],
        (n, h, w): (usize, usize, usize),
        (out_h, out_w): (usize, usize),
        pick: &dyn Fn(usize, usize) -> Option<(usize, usize)>,
    ) -> Vec<T> {
        // The source index of every output pixel, shared by all planes.
        let map: Vec<Option<usize>> = (0..out_h)
            .flat_map(|y| (0..out_w).map(move |x| (y, x)))
            .map(|(y, x)| pick(y, x).map(|(sy, sx)| sy * w + sx))
            .collect();
        let mut out = Vec::with_capacity(n * out_h * out_w);
        // An empty source plane (h or w 0) has nothing to read: all fill.
        if h * w > 0 {
            for plane in src.chunks_exact(h * w).take(n) {
                out.extend(map.iter().map(|m| m.map_or_else(T::default, |i| plane[i])));
            }
        }
        out.resize(n * out_h * out_w, T::default());
        out
    }
    let dims = (n, h, w);
    let out = (out_h, out_w);
    let data = match field.data() {
        FieldData::F32(v) => FieldData::F32(go(v, dims, out, pick)),
        FieldData::I32(v) => FieldData::I32(go(v, dims, out, pick)),
        FieldData::U32(v) => FieldData::U32(go(v, dims, out, pick)),
    };
    Field::new(data, &shape)
}

/// The `height x width` window of `field` (`[..., H, W]`, any dtype) whose top-left
/// pixel is `(top, left)`; the window may reach outside the image (negative `top`
/// or `left` included), where it reads 0. Like torchvision's `crop`.
pub fn crop(field: &Field, top: isize, left: isize, height: usize, width: usize) -> Result<Field> {
    let (_, h, w) = planes(field, "crop")?;
    let pick = |y: usize, x: usize| {
        let sy = usize::try_from(top.checked_add_unsigned(y)?).ok()?;
        let sx = usize::try_from(left.checked_add_unsigned(x)?).ok()?;
        (sy < h && sx < w).then_some((sy, sx))
    };
    remap(field, "crop", height, width, &pick)
}

/// `field` (`[..., H, W]`, any dtype) mirrored left to right.
pub fn hflip(field: &Field) -> Result<Field> {
    let (_, h, w) = planes(field, "hflip")?;
    remap(field, "hflip", h, w, &|y, x| Some((y, w - 1 - x)))
}

/// `field` (`[..., H, W]`, any dtype) mirrored top to bottom.
pub fn vflip(field: &Field) -> Result<Field> {
    let (_, h, w) = planes(field, "vflip")?;
    remap(field, "vflip", h, w, &|y, x| Some((h - 1 - y, x)))
}

/// `field` (`[..., H, W]`) rotated by `angle` degrees (clockwise as displayed) and
/// scaled by `scale` about the image centre, then shifted by `translate = (tx, ty)`
/// pixels, keeping its size; what comes from outside the image is 0. The same
/// geometry as torchvision's `functional.affine(img, angle, translate, scale,
/// shear=0)`: output pixel `(x, y)` reads the source at
/// `R(-angle) ((x, y) - c - t) / scale + c`, with `c = ((W - 1) / 2, (H - 1) / 2)`.
/// Bilinear reads need an f32 field.
pub fn affine(
    field: &Field,
    angle: f64,
    translate: (f64, f64),
    scale: f64,
    interpolation: Interpolation,
) -> Result<Field> {
    const OP: &str = "affine";
    let (n, h, w) = planes(field, OP)?;
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("scale {scale} must be positive"),
        ));
    }
    let (sin, cos) = angle.to_radians().sin_cos();
    let (cx, cy) = ((w as f64 - 1.0) * 0.5, (h as f64 - 1.0) * 0.5);
    let (tx, ty) = translate;
    let source = move |y: usize, x: usize| -> (f64, f64) {
        let (dx, dy) = (x as f64 - cx - tx, y as f64 - cy - ty);
        (
            (cos * dx + sin * dy) / scale + cx,
            (-sin * dx + cos * dy) / scale + cy,
        )
    };
    // Whole-pixel coordinates in range, or None.
    let inside = move |sx: f64, sy: f64| -> Option<(usize, usize)> {
        (sx >= 0.0 && sy >= 0.0 && sx < w as f64 && sy < h as f64)
            .then_some((sy as usize, sx as usize))
    };
    match interpolation {
        Interpolation::Nearest => remap(field, OP, h, w, &|y, x| {
            let (sx, sy) = source(y, x);
            inside(sx.round_ties_even(), sy.round_ties_even())
        }),
        Interpolation::Bilinear => {
            let src = field.values::<f32>(OP)?;
            let mut out = Vec::with_capacity(n * h * w);
            // max(1): an empty plane yields no pixels, and chunks of 0 are not allowed.
            for plane in src.chunks_exact((h * w).max(1)).take(n) {
                for y in 0..h {
                    for x in 0..w {
                        let (sx, sy) = source(y, x);
                        let (x0, y0) = (sx.floor(), sy.floor());
                        let (fx, fy) = (sx - x0, sy - y0);
                        let mut v = 0.0f64;
                        for (px, py, weight) in [
                            (x0, y0, (1.0 - fx) * (1.0 - fy)),
                            (x0 + 1.0, y0, fx * (1.0 - fy)),
                            (x0, y0 + 1.0, (1.0 - fx) * fy),
                            (x0 + 1.0, y0 + 1.0, fx * fy),
                        ] {
                            // Skipping zero weights keeps whole-pixel reads exact even
                            // beside an infinite neighbour.
                            if weight == 0.0 {
                                continue;
                            }
                            if let Some((iy, ix)) = inside(px, py) {
                                v += weight * f64::from(plane[iy * w + ix]);
                            }
                        }
                        out.push(v as f32);
                    }
                }
            }
            out.resize(n * h * w, 0.0);
            Field::new(out, field.shape())
        }
    }
}

/// Where [`affine`] with these parameters moves box `[x0, y0, x1, y1]` of a
/// `w x h` image: the bounding box of its moved corners, clamped to the image.
///
/// [`affine`] maps pixel indices `p` (pixel centres) as `M (p - c) + c + t`, with
/// `M = scale * R(angle)` and `c = ((W - 1) / 2, (H - 1) / 2)`. Box coordinates
/// are pixel indices plus 1/2 (pixel `x` covers `[x, x + 1)`), so in them the
/// same map is `M (q - C) + C + t` with `C = (W / 2, H / 2)`.
fn affine_box(
    [x0, y0, x1, y1]: [f32; 4],
    (w, h): (usize, usize),
    angle: f64,
    (tx, ty): (f64, f64),
    scale: f64,
) -> [f32; 4] {
    let (sin, cos) = angle.to_radians().sin_cos();
    let (cx, cy) = (w as f64 * 0.5, h as f64 * 0.5);
    let (mut lo_x, mut lo_y) = (f64::INFINITY, f64::INFINITY);
    let (mut hi_x, mut hi_y) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for (x, y) in [(x0, y0), (x1, y0), (x0, y1), (x1, y1)] {
        let (dx, dy) = (f64::from(x) - cx, f64::from(y) - cy);
        let mx = scale * (cos * dx - sin * dy) + cx + tx;
        let my = scale * (sin * dx + cos * dy) + cy + ty;
        lo_x = lo_x.min(mx);
        lo_y = lo_y.min(my);
        hi_x = hi_x.max(mx);
        hi_y = hi_y.max(my);
    }
    clamp_box([lo_x as f32, lo_y as f32, hi_x as f32, hi_y as f32], w, h)
}

/// `(x - mean[c]) / std[c]` over the channels `C` of an f32 field `[..., C, H, W]`
/// (computed in f32, as torchvision's `normalize`), or with one `mean` and `std` for
/// every value of a field of any rank.
pub fn normalize(field: &Field, mean: &[f32], std: &[f32]) -> Result<Field> {
    const OP: &str = "normalize";
    let values = field.values::<f32>(OP)?;
    if mean.len() != std.len() || mean.is_empty() {
        return Err(Error::invalid(
            OP,
            format!("{} means and {} stds", mean.len(), std.len()),
        ));
    }
    let out: Vec<f32> = if mean.len() == 1 {
        values.iter().map(|v| (v - mean[0]) / std[0]).collect()
    } else {
        let shape = field.shape();
        let rank = shape.len();
        if rank < 3 || shape[rank - 3] != mean.len() {
            return Err(Error::shape(
                OP,
                format!(
                    "{} channel means and stds do not fit an image of shape {shape:?} \
                     (expected [..., C, H, W] with C = {})",
                    mean.len(),
                    mean.len()
                ),
            ));
        }
        let plane = (shape[rank - 2] * shape[rank - 1]).max(1);
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let c = (i / plane) % mean.len();
                (v - mean[c]) / std[c]
            })
            .collect()
    };
    Field::new(out, field.shape())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    /// A `[c, h, w]` f32 image whose value at (c, y, x) is `100c + 10y + x + 1`, so
    /// every pixel is distinct and none is 0 (the fill).
    fn image(c: usize, h: usize, w: usize) -> Field {
        let v = (0..c)
            .flat_map(|c| {
                (0..h).flat_map(move |y| (0..w).map(move |x| (100 * c + 10 * y + x + 1) as f32))
            })
            .collect::<Vec<_>>();
        Field::new(v, &[c, h, w]).expect("consistent") // ok: fixture
    }

    /// The image's values as a u32 mask of the same shape: a mask that follows the
    /// image exactly stays equal to it.
    fn as_mask(f: &Field) -> Field {
        let v = f
            .as_slice::<f32>()
            .unwrap_or(&[])
            .iter()
            .map(|&v| v as u32)
            .collect::<Vec<_>>();
        Field::new(v, f.shape()).expect("same shape") // ok: fixture
    }

    fn f32s(f: &Field) -> Vec<f32> {
        f.as_slice::<f32>().map(<[f32]>::to_vec).unwrap_or_default()
    }

    fn pair(img: Field) -> Sample {
        let mask = as_mask(&img);
        Sample::new().with("img", img).with("mask", mask)
    }

    /// Checks that the mask still equals the image pixel for pixel.
    fn assert_follows(s: &Sample) {
        let img = s.get("img").expect("img"); // ok: test
        let mask = s.get("mask").expect("mask"); // ok: test
        assert_eq!(img.shape(), mask.shape());
        assert_eq!(&as_mask(img), mask);
    }

    #[test]
    fn flips_are_exact_for_any_dtype() -> TestResult {
        let img = image(2, 2, 3);
        #[rustfmt::skip]
        assert_eq!(f32s(&hflip(&img)?), [
            3.0, 2.0, 1.0,  13.0, 12.0, 11.0,
            103.0, 102.0, 101.0,  113.0, 112.0, 111.0,
        ]);
        #[rustfmt::skip]
        assert_eq!(f32s(&vflip(&img)?), [
            11.0, 12.0, 13.0,  1.0, 2.0, 3.0,
            111.0, 112.0, 113.0,  101.0, 102.0, 103.0,
        ]);
        let mask = Field::new(vec![1i32, 2, 3, 4], &[2, 2])?;
        assert_eq!(hflip(&mask)?, Field::new(vec![2i32, 1, 4, 3], &[2, 2])?);
        assert_eq!(hflip(&hflip(&img)?)?, img);
        assert!(
            hflip(&Field::new(vec![1.0f32; 3], &[3])?).is_err(),
            "rank 1 is no image"
        );
        Ok(())
    }

    #[test]
    fn crop_reads_a_window_and_zero_outside() -> TestResult {
        let img = image(1, 3, 4);
        assert_eq!(f32s(&crop(&img, 1, 2, 2, 2)?), [13.0, 14.0, 23.0, 24.0]);
        // Reaching past the top-left and bottom-right corners reads zeros.
        assert_eq!(f32s(&crop(&img, -1, -1, 2, 2)?), [0.0, 0.0, 0.0, 1.0]);
        assert_eq!(f32s(&crop(&img, 2, 3, 2, 2)?), [24.0, 0.0, 0.0, 0.0]);
        assert_eq!(crop(&img, 0, 0, 3, 4)?, img);
        assert_eq!(crop(&img, 0, 0, 2, 1)?.shape(), [1, 2, 1]);
        Ok(())
    }

    #[test]
    fn random_crop_is_uniform_over_padded_positions() -> TestResult {
        let img = image(1, 3, 3);
        let t = RandomCrop::new("img", [3, 3], 1).with_mask("mask");
        let mut seen = [[0usize; 3]; 3];
        for seed in 0..300 {
            let mut s = pair(img.clone());
            t.apply(&mut s, &mut Rng::new(seed))?;
            assert_follows(&s);
            let out = s.get("img").cloned().unwrap_or(img.clone());
            let hit = (-1..=1isize)
                .flat_map(|top| (-1..=1isize).map(move |left| (top, left)))
                .find(|&(top, left)| crop(&img, top, left, 3, 3).ok().as_ref() == Some(&out));
            let Some((top, left)) = hit else {
                panic!("seed {seed}: not a crop of the padded image: {out:?}")
            };
            seen[(top + 1) as usize][(left + 1) as usize] += 1;
        }
        assert!(seen.iter().flatten().all(|&n| n > 15), "{seen:?}");

        let too_big = RandomCrop::new("img", [6, 3], 1);
        let err = too_big
            .apply(&mut pair(img.clone()), &mut Rng::new(0))
            .unwrap_err();
        assert!(err.to_string().contains("6x3 crop does not fit"), "{err}");
        Ok(())
    }

    #[test]
    fn random_flips_follow_their_probability() -> TestResult {
        let img = image(1, 2, 2);
        let (mut h, mut v) = (0, 0);
        for seed in 0..200 {
            let mut s = pair(img.clone());
            RandomHorizontalFlip::new("img", 0.5)
                .with_mask("mask")
                .apply(&mut s, &mut Rng::new(seed))?;
            assert_follows(&s);
            h += usize::from(s.get("img") == Some(&hflip(&img)?));
            let mut s = pair(img.clone());
            RandomVerticalFlip::new("img", 0.5)
                .with_mask("mask")
                .apply(&mut s, &mut Rng::new(seed))?;
            assert_follows(&s);
            v += usize::from(s.get("img") == Some(&vflip(&img)?));
        }
        assert!((70..130).contains(&h) && (70..130).contains(&v), "{h} {v}");
        let mut s = pair(img.clone());
        RandomHorizontalFlip::new("img", 0.0).apply(&mut s, &mut Rng::new(1))?;
        assert_eq!(s.get("img"), Some(&img));
        Ok(())
    }

    #[test]
    fn affine_without_jitter_is_the_identity() -> TestResult {
        let img = image(3, 5, 4);
        assert_eq!(
            affine(&img, 0.0, (0.0, 0.0), 1.0, Interpolation::Bilinear)?,
            img
        );
        let mut s = pair(img.clone());
        RandomAffine::new("img")
            .with_mask("mask")
            .apply(&mut s, &mut Rng::new(9))?;
        assert_eq!(s.get("img"), Some(&img));
        assert_follows(&s);
        Ok(())
    }

    /// `[c, n, n]` turned a quarter clockwise: the transpose mirrored left to right.
    fn quarter_turn(f: &Field) -> Vec<f32> {
        let n = f.shape()[1];
        let v = f32s(f);
        let mut out = vec![0.0; v.len()];
        for (c, plane) in v.chunks(n * n).enumerate() {
            for y in 0..n {
                for x in 0..n {
                    out[c * n * n + y * n + x] = plane[(n - 1 - x) * n + y];
                }
            }
        }
        out
    }

    #[test]
    fn quarter_rotation_is_a_transpose_and_flip() -> TestResult {
        for n in [4, 5] {
            let img = image(2, n, n);
            let turned = affine(&img, 90.0, (0.0, 0.0), 1.0, Interpolation::Bilinear)?;
            for (a, b) in f32s(&turned).iter().zip(quarter_turn(&img)) {
                assert!((a - b).abs() < 1e-4, "{n}x{n}: {a} vs {b}");
            }
            // The random version with a fixed range draws exactly 90, and the mask
            // turns with it (by nearest pixel, exactly).
            let mut s = pair(img.clone());
            RandomAffine::new("img")
                .rotation(90.0, 90.0)
                .with_mask("mask")
                .apply(&mut s, &mut Rng::new(3))?;
            assert_follows(&s);
            let mask = s.get("mask").cloned().unwrap_or(img.clone());
            assert_eq!(mask, as_mask(&Field::new(quarter_turn(&img), &[2, n, n])?));
        }
        Ok(())
    }

    #[test]
    fn affine_shifts_and_blends() -> TestResult {
        let img = image(1, 2, 3);
        // One pixel right: column 0 comes from outside.
        let right = affine(&img, 0.0, (1.0, 0.0), 1.0, Interpolation::Bilinear)?;
        assert_eq!(f32s(&right), [0.0, 1.0, 2.0, 0.0, 11.0, 12.0]);
        let down = affine(&img, 0.0, (0.0, 1.0), 1.0, Interpolation::Nearest)?;
        assert_eq!(f32s(&down), [0.0, 0.0, 0.0, 1.0, 2.0, 3.0]);
        // Half a pixel right: each pixel is the mean of two neighbours (bilinear,
        // zeros beyond the edge, as grid_sample with padding_mode="zeros").
        let half = affine(&img, 0.0, (0.5, 0.0), 1.0, Interpolation::Bilinear)?;
        assert_eq!(f32s(&half), [0.5, 1.5, 2.5, 5.5, 11.5, 12.5]);
        // Scaling by 2 about the centre of a 3x3: the centre stays, the corners
        // read half-way to the centre.
        let img = image(1, 3, 3);
        let zoom = affine(&img, 0.0, (0.0, 0.0), 2.0, Interpolation::Bilinear)?;
        let z = f32s(&zoom);
        assert_eq!(z[4], 12.0);
        assert_eq!(z[0], (1.0 + 2.0 + 11.0 + 12.0) / 4.0);
        let err = affine(&img, 0.0, (0.0, 0.0), 0.0, Interpolation::Bilinear).unwrap_err();
        assert!(
            err.to_string().contains("scale 0 must be positive"),
            "{err}"
        );
        let ints = Field::new(vec![1i32; 4], &[2, 2])?;
        let err = affine(&ints, 0.0, (0.0, 0.0), 1.0, Interpolation::Bilinear).unwrap_err();
        assert!(matches!(err, Error::DType { .. }), "{err}");
        Ok(())
    }

    #[test]
    fn random_affine_stays_in_its_ranges() -> TestResult {
        // Pure shifts of at most 0.25 * 4 = 1 pixel each way: the result is one of
        // the nine whole-pixel shifts (rounded, as torchvision does).
        let img = image(1, 4, 4);
        let t = RandomAffine::new("img")
            .translate(0.25, 0.25)
            .with_mask("mask");
        let shifts: Vec<Field> = (-1..=1)
            .flat_map(|dy| (-1..=1).map(move |dx| (dx, dy)))
            .map(|(dx, dy)| {
                affine(
                    &img,
                    0.0,
                    (f64::from(dx), f64::from(dy)),
                    1.0,
                    Interpolation::Bilinear,
                )
            })
            .collect::<Result<_>>()?;
        let mut moved = 0;
        for seed in 0..50 {
            let mut s = pair(img.clone());
            t.apply(&mut s, &mut Rng::new(seed))?;
            assert_follows(&s);
            let out = s.get("img").cloned().unwrap_or(img.clone());
            assert!(shifts.contains(&out), "seed {seed}: {out:?}");
            moved += usize::from(out != img);
        }
        assert!(moved > 20, "{moved} of 50 moved");

        let bad = RandomAffine::new("img").scale(0.0, 1.0);
        let err = bad
            .apply(&mut pair(img.clone()), &mut Rng::new(0))
            .unwrap_err();
        assert!(err.to_string().contains("scale range"), "{err}");
        Ok(())
    }

    #[test]
    fn normalize_is_per_channel() -> TestResult {
        let img = image(2, 1, 2);
        let out = normalize(&img, &[1.0, 100.0], &[2.0, 0.5])?;
        assert_eq!(
            f32s(&out),
            [
                (1.0 - 1.0) / 2.0,
                (2.0 - 1.0) / 2.0,
                (101.0 - 100.0) / 0.5,
                (102.0 - 100.0) / 0.5
            ]
        );
        let all = normalize(&img, &[1.0], &[4.0])?;
        assert_eq!(f32s(&all), [0.0, 0.25, 25.0, 25.25]);
        let err = normalize(&img, &[0.0; 3], &[1.0; 3]).unwrap_err();
        assert!(err.to_string().contains("3 channel means"), "{err}");
        assert!(Normalize::new("img", &[0.5], &[0.0]).is_err());
        assert!(Normalize::new("img", &[0.5, 0.5], &[1.0]).is_err());
        let mut s = pair(img);
        Normalize::new("img", &[1.0], &[4.0])?.apply(&mut s, &mut Rng::new(0))?;
        assert_eq!(s.get("img"), Some(&all));
        Ok(())
    }

    #[test]
    fn errors_name_the_problem() -> TestResult {
        let mut s = Sample::new()
            .with("img", image(1, 4, 4))
            .with("mask", Field::new(vec![0u32; 9], &[3, 3])?);
        let err = RandomHorizontalFlip::new("img", 1.0)
            .with_mask("mask")
            .apply(&mut s, &mut Rng::new(0))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"mask "mask" is 3x3 but image "img" is 4x4"#),
            "{err}"
        );
        let err = RandomCrop::new("image", [2, 2], 0)
            .apply(&mut s, &mut Rng::new(0))
            .unwrap_err();
        assert!(err.to_string().contains(r#"no field "image""#), "{err}");
        Ok(())
    }

    #[test]
    fn seeds_reproduce_and_streams_are_independent() -> TestResult {
        assert_eq!(sample_seed(0, 0, 0), 11_393_596_521_726_217_570);
        assert_eq!(sample_seed(42, 3, 17), 8_917_652_409_393_948_678);
        let augment = Compose::new()
            .then(RandomCrop::new("img", [6, 6], 2))
            .then(RandomAffine::new("img").degrees(10.0).scale(0.9, 1.1));
        let run = |t: &Compose, seed: u64| -> Result<Field> {
            let mut s = Sample::new().with("img", image(1, 6, 6));
            t.apply(&mut s, &mut Rng::new(seed))?;
            s.field("img", "test").cloned()
        };
        let a = run(&augment, sample_seed(5, 1, 3))?;
        assert_eq!(
            a,
            run(&augment, sample_seed(5, 1, 3))?,
            "same seed, same result"
        );
        assert_ne!(a, run(&augment, sample_seed(5, 2, 3))?, "another epoch");
        assert_ne!(a, run(&augment, sample_seed(5, 1, 4))?, "another sample");
        assert_ne!(a, run(&augment, sample_seed(6, 1, 3))?, "another seed");

        // A transform added later (a flip that never fires) leaves the others' draws.
        let crop_only = Compose::new().then(RandomCrop::new("img", [6, 6], 2));
        let with_noop = crop_only.clone().then(RandomVerticalFlip::new("img", 0.0));
        for seed in 0..10 {
            assert_eq!(run(&crop_only, seed)?, run(&with_noop, seed)?);
        }
        // Closures are transforms.
        let double = Compose::new().then(|s: &mut Sample, _: &mut Rng| {
            let f = s.field_mut("img", "double")?;
            *f = normalize(f, &[0.0], &[0.5])?;
            Ok(())
        });
        assert_eq!(f32s(&run(&double, 0)?)[..2], [2.0, 4.0]);
        Ok(())
    }

    fn boxed(img: Field, boxes: &[[f32; 4]]) -> Result<Sample> {
        let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
        Ok(Sample::new()
            .with("img", img)
            .with("boxes", Field::new(flat, &[boxes.len(), 4])?)
            .with(
                "classes",
                Field::new(vec![7i32; boxes.len()], &[boxes.len()])?,
            ))
    }

    fn boxes_of(s: &Sample) -> Vec<f32> {
        s.get("boxes").map(f32s).unwrap_or_default()
    }

    #[test]
    fn boxes_flip_and_crop_exactly() -> TestResult {
        // A 4-wide, 3-high image; box A covers pixels x 0..2, y 1..3, box B one pixel.
        let boxes = [[0.0, 1.0, 2.0, 3.0], [3.0, 0.0, 4.0, 1.0]];
        let mut s = boxed(image(1, 3, 4), &boxes)?;
        RandomHorizontalFlip::new("img", 1.0)
            .with_boxes("boxes")
            .apply(&mut s, &mut Rng::new(0))?;
        assert_eq!(boxes_of(&s), [2.0, 1.0, 4.0, 3.0, 0.0, 0.0, 1.0, 1.0]);
        let mut s = boxed(image(1, 3, 4), &boxes)?;
        RandomVerticalFlip::new("img", 1.0)
            .with_boxes("boxes")
            .apply(&mut s, &mut Rng::new(0))?;
        assert_eq!(boxes_of(&s), [0.0, 0.0, 2.0, 2.0, 3.0, 2.0, 4.0, 3.0]);
        assert_eq!(s.get("classes"), Some(&Field::new(vec![7i32; 2], &[2])?));

        // A 2x2 crop with 1 of padding: every (top, left) in -1..=1 occurs; the
        // boxes move by minus the offset and are clamped to the window.
        let img = image(1, 3, 4);
        let t = RandomCrop::new("img", [2, 2], 1).with_boxes("boxes");
        let mut offsets = std::collections::BTreeSet::new();
        for seed in 0..40 {
            let mut s = boxed(img.clone(), &boxes)?;
            t.apply(&mut s, &mut Rng::new(seed))?;
            let out = s.get("img").cloned().unwrap_or(img.clone());
            let (top, left) = (-1..=2isize)
                .flat_map(|top| (-1..=3isize).map(move |left| (top, left)))
                .find(|&(top, left)| crop(&img, top, left, 2, 2).ok().as_ref() == Some(&out))
                .ok_or("not a crop")?;
            let (t, l) = (top as f32, left as f32);
            let expected: Vec<f32> = boxes
                .iter()
                .flat_map(|&[x0, y0, x1, y1]| {
                    [x0 - l, y0 - t, x1 - l, y1 - t]
                        .into_iter()
                        .map(|v| v.clamp(0.0, 2.0))
                })
                .collect();
            assert_eq!(boxes_of(&s), expected, "crop at ({top}, {left})");
            offsets.insert((top, left));
        }
        assert!(offsets.len() >= 12, "{} of 20 offsets drawn", offsets.len());
        // By hand, the window at top 1, left 2: A is cut to its last column's left
        // edge (no width left), B to its bottom edge (no height left).
        let at =
            |[x0, y0, x1, y1]: [f32; 4]| clamp_box([x0 - 2.0, y0 - 1.0, x1 - 2.0, y1 - 1.0], 2, 2);
        assert_eq!(at(boxes[0]), [0.0, 0.0, 0.0, 2.0]);
        assert_eq!(at(boxes[1]), [1.0, 0.0, 2.0, 0.0]);

        let mut s = boxed(image(1, 3, 4), &boxes)?;
        // A box field that is not [k, 4] f32 is an error, and nothing moves.
        s.insert("boxes", Field::new(vec![1.0f32; 6], &[2, 3])?);
        let before = s.clone();
        let err = RandomHorizontalFlip::new("img", 1.0)
            .with_boxes("boxes")
            .apply(&mut s, &mut Rng::new(0))
            .unwrap_err();
        assert!(err.to_string().contains("[..., 4] rows"), "{err}");
        assert_eq!(s, before);
        Ok(())
    }

    #[test]
    fn boxes_follow_affine_moves() -> TestResult {
        let boxes = [[1.0, 0.0, 3.0, 2.0]];
        // Identity.
        let mut s = boxed(image(1, 4, 4), &boxes)?;
        RandomAffine::new("img")
            .with_boxes("boxes")
            .apply(&mut s, &mut Rng::new(5))?;
        assert_eq!(boxes_of(&s), boxes[0]);
        // A known translation: (+1, +2) pixels, then clamped at the bottom.
        assert_eq!(
            affine_box(boxes[0], (4, 4), 0.0, (1.0, 2.0), 1.0),
            [2.0, 2.0, 4.0, 4.0]
        );
        assert_eq!(
            affine_box(boxes[0], (4, 4), 0.0, (0.0, 3.0), 1.0),
            [1.0, 3.0, 3.0, 4.0]
        );
        // A quarter turn clockwise of a 4x4: pixel (y, x) goes to (x, 3 - y), so the
        // box over x 1..3, y 0..2 covers x 2..4, y 1..3.
        let turned = affine_box(boxes[0], (4, 4), 90.0, (0.0, 0.0), 1.0);
        for (a, b) in turned.iter().zip([2.0, 1.0, 4.0, 3.0]) {
            assert!((a - b).abs() < 1e-5, "{turned:?}");
        }
        // Scale 2 about the centre of a 4x4: [1, 1, 3, 3] fills the image.
        assert_eq!(
            affine_box([1.0, 1.0, 3.0, 3.0], (4, 4), 0.0, (0.0, 0.0), 2.0),
            [0.0, 0.0, 4.0, 4.0]
        );

        // Random jitter: every pixel of the moved mask lies in the moved box (the
        // box of a rotated rectangle bounds it).
        let (h, w) = (12, 12);
        let inside = |y: usize, x: usize| (3..7).contains(&y) && (4..9).contains(&x);
        let mask: Vec<u32> = (0..h * w)
            .map(|p| u32::from(inside(p / w, p % w)))
            .collect();
        let t = RandomAffine::new("img")
            .degrees(30.0)
            .translate_pixels(2.0, 2.0)
            .scale(0.8, 1.2)
            .with_mask("mask")
            .with_boxes("boxes");
        let mut grew = 0;
        for seed in 0..40 {
            let mut s = boxed(image(1, h, w), &[[4.0, 3.0, 9.0, 7.0]])?
                .with("mask", Field::new(mask.clone(), &[h, w])?);
            t.apply(&mut s, &mut Rng::new(seed))?;
            let b = boxes_of(&s);
            let moved = s.field("mask", "test")?.values::<u32>("test")?;
            for (p, _) in moved.iter().enumerate().filter(|(_, &m)| m == 1) {
                let (cx, cy) = ((p % w) as f32 + 0.5, (p / w) as f32 + 0.5);
                assert!(
                    b[0] <= cx && cx <= b[2] && b[1] <= cy && cy <= b[3],
                    "seed {seed}: pixel centre ({cx}, {cy}) outside box {b:?}"
                );
            }
            grew += usize::from((b[2] - b[0]) * (b[3] - b[1]) > 20.0);
        }
        assert!(grew > 10, "rotations should grow some boxes ({grew})");
        Ok(())
    }

    #[test]
    fn translate_pixels_moves_whole_pixels_within_range() -> TestResult {
        let img = image(1, 6, 6);
        let t = RandomAffine::new("img").translate_pixels(1.0, 1.0);
        let shifts: Vec<Field> = (-1..=1)
            .flat_map(|dy| (-1..=1).map(move |dx| (dx, dy)))
            .map(|(dx, dy)| {
                let shift = (f64::from(dx), f64::from(dy));
                affine(&img, 0.0, shift, 1.0, Interpolation::Bilinear)
            })
            .collect::<Result<_>>()?;
        for seed in 0..30 {
            let mut s = Sample::new().with("img", img.clone());
            t.apply(&mut s, &mut Rng::new(seed))?;
            assert!(
                shifts.iter().any(|f| s.get("img") == Some(f)),
                "seed {seed}"
            );
        }
        for bad in [
            RandomAffine::new("img").translate_pixels(-1.0, 0.0),
            RandomAffine::new("img").translate_pixels(f64::INFINITY, 0.0),
            RandomAffine::new("img").translate(1.5, 0.0),
            RandomAffine::new("img").rotation(5.0, -5.0),
        ] {
            let mut s = Sample::new().with("img", img.clone());
            assert!(bad.apply(&mut s, &mut Rng::new(0)).is_err(), "{bad:?}");
        }
        Ok(())
    }

    #[test]
    fn rng_ranges() {
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let u = rng.uniform();
            assert!((0.0..1.0).contains(&u));
            let v = rng.uniform_in(-2.0, 3.0);
            assert!((-2.0..3.0).contains(&v));
        }
        assert_eq!(rng.uniform_in(90.0, 90.0), 90.0);
        assert_eq!(rng.below(0), 0);
        assert!(!rng.chance(0.0) && rng.chance(1.0));
    }
}
