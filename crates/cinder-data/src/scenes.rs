//! Scenes of real handwritten digits for segmentation and detection.
//!
//! [`DigitScenes`] places 1 to 5 digits, drawn from a dataset of `[1, h, w]`
//! digit images (the bundled MNIST digits, say), at random positions and sizes
//! on a square canvas, and gives each scene a per-pixel class mask and a box
//! with a class per digit. Scene `i` of a seed is a pure function of
//! `(seed, i)`, so any number of scenes costs no memory and every run, thread
//! and platform sees the same ones.
//!
//! Build training scenes from the training digits and held-out scenes from the
//! held-out digits ([`DigitScenes::from_split`]), so that a model is measured
//! on handwriting it never saw.

use std::sync::Arc;

use cinder_tensor::{Error, Result};

use crate::dataset::{InMemoryDataset, Split};
use crate::rng::mix64;
use crate::sample::{Field, Sample};
use crate::transform::{sample_seed, Rng};

/// Where scene seeds leave the loaders' shuffle and augmentation seeds.
const SCENE_KEY: u64 = 0x5CE7_E5D1_6175_0014;

/// How scenes are drawn. [`SceneConfig::default`] is the documented recipe:
/// 96x96, 1 to 5 digits of 16 to 40 pixels, background noise up to 0.15, and
/// two digits' boxes may share at most 30% of the smaller one.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneConfig {
    /// The canvas's side in pixels.
    pub canvas: usize,
    /// The fewest and most digits in a scene, each count equally likely.
    pub digits: (usize, usize),
    /// The range of a digit's size in pixels: the longer side of its ink's box.
    pub size: (f32, f32),
    /// Each pixel gets `noise * u` added, `u` uniform in [0, 1), and is clipped to 1.
    pub noise: f32,
    /// The most that a digit's box may overlap any earlier one, as a share of the
    /// smaller box's area. A digit that finds no such place in
    /// [`SceneConfig::PLACEMENT_TRIES`] draws is left out.
    pub max_overlap: f32,
    /// The ink above which a pixel belongs to a digit in the mask.
    pub mask_threshold: f32,
}

impl SceneConfig {
    pub const PLACEMENT_TRIES: usize = 20;

    fn check(&self) -> Result<()> {
        const OP: &str = "DigitScenes";
        let (lo, hi) = self.digits;
        if lo == 0 || lo > hi {
            return Err(Error::invalid(
                OP,
                format!("digits per scene {lo}..={hi}: need 1 <= fewest <= most"),
            ));
        }
        let (small, large) = self.size;
        if !(small >= 1.0 && small <= large && large <= self.canvas as f32) {
            return Err(Error::invalid(
                OP,
                format!(
                    "digit sizes {small}..{large} pixels must lie in 1..={} (the canvas) and be in order",
                    self.canvas
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.noise)
            || !(0.0..=1.0).contains(&self.max_overlap)
            || !(0.0..1.0).contains(&self.mask_threshold)
        {
            return Err(Error::invalid(
                OP,
                format!(
                    "noise {} and max_overlap {} must lie in [0, 1], mask_threshold {} in [0, 1)",
                    self.noise, self.max_overlap, self.mask_threshold
                ),
            ));
        }
        Ok(())
    }
}

impl Default for SceneConfig {
    fn default() -> Self {
        SceneConfig {
            canvas: 96,
            digits: (1, 5),
            size: (16.0, 40.0),
            noise: 0.15,
            max_overlap: 0.3,
            mask_threshold: 0.5,
        }
    }
}

/// One scene: a grayscale image, its class mask and its digits' boxes.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// `side * side` values in [0, 1], row-major.
    pub image: Vec<f32>,
    /// `side * side` classes: 0 for background, `d + 1` for ink of digit `d`.
    pub mask: Vec<i32>,
    /// One `[x0, y0, x1, y1]` per digit, in pixels with (0, 0) the top-left
    /// corner of the top-left pixel (torchvision's `xyxy`): the box of the
    /// digit's ink.
    pub boxes: Vec<[f32; 4]>,
    /// Each box's digit, 0..=9.
    pub classes: Vec<i32>,
    pub side: usize,
}

impl Scene {
    /// The scene as a [`Sample`]: [`DigitScenes::IMAGE`] (f32 `[1, side, side]`),
    /// [`DigitScenes::MASK`] (i32 `[side, side]`), [`DigitScenes::BOXES`] (f32
    /// `[k, 4]`) and [`DigitScenes::CLASSES`] (i32 `[k]`).
    pub fn into_sample(self) -> Result<Sample> {
        let (side, k) = (self.side, self.boxes.len());
        let boxes: Vec<f32> = self.boxes.into_iter().flatten().collect();
        Ok(Sample::new()
            .with(
                DigitScenes::IMAGE,
                Field::new(self.image, &[1, side, side])?,
            )
            .with(DigitScenes::MASK, Field::new(self.mask, &[side, side])?)
            .with(DigitScenes::BOXES, Field::new(boxes, &[k, 4])?)
            .with(DigitScenes::CLASSES, Field::new(self.classes, &[k])?))
    }
}

/// `len` seeded scenes of digits from `digits` (see the [module](self) docs).
#[derive(Debug, Clone)]
pub struct DigitScenes {
    digits: Arc<InMemoryDataset>,
    /// Per source digit: the box of its ink in its own image, `[left, top, right,
    /// bottom)` in pixels, or `None` for a blank image, which is never drawn.
    ink: Vec<Option<[usize; 4]>>,
    len: usize,
    seed: u64,
    config: SceneConfig,
}

impl DigitScenes {
    pub const IMAGE: &'static str = "image";
    pub const MASK: &'static str = "mask";
    pub const BOXES: &'static str = "boxes";
    pub const CLASSES: &'static str = "classes";
    /// Mask classes: background and the ten digits.
    pub const MASK_CLASSES: usize = 11;

    /// `len` scenes of the default recipe from `digits`, a dataset of `[1, h, w]`
    /// images in [0, 1] with classes 0..=9.
    pub fn new(digits: Arc<InMemoryDataset>, len: usize, seed: u64) -> Result<DigitScenes> {
        Self::with_config(digits, len, seed, SceneConfig::default())
    }

    pub fn with_config(
        digits: Arc<InMemoryDataset>,
        len: usize,
        seed: u64,
        config: SceneConfig,
    ) -> Result<DigitScenes> {
        const OP: &str = "DigitScenes";
        config.check()?;
        digits.validate()?;
        let &[1, rows, cols] = digits.feature_shape.as_slice() else {
            return Err(Error::shape(
                OP,
                format!(
                    "digits must be [1, h, w] grayscale images, not {:?}",
                    digits.feature_shape
                ),
            ));
        };
        if let Some(&bad) = digits.labels.iter().find(|&&c| !(0..=9).contains(&c)) {
            return Err(Error::invalid(
                OP,
                format!("digit classes must be 0..=9; found {bad}"),
            ));
        }
        let ink: Vec<_> = digits
            .features
            .chunks_exact(rows * cols)
            .map(|image| ink_box(image, cols))
            .collect();
        if ink.iter().all(Option::is_none) {
            return Err(Error::invalid(
                OP,
                "no digit image has any ink (every pixel is 0)",
            ));
        }
        Ok(DigitScenes {
            digits,
            ink,
            len,
            seed,
            config,
        })
    }

    /// `train_len` scenes of the training digits (seeded `seed`) and
    /// `test_len` of the held-out digits (seeded from `seed` too, but drawn
    /// apart from the training scenes).
    pub fn from_split(
        split: Split,
        train_len: usize,
        test_len: usize,
        seed: u64,
    ) -> Result<(DigitScenes, DigitScenes)> {
        Ok((
            Self::new(Arc::new(split.train), train_len, seed)?,
            Self::new(Arc::new(split.test), test_len, mix64(seed ^ SCENE_KEY))?,
        ))
    }

    /// The number of scenes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn config(&self) -> &SceneConfig {
        &self.config
    }

    /// Scene `index` (any index, also past `len`).
    pub fn scene(&self, index: usize) -> Scene {
        let c = &self.config;
        let side = c.canvas;
        let mut rng = Rng::new(sample_seed(self.seed ^ SCENE_KEY, 0, index));
        let count = c.digits.0 + rng.below((c.digits.1 - c.digits.0 + 1) as u64) as usize;
        let shape = &self.digits.feature_shape;
        let (rows, cols) = (shape[1], shape[2]);
        // Ink of each placed digit over the whole canvas; the image is their
        // maximum, so crossing strokes stay strokes.
        let mut ink = vec![0f32; side * side];
        let mut owner = vec![-1i32; side * side];
        let mut boxes: Vec<[f32; 4]> = Vec::with_capacity(count);
        let mut classes = Vec::with_capacity(count);
        for _ in 0..count {
            let (source, crop) = self.draw_digit(&mut rng);
            let [left, top, right, bottom] = crop;
            let (crop_w, crop_h) = ((right - left) as f32, (bottom - top) as f32);
            let size = rng.uniform_in(c.size.0 as f64, c.size.1 as f64) as f32;
            let scale = size / crop_w.max(crop_h);
            let (w, h) = (crop_w * scale, crop_h * scale);
            let Some([x0, y0]) = (0..SceneConfig::PLACEMENT_TRIES).find_map(|_| {
                let x0 = rng.uniform_in(0.0, (side as f32 - w) as f64) as f32;
                let y0 = rng.uniform_in(0.0, (side as f32 - h) as f64) as f32;
                let candidate = [x0, y0, x0 + w, y0 + h];
                boxes
                    .iter()
                    .all(|b| overlap_of_smaller(b, &candidate) <= c.max_overlap)
                    .then_some([x0, y0])
            }) else {
                continue;
            };
            let image = &self.digits.features[source * rows * cols..(source + 1) * rows * cols];
            let digit = boxes.len() as i32;
            // Canvas pixels whose centres fall in the digit's box (so that all
            // of its ink lies inside the box), sampled bilinearly from the
            // crop: pixel centre p maps to source coordinate
            // (p - x0) / scale + left, in pixel-corner units.
            let span = |start: f32, length: f32| {
                let first = (start - 0.5).ceil().max(0.0) as usize;
                let end = ((start + length - 0.5).ceil().max(0.0) as usize).min(side);
                first..end
            };
            let (columns, lines) = (span(x0, w), span(y0, h));
            for py in lines {
                let sy = (py as f32 + 0.5 - y0) / scale + top as f32 - 0.5;
                for px in columns.clone() {
                    let sx = (px as f32 + 0.5 - x0) / scale + left as f32 - 0.5;
                    let value = bilinear(image, rows, cols, sx, sy);
                    let at = py * side + px;
                    if value > ink[at] {
                        ink[at] = value;
                        owner[at] = digit;
                    }
                }
            }
            boxes.push([x0, y0, x0 + w, y0 + h]);
            classes.push(self.digits.labels[source]);
        }
        let image = ink
            .iter()
            .map(|&v| (v + c.noise * rng.uniform() as f32).min(1.0))
            .collect();
        let mask = ink
            .iter()
            .zip(&owner)
            .map(|(&v, &o)| {
                if v > c.mask_threshold && o >= 0 {
                    classes[o as usize] + 1
                } else {
                    0
                }
            })
            .collect();
        Scene {
            image,
            mask,
            boxes,
            classes,
            side,
        }
    }

    /// A uniformly drawn digit with ink, and its ink's box.
    fn draw_digit(&self, rng: &mut Rng) -> (usize, [usize; 4]) {
        loop {
            let source = rng.below(self.ink.len() as u64) as usize;
            if let Some(crop) = self.ink[source] {
                return (source, crop);
            }
        }
    }
}

impl crate::Dataset for DigitScenes {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len {
            return Err(Error::invalid(
                "DigitScenes::get",
                format!("scene {index} of {} scenes", self.len),
            ));
        }
        self.scene(index).into_sample()
    }
}

/// Scenes by index, drawn ([`DigitScenes`]) or loaded ([`SceneList`]): what
/// segmentation and detection train on and measure against.
pub trait SceneSource: Send + Sync {
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The side of every scene's square image.
    fn side(&self) -> usize;

    /// The most boxes one scene can have.
    fn max_objects(&self) -> usize;

    fn scene(&self, index: usize) -> Result<Scene>;
}

impl SceneSource for DigitScenes {
    fn len(&self) -> usize {
        self.len
    }

    fn side(&self) -> usize {
        self.config.canvas
    }

    fn max_objects(&self) -> usize {
        self.config.digits.1
    }

    fn scene(&self, index: usize) -> Result<Scene> {
        Ok(DigitScenes::scene(self, index))
    }
}

/// Scenes held in memory: a user's images with their masks or boxes.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneList {
    scenes: Vec<Scene>,
    side: usize,
}

impl SceneList {
    /// `scenes`, all `side` x `side`, each with a full mask (zeros where a
    /// dataset has only boxes) and as many classes as boxes.
    pub fn new(scenes: Vec<Scene>, side: usize) -> Result<SceneList> {
        const OP: &str = "SceneList";
        for (i, s) in scenes.iter().enumerate() {
            let plane = side * side;
            if s.side != side || s.image.len() != plane || s.mask.len() != plane {
                return Err(Error::shape(
                    OP,
                    format!(
                        "scene {i}: a {side}x{side} image and mask, not side {} with {} and {} values",
                        s.side,
                        s.image.len(),
                        s.mask.len()
                    ),
                ));
            }
            if s.boxes.len() != s.classes.len() {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "scene {i}: {} boxes with {} classes",
                        s.boxes.len(),
                        s.classes.len()
                    ),
                ));
            }
        }
        Ok(SceneList { scenes, side })
    }

    /// Every `n`-th scene (from the `n`-th on) held out, the others kept:
    /// `(kept, held_out)`. With `n` of 5, a fifth is held out.
    pub fn hold_out_every(self, n: usize) -> Result<(SceneList, SceneList)> {
        if n < 2 {
            return Err(Error::invalid(
                "SceneList::hold_out_every",
                format!("n = {n} would hold out everything"),
            ));
        }
        let (mut kept, mut held_out) = (Vec::new(), Vec::new());
        for (i, scene) in self.scenes.into_iter().enumerate() {
            if (i + 1) % n == 0 {
                held_out.push(scene);
            } else {
                kept.push(scene);
            }
        }
        Ok((
            SceneList::new(kept, self.side)?,
            SceneList::new(held_out, self.side)?,
        ))
    }

    pub fn scenes(&self) -> &[Scene] {
        &self.scenes
    }

    /// The largest class in any mask or box (0 when there is none).
    pub fn max_class(&self) -> i32 {
        self.scenes
            .iter()
            .flat_map(|s| s.mask.iter().chain(&s.classes))
            .copied()
            .max()
            .unwrap_or(0)
    }
}

impl SceneSource for SceneList {
    fn len(&self) -> usize {
        self.scenes.len()
    }

    fn side(&self) -> usize {
        self.side
    }

    fn max_objects(&self) -> usize {
        self.scenes.iter().map(|s| s.boxes.len()).max().unwrap_or(0)
    }

    fn scene(&self, index: usize) -> Result<Scene> {
        self.scenes.get(index).cloned().ok_or_else(|| {
            Error::invalid(
                "SceneList::scene",
                format!("scene {index} of {} scenes", self.scenes.len()),
            )
        })
    }
}

/// Any [`SceneSource`] as a [`Dataset`](crate::Dataset) of
/// [`Scene::into_sample`] samples, for a [`Loader`](crate::Loader).
#[derive(Clone)]
pub struct SceneSamples(pub Arc<dyn SceneSource>);

impl crate::Dataset for SceneSamples {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        self.0.scene(index)?.into_sample()
    }
}

/// The smallest `[left, top, right, bottom)` holding every nonzero pixel.
fn ink_box(image: &[f32], cols: usize) -> Option<[usize; 4]> {
    let mut found: Option<[usize; 4]> = None;
    for (i, &v) in image.iter().enumerate() {
        if v > 0.0 {
            let (y, x) = (i / cols, i % cols);
            let b = found.get_or_insert([x, y, x + 1, y + 1]);
            *b = [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)];
        }
    }
    found
}

/// The value at `(x, y)` in pixel-centre units, zero outside the image.
fn bilinear(image: &[f32], rows: usize, cols: usize, x: f32, y: f32) -> f32 {
    let (fx, fy) = (x.floor(), y.floor());
    let (tx, ty) = (x - fx, y - fy);
    let at = |xi: f32, yi: f32| -> f32 {
        if xi < 0.0 || yi < 0.0 || xi >= cols as f32 || yi >= rows as f32 {
            0.0
        } else {
            image[yi as usize * cols + xi as usize]
        }
    };
    let top = at(fx, fy) * (1.0 - tx) + at(fx + 1.0, fy) * tx;
    let bottom = at(fx, fy + 1.0) * (1.0 - tx) + at(fx + 1.0, fy + 1.0) * tx;
    top * (1.0 - ty) + bottom * ty
}

/// The area two boxes share, as a share of the smaller one's area.
fn overlap_of_smaller(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    w * h / area(a).min(area(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dataset, Mnist};

    fn mnist_scenes(len: usize, seed: u64) -> Result<(DigitScenes, DigitScenes)> {
        DigitScenes::from_split(Mnist::bundled()?, len, len, seed)
    }

    #[test]
    fn a_seed_gives_the_same_scenes_and_another_seed_others() -> Result<()> {
        let (a, _) = mnist_scenes(10, 7)?;
        let (b, _) = mnist_scenes(10, 7)?;
        let (c, _) = mnist_scenes(10, 8)?;
        for i in 0..10 {
            assert_eq!(a.scene(i), b.scene(i));
            assert_ne!(a.scene(i).image, c.scene(i).image);
        }
        assert_ne!(a.scene(0).image, a.scene(1).image);
        Ok(())
    }

    #[test]
    fn scenes_follow_the_recipe() -> Result<()> {
        let (train, test) = mnist_scenes(300, 1)?;
        let config = SceneConfig::default();
        let mut counts = [0usize; 6];
        let mut class_seen = [false; 10];
        let (mut smallest, mut largest) = (f32::MAX, 0f32);
        for scenes in [&train, &test] {
            for i in 0..scenes.len() {
                let s = scenes.scene(i);
                let k = s.boxes.len();
                assert_eq!(k, s.classes.len());
                counts[k] += 1;
                assert_eq!(s.image.len(), 96 * 96);
                assert!(s.image.iter().all(|v| (0.0..=1.0).contains(v)));
                for (b, &class) in s.boxes.iter().zip(&s.classes) {
                    class_seen[class as usize] = true;
                    assert!(b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 96.0 && b[3] <= 96.0);
                    let long = (b[2] - b[0]).max(b[3] - b[1]);
                    assert!((16.0..=40.0).contains(&long), "{b:?}");
                    smallest = smallest.min(long);
                    largest = largest.max(long);
                    // The digit's own ink is in the mask, inside its box.
                    let inside = mask_pixels(&s, class + 1, b);
                    assert!(inside > 0, "scene {i}: no mask pixel of box {b:?}");
                }
                for others in
                    s.boxes.iter().enumerate().flat_map(|(j, a)| {
                        s.boxes[..j].iter().map(move |b| overlap_of_smaller(a, b))
                    })
                {
                    assert!(others <= config.max_overlap + 1e-6);
                }
                // Every mask pixel of a class lies inside a box of that class,
                // and background pixels carry no more than the noise.
                for (at, &m) in s.mask.iter().enumerate() {
                    let (x, y) = ((at % 96) as f32 + 0.5, (at / 96) as f32 + 0.5);
                    let in_box = s
                        .boxes
                        .iter()
                        .zip(&s.classes)
                        .any(|(b, &c)| c + 1 == m && inside(b, x, y));
                    if m != 0 {
                        assert!(in_box, "scene {i}: mask pixel {at} of class {m} in no box");
                        assert!(s.image[at] > config.mask_threshold);
                    } else if !s.boxes.iter().any(|b| inside(b, x, y)) {
                        assert!(s.image[at] < config.noise, "{}", s.image[at]);
                    }
                }
            }
        }
        assert_eq!(counts[0], 0);
        assert!(counts[1..].iter().all(|&n| n > 50), "{counts:?}");
        assert!(class_seen.iter().all(|&seen| seen));
        assert!(smallest < 18.0 && largest > 38.0, "{smallest} {largest}");
        Ok(())
    }

    /// Whether a pixel centre lies in a box as scenes draw it: left and top
    /// edges in, right and bottom out.
    fn inside(b: &[f32; 4], x: f32, y: f32) -> bool {
        x >= b[0] && x < b[2] && y >= b[1] && y < b[3]
    }

    fn mask_pixels(s: &Scene, class: i32, b: &[f32; 4]) -> usize {
        (b[1] as usize..(b[3].ceil() as usize).min(96))
            .flat_map(|y| (b[0] as usize..(b[2].ceil() as usize).min(96)).map(move |x| (x, y)))
            .filter(|&(x, y)| s.mask[y * 96 + x] == class)
            .count()
    }

    #[test]
    fn training_scenes_use_training_digits_only() -> Result<()> {
        // Two one-digit datasets: every training digit is a 3, every held-out one a 7.
        let one = |class: i32| {
            let mut image = vec![0f32; 28 * 28];
            (8..20).for_each(|y| image[y * 28 + 14] = 1.0);
            InMemoryDataset::new(image, vec![1, 28, 28], vec![class], 10)
        };
        let (train, test) = DigitScenes::from_split(
            Split {
                train: one(3)?,
                test: one(7)?,
            },
            20,
            20,
            0,
        )?;
        for i in 0..20 {
            assert!(train.scene(i).classes.iter().all(|&c| c == 3));
            assert!(test.scene(i).classes.iter().all(|&c| c == 7));
        }
        Ok(())
    }

    #[test]
    fn a_sample_has_the_documented_fields() -> Result<()> {
        let (train, _) = mnist_scenes(4, 2)?;
        let sample = train.get(3)?;
        let k = train.scene(3).boxes.len();
        let shape = |name: &str| sample.get(name).map(|f| f.shape().to_vec());
        assert_eq!(shape(DigitScenes::IMAGE), Some(vec![1, 96, 96]));
        assert_eq!(shape(DigitScenes::MASK), Some(vec![96, 96]));
        assert_eq!(shape(DigitScenes::BOXES), Some(vec![k, 4]));
        assert_eq!(shape(DigitScenes::CLASSES), Some(vec![k]));
        assert!(train.get(4).is_err());
        Ok(())
    }

    #[test]
    fn bad_recipes_and_digits_are_refused() -> Result<()> {
        let digits = Arc::new(Mnist::bundled()?.test);
        let with = |config: SceneConfig| DigitScenes::with_config(digits.clone(), 1, 0, config);
        for bad in [
            SceneConfig {
                digits: (0, 3),
                ..SceneConfig::default()
            },
            SceneConfig {
                size: (40.0, 16.0),
                ..SceneConfig::default()
            },
            SceneConfig {
                size: (16.0, 100.0),
                ..SceneConfig::default()
            },
            SceneConfig {
                noise: f32::NAN,
                ..SceneConfig::default()
            },
        ] {
            assert!(with(bad).is_err());
        }
        let flat = Arc::new(Mnist::bundled()?.test.with_feature_shape(&[784])?);
        assert!(DigitScenes::new(flat, 1, 0).is_err());
        let blank = Arc::new(InMemoryDataset::new(
            vec![0.0; 784],
            vec![1, 28, 28],
            vec![1],
            10,
        )?);
        assert!(DigitScenes::new(blank, 1, 0).is_err());
        Ok(())
    }
}
