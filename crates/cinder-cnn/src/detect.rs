//! Object detection: a one-stage, anchor-free detector in the manner of
//! CenterNet (Zhou et al., "Objects as Points") with TTFNet's box branch: on
//! a stride-4 map, a heatmap per class marks box centres and four distances
//! from a centre cell to the box's sides give the box. Focal loss on the
//! heatmap, GIoU and L1 losses on the boxes; decoding keeps each class's
//! local peaks, takes the best `k` on the device and reads back only those,
//! then suppresses overlaps per class ([`batched_nms`]). Trained on
//! cinder-train's loop over scenes of digits ([`DigitScenes`]).

use std::collections::HashMap;
use std::sync::Arc;

use cinder_data::{Dataset, DigitScenes, Field, Loader, Sample, SceneSource};
use cinder_nn::checkpoint::load_trained;
use cinder_nn::module::prefixed;
use cinder_nn::{Adam, BatchNorm2d, Conv2d, Module, Optimizer, ReLU, Sequential};
use cinder_tensor::{
    batched_nms, no_grad, read_all, Conv2dOptions, DType, Device, Error, Pool2dOptions, Reduction,
    Result, Tensor,
};
use cinder_train::{Batches, History, Observer, Settings, Step, Task, TrainOptions, Trainer};

use crate::average_precision::{average_precision, ApReport, Detection, TrueBox};

/// What builds a detector; stored in its file's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorSpec {
    pub in_channels: usize,
    pub classes: usize,
    /// Channels at stride 2; stride 4 has twice, stride 8 four times.
    pub width: usize,
}

/// The output map's stride: one cell per 4x4 pixels.
pub const STRIDE: usize = 4;

/// The heatmap's starting bias, `-ln((1 - 0.1) / 0.1)`: every cell starts
/// at probability 0.1, as CenterNet starts, so the early focal loss is not
/// swamped by the background.
const HEAT_PRIOR_BIAS: f32 = -2.197_224_6;

/// The box branch's starting bias: softplus(2.4) = 2.49 cells, a 20-pixel
/// box, about the scenes' middle size.
const BOX_PRIOR_BIAS: f32 = 2.4;

impl DetectorSpec {
    /// The detector for [`DigitScenes`]: one channel in, 10 classes, width 16.
    pub fn digit_scenes() -> DetectorSpec {
        DetectorSpec {
            in_channels: 1,
            classes: DigitScenes::MASK_CLASSES - 1,
            width: 16,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.in_channels == 0 || self.classes == 0 || self.width == 0 {
            return Err(Error::invalid(
                "detector",
                format!("a detector needs input channels, classes and a width; got {self:?}"),
            ));
        }
        Ok(())
    }

    /// `centernet-w16-c10`.
    pub fn arch_name(&self) -> String {
        format!("centernet-w{}-c{}", self.width, self.classes)
    }

    pub fn to_metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            ("cinder.family".to_string(), "detect".to_string()),
            ("cinder.arch".to_string(), self.arch_name()),
            (
                "cinder.in_channels".to_string(),
                self.in_channels.to_string(),
            ),
            ("cinder.classes".to_string(), self.classes.to_string()),
            ("cinder.width".to_string(), self.width.to_string()),
            ("cinder.stride".to_string(), STRIDE.to_string()),
        ])
    }

    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<DetectorSpec> {
        if meta.get("cinder.family").map(String::as_str) != Some("detect") {
            return Err(Error::invalid(
                "detector",
                "not a detector's file (its header has no cinder.family = detect)",
            ));
        }
        let number = |key: &str| -> Result<usize> {
            meta.get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::invalid("detector", format!("the header's {key} is missing")))
        };
        if number("cinder.stride")? != STRIDE {
            return Err(Error::invalid(
                "detector",
                format!("the file's stride is not {STRIDE}"),
            ));
        }
        let spec = DetectorSpec {
            in_channels: number("cinder.in_channels")?,
            classes: number("cinder.classes")?,
            width: number("cinder.width")?,
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn build(&self, device: &Device) -> Result<Detector> {
        Detector::new(device, *self)
    }
}

/// A 3x3 convolution (`stride` 1 or 2), batch norm and ReLU.
fn conv_bn_relu(device: &Device, c_in: usize, c_out: usize, stride: usize) -> Result<Sequential> {
    let conv = Conv2d::new(
        device,
        c_in,
        c_out,
        3,
        Conv2dOptions::default().padding(1).stride(stride),
        false,
    )?;
    Ok(Sequential::new()
        .add(conv)
        .add(BatchNorm2d::new(device, c_out)?)
        .add(ReLU))
}

/// Two [`conv_bn_relu`], the first halving the map.
fn down_block(device: &Device, c_in: usize, c_out: usize) -> Result<Sequential> {
    Ok(Sequential::new()
        .add(conv_bn_relu(device, c_in, c_out, 2)?)
        .add(conv_bn_relu(device, c_out, c_out, 1)?))
}

/// The detector: a backbone down to stride 8 (`down.0` to `down.2`), the
/// stride-8 map upsampled onto a 1x1 projection of the stride-4 one (a
/// two-level feature pyramid: `lateral`), then a 3x3 block and a 1x1 `out`
/// to `classes` heatmap logits and four box distances per cell.
/// `[N, C, H, W]` in (sides multiples of 8), `[N, classes + 4, H/4, W/4]` out.
pub struct Detector {
    pub spec: DetectorSpec,
    down: Vec<Sequential>,
    lateral: Conv2d,
    head: Sequential,
    out: Conv2d,
}

impl Detector {
    pub fn new(device: &Device, spec: DetectorSpec) -> Result<Detector> {
        spec.validate()?;
        let w = spec.width;
        let down = vec![
            down_block(device, spec.in_channels, w)?,
            down_block(device, w, 2 * w)?,
            down_block(device, 2 * w, 4 * w)?,
        ];
        let lateral = Conv2d::new(device, 2 * w, 4 * w, 1, Conv2dOptions::default(), true)?;
        let head = conv_bn_relu(device, 4 * w, 2 * w, 1)?;
        let mut out = Conv2d::new(
            device,
            2 * w,
            spec.classes + 4,
            1,
            Conv2dOptions::default(),
            true,
        )?;
        let mut bias = vec![HEAT_PRIOR_BIAS; spec.classes];
        bias.extend([BOX_PRIOR_BIAS; 4]);
        out.bias = Some(Tensor::from_vec(device, bias, &[spec.classes + 4])?.requires_grad_());
        Ok(Detector {
            spec,
            down,
            lateral,
            head,
            out,
        })
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut c: Vec<(String, &dyn Module)> = Vec::new();
        for (i, block) in self.down.iter().enumerate() {
            c.push((format!("down.{i}"), block));
        }
        c.push(("lateral".to_string(), &self.lateral));
        c.push(("head".to_string(), &self.head));
        c.push(("out".to_string(), &self.out));
        c
    }
}

impl Module for Detector {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let step = 2 * STRIDE;
        let shape = x.shape();
        if shape.len() != 4
            || shape[1] != self.spec.in_channels
            || !shape[2].is_multiple_of(step)
            || !shape[3].is_multiple_of(step)
        {
            return Err(Error::shape(
                "detector",
                format!(
                    "input {shape:?}: the detector takes [N, {}, H, W] with H and W multiples of {step}",
                    self.spec.in_channels
                ),
            ));
        }
        let (h, w) = (shape[2] / STRIDE, shape[3] / STRIDE);
        let mut maps = Vec::with_capacity(self.down.len());
        let mut y = x.clone();
        for block in &self.down {
            y = block.forward(&y)?;
            maps.push(y.clone());
        }
        let fine = maps
            .get(1)
            .ok_or_else(|| Error::invalid("detector", "the backbone has no stride-4 map"))?;
        let merged = self
            .lateral
            .forward(fine)?
            .add(&y.upsample_nearest2d([h, w])?)?;
        self.out.forward(&self.head.forward(&merged)?)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.children()
            .into_iter()
            .flat_map(|(n, m)| prefixed(&n, m.named_parameters()))
            .collect()
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        self.children()
            .into_iter()
            .flat_map(|(n, m)| prefixed(&n, m.named_buffers()))
            .collect()
    }

    fn set_training(&mut self, training: bool) {
        for block in &mut self.down {
            block.set_training(training);
        }
        self.head.set_training(training);
    }
}

/// CenterNet's Gaussian radius (in cells) for a box of `height` x `width`
/// cells: the largest shift of a corner that keeps IoU `min_overlap` with the
/// box, from CornerNet's three cases.
pub fn gaussian_radius(height: f32, width: f32, min_overlap: f32) -> f32 {
    let (h, w, o) = (height, width, min_overlap);
    let root = |a: f32, b: f32, c: f32| (b + (b * b - 4.0 * a * c).max(0.0).sqrt()) / 2.0;
    let r1 = root(1.0, h + w, w * h * (1.0 - o) / (1.0 + o));
    let r2 = root(4.0, 2.0 * (h + w), (1.0 - o) * w * h);
    let r3 = root(4.0 * o, -2.0 * o * (h + w), (o - 1.0) * w * h);
    r1.min(r2).min(r3)
}

/// A scene's boxes as training targets on the stride-4 map.
#[derive(Clone, Debug, PartialEq)]
pub struct Targets {
    /// `[classes, h, w]`: 1 at each box's centre cell, a Gaussian around it
    /// (the maximum where two overlap), 0 elsewhere.
    pub heat: Vec<f32>,
    /// `[max_objects]`: each box's centre cell `y * w + x` (0 for empty slots).
    pub cells: Vec<i32>,
    /// `[2, max_objects]`: the centre cells' centres in pixels, x then y.
    pub centres: Vec<f32>,
    /// `[max_objects, 4]`: the true boxes (a unit box in empty slots, so
    /// their GIoU stays finite).
    pub boxes: Vec<f32>,
    /// `[max_objects]`: 1 for a box, 0 for an empty slot.
    pub present: Vec<f32>,
}

/// Turns boxes into [`Targets`] for images of `side` pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TargetEncoder {
    pub classes: usize,
    pub side: usize,
    pub max_objects: usize,
    /// The IoU a box shifted by the Gaussian's radius keeps (CenterNet: 0.7).
    pub min_overlap: f32,
}

impl TargetEncoder {
    pub fn cells(&self) -> usize {
        self.side / STRIDE
    }

    pub fn encode(&self, boxes: &[[f32; 4]], classes: &[i32]) -> Result<Targets> {
        const OP: &str = "detection targets";
        if boxes.len() != classes.len() || boxes.len() > self.max_objects {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} boxes with {} classes; at most {} objects",
                    boxes.len(),
                    classes.len(),
                    self.max_objects
                ),
            ));
        }
        let (n, k, s) = (self.cells(), self.max_objects, STRIDE as f32);
        if n == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "images of side {} have no cell of {STRIDE} pixels",
                    self.side
                ),
            ));
        }
        if let Some(b) = boxes
            .iter()
            .find(|b| b.iter().any(|v| !v.is_finite()) || b[2] <= b[0] || b[3] <= b[1])
        {
            return Err(Error::invalid(
                OP,
                format!("box {b:?} is not finite or not [x0, y0, x1, y1] with x1 > x0 and y1 > y0"),
            ));
        }
        let mut t = Targets {
            heat: vec![0.0; self.classes * n * n],
            cells: vec![0; k],
            centres: vec![0.0; 2 * k],
            boxes: [0.0, 0.0, 1.0, 1.0].repeat(k),
            present: vec![0.0; k],
        };
        for (slot, (b, &class)) in boxes.iter().zip(classes).enumerate() {
            let class = usize::try_from(class)
                .ok()
                .filter(|&c| c < self.classes)
                .ok_or_else(|| Error::invalid(OP, format!("class {class} out of range")))?;
            let cell =
                |lo: f32, hi: f32| (((lo + hi) / 2.0 / s).floor().max(0.0) as usize).min(n - 1);
            let (cx, cy) = (cell(b[0], b[2]), cell(b[1], b[3]));
            // In whole cells, as CenterNet rounds the box up.
            let (h, w) = (((b[3] - b[1]) / s).ceil(), ((b[2] - b[0]) / s).ceil());
            let radius = gaussian_radius(h, w, self.min_overlap).floor().max(0.0) as usize;
            let sigma = (2 * radius + 1) as f32 / 6.0;
            let plane = &mut t.heat[class * n * n..(class + 1) * n * n];
            for y in cy.saturating_sub(radius)..(cy + radius + 1).min(n) {
                for x in cx.saturating_sub(radius)..(cx + radius + 1).min(n) {
                    let d2 = (x as f32 - cx as f32).powi(2) + (y as f32 - cy as f32).powi(2);
                    let v = (-d2 / (2.0 * sigma * sigma)).exp();
                    let at = &mut plane[y * n + x];
                    *at = at.max(v);
                }
            }
            t.cells[slot] = (cy * n + cx) as i32;
            t.centres[slot] = (cx as f32 + 0.5) * s;
            t.centres[k + slot] = (cy as f32 + 0.5) * s;
            t.boxes[4 * slot..4 * slot + 4].copy_from_slice(b);
            t.present[slot] = 1.0;
        }
        Ok(t)
    }
}

/// Scenes with their detection targets as samples: [`DigitScenes::IMAGE`],
/// and `heat`, `cells`, `centres`, `boxes`, `present` as in [`Targets`].
pub struct DetectionScenes {
    pub scenes: Arc<dyn SceneSource>,
    pub encoder: TargetEncoder,
}

impl DetectionScenes {
    pub fn new(scenes: Arc<dyn SceneSource>, classes: usize) -> DetectionScenes {
        let encoder = TargetEncoder {
            classes,
            side: scenes.side(),
            max_objects: scenes.max_objects().max(1),
            min_overlap: 0.7,
        };
        DetectionScenes { scenes, encoder }
    }
}

impl Dataset for DetectionScenes {
    fn len(&self) -> usize {
        self.scenes.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let scene = self.scenes.scene(index)?;
        let t = self.encoder.encode(&scene.boxes, &scene.classes)?;
        let (n, k, side) = (self.encoder.cells(), self.encoder.max_objects, scene.side);
        Ok(Sample::new()
            .with(
                DigitScenes::IMAGE,
                Field::new(scene.image, &[1, side, side])?,
            )
            .with("heat", Field::new(t.heat, &[self.encoder.classes, n, n])?)
            .with("cells", Field::new(t.cells, &[k])?)
            .with("centres", Field::new(t.centres, &[2, k])?)
            .with("boxes", Field::new(t.boxes, &[k, 4])?)
            .with("present", Field::new(t.present, &[k])?))
    }
}

/// A batch on the device, fields as [`Targets`] with the batch first, and
/// the number of boxes in it.
#[derive(Clone)]
pub struct DetectBatch {
    pub images: Tensor,
    pub heat: Tensor,
    pub cells: Tensor,
    pub centres: Tensor,
    pub boxes: Tensor,
    pub present: Tensor,
    pub objects: usize,
}

impl DetectBatch {
    fn from_samples(batch: &cinder_data::SampleBatch, device: &Device) -> Result<DetectBatch> {
        let present = batch.field("present")?.values().values::<f32>("detect")?;
        let objects = present.iter().filter(|&&p| p > 0.0).count();
        Ok(DetectBatch {
            images: batch.tensor(DigitScenes::IMAGE, device)?,
            heat: batch.tensor("heat", device)?,
            cells: batch.tensor("cells", device)?,
            centres: batch.tensor("centres", device)?,
            boxes: batch.tensor("boxes", device)?,
            present: batch.tensor("present", device)?,
            objects,
        })
    }

    /// Scenes `range` of `data` as one batch, in order.
    pub fn of(
        data: &DetectionScenes,
        range: std::ops::Range<usize>,
        device: &Device,
    ) -> Result<DetectBatch> {
        let samples: Vec<Sample> = range.map(|i| data.get(i)).collect::<Result<_>>()?;
        let batch = cinder_data::Collate::new().collate(&samples)?;
        DetectBatch::from_samples(&batch, device)
    }
}

/// Shuffled training scenes with their targets, built on the loader's thread.
pub struct DetectBatches {
    pub loader: Loader<DetectionScenes>,
    pub device: Device,
}

impl DetectBatches {
    pub fn new(
        scenes: DetectionScenes,
        batch_size: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let loader = Loader::new(Arc::new(scenes), batch_size, true, seed)?.drop_last(true);
        Ok(DetectBatches {
            loader,
            device: device.clone(),
        })
    }
}

impl Batches for DetectBatches {
    type Batch = DetectBatch;

    fn len(&self) -> usize {
        self.loader.len()
    }

    fn epoch(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<DetectBatch>> + '_> {
        Box::new(
            self.loader
                .epoch(epoch)
                .map(|batch| DetectBatch::from_samples(&batch?, &self.device)),
        )
    }
}

/// CenterNet's penalty-reduced focal loss (alpha 2, beta 4) of heatmap
/// `logits` against `target` (1 at centres), summed and divided by the
/// number of centres (at least 1). Computed from logits: `log p` and
/// `log (1 - p)` are log-sigmoids, finite at any logit.
pub fn focal_loss(logits: &Tensor, target: &Tensor, centres: usize) -> Result<Tensor> {
    let p = logits.sigmoid()?;
    let centre = target.eq(&target.ones_like())?.to_dtype(DType::F32)?;
    let background = centre.rsub_scalar(1.0)?;
    let at_centres = centre
        .mul(&p.rsub_scalar(1.0)?.square()?)?
        .mul(&logits.logsigmoid()?)?;
    let elsewhere = background
        .mul(&target.rsub_scalar(1.0)?.square()?.square()?)?
        .mul(&p.square()?)?
        .mul(&logits.neg()?.logsigmoid()?)?;
    at_centres
        .add(&elsewhere)?
        .sum_all()?
        .mul_scalar(-1.0 / centres.max(1) as f32)
}

/// The loss's parts, each a scalar tensor.
pub struct DetectLossParts {
    pub total: Tensor,
    pub heat: Tensor,
    pub giou: Tensor,
    pub l1: Tensor,
}

/// Focal loss on the heatmap plus `giou` times the GIoU loss and `l1` times
/// the L1 distance (in cells, summed over the four sides) of the boxes
/// predicted at the true centres, both averaged over the boxes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectLoss {
    pub giou: f32,
    pub l1: f32,
}

impl Default for DetectLoss {
    fn default() -> Self {
        DetectLoss { giou: 2.0, l1: 0.1 }
    }
}

/// Boxes `[N, K, 4]` from the box branch's raw distances `[N, 4, K]` at
/// cells whose centres are `[N, 2, K]` (pixels): softplus keeps the
/// distances positive, in cells.
fn boxes_at(raw: &Tensor, centres: &Tensor) -> Result<Tensor> {
    let sides = raw.softplus(1.0, 20.0)?.mul_scalar(STRIDE as f32)?;
    let near = centres.sub(&sides.narrow(1, 0, 2)?)?;
    let far = centres.add(&sides.narrow(1, 2, 2)?)?;
    Tensor::concat(&[&near, &far], 1)?.permute(&[0, 2, 1])
}

/// The box branch's raw values `[N, 4, K]` at `cells` (`[N, K]`, i32) of
/// `out`'s `[N, classes + 4, h, w]`.
fn raw_at(out: &Tensor, classes: usize, cells: &Tensor) -> Result<Tensor> {
    let [n, _, h, w] = four(out)?;
    let k = cells.shape()[1];
    let raw = out.narrow(1, classes, 4)?.reshape(&[n, 4, h * w])?;
    let index = cells.unsqueeze(1)?.broadcast_to(&[n, 4, k])?;
    raw.gather(2, &index)
}

fn four(t: &Tensor) -> Result<[usize; 4]> {
    match *t.shape() {
        [a, b, c, d] => Ok([a, b, c, d]),
        _ => Err(Error::shape(
            "detector",
            format!("expected [N, C, H, W], got {:?}", t.shape()),
        )),
    }
}

impl DetectLoss {
    pub fn parts(&self, out: &Tensor, batch: &DetectBatch) -> Result<DetectLossParts> {
        let [n, c, h, w] = four(&batch.heat)?;
        let classes = c;
        let k = batch.present.shape().get(1).copied().unwrap_or(0);
        let fits = out.shape() == [n, classes + 4, h, w]
            && batch.cells.shape() == [n, k]
            && batch.centres.shape() == [n, 2, k]
            && batch.boxes.shape() == [n, k, 4]
            && batch.present.shape() == [n, k];
        if !fits {
            return Err(Error::shape(
                "detect loss",
                format!(
                    "output {:?} against heat {:?}, cells {:?}, centres {:?}, boxes {:?}, present {:?}",
                    out.shape(),
                    batch.heat.shape(),
                    batch.cells.shape(),
                    batch.centres.shape(),
                    batch.boxes.shape(),
                    batch.present.shape()
                ),
            ));
        }
        let heat = focal_loss(&out.narrow(1, 0, classes)?, &batch.heat, batch.objects)?;
        let predicted = boxes_at(&raw_at(out, classes, &batch.cells)?, &batch.centres)?;
        let per_box = 1.0 / batch.objects.max(1) as f32;
        let giou = predicted
            .generalized_box_iou_loss(&batch.boxes, Reduction::None, 1e-7)?
            .mul(&batch.present)?
            .sum_all()?
            .mul_scalar(per_box)?;
        let l1 = predicted
            .sub(&batch.boxes)?
            .abs()?
            .sum(&[2], false)?
            .mul(&batch.present)?
            .sum_all()?
            .mul_scalar(per_box / STRIDE as f32)?;
        let total = heat
            .add(&giou.mul_scalar(self.giou)?)?
            .add(&l1.mul_scalar(self.l1)?)?;
        Ok(DetectLossParts {
            total,
            heat,
            giou,
            l1,
        })
    }
}

/// The best `k` peaks of every image, still on the device.
pub struct Candidates {
    /// `[N, k]` heatmap probabilities.
    pub scores: Tensor,
    /// `[N, k]` i32.
    pub classes: Tensor,
    /// `[N, k, 4]` `xyxy` pixels.
    pub boxes: Tensor,
}

/// Decodes the detector's output `[N, classes + 4, h, w]` on the device: a
/// cell is a peak of its best class when no neighbour in its 3x3 window is
/// higher (CenterNet's max-pool test), and the `k` best peaks of each image
/// keep their class, score and box. Only these `k` per image are read back.
pub fn candidates(out: &Tensor, classes: usize, k: usize) -> Result<Candidates> {
    let [n, _, h, w] = four(out)?;
    let heat = out.narrow(1, 0, classes)?.sigmoid()?;
    let pooled = heat.max_pool2d(Pool2dOptions::new(3).stride(1).padding(1))?;
    let peaks = Tensor::where_cond(&heat.eq(&pooled)?, &heat, &heat.zeros_like())?;
    let best = peaks.max(&[1], false)?.reshape(&[n, h * w])?;
    let class_of = peaks
        .argmax(1, false)?
        .to_dtype(DType::F32)?
        .reshape(&[n, h * w])?;
    let (scores, cells) = best.topk(k.min(h * w), 1)?;
    let classes_at = class_of.gather(1, &cells)?.to_dtype(DType::I32)?;
    let cell_centre = |c: usize| (c as f32 + 0.5) * STRIDE as f32;
    let xs = (0..h * w).map(|i| cell_centre(i % w));
    let ys = (0..h * w).map(|i| cell_centre(i / w));
    let grid = Tensor::from_vec(out.device(), xs.chain(ys).collect(), &[1, 2, h * w])?
        .broadcast_to(&[n, 2, h * w])?;
    let kk = cells.shape()[1];
    let centres = grid.gather(2, &cells.unsqueeze(1)?.broadcast_to(&[n, 2, kk])?)?;
    let boxes = boxes_at(&raw_at(out, classes, &cells)?, &centres)?;
    Ok(Candidates {
        scores,
        classes: classes_at,
        boxes,
    })
}

/// Candidates read back and filtered: scores at least `min_score`, then
/// per-class non-maximum suppression at `iou_threshold`, by decreasing
/// score.
pub fn detections(
    candidates: &Candidates,
    min_score: f32,
    iou_threshold: f32,
) -> Result<Vec<Vec<Detection>>> {
    let (n, k) = match *candidates.scores.shape() {
        [n, k] => (n, k),
        ref other => {
            return Err(Error::shape(
                "detections",
                format!("candidate scores must be [N, k], got {other:?}"),
            ))
        }
    };
    if candidates.classes.shape() != [n, k] || candidates.boxes.shape() != [n, k, 4] {
        return Err(Error::shape(
            "detections",
            format!(
                "scores {:?} need classes [N, k] and boxes [N, k, 4], got {:?} and {:?}",
                candidates.scores.shape(),
                candidates.classes.shape(),
                candidates.boxes.shape()
            ),
        ));
    }
    // One read: the classes come back as f32 (exact for class indices).
    let values = read_all(&[&candidates.scores, &candidates.boxes, &candidates.classes])?;
    let (scores, boxes, classes) = (&values[0], &values[1], &values[2]);
    let mut out = Vec::with_capacity(n);
    for image in 0..n {
        let kept: Vec<usize> = (image * k..(image + 1) * k)
            .filter(|&i| scores[i] >= min_score)
            .collect();
        let flat: Vec<f32> = kept
            .iter()
            .flat_map(|&i| boxes[4 * i..4 * i + 4].iter().copied())
            .collect();
        let s: Vec<f32> = kept.iter().map(|&i| scores[i]).collect();
        let groups: Vec<i64> = kept.iter().map(|&i| classes[i] as i64).collect();
        let order = batched_nms(&flat, &s, &groups, iou_threshold)?;
        out.push(
            order
                .into_iter()
                .map(|j| Detection {
                    class: groups[j] as usize,
                    score: s[j],
                    bbox: [
                        flat[4 * j],
                        flat[4 * j + 1],
                        flat[4 * j + 2],
                        flat[4 * j + 3],
                    ],
                })
                .collect(),
        );
    }
    Ok(out)
}

/// Candidates kept per image before suppression.
pub const CANDIDATES: usize = 20;
/// The lowest score counted in mAP (COCO keeps up to 100 boxes; a scene has
/// at most a handful).
pub const MIN_SCORE: f32 = 0.01;
/// The IoU above which a class's lower-scored box is suppressed.
pub const NMS_IOU: f32 = 0.5;
/// The lowest score drawn in pictures.
pub const SHOWN_SCORE: f32 = 0.3;

/// Detections for `[N, C, H, W]` images, with the model in evaluation mode.
pub fn detect(model: &Detector, images: &Tensor, min_score: f32) -> Result<Vec<Vec<Detection>>> {
    let _no_grad = no_grad();
    let out = model.forward(images)?;
    let c = candidates(&out, model.spec.classes, CANDIDATES)?;
    detections(&c, min_score, NMS_IOU)
}

/// A detector, Adam, the loss, and held-out scenes to measure against.
pub struct DetectTask {
    pub model: Detector,
    pub optimizer: Adam,
    pub loss: DetectLoss,
    pub held_out: DetectionScenes,
    /// Held-out scenes per forward when measuring.
    pub batch_size: usize,
    /// The held-out scenes drawn with their boxes after each epoch.
    pub shown: usize,
    device: Device,
}

impl DetectTask {
    /// `model` trained with AdamW at rate `lr` and decoupled `weight_decay`.
    pub fn new(
        model: Detector,
        loss: DetectLoss,
        held_out: DetectionScenes,
        lr: f64,
        weight_decay: f64,
        device: &Device,
    ) -> Result<DetectTask> {
        let optimizer = Adam::adamw(model.parameters(), lr)?.weight_decay(weight_decay);
        Ok(DetectTask {
            model,
            optimizer,
            loss,
            held_out,
            batch_size: 16,
            shown: 4,
            device: device.clone(),
        })
    }

    fn truths(&self, range: std::ops::Range<usize>) -> Result<Vec<Vec<TrueBox>>> {
        range
            .map(|i| {
                let scene = self.held_out.scenes.scene(i)?;
                Ok(scene
                    .boxes
                    .iter()
                    .zip(&scene.classes)
                    .map(|(&bbox, &class)| TrueBox {
                        class: class as usize,
                        bbox,
                    })
                    .collect())
            })
            .collect()
    }

    /// Detections of held-out scenes `range`, and their mean loss.
    fn held_out_detections(
        &mut self,
        range: std::ops::Range<usize>,
        min_score: f32,
    ) -> Result<(Vec<Vec<Detection>>, f64, DetectBatch)> {
        let _no_grad = no_grad();
        self.model.eval();
        let result = (|| {
            let batch = DetectBatch::of(&self.held_out, range, &self.device)?;
            let out = self.model.forward(&batch.images)?;
            // Kept, so that the loss and the decoding read it rather than
            // each running the network again.
            out.realize()?;
            let loss = self.loss.parts(&out, &batch)?.total;
            let c = candidates(&out, self.model.spec.classes, CANDIDATES)?;
            let found = detections(&c, min_score, NMS_IOU)?;
            Ok((found, loss.item()? as f64, batch))
        })();
        self.model.train();
        result
    }

    /// AP over every held-out scene, and the mean loss.
    pub fn measure(&mut self) -> Result<(ApReport, f64)> {
        let n = self.held_out.len();
        let step = self.batch_size.max(1);
        let (mut found, mut loss_sum) = (Vec::with_capacity(n), 0f64);
        let mut start = 0;
        while start < n {
            let end = (start + step).min(n);
            let (dets, loss, _) = self.held_out_detections(start..end, MIN_SCORE)?;
            found.extend(dets);
            loss_sum += loss * (end - start) as f64;
            start = end;
        }
        let report = average_precision(&found, &self.truths(0..n)?, self.model.spec.classes)?;
        Ok((report, loss_sum / n.max(1) as f64))
    }
}

impl Task for DetectTask {
    type Batch = DetectBatch;

    fn models(&mut self) -> Vec<(&str, &mut dyn Module)> {
        vec![("model", &mut self.model)]
    }

    fn optimizers(&mut self) -> Vec<(&str, &mut dyn Optimizer)> {
        vec![("model", &mut self.optimizer)]
    }

    fn train_step(&mut self, batch: DetectBatch, step: &mut Step) -> Result<()> {
        let out = self.model.forward(&batch.images)?;
        let parts = self.loss.parts(&out, &batch)?;
        let mut grads = parts.total.backward()?;
        step.clip(&mut grads, &self.model.parameters())?;
        step.record("loss", &parts.total)?;
        step.record("heat_loss", &parts.heat)?;
        step.record("giou_loss", &parts.giou)?;
        step.set_samples(batch.images.shape()[0]);
        step.optimize(&mut self.optimizer, &grads)
    }

    /// `test_loss`, `map50`, `map` (COCO's 0.5:0.95) and `ap50_<digit>`.
    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let (report, loss) = self.measure()?;
        let mut values = vec![
            ("test_loss".to_string(), loss),
            ("map50".to_string(), report.map50()),
            ("map".to_string(), report.map()),
        ];
        for (c, ap) in report.ap50.iter().enumerate() {
            values.push((format!("ap50_{c}"), *ap));
        }
        Ok(values)
    }

    fn model_metadata(&self, _name: &str) -> Vec<(String, String)> {
        let mut meta: Vec<(String, String)> = self.model.spec.to_metadata().into_iter().collect();
        meta.sort();
        meta
    }

    /// `predictions/epoch_NNN.png`: a few held-out scenes with their
    /// detections and, beside them, their true boxes.
    fn epoch_files(&mut self, epoch: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let shown = self.shown.min(self.held_out.len());
        if shown == 0 {
            return Ok(Vec::new());
        }
        let (found, _, batch) = self.held_out_detections(0..shown, SHOWN_SCORE)?;
        let images = batch.images.to_vec::<f32>()?;
        let truths = self.truths(0..shown)?;
        let png = crate::overlay::detection_sheet(
            &images,
            &found,
            Some(&truths),
            self.held_out.encoder.side,
        )?;
        Ok(vec![(format!("predictions/epoch_{epoch:03}.png"), png)])
    }
}

fn trainer(spec: &DetectorSpec, loss: &DetectLoss, options: &TrainOptions) -> Trainer {
    let model = Settings::new()
        .with("arch", spec.arch_name())
        .with("giou_weight", loss.giou)
        .with("l1_weight", loss.l1);
    options.trainer(&spec.arch_name(), model)
}

/// Trains a detector of `spec` on `train` scenes, measuring on `held_out`
/// after every epoch, into `options.out_dir`: `model.safetensors`, the
/// checkpoint, `metrics.csv`, `curves.png`, `predictions/epoch_NNN.png`.
/// The caller seeds the device before.
pub fn train(
    spec: &DetectorSpec,
    train: Arc<dyn SceneSource>,
    held_out: Arc<dyn SceneSource>,
    loss: DetectLoss,
    options: &TrainOptions,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<History> {
    options.validate()?;
    let trainer = trainer(spec, &loss, options);
    trainer.check()?;
    if train.len() < options.batch_size {
        return Err(Error::invalid(
            "train",
            format!(
                "{} training scenes are fewer than one batch of {}",
                train.len(),
                options.batch_size
            ),
        ));
    }
    let model = spec.build(device)?;
    let data = DetectBatches::new(
        DetectionScenes::new(train, spec.classes),
        options.batch_size,
        options.seed,
        device,
    )?;
    let mut task = DetectTask::new(
        model,
        loss,
        DetectionScenes::new(held_out, spec.classes),
        options.lr,
        options.weight_decay,
        device,
    )?;
    task.batch_size = options.batch_size;
    trainer.fit(&mut task, &data, device, observer)
}

/// A detector from a run's `model.safetensors`, in evaluation mode.
pub fn load_detector(path: &std::path::Path, device: &Device) -> Result<Detector> {
    load_trained(path, "model.safetensors", |meta| {
        DetectorSpec::from_metadata(meta)?.build(device)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_mark_centres_and_slots() -> Result<()> {
        let enc = TargetEncoder {
            classes: 10,
            side: 32,
            max_objects: 3,
            min_overlap: 0.7,
        };
        let t = enc.encode(&[[4.0, 8.0, 20.0, 28.0]], &[7])?;
        // Centre (12, 18) px: cell (3, 4) of an 8x8 map.
        let (n, cell) = (8, 4 * 8 + 3);
        assert_eq!(t.cells, vec![cell as i32, 0, 0]);
        assert_eq!(t.heat[7 * n * n + cell], 1.0);
        assert!(t.heat[7 * n * n + cell + 1] > 0.0 && t.heat[7 * n * n + cell + 1] < 1.0);
        assert_eq!(t.heat.iter().filter(|&&v| v == 1.0).count(), 1);
        assert!(t.heat[..7 * n * n].iter().all(|&v| v == 0.0));
        assert_eq!(t.centres, vec![14.0, 0.0, 0.0, 18.0, 0.0, 0.0]);
        assert_eq!(t.present, vec![1.0, 0.0, 0.0]);
        assert_eq!(t.boxes[..4], [4.0, 8.0, 20.0, 28.0]);
        assert!(enc.encode(&[[0.0; 4]; 4], &[0; 4]).is_err());
        assert!(enc.encode(&[[0.0, 0.0, 4.0, 4.0]], &[10]).is_err());
        Ok(())
    }

    #[test]
    fn radius_grows_with_the_box() {
        let small = gaussian_radius(4.0, 4.0, 0.7);
        let large = gaussian_radius(10.0, 10.0, 0.7);
        assert!(small > 0.0 && large > small, "{small} {large}");
    }
}
