//! DCGAN's two networks, laid out as PyTorch's DCGAN example lays them out
//! (`main` a `Sequential`, the label's embedding beside it), so a
//! state_dict saved by PyTorch loads by name.

use std::collections::HashMap;

use cinder_nn::module::prefixed;
use cinder_nn::{
    init, BatchNorm2d, Conv2d, ConvTranspose2d, Embedding, Flatten, LeakyReLU, Linear, Module,
    ReLU, Sequential, Tanh,
};
use cinder_tensor::{Conv2dOptions, DType, Device, Error, Result, Tensor};

/// The DCGAN paper's weight scale: convolutions N(0, 0.02), batch-norm
/// scales N(1, 0.02).
pub const INIT_STD: f32 = 0.02;

/// The discriminator's leaky slope.
pub const LEAKY_SLOPE: f32 = 0.2;

/// What builds a generator and discriminator pair; stored in their files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GanSpec {
    /// Side of the square one-channel images: a multiple of 4 (28, 8).
    pub image_size: usize,
    /// Size of the generator's Gaussian noise `z`.
    pub latent: usize,
    /// Classes fed to both networks (a conditional GAN); 0 for none.
    pub classes: usize,
}

impl GanSpec {
    /// A DCGAN for `image_size` images from `latent` noise values.
    pub fn dcgan(image_size: usize, latent: usize) -> GanSpec {
        GanSpec {
            image_size,
            latent,
            classes: 0,
        }
    }

    /// The same, told which of `classes` to draw.
    pub fn conditional(image_size: usize, latent: usize, classes: usize) -> GanSpec {
        GanSpec {
            image_size,
            latent,
            classes,
        }
    }

    pub fn is_conditional(&self) -> bool {
        self.classes > 0
    }

    /// The generator's first map's side: a quarter of the image's.
    fn base(&self) -> usize {
        self.image_size / 4
    }

    pub fn validate(&self) -> Result<()> {
        if self.image_size < 4 || !self.image_size.is_multiple_of(4) {
            return Err(Error::invalid(
                "gan",
                format!(
                    "the image side must be a positive multiple of 4 (two stride-2 layers), got {}",
                    self.image_size
                ),
            ));
        }
        if self.latent == 0 {
            return Err(Error::invalid("gan", "the noise size must be at least 1"));
        }
        Ok(())
    }

    /// `dcgan28-z100` or `cdcgan28-z100-c10`.
    pub fn arch_name(&self) -> String {
        if self.is_conditional() {
            format!(
                "cdcgan{}-z{}-c{}",
                self.image_size, self.latent, self.classes
            )
        } else {
            format!("dcgan{}-z{}", self.image_size, self.latent)
        }
    }

    /// A model file's header: `cinder.family = gan` and the sizes.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            ("cinder.family".to_string(), "gan".to_string()),
            ("cinder.arch".to_string(), self.arch_name()),
            ("cinder.image_size".to_string(), self.image_size.to_string()),
            ("cinder.latent".to_string(), self.latent.to_string()),
            ("cinder.classes".to_string(), self.classes.to_string()),
        ])
    }

    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<GanSpec> {
        if meta.get("cinder.family").map(String::as_str) != Some("gan") {
            return Err(Error::invalid(
                "gan",
                "not a GAN's file (its header has no cinder.family = gan)",
            ));
        }
        let number = |key: &str| -> Result<usize> {
            meta.get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::invalid("gan", format!("the header's {key} is missing")))
        };
        let spec = GanSpec {
            image_size: number("cinder.image_size")?,
            latent: number("cinder.latent")?,
            classes: number("cinder.classes")?,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// A generator with the DCGAN paper's initial weights.
    pub fn generator(&self, device: &Device) -> Result<Generator> {
        self.validate()?;
        let stride2 = Conv2dOptions::default().stride(2).padding(1);
        let main = Sequential::new()
            .add(dcgan_transpose(
                device,
                self.latent + self.classes,
                128,
                self.base(),
                Conv2dOptions::default(),
            )?)
            .add(dcgan_batch_norm(device, 128)?)
            .add(ReLU)
            .add(dcgan_transpose(device, 128, 64, 4, stride2)?)
            .add(dcgan_batch_norm(device, 64)?)
            .add(ReLU)
            .add(dcgan_transpose(device, 64, 1, 4, stride2)?)
            .add(Tanh);
        let label_embedding = if self.is_conditional() {
            Some(Embedding::new(device, self.classes, self.classes, None)?)
        } else {
            None
        };
        Ok(Generator {
            spec: *self,
            label_embedding,
            main,
        })
    }

    /// A discriminator with the DCGAN paper's initial weights.
    pub fn discriminator(&self, device: &Device) -> Result<Discriminator> {
        self.validate()?;
        let stride2 = Conv2dOptions::default().stride(2).padding(1);
        let inputs = if self.is_conditional() { 2 } else { 1 };
        let base = self.base();
        let main = Sequential::new()
            .add(dcgan_conv(device, inputs, 64, stride2)?)
            .add(LeakyReLU(LEAKY_SLOPE))
            .add(dcgan_conv(device, 64, 128, stride2)?)
            .add(dcgan_batch_norm(device, 128)?)
            .add(LeakyReLU(LEAKY_SLOPE))
            .add(Flatten)
            .add(Linear::new(device, 128 * base * base, 1, true)?);
        let side = self.image_size;
        let label_embedding = if self.is_conditional() {
            Some(Embedding::new(device, self.classes, side * side, None)?)
        } else {
            None
        };
        Ok(Discriminator {
            spec: *self,
            label_embedding,
            main,
        })
    }
}

fn dcgan_transpose(
    device: &Device,
    inputs: usize,
    outputs: usize,
    kernel: usize,
    options: Conv2dOptions,
) -> Result<ConvTranspose2d> {
    let mut layer = ConvTranspose2d::new(device, inputs, outputs, kernel, options, 0, false)?;
    layer.weight = init::normal(device, layer.weight.shape(), 0.0, INIT_STD)?.requires_grad_();
    Ok(layer)
}

fn dcgan_conv(
    device: &Device,
    inputs: usize,
    outputs: usize,
    options: Conv2dOptions,
) -> Result<Conv2d> {
    let mut layer = Conv2d::new(device, inputs, outputs, 4, options, false)?;
    layer.weight = init::normal(device, layer.weight.shape(), 0.0, INIT_STD)?.requires_grad_();
    Ok(layer)
}

fn dcgan_batch_norm(device: &Device, channels: usize) -> Result<BatchNorm2d> {
    let mut layer = BatchNorm2d::new(device, channels)?;
    layer.weight = Some(init::normal(device, &[channels], 1.0, INIT_STD)?.requires_grad_());
    layer.bias = Some(init::zeros(device, &[channels])?.requires_grad_());
    Ok(layer)
}

/// Class labels as the embeddings' indices: i32 of shape `[B]`, each below
/// `classes`.
fn check_labels(
    op: &'static str,
    labels: Option<&Tensor>,
    spec: &GanSpec,
    batch: usize,
) -> Result<()> {
    match (labels, spec.is_conditional()) {
        (None, false) => Ok(()),
        (Some(_), false) => Err(Error::invalid(
            op,
            "this GAN is not conditional: it takes no labels",
        )),
        (None, true) => Err(Error::invalid(
            op,
            format!(
                "this GAN is conditional: pass one label in 0..{} per sample",
                spec.classes
            ),
        )),
        (Some(l), true) => {
            if l.shape() != [batch] || l.dtype() == DType::F32 {
                return Err(Error::shape(
                    op,
                    format!(
                        "labels must be integers of shape [{batch}], got {:?} {:?}",
                        l.dtype(),
                        l.shape()
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// Either network's parameters under PyTorch's names: the label's
/// embedding (conditional only), then `main`.
fn network_parameters(
    label_embedding: &Option<Embedding>,
    main: &Sequential,
) -> Vec<(String, Tensor)> {
    let mut params = label_embedding
        .as_ref()
        .map(|e| prefixed("label_embedding", e.named_parameters()))
        .unwrap_or_default();
    params.extend(prefixed("main", main.named_parameters()));
    params
}

/// DCGAN's generator: noise `[B, latent]` (and labels `[B]`) to images
/// `[B, 1, S, S]` in [-1, 1].
pub struct Generator {
    pub spec: GanSpec,
    pub label_embedding: Option<Embedding>,
    pub main: Sequential,
}

impl Generator {
    pub fn generate(&self, z: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        self.main.forward(&self.input(z, labels)?)
    }

    /// Every layer's output of `main`, the images last: a training step
    /// keeps them so that the generator's backward, submitted after the
    /// discriminator's update, does not compute its forward again.
    pub fn generate_each(&self, z: &Tensor, labels: Option<&Tensor>) -> Result<Vec<Tensor>> {
        self.main.forward_each(&self.input(z, labels)?)
    }

    /// `main`'s input: the noise (with the label's embedding) as
    /// `[B, C, 1, 1]`.
    fn input(&self, z: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let spec = &self.spec;
        if z.dims() != 2 || z.shape()[1] != spec.latent {
            return Err(Error::shape(
                "Generator",
                format!("noise must be [B, {}], got {:?}", spec.latent, z.shape()),
            ));
        }
        let batch = z.shape()[0];
        check_labels("Generator", labels, spec, batch)?;
        let input = match (&self.label_embedding, labels) {
            (Some(embedding), Some(labels)) => {
                Tensor::concat(&[z, &embedding.forward(labels)?], 1)?
            }
            _ => z.clone(),
        };
        let channels = input.shape()[1];
        input.reshape(&[batch, channels, 1, 1])
    }
}

impl Module for Generator {
    /// Noise to images, for an unconditional generator.
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        self.generate(z, None)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        network_parameters(&self.label_embedding, &self.main)
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        prefixed("main", self.main.named_buffers())
    }

    fn set_training(&mut self, training: bool) {
        self.main.set_training(training);
    }
}

/// DCGAN's discriminator: images `[B, 1, S, S]` (and labels `[B]`) to one
/// logit each, `[B]`: real above 0.
pub struct Discriminator {
    pub spec: GanSpec,
    pub label_embedding: Option<Embedding>,
    pub main: Sequential,
}

impl Discriminator {
    pub fn logits(&self, images: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let side = self.spec.image_size;
        if images.dims() != 4 || images.shape()[1..] != [1, side, side] {
            return Err(Error::shape(
                "Discriminator",
                format!(
                    "images must be [B, 1, {side}, {side}], got {:?}",
                    images.shape()
                ),
            ));
        }
        let batch = images.shape()[0];
        check_labels("Discriminator", labels, &self.spec, batch)?;
        let input = match (&self.label_embedding, labels) {
            (Some(embedding), Some(labels)) => {
                let plane = embedding
                    .forward(labels)?
                    .reshape(&[batch, 1, side, side])?;
                Tensor::concat(&[images, &plane], 1)?
            }
            _ => images.clone(),
        };
        self.main.forward(&input)?.reshape(&[batch])
    }
}

impl Module for Discriminator {
    /// Images to logits, for an unconditional discriminator.
    fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.logits(images, None)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        network_parameters(&self.label_embedding, &self.main)
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        prefixed("main", self.main.named_buffers())
    }

    fn set_training(&mut self, training: bool) {
        self.main.set_training(training);
    }
}
