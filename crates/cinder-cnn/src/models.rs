//! The networks, and the description of one that a checkpoint carries so that
//! `cinder eval` and `cinder predict` can rebuild it.

use std::collections::HashMap;

use cinder_nn::module::prefixed;
use cinder_nn::{
    AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, Module, ReLU,
    Sequential,
};
use cinder_tensor::{Conv2dOptions, Device, Error, Result, Tensor};

use crate::imagefile::ImageStyle;

/// Which network, on which images: enough to rebuild it from a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelSpec {
    pub arch: Arch,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
    /// The LeNet's dropout before its classifier layer (0: none, and no
    /// layer, so that its layers keep PyTorch's numbering).
    pub dropout: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    LeNet,
    /// A small ResNet: three stages of one basic block (16, 32, 64 channels).
    ResNet,
    /// A perceptron with one hidden layer of this many units, on the image
    /// flattened.
    Mlp {
        hidden: usize,
    },
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
            dropout: 0.0,
        }
    }

    /// A small ResNet for RGB images of `height` x `width`.
    pub fn resnet(height: usize, width: usize, classes: usize) -> ModelSpec {
        ModelSpec {
            arch: Arch::ResNet,
            in_channels: 3,
            height,
            width,
            classes,
            dropout: 0.0,
        }
    }

    /// The digits' perceptron: 64 inputs (an 8x8 image), `hidden` units.
    pub fn mlp(height: usize, width: usize, hidden: usize, classes: usize) -> ModelSpec {
        ModelSpec {
            arch: Arch::Mlp { hidden },
            in_channels: 1,
            height,
            width,
            classes,
            dropout: 0.0,
        }
    }

    /// Rejects a description no network fits.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(
                "model",
                format!("dropout must be in [0, 1), got {}", self.dropout),
            ));
        }
        if self.dropout > 0.0 && self.arch != Arch::LeNet {
            return Err(Error::invalid(
                "model",
                format!("only the LeNet takes dropout, not the {}", self.arch_name()),
            ));
        }
        Ok(())
    }

    /// The same network with dropout `p` before its classifier layer (the
    /// LeNet only: the others have none).
    pub fn with_dropout(self, p: f32) -> ModelSpec {
        ModelSpec { dropout: p, ..self }
    }

    pub fn build(&self, device: &Device) -> Result<Box<dyn Module>> {
        self.validate()?;
        Ok(match self.arch {
            Arch::LeNet => Box::new(lenet(device, self)?),
            Arch::ResNet => Box::new(ResNet::new(device, self.in_channels, self.classes)?),
            Arch::Mlp { hidden } => {
                let inputs = self.in_channels * self.height * self.width;
                Box::new(
                    Sequential::new()
                        .add(Flatten)
                        .add(Linear::new(device, inputs, hidden, true)?)
                        .add(ReLU)
                        .add(Linear::new(device, hidden, self.classes, true)?),
                )
            }
        })
    }

    /// The architecture's name, as `--arch` and checkpoints spell it.
    pub fn arch_name(&self) -> String {
        match self.arch {
            Arch::LeNet => "lenet".into(),
            Arch::ResNet => "resnet".into(),
            Arch::Mlp { hidden } => format!("mlp{hidden}"),
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
        let mut meta = HashMap::from([
            ("cinder.arch".to_string(), self.arch_name()),
            (
                "cinder.input".to_string(),
                format!("{}x{}x{}", self.in_channels, self.height, self.width),
            ),
            ("cinder.classes".to_string(), self.classes.to_string()),
        ]);
        if self.dropout > 0.0 {
            meta.insert("cinder.dropout".to_string(), self.dropout.to_string());
        }
        meta
    }

    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<ModelSpec> {
        let missing = |key: &str| {
            Error::invalid(
                "checkpoint",
                format!("the file has no {key:?} entry: it was not written by `cinder train`"),
            )
        };
        let arch = match meta.get("cinder.arch").map(String::as_str) {
            Some("lenet") => Arch::LeNet,
            Some("resnet") => Arch::ResNet,
            Some(other) if other.starts_with("mlp") => {
                match other["mlp".len()..].parse::<usize>() {
                    Ok(hidden) if hidden > 0 => Arch::Mlp { hidden },
                    _ => {
                        return Err(Error::invalid(
                            "checkpoint",
                            format!("unknown architecture {other:?}"),
                        ))
                    }
                }
            }
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
        let dropout = match meta.get("cinder.dropout") {
            None => 0.0,
            Some(p) => p
                .parse::<f32>()
                .ok()
                .filter(|p| (0.0..1.0).contains(p))
                .ok_or_else(|| Error::invalid("checkpoint", format!("bad dropout {p:?}")))?,
        };
        match dims[..] {
            [c, h, w] if c > 0 && h > 0 && w > 0 && classes > 0 => Ok(ModelSpec {
                arch,
                in_channels: c,
                height: h,
                width: w,
                classes,
                dropout,
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
pub fn lenet(device: &Device, spec: &ModelSpec) -> Result<Sequential> {
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
    let mut net = Sequential::new()
        .add(Conv2d::new(device, spec.in_channels, 32, 3, pad1, true)?)
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Conv2d::new(device, 32, 64, 3, pad1, true)?)
        .add(ReLU)
        .add(MaxPool2d::new(2))
        .add(Flatten)
        .add(Linear::new(device, flat, 128, true)?)
        .add(ReLU);
    if spec.dropout > 0.0 {
        net = net.add(Dropout::new(spec.dropout)?);
    }
    Ok(net.add(Linear::new(device, 128, spec.classes, true)?))
}

fn conv3x3(device: &Device, c_in: usize, c_out: usize, stride: usize) -> Result<Conv2d> {
    Conv2d::new(
        device,
        c_in,
        c_out,
        3,
        Conv2dOptions::default().stride(stride).padding(1),
        false,
    )
}

/// torchvision's `BasicBlock`: two 3x3 convolutions with batch norm, and a
/// 1x1 strided projection on the shortcut when the shape changes.
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<Sequential>,
}

impl BasicBlock {
    pub fn new(device: &Device, c_in: usize, c_out: usize, stride: usize) -> Result<BasicBlock> {
        let downsample = if stride != 1 || c_in != c_out {
            Some(
                Sequential::new()
                    .add(Conv2d::new(
                        device,
                        c_in,
                        c_out,
                        1,
                        Conv2dOptions::default().stride(stride),
                        false,
                    )?)
                    .add(BatchNorm2d::new(device, c_out)?),
            )
        } else {
            None
        };
        Ok(BasicBlock {
            conv1: conv3x3(device, c_in, c_out, stride)?,
            bn1: BatchNorm2d::new(device, c_out)?,
            conv2: conv3x3(device, c_out, c_out, 1)?,
            bn2: BatchNorm2d::new(device, c_out)?,
            downsample,
        })
    }

    fn children(&self) -> Vec<(&str, &dyn Module)> {
        let mut c: Vec<(&str, &dyn Module)> = vec![
            ("conv1", &self.conv1),
            ("bn1", &self.bn1),
            ("conv2", &self.conv2),
            ("bn2", &self.bn2),
        ];
        if let Some(d) = &self.downsample {
            c.push(("downsample", d));
        }
        c
    }
}

impl Module for BasicBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let y = self.bn2.forward(&self.conv2.forward(&y)?)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        y.add(&shortcut)?.relu()
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.children()
            .into_iter()
            .flat_map(|(n, m)| prefixed(n, m.named_parameters()))
            .collect()
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        self.children()
            .into_iter()
            .flat_map(|(n, m)| prefixed(n, m.named_buffers()))
            .collect()
    }

    fn set_training(&mut self, training: bool) {
        self.bn1.set_training(training);
        self.bn2.set_training(training);
        if let Some(d) = &mut self.downsample {
            d.set_training(training);
        }
    }
}

/// A small ResNet in torchvision's naming (`conv1`, `bn1`, `layer1.0.conv1`,
/// ..., `fc`): a 3x3 stem, three stages of one basic block with 16, 32 and
/// 64 channels (the last two halve the resolution), global average pooling
/// and a linear classifier. For small RGB images (32x32 and such).
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<BasicBlock>,
    fc: Linear,
}

impl ResNet {
    pub fn new(device: &Device, in_channels: usize, classes: usize) -> Result<ResNet> {
        Ok(ResNet {
            conv1: conv3x3(device, in_channels, 16, 1)?,
            bn1: BatchNorm2d::new(device, 16)?,
            layers: vec![
                BasicBlock::new(device, 16, 16, 1)?,
                BasicBlock::new(device, 16, 32, 2)?,
                BasicBlock::new(device, 32, 64, 2)?,
            ],
            fc: Linear::new(device, 64, classes, true)?,
        })
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut c: Vec<(String, &dyn Module)> = vec![
            ("conv1".to_string(), &self.conv1),
            ("bn1".to_string(), &self.bn1),
        ];
        for (i, block) in self.layers.iter().enumerate() {
            c.push((format!("layer{}.0", i + 1), block));
        }
        c.push(("fc".to_string(), &self.fc));
        c
    }
}

impl Module for ResNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        for block in &self.layers {
            y = block.forward(&y)?;
        }
        let pooled = AdaptiveAvgPool2d([1, 1]).forward(&y)?;
        self.fc.forward(&Flatten.forward(&pooled)?)
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
        self.bn1.set_training(training);
        for block in &mut self.layers {
            block.set_training(training);
        }
    }
}
