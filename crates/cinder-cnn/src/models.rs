//! The networks, and the description of one that a checkpoint carries so that
//! `cinder eval` and `cinder predict` can rebuild it.

use std::collections::HashMap;

use cinder_nn::{Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential};
use cinder_tensor::{Conv2dOptions, Device, Error, Result};

use crate::imagefile::ImageStyle;

/// Which network, on which images: enough to rebuild it from a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub arch: Arch,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    LeNet,
}

impl ModelSpec {
    /// The LeNet-style network for one-channel images of `height` x `width`.
    pub fn lenet(height: usize, width: usize, classes: usize) -> ModelSpec {
        ModelSpec {
            arch: Arch::LeNet,
            in_channels: 1,
            height,
            width,
            classes,
        }
    }

    pub fn build(&self, device: &Device) -> Result<Sequential> {
        match self.arch {
            Arch::LeNet => lenet(device, self),
        }
    }

    /// How training images looked, for converting a user's image file.
    pub fn image_style(&self) -> ImageStyle {
        match (self.in_channels, self.height, self.width) {
            (1, 8, 8) => ImageStyle::Digits8x8,
            (1, 28, 28) => ImageStyle::Mnist28,
            _ => ImageStyle::Natural {
                height: self.height,
                width: self.width,
            },
        }
    }

    /// `[C, H, W]` of one input image.
    pub fn input_shape(&self) -> [usize; 3] {
        [self.in_channels, self.height, self.width]
    }

    /// Stored in a checkpoint's header.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let arch = match self.arch {
            Arch::LeNet => "lenet",
        };
        HashMap::from([
            ("cinder.arch".to_string(), arch.to_string()),
            (
                "cinder.input".to_string(),
                format!("{}x{}x{}", self.in_channels, self.height, self.width),
            ),
            ("cinder.classes".to_string(), self.classes.to_string()),
        ])
    }

    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<ModelSpec> {
        let missing = |key: &str| {
            Error::invalid(
                "checkpoint",
                format!("the file has no {key:?} entry: it was not written by `cinder train cnn`"),
            )
        };
        let arch = match meta.get("cinder.arch").map(String::as_str) {
            Some("lenet") => Arch::LeNet,
            Some(other) => {
                return Err(Error::invalid(
                    "checkpoint",
                    format!("unknown architecture {other:?}"),
                ))
            }
            None => return Err(missing("cinder.arch")),
        };
        let input = meta
            .get("cinder.input")
            .ok_or_else(|| missing("cinder.input"))?;
        let dims: Vec<usize> = input
            .split('x')
            .map(|d| d.parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::invalid("checkpoint", format!("bad input shape {input:?}")))?;
        let classes = meta
            .get("cinder.classes")
            .ok_or_else(|| missing("cinder.classes"))?
            .parse::<usize>()
            .map_err(|_| Error::invalid("checkpoint", "bad class count"))?;
        match dims[..] {
            [c, h, w] if c > 0 && h > 0 && w > 0 && classes > 0 => Ok(ModelSpec {
                arch,
                in_channels: c,
                height: h,
                width: w,
                classes,
            }),
            _ => Err(Error::invalid(
                "checkpoint",
                format!("bad input shape {input:?} or class count {classes}"),
            )),
        }
    }
}

/// Two 3x3 convolutions (32 and 64 channels, padding 1), each followed by
/// ReLU and 2x2 max-pooling, then a 128-unit hidden layer: the MNIST-shaped
/// network of `cinder bench cnn`, for any image at least 4x4. Its layers
/// are numbered as in the same `torch.nn.Sequential`.
fn lenet(device: &Device, spec: &ModelSpec) -> Result<Sequential> {
    if spec.height < 4 || spec.width < 4 {
        return Err(Error::invalid(
            "LeNet",
            format!(
                "images must be at least 4x4, got {}x{}",
                spec.height, spec.width
            ),
        ));
    }
    let pad1 = Conv2dOptions::default().padding(1);
    let flat = 64 * (spec.height / 2 / 2) * (spec.width / 2 / 2);
    Ok(Sequential::new()
        .add(Conv2d::new(device, spec.in_channels, 32, 3, pad1, true)?)
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Conv2d::new(device, 32, 64, 3, pad1, true)?)
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten)
        .add(Linear::new(device, flat, 128, true)?)
        .add(ReLU)
        .add(Linear::new(device, 128, spec.classes, true)?))
}
