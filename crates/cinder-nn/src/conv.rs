//! Convolution and pooling layers (`torch.nn.Conv2d` and friends) with
//! PyTorch's parameter names, shapes and default initialisation.

use cinder_tensor::{Conv2dOptions, Device, Error, Pool2dOptions, Result, Tensor};

use crate::init;
use crate::module::Module;

/// `torch.nn.Conv2d`: `weight: [out, in / groups, kh, kw]`, `bias: [out]`.
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub options: Conv2dOptions,
}

/// Kaiming-uniform weights with a = sqrt(5) and a bias uniform in
/// ±1/sqrt(fan_in): PyTorch's `reset_parameters` for convolutions.
fn conv_parameters(
    device: &Device,
    weight_shape: [usize; 4],
    fan_in: usize,
    bias_len: Option<usize>,
) -> Result<(Tensor, Option<Tensor>)> {
    let weight = init::kaiming_uniform(device, &weight_shape, 5f32.sqrt())?.requires_grad_();
    let bound = 1.0 / (fan_in as f32).sqrt();
    let bias = match bias_len {
        Some(n) => Some(init::uniform(device, &[n], -bound, bound)?.requires_grad_()),
        None => None,
    };
    Ok((weight, bias))
}

fn check_channels(
    op: &'static str,
    c_in: usize,
    c_out: usize,
    k: usize,
    groups: usize,
) -> Result<()> {
    if c_in == 0
        || c_out == 0
        || k == 0
        || groups == 0
        || !c_in.is_multiple_of(groups)
        || !c_out.is_multiple_of(groups)
    {
        return Err(Error::invalid(
            op,
            format!(
                "{c_in} -> {c_out} channels, kernel {k}, {groups} groups: sizes must be positive and channels divisible by groups"
            ),
        ));
    }
    Ok(())
}

impl Conv2d {
    /// A square `kernel`; set stride, padding, dilation and groups in `options`.
    pub fn new(
        device: &Device,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        options: Conv2dOptions,
        bias: bool,
    ) -> Result<Conv2d> {
        check_channels("Conv2d", in_channels, out_channels, kernel, options.groups)?;
        let per_group = in_channels / options.groups;
        let (weight, bias) = conv_parameters(
            device,
            [out_channels, per_group, kernel, kernel],
            per_group * kernel * kernel,
            bias.then_some(out_channels),
        )?;
        Ok(Conv2d {
            weight,
            bias,
            options,
        })
    }
}

fn weights_and_bias(weight: &Tensor, bias: &Option<Tensor>) -> Vec<(String, Tensor)> {
    let mut p = vec![("weight".to_string(), weight.clone())];
    if let Some(b) = bias {
        p.push(("bias".to_string(), b.clone()));
    }
    p
}

impl Module for Conv2d {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.conv2d(&self.weight, self.bias.as_ref(), self.options)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        weights_and_bias(&self.weight, &self.bias)
    }
}

/// `torch.nn.ConvTranspose2d`: `weight: [in, out / groups, kh, kw]`.
pub struct ConvTranspose2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub options: Conv2dOptions,
    pub output_padding: [usize; 2],
}

impl ConvTranspose2d {
    pub fn new(
        device: &Device,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        options: Conv2dOptions,
        output_padding: usize,
        bias: bool,
    ) -> Result<ConvTranspose2d> {
        check_channels(
            "ConvTranspose2d",
            in_channels,
            out_channels,
            kernel,
            options.groups,
        )?;
        let per_group = out_channels / options.groups;
        // PyTorch computes fan_in from the weight's dim 1 (out / groups).
        let (weight, bias) = conv_parameters(
            device,
            [in_channels, per_group, kernel, kernel],
            per_group * kernel * kernel,
            bias.then_some(out_channels),
        )?;
        Ok(ConvTranspose2d {
            weight,
            bias,
            options,
            output_padding: [output_padding, output_padding],
        })
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.conv_transpose2d(
            &self.weight,
            self.bias.as_ref(),
            self.options,
            self.output_padding,
        )
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        weights_and_bias(&self.weight, &self.bias)
    }
}

/// `torch.nn.MaxPool2d`.
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d(pub Pool2dOptions);

impl MaxPool2d {
    /// A `k`x`k` window with stride `k`.
    pub fn new(k: usize) -> MaxPool2d {
        MaxPool2d(Pool2dOptions::new(k))
    }
}

impl Module for MaxPool2d {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.max_pool2d(self.0)
    }
}

/// `torch.nn.AvgPool2d` (`count_include_pad` defaults to true, as in PyTorch).
#[derive(Clone, Copy, Debug)]
pub struct AvgPool2d {
    pub options: Pool2dOptions,
    pub count_include_pad: bool,
}

impl AvgPool2d {
    pub fn new(k: usize) -> AvgPool2d {
        AvgPool2d {
            options: Pool2dOptions::new(k),
            count_include_pad: true,
        }
    }
}

impl Module for AvgPool2d {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.avg_pool2d(self.options, self.count_include_pad)
    }
}

/// `torch.nn.AdaptiveAvgPool2d`.
#[derive(Clone, Copy, Debug)]
pub struct AdaptiveAvgPool2d(pub [usize; 2]);

impl Module for AdaptiveAvgPool2d {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.adaptive_avg_pool2d(self.0)
    }
}

impl MaxPool2d {
    /// `MaxPool2d(return_indices=True)`: the pooled values and PyTorch's
    /// flat per-plane indices of the maxima (i32).
    pub fn forward_with_indices(&self, input: &Tensor) -> Result<(Tensor, Tensor)> {
        input.max_pool2d_with_indices(self.0)
    }
}

/// `torch.nn.AdaptiveMaxPool2d`.
#[derive(Clone, Copy, Debug)]
pub struct AdaptiveMaxPool2d(pub [usize; 2]);

impl AdaptiveMaxPool2d {
    /// `AdaptiveMaxPool2d(return_indices=True)`.
    pub fn forward_with_indices(&self, input: &Tensor) -> Result<(Tensor, Tensor)> {
        input.adaptive_max_pool2d_with_indices(self.0)
    }
}

impl Module for AdaptiveMaxPool2d {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        input.adaptive_max_pool2d(self.0)
    }
}

/// `torch.nn.MaxUnpool2d(kernel_size, stride, padding)`: the inverse of a
/// [`MaxPool2d`] with the same geometry, given its indices. It takes two
/// inputs, so it is not a [`Module`].
#[derive(Clone, Copy, Debug)]
pub struct MaxUnpool2d {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl MaxUnpool2d {
    /// A `k`x`k` window with stride `k` (PyTorch's default stride).
    pub fn new(k: usize) -> MaxUnpool2d {
        MaxUnpool2d {
            kernel: [k, k],
            stride: [k, k],
            padding: [0, 0],
        }
    }

    pub fn forward(
        &self,
        input: &Tensor,
        indices: &Tensor,
        output_size: Option<[usize; 2]>,
    ) -> Result<Tensor> {
        input.max_unpool2d(indices, self.kernel, self.stride, self.padding, output_size)
    }
}
