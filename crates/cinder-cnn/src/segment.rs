//! Semantic segmentation: a U-Net, per-pixel cross-entropy with class
//! weights and an optional Dice term, per-class IoU, and training on
//! cinder-train's loop over scenes of digits ([`DigitScenes`]).

use std::collections::HashMap;
use std::sync::Arc;

use cinder_data::{Collate, DigitScenes, Loader, Scene, SceneSamples, SceneSource};
use cinder_nn::checkpoint::load_trained;
use cinder_nn::module::prefixed;
use cinder_nn::{
    Adam, BatchNorm2d, Conv2d, ConvTranspose2d, MaxPool2d, Module, Optimizer, ReLU, Sequential,
};
use cinder_tensor::{
    no_grad, read_all, Conv2dOptions, CrossEntropyOptions, DType, Device, Error, Result, Tensor,
};
use cinder_train::{Batches, History, Observer, Settings, Step, Task, TrainOptions, Trainer};

/// What builds a U-Net; stored in its file's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UNetSpec {
    pub in_channels: usize,
    pub classes: usize,
    /// Channels of the first level; each level below doubles them.
    pub width: usize,
    /// Levels below the first: the image is halved `depth` times, so its
    /// sides must be multiples of `2^depth`.
    pub depth: usize,
}

impl UNetSpec {
    /// The U-Net for [`DigitScenes`]: one channel in, 11 classes out,
    /// 16 channels halved three times (96 -> 12).
    pub fn digit_scenes() -> UNetSpec {
        UNetSpec {
            in_channels: 1,
            classes: DigitScenes::MASK_CLASSES,
            width: 16,
            depth: 3,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.in_channels == 0 || self.classes < 2 || self.width == 0 || self.depth == 0 {
            return Err(Error::invalid(
                "unet",
                format!(
                    "a U-Net needs input channels, at least 2 classes, a width and a depth of at least 1; got {self:?}"
                ),
            ));
        }
        Ok(())
    }

    /// `unet-w16-d3-c11`.
    pub fn arch_name(&self) -> String {
        format!("unet-w{}-d{}-c{}", self.width, self.depth, self.classes)
    }

    pub fn to_metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            ("cinder.family".to_string(), "segment".to_string()),
            ("cinder.arch".to_string(), self.arch_name()),
            (
                "cinder.in_channels".to_string(),
                self.in_channels.to_string(),
            ),
            ("cinder.classes".to_string(), self.classes.to_string()),
            ("cinder.width".to_string(), self.width.to_string()),
            ("cinder.depth".to_string(), self.depth.to_string()),
        ])
    }

    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<UNetSpec> {
        if meta.get("cinder.family").map(String::as_str) != Some("segment") {
            return Err(Error::invalid(
                "unet",
                "not a segmentation model's file (its header has no cinder.family = segment)",
            ));
        }
        let number = |key: &str| -> Result<usize> {
            meta.get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::invalid("unet", format!("the header's {key} is missing")))
        };
        let spec = UNetSpec {
            in_channels: number("cinder.in_channels")?,
            classes: number("cinder.classes")?,
            width: number("cinder.width")?,
            depth: number("cinder.depth")?,
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn build(&self, device: &Device) -> Result<UNet> {
        UNet::new(device, *self)
    }
}

/// Two 3x3 convolutions, each with batch norm and ReLU: the U-Net's block.
fn double_conv(device: &Device, c_in: usize, c_out: usize) -> Result<Sequential> {
    let conv = |c_in| {
        Conv2d::new(
            device,
            c_in,
            c_out,
            3,
            Conv2dOptions::default().padding(1),
            false,
        )
    };
    Ok(Sequential::new()
        .add(conv(c_in)?)
        .add(BatchNorm2d::new(device, c_out)?)
        .add(ReLU)
        .add(conv(c_out)?)
        .add(BatchNorm2d::new(device, c_out)?)
        .add(ReLU))
}

/// One step up: a stride-2 transposed convolution doubles the map and
/// halves the channels, the encoder's map of that size joins it
/// (concatenated, skip first), and a block mixes them.
struct UpLevel {
    up: ConvTranspose2d,
    conv: Sequential,
}

/// Ronneberger et al.'s U-Net with padded convolutions and batch norm:
/// `encoder.i` blocks with max-pooling between them, `decoder.i` levels
/// joining the encoder's maps by concatenation, a 1x1 `head` to class
/// logits. `[N, C, H, W]` in, `[N, classes, H, W]` out.
pub struct UNet {
    pub spec: UNetSpec,
    encoder: Vec<Sequential>,
    decoder: Vec<UpLevel>,
    head: Conv2d,
}

impl UNet {
    pub fn new(device: &Device, spec: UNetSpec) -> Result<UNet> {
        spec.validate()?;
        let channels = |level: usize| spec.width << level;
        let mut encoder = vec![double_conv(device, spec.in_channels, channels(0))?];
        for level in 1..=spec.depth {
            encoder.push(double_conv(device, channels(level - 1), channels(level))?);
        }
        let mut decoder = Vec::with_capacity(spec.depth);
        for level in (0..spec.depth).rev() {
            decoder.push(UpLevel {
                up: ConvTranspose2d::new(
                    device,
                    channels(level + 1),
                    channels(level),
                    2,
                    Conv2dOptions::default().stride(2),
                    0,
                    true,
                )?,
                conv: double_conv(device, 2 * channels(level), channels(level))?,
            });
        }
        let head = Conv2d::new(
            device,
            channels(0),
            spec.classes,
            1,
            Conv2dOptions::default(),
            true,
        )?;
        Ok(UNet {
            spec,
            encoder,
            decoder,
            head,
        })
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut c: Vec<(String, &dyn Module)> = Vec::new();
        for (i, block) in self.encoder.iter().enumerate() {
            c.push((format!("encoder.{i}"), block));
        }
        for (i, level) in self.decoder.iter().enumerate() {
            c.push((format!("decoder.{i}.up"), &level.up));
            c.push((format!("decoder.{i}.conv"), &level.conv));
        }
        c.push(("head".to_string(), &self.head));
        c
    }
}

impl Module for UNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let step = 1usize << self.spec.depth;
        let shape = x.shape();
        if shape.len() != 4
            || shape[1] != self.spec.in_channels
            || !shape[2].is_multiple_of(step)
            || !shape[3].is_multiple_of(step)
        {
            return Err(Error::shape(
                "unet",
                format!(
                    "input {shape:?}: the U-Net takes [N, {}, H, W] with H and W multiples of {step}",
                    self.spec.in_channels
                ),
            ));
        }
        let mut skips = Vec::with_capacity(self.encoder.len());
        let mut y = x.clone();
        for (level, block) in self.encoder.iter().enumerate() {
            if level > 0 {
                y = MaxPool2d::new(2).forward(&y)?;
            }
            y = block.forward(&y)?;
            skips.push(y.clone());
        }
        skips.pop();
        for level in &self.decoder {
            let up = level.up.forward(&y)?;
            let skip = skips
                .pop()
                .ok_or_else(|| Error::invalid("unet", "more levels up than down"))?;
            y = level.conv.forward(&Tensor::concat(&[&skip, &up], 1)?)?;
        }
        self.head.forward(&y)
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
        for block in &mut self.encoder {
            block.set_training(training);
        }
        for level in &mut self.decoder {
            level.conv.set_training(training);
        }
    }
}

/// The loss of [`SegmentTask`]: cross-entropy over pixels with a weight per
/// class, plus `dice` times the soft Dice loss averaged over the classes.
#[derive(Clone, Debug)]
pub struct SegmentLoss {
    pub class_weights: Vec<f32>,
    pub dice: f32,
    /// `class_weights` on the device, uploaded once rather than every step.
    weight: Tensor,
}

impl SegmentLoss {
    /// Weights `(mean frequency / frequency)^(1/2)` of each class's pixels
    /// in `scenes` (the first up to 200), so the rare digit pixels count
    /// more than the background without drowning it.
    pub fn balanced(
        scenes: &dyn SceneSource,
        classes: usize,
        dice: f32,
        device: &Device,
    ) -> Result<SegmentLoss> {
        let mut counts = vec![1u64; classes];
        for i in 0..scenes.len().min(200) {
            for &m in &scenes.scene(i)?.mask {
                if let Some(c) = counts.get_mut(m as usize) {
                    *c += 1;
                }
            }
        }
        let mean = counts.iter().sum::<u64>() as f64 / classes as f64;
        let class_weights: Vec<f32> = counts
            .iter()
            .map(|&c| (mean / c as f64).sqrt() as f32)
            .collect();
        let weight = Tensor::from_slice(device, &class_weights, &[classes])?;
        // Uploaded now, so the first step's graph reads it as every later
        // step does, and they share one plan.
        weight.realize()?;
        Ok(SegmentLoss {
            class_weights,
            dice,
            weight,
        })
    }

    /// `logits` `[N, C, H, W]` against class `masks` `[N, H, W]` (i32).
    pub fn loss(&self, logits: &Tensor, masks: &Tensor) -> Result<Tensor> {
        let classes = self.class_weights.len();
        let options = CrossEntropyOptions::default().weight(self.weight.clone());
        let ce = logits.cross_entropy_with(masks, &options)?;
        if self.dice == 0.0 {
            return Ok(ce);
        }
        ce.add(&dice_loss(logits, masks, classes)?.mul_scalar(self.dice)?)
    }
}

/// `1 - mean over classes of (2 |P ∩ T| + 1) / (|P| + |T| + 1)`, with `P`
/// the softmax probabilities and `T` the one-hot targets, summed over the
/// batch's pixels.
pub fn dice_loss(logits: &Tensor, masks: &Tensor, classes: usize) -> Result<Tensor> {
    let probs = logits.softmax(1)?;
    // [N, H, W, C] -> [N, C, H, W]
    let target = masks.one_hot(classes)?.permute(&[0, 3, 1, 2])?;
    let axes = [0, 2, 3];
    let overlap = probs.mul(&target)?.sum(&axes, false)?;
    let sizes = probs.sum(&axes, false)?.add(&target.sum(&axes, false)?)?;
    let score = overlap
        .mul_scalar(2.0)?
        .add_scalar(1.0)?
        .div(&sizes.add_scalar(1.0)?)?;
    score.mean_all()?.rsub_scalar(1.0)
}

/// A pixel confusion matrix and the measures from it.
#[derive(Clone, Debug, PartialEq)]
pub struct Confusion {
    pub classes: usize,
    /// `counts[truth * classes + predicted]`.
    pub counts: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Confusion {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    /// Adds `[classes * classes]` counts.
    pub fn add(&mut self, counts: &[f32]) {
        for (c, &v) in self.counts.iter_mut().zip(counts) {
            *c += v.round() as u64;
        }
    }

    /// Per class: pixels of it called it, over pixels of it or called it;
    /// NaN for a class neither present nor predicted.
    pub fn iou(&self) -> Vec<f64> {
        let k = self.classes;
        (0..k)
            .map(|c| {
                let hit = self.counts[c * k + c];
                let truth: u64 = self.counts[c * k..(c + 1) * k].iter().sum();
                let called: u64 = (0..k).map(|t| self.counts[t * k + c]).sum();
                hit as f64 / (truth + called - hit) as f64
            })
            .collect()
    }

    /// The mean of the classes' IoUs that are defined.
    pub fn mean_iou(&self) -> f64 {
        let defined: Vec<f64> = self.iou().into_iter().filter(|v| !v.is_nan()).collect();
        defined.iter().sum::<f64>() / defined.len() as f64
    }

    pub fn pixel_accuracy(&self) -> f64 {
        let k = self.classes;
        let hits: u64 = (0..k).map(|c| self.counts[c * k + c]).sum();
        hits as f64 / self.counts.iter().sum::<u64>() as f64
    }
}

/// `[classes * classes]` pixel counts of (truth, predicted) pairs, counted
/// on the device: one-hot truths transposed times one-hot predictions, so
/// only the matrix is read back, not the maps.
pub fn confusion_counts(logits: &Tensor, masks: &Tensor, classes: usize) -> Result<Tensor> {
    let predicted = logits.argmax(1, false)?.to_dtype(DType::I32)?;
    let pixels = masks.numel();
    let truth = masks.reshape(&[pixels])?.one_hot(classes)?;
    let called = predicted.reshape(&[pixels])?.one_hot(classes)?;
    truth.t()?.matmul(&called)?.reshape(&[classes * classes])
}

/// A batch of scenes on the device: images `[N, 1, S, S]`, masks `[N, S, S]`.
pub struct SceneBatch {
    pub images: Tensor,
    pub masks: Tensor,
}

/// Scenes as one device batch.
pub fn scene_batch(scenes: &[Scene], device: &Device) -> Result<SceneBatch> {
    let side = scenes.first().map_or(0, |s| s.side);
    let n = scenes.len();
    let images: Vec<f32> = scenes
        .iter()
        .flat_map(|s| s.image.iter().copied())
        .collect();
    let masks: Vec<i32> = scenes.iter().flat_map(|s| s.mask.iter().copied()).collect();
    Ok(SceneBatch {
        images: Tensor::from_vec(device, images, &[n, 1, side, side])?,
        masks: Tensor::from_vec(device, masks, &[n, side, side])?,
    })
}

/// Shuffled training scenes, drawn on the loader's thread.
pub struct SceneBatches {
    pub loader: Loader<SceneSamples>,
    pub device: Device,
}

impl SceneBatches {
    pub fn new(
        scenes: Arc<dyn SceneSource>,
        batch_size: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let loader = Loader::new(Arc::new(SceneSamples(scenes)), batch_size, true, seed)?
            .drop_last(true)
            .collate(Collate::new().pad(DigitScenes::CLASSES, -1.0));
        Ok(SceneBatches {
            loader,
            device: device.clone(),
        })
    }
}

impl Batches for SceneBatches {
    type Batch = SceneBatch;

    fn len(&self) -> usize {
        self.loader.len()
    }

    fn epoch(&self, epoch: usize) -> Box<dyn Iterator<Item = Result<SceneBatch>> + '_> {
        Box::new(self.loader.epoch(epoch).map(|batch| {
            let batch = batch?;
            Ok(SceneBatch {
                images: batch.tensor(DigitScenes::IMAGE, &self.device)?,
                masks: batch.tensor(DigitScenes::MASK, &self.device)?,
            })
        }))
    }
}

/// A U-Net, Adam, the loss, and held-out scenes to measure against.
pub struct SegmentTask {
    pub model: UNet,
    pub optimizer: Adam,
    pub loss: SegmentLoss,
    pub held_out: Arc<dyn SceneSource>,
    /// Held-out scenes per forward when measuring.
    pub batch_size: usize,
    /// The held-out scenes drawn with their predicted masks after each epoch.
    pub shown: usize,
    device: Device,
}

impl SegmentTask {
    /// `model` trained with AdamW at rate `lr` and decoupled `weight_decay`.
    pub fn new(
        model: UNet,
        loss: SegmentLoss,
        held_out: Arc<dyn SceneSource>,
        lr: f64,
        weight_decay: f64,
        device: &Device,
    ) -> Result<SegmentTask> {
        let optimizer = Adam::adamw(model.parameters(), lr)?.weight_decay(weight_decay);
        Ok(SegmentTask {
            model,
            optimizer,
            loss,
            held_out,
            batch_size: 16,
            shown: 4,
            device: device.clone(),
        })
    }

    /// Logits of scenes `range` of the held-out set, in evaluation mode.
    fn held_out_logits(&mut self, range: std::ops::Range<usize>) -> Result<(Tensor, SceneBatch)> {
        let scenes: Vec<Scene> = range
            .map(|i| self.held_out.scene(i))
            .collect::<Result<_>>()?;
        let batch = scene_batch(&scenes, &self.device)?;
        Ok((self.model.forward(&batch.images)?, batch))
    }

    /// The pixel confusion of every held-out scene, and the mean loss.
    pub fn measure(&mut self) -> Result<(Confusion, f64)> {
        let _no_grad = no_grad();
        self.model.eval();
        let classes = self.model.spec.classes;
        let mut confusion = Confusion::new(classes);
        let (mut loss_sum, n) = (0f64, self.held_out.len());
        let step = self.batch_size.max(1);
        let mut start = 0;
        while start < n {
            let end = (start + step).min(n);
            let (logits, batch) = self.held_out_logits(start..end)?;
            let loss = self.loss.loss(&logits, &batch.masks)?;
            let counts = confusion_counts(&logits, &batch.masks, classes)?;
            let values = read_all(&[&loss, &counts])?;
            loss_sum += values[0][0] as f64 * (end - start) as f64;
            confusion.add(&values[1]);
            start = end;
        }
        self.model.train();
        Ok((confusion, loss_sum / n.max(1) as f64))
    }
}

impl Task for SegmentTask {
    type Batch = SceneBatch;

    fn models(&mut self) -> Vec<(&str, &mut dyn Module)> {
        vec![("model", &mut self.model)]
    }

    fn optimizers(&mut self) -> Vec<(&str, &mut dyn Optimizer)> {
        vec![("model", &mut self.optimizer)]
    }

    fn train_step(&mut self, batch: SceneBatch, step: &mut Step) -> Result<()> {
        let logits = self.model.forward(&batch.images)?;
        let loss = self.loss.loss(&logits, &batch.masks)?;
        let mut grads = loss.backward()?;
        step.clip(&mut grads, &self.model.parameters())?;
        step.record("loss", &loss)?;
        let right = logits
            .argmax(1, false)?
            .to_dtype(DType::I32)?
            .eq(&batch.masks)?
            .to_dtype(DType::F32)?
            .mean_all()?;
        step.record("pixel_accuracy", &right)?;
        step.set_samples(batch.images.shape()[0]);
        step.optimize(&mut self.optimizer, &grads)
    }

    /// `test_loss`, `mean_iou`, `pixel_accuracy` and `iou_<class>` for
    /// every class (`iou_background`, `iou_0` to `iou_9` on digit scenes).
    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let (confusion, loss) = self.measure()?;
        let mut values = vec![
            ("test_loss".to_string(), loss),
            ("mean_iou".to_string(), confusion.mean_iou()),
            (
                "test_pixel_accuracy".to_string(),
                confusion.pixel_accuracy(),
            ),
        ];
        for (c, iou) in confusion.iou().into_iter().enumerate() {
            values.push((format!("iou_{}", class_name(c)), iou));
        }
        Ok(values)
    }

    fn model_metadata(&self, _name: &str) -> Vec<(String, String)> {
        let mut meta: Vec<(String, String)> = self.model.spec.to_metadata().into_iter().collect();
        meta.sort();
        meta
    }

    /// `predictions/epoch_NNN.png`: a few held-out scenes, each beside its
    /// predicted mask and its true one.
    fn epoch_files(&mut self, epoch: usize) -> Result<Vec<(String, Vec<u8>)>> {
        let shown = self.shown.min(self.held_out.len());
        if shown == 0 {
            return Ok(Vec::new());
        }
        let (images, predicted, truth) = {
            let _no_grad = no_grad();
            self.model.eval();
            let result = self.held_out_logits(0..shown);
            self.model.train();
            let (logits, batch) = result?;
            let predicted = logits.argmax(1, false)?.to_dtype(DType::I32)?;
            (
                batch.images.to_vec::<f32>()?,
                predicted.to_vec::<i32>()?,
                batch.masks.to_vec::<i32>()?,
            )
        };
        let png = crate::overlay::segmentation_sheet(
            &images,
            &predicted,
            Some(&truth),
            shown,
            self.held_out.side(),
        )?;
        Ok(vec![(format!("predictions/epoch_{epoch:03}.png"), png)])
    }
}

/// `background` for class 0, the digit for the others.
pub fn class_name(class: usize) -> String {
    match class {
        0 => "background".to_string(),
        c => (c - 1).to_string(),
    }
}

fn trainer(spec: &UNetSpec, loss: &SegmentLoss, options: &TrainOptions) -> Trainer {
    let model = Settings::new()
        .with("arch", spec.arch_name())
        .with("dice", loss.dice)
        .with("class_weights", format!("{:?}", loss.class_weights));
    options.trainer(&spec.arch_name(), model)
}

/// Trains a U-Net of `spec` on `train` scenes, measuring on `held_out`
/// after every epoch, into `options.out_dir`: `model.safetensors`, the
/// checkpoint, `metrics.csv`, `curves.png`, `predictions/epoch_NNN.png`.
/// The caller seeds the device before.
pub fn train(
    spec: &UNetSpec,
    train: Arc<dyn SceneSource>,
    held_out: Arc<dyn SceneSource>,
    dice: f32,
    options: &TrainOptions,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<History> {
    options.validate()?;
    let loss = SegmentLoss::balanced(train.as_ref(), spec.classes, dice, device)?;
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
    let data = SceneBatches::new(train, options.batch_size, options.seed, device)?;
    let mut task = SegmentTask::new(
        model,
        loss,
        held_out,
        options.lr,
        options.weight_decay,
        device,
    )?;
    task.batch_size = options.batch_size;
    trainer.fit(&mut task, &data, device, observer)
}

/// An image file (PNG, JPEG; any size and colour) as a scene: resized to
/// `side` x `side`, grey, ink bright on dark as the scenes are drawn (a
/// picture that is mostly light, dark ink on paper, is inverted).
pub fn load_scene_image(path: &std::path::Path, side: usize) -> Result<Vec<f32>> {
    scene_image(path, &crate::imagefile::decode_image(path)?, side)
}

/// [`load_scene_image`] of a picture already decoded from `path`.
pub fn scene_image(
    path: &std::path::Path,
    picture: &image::DynamicImage,
    side: usize,
) -> Result<Vec<f32>> {
    let style = crate::imagefile::ImageStyle::Natural {
        height: side,
        width: side,
    };
    let rgb = crate::imagefile::image_values(path, picture, style)?;
    let plane = side * side;
    let mut grey: Vec<f32> = (0..plane)
        .map(|i| (rgb[i] + rgb[plane + i] + rgb[2 * plane + i]) / 3.0)
        .collect();
    if grey.iter().sum::<f32>() > 0.5 * plane as f32 {
        grey.iter_mut().for_each(|v| *v = 1.0 - *v);
    }
    Ok(grey)
}

/// The class of every pixel of `[N, C, H, W]` images, `[N, H, W]` (i32),
/// with the model in evaluation mode.
pub fn predict_masks(model: &UNet, images: &Tensor) -> Result<Tensor> {
    let _no_grad = no_grad();
    model
        .forward(images)?
        .argmax(1, false)?
        .to_dtype(DType::I32)
}

/// A U-Net from a run's `model.safetensors`, in evaluation mode.
pub fn load_unet(path: &std::path::Path, device: &Device) -> Result<UNet> {
    load_trained(path, "model.safetensors", |meta| {
        UNetSpec::from_metadata(meta)?.build(device)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_measures() {
        // Truth rows, predicted columns; class 2 never appears.
        let mut c = Confusion::new(3);
        c.add(&[5.0, 1.0, 0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
        let iou = c.iou();
        assert!((iou[0] - 5.0 / 8.0).abs() < 1e-12);
        assert!((iou[1] - 2.0 / 5.0).abs() < 1e-12);
        assert!(iou[2].is_nan());
        assert!((c.mean_iou() - (5.0 / 8.0 + 2.0 / 5.0) / 2.0).abs() < 1e-12);
        assert!((c.pixel_accuracy() - 0.7).abs() < 1e-12);
    }
}
