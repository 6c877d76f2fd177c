//! Convolution and pooling over NCHW images. Everything is built from two
//! window primitives, `unfold` (im2col) and its adjoint `fold` (col2im), plus
//! matmuls and reductions, so gradients follow from their rules.

use cinder_runtime::{DType, Error, Fill, Node, Result, ViewSpec, Window2d};

use crate::tensor::Tensor;

/// Stride, padding and dilation of a 2-D convolution, and its groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

impl Conv2dOptions {
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

/// Kernel, stride, padding, dilation and rounding of a 2-D pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dOptions {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    /// Round the number of windows up, as PyTorch's `ceil_mode`.
    pub ceil_mode: bool,
}

impl Pool2dOptions {
    /// A `k`x`k` window moving by `k` (PyTorch's default stride).
    pub fn new(k: usize) -> Self {
        Pool2dOptions {
            kernel: [k, k],
            stride: [k, k],
            padding: [0, 0],
            dilation: [1, 1],
            ceil_mode: false,
        }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    pub fn ceil_mode(mut self, on: bool) -> Self {
        self.ceil_mode = on;
        self
    }
}

/// Window positions along one axis, PyTorch's formula; `None` when the
/// window does not fit.
fn positions(
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    ceil_mode: bool,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    let room = (size + 2 * padding).checked_sub(span)?;
    let mut n = if ceil_mode {
        room.div_ceil(stride) + 1
    } else {
        room / stride + 1
    };
    // The last window must start inside the image or its left padding.
    if ceil_mode && (n - 1) * stride >= size + padding {
        n -= 1;
    }
    Some(n)
}

pub(crate) fn nonzero(op: &'static str, what: &str, v: [usize; 2]) -> Result<()> {
    if v.contains(&0) {
        return Err(Error::invalid(
            op,
            format!("{what} must be positive, got {v:?}"),
        ));
    }
    Ok(())
}

/// A convolution weight's four dims (`layout` names the first two for the
/// error), after checking it and the options' strides and dilations.
fn conv_weight(
    op: &'static str,
    weight: &Tensor,
    layout: &str,
    opts: &Conv2dOptions,
) -> Result<[usize; 4]> {
    let [a, b, kh, kw] = match *weight.shape() {
        [a, b, c, d] => [a, b, c, d],
        _ => {
            return Err(Error::shape(
                op,
                format!(
                    "weight must be [{layout}, KH, KW], got {:?}",
                    weight.shape()
                ),
            ))
        }
    };
    nonzero(op, "stride", opts.stride)?;
    nonzero(op, "dilation", opts.dilation)?;
    nonzero(op, "kernel size", [kh, kw])?;
    Ok([a, b, kh, kw])
}

fn uneven_channels(op: &'static str, x: &Tensor, weight: &Tensor, groups: usize) -> Error {
    Error::shape(
        op,
        format!(
            "input {:?} and weight {:?} with {groups} groups: channels must split evenly",
            x.shape(),
            weight.shape()
        ),
    )
}

pub(crate) fn image_dims(op: &'static str, x: &Tensor) -> Result<[usize; 4]> {
    match *x.shape() {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(Error::shape(
            op,
            format!("expected an [N, C, H, W] input, got {:?}", x.shape()),
        )),
    }
}

impl Tensor {
    /// Every window's taps, `[N, C, H, W] -> [N, C, KH, KW, OH, OW]` (im2col);
    /// taps outside the image read zero. The gradient is [`Tensor::fold2d`].
    pub fn unfold2d(&self, win: &Window2d) -> Result<Tensor> {
        self.unfold_filled(win, Fill::Zero)
    }

    fn unfold_filled(&self, win: &Window2d, fill: Fill) -> Result<Tensor> {
        let w = win.clone();
        Ok(Tensor::from_op(
            self.node().unfold(win, fill)?,
            "unfold2d",
            &[self],
            Box::new(move |g, _| Ok(vec![Some(g.fold2d(&w)?)])),
        ))
    }

    /// Sums every window's taps back onto the image,
    /// `[N, C, KH, KW, OH, OW] -> [N, C, H, W]` (col2im): the adjoint of
    /// [`Tensor::unfold2d`].
    pub fn fold2d(&self, win: &Window2d) -> Result<Tensor> {
        let w = win.clone();
        Ok(Tensor::from_op(
            self.node().fold(win)?,
            "fold2d",
            &[self],
            Box::new(move |g, _| Ok(vec![Some(g.unfold2d(&w)?)])),
        ))
    }

    /// PyTorch's `conv2d`: `self` is `[N, C_in, H, W]`, `weight` is
    /// `[C_out, C_in / groups, KH, KW]`, `bias` is `[C_out]`. Computed as a
    /// GEMM of the weights with the unfolded input.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: Conv2dOptions,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d";
        let [n, c_in, h, w] = image_dims(OP, self)?;
        let [c_out, c_in_g, kh, kw] = conv_weight(OP, weight, "C_out, C_in/groups", &opts)?;
        let g = opts.groups;
        if g == 0 || c_in % g != 0 || c_out % g != 0 || c_in / g != c_in_g {
            return Err(uneven_channels(OP, self, weight, g));
        }
        let out = |axis: usize, size: usize, k: usize| {
            positions(
                size,
                k,
                opts.stride[axis],
                opts.padding[axis],
                opts.dilation[axis],
                false,
            )
        };
        let (Some(oh), Some(ow)) = (out(0, h, kh), out(1, w, kw)) else {
            return Err(Error::shape(
                OP,
                format!(
                    "kernel {kh}x{kw} (dilation {:?}) is larger than the padded input {:?}",
                    opts.dilation,
                    self.shape()
                ),
            ));
        };
        let win = Window2d {
            image: [h, w],
            out: [oh, ow],
            kernel: [kh, kw],
            stride: opts.stride,
            padding: opts.padding,
            dilation: opts.dilation,
        };
        // Where no weight gradient will want the unfolded input (the weight
        // and bias frozen, or autodiff off), a CPU adapter's texture kernel
        // fetches the windows from a channels-last copy of the input instead
        // (an implicit GEMM, the output channels-last): the unfold, KH * KW
        // times the input, is never written.
        let takes_grad = |t: &Tensor| crate::autograd::grad_enabled() && t.requires_grad();
        if !takes_grad(weight)
            && !bias.is_some_and(takes_grad)
            && windows_fetchable(self.device(), g, c_in, &[n * h * w, n * oh * ow])
        {
            return conv2d_implicit(self, weight, bias, &win, [n, c_in, c_out]);
        }
        // One GEMM per group over the whole batch: cols is [C_in/g * KH * KW,
        // N * OH * OW], so the weight gradient is a single long-K product
        // rather than a batch of small ones summed afterwards. The unfold is
        // computed straight into that layout (a permuted view is free).
        let taps = c_in_g * kh * kw;
        let (l, c_out_g) = (oh * ow, c_out / g);
        let (x, wd) = (self.detach(), weight.detach());
        let cols = x
            .unfold2d(&win)?
            .reshape(&[n, g, taps, l])?
            .permute(&[1, 2, 0, 3])?
            .reshape(&[g, taps, n * l])?;
        let w2 = wd.reshape(&[g, c_out_g, taps])?;
        // A bias rides in the GEMM as one more column of the weight against
        // a row of ones under the columns (two when that keeps K even, as
        // the subgroup kernel's paired loads want; the second meets a zero
        // column): the product then includes it, and the weight gradient's
        // GEMM yields the bias gradient as its extra row, where a separate
        // reduction over the whole output cost as much as a pass over it.
        let (w_k, cols_k, inputs) = match bias {
            None => (w2.clone(), cols.clone(), vec![self, weight]),
            Some(b) if b.shape() == [c_out] => {
                let device = self.device();
                let extra = if taps % 2 == 1 { 1 } else { 2 };
                let ones = Tensor::ones(device, &[g, extra, n * l]);
                let b_col = b.detach().reshape(&[g, c_out_g, 1])?;
                let w_zero = Tensor::zeros(device, &[g, c_out_g, 1]);
                let mut w_parts = vec![&w2, &b_col];
                if extra == 2 {
                    w_parts.push(&w_zero);
                }
                (
                    Tensor::concat(&w_parts, 2)?,
                    Tensor::concat(&[&cols, &ones], 1)?,
                    vec![self, weight, b],
                )
            }
            Some(b) => return Err(bad_bias(OP, c_out, b)),
        };
        let y = w_k
            .matmul(&cols_k)?
            .reshape(&[c_out, n, l])?
            .permute(&[1, 0, 2])?
            .reshape(&[n, c_out, oh, ow])?;
        let has_bias = inputs.len() == 3;
        let weight_shape = weight.shape().to_vec();
        let win_back = win.clone();
        Ok(Tensor::from_op(
            y.node().clone(),
            OP,
            &inputs,
            Box::new(move |grad, _| {
                // dW^T = cols @ dY^T: both operands are read as they lie
                // (cols from the forward pass, dY^T a copy the size of the
                // output), where dW = dY @ cols^T would transpose cols.
                let dy_t = grad
                    .reshape(&[n, g, c_out_g, l])?
                    .permute(&[1, 0, 3, 2])?
                    .reshape(&[g, n * l, c_out_g])?;
                let dw_k = cols_k.matmul(&dy_t)?;
                let dw = dw_k
                    .narrow(1, 0, taps)?
                    .transpose(1, 2)?
                    .reshape(&weight_shape)?;
                let dx = conv2d_input_gradient(&dy_t, &wd, &win_back, [n, g])?;
                let mut grads = vec![Some(dx), Some(dw)];
                if has_bias {
                    // The product's extra row: dY^T summed against the ones.
                    grads.push(Some(dw_k.narrow(1, taps, 1)?.reshape(&[g * c_out_g])?));
                }
                Ok(grads)
            }),
        ))
    }
}

/// Whether the texture kernel can fetch a convolution's windows itself: a
/// CPU adapter, one group, the image's channels in whole texels (a texel is
/// 4 channels of one tap), and each of `rows` (the image's pixels, the
/// product's rows) under a texture's side (one texel under the limit:
/// texture sides step off powers of two).
fn windows_fetchable(
    device: &cinder_runtime::Device,
    groups: usize,
    channels: usize,
    rows: &[usize],
) -> bool {
    let side = device.limits().max_texture_dimension_2d as usize;
    device.texture_matmul()
        && groups == 1
        && channels.is_multiple_of(4)
        && rows.iter().all(|&r| r < side)
}

/// `conv2d` as `rows(x^T) @ W'`: `x^T` the input channels-last,
/// `[N * H * W, C_in]`, whose windows (`Op::ConvRows`, column `(ky, kx,
/// ci)`) the texture kernel fetches itself, and `W'` the weight as
/// `[KH * KW * C_in, C_out]`. Only the input takes a gradient.
fn conv2d_implicit(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    win: &Window2d,
    [n, c_in, c_out]: [usize; 3],
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    let ([h, w], [kh, kw], [oh, ow]) = (win.image, win.kernel, win.out);
    let taps = (kh * kw) as i64;
    let wd = weight.detach();
    let w_rows = Tensor::from_node(wd.node().view(
        &[kh, kw, c_in, c_out],
        ViewSpec {
            strides: vec![kw as i64, 1, taps, c_in as i64 * taps],
            offset: 0,
            mask: None,
        },
    )?)
    .reshape(&[kh * kw * c_in, c_out])?;
    let x_rows = x
        .detach()
        .permute(&[0, 2, 3, 1])?
        .reshape(&[n * h * w, c_in])?;
    let rows = Tensor::from_node(x_rows.node().conv_rows(win)?);
    let y = rows
        .matmul(&w_rows)?
        .reshape(&[n, oh, ow, c_out])?
        .permute(&[0, 3, 1, 2])?;
    let win_back = win.clone();
    let l = oh * ow;
    let y = Tensor::from_op(
        y.node().clone(),
        OP,
        &[x, weight],
        Box::new(move |grad, _| {
            let dy_t = grad
                .reshape(&[n, 1, c_out, l])?
                .permute(&[1, 0, 3, 2])?
                .reshape(&[1, n * l, c_out])?;
            let dx = conv2d_input_gradient(&dy_t, &wd, &win_back, [n, 1])?;
            Ok(vec![Some(dx), None])
        }),
    );
    add_channel_bias(OP, y, bias, c_out)
}

/// `conv2d`'s input gradient from `dy_t`, dY as `[groups, N * OH * OW,
/// C_out / groups]`, and the weight `wd`.
fn conv2d_input_gradient(
    dy_t: &Tensor,
    wd: &Tensor,
    win: &Window2d,
    [n, g]: [usize; 2],
) -> Result<Tensor> {
    let (c_out, c_in_g, kh, kw) = (wd.shape()[0], wd.shape()[1], wd.shape()[2], wd.shape()[3]);
    let ([h, w], [oh, ow]) = (win.image, win.out);
    let l = oh * ow;
    match flipped_window(win, n, c_out, g, dy_t.device()) {
        // A stride-1 convolution's input gradient is the convolution of dY
        // with the flipped kernel: on a CPU adapter the texture kernel
        // fetches dY's windows from dY^T itself (an implicit GEMM) and
        // writes dX^T, where the GEMM-then-fold below writes and re-reads
        // KH * KW values per input pixel.
        Some(win_t) => {
            let rows = Tensor::from_node(dy_t.reshape(&[n * l, c_out])?.node().conv_rows(&win_t)?);
            rows.matmul(&flipped_weight(wd, [c_out, c_in_g, kh, kw])?)?
                .reshape(&[n, h, w, c_in_g])?
                .permute(&[0, 3, 1, 2])
        }
        None => match phases(dy_t.device(), win, [n, c_out, c_in_g], g) {
            Some(phases) => phase_input_gradient(
                &dy_t.reshape(&[n * l, c_out])?,
                wd,
                win,
                &phases,
                [n, c_out, c_in_g],
            ),
            // dcols^T = dY^T @ W: the same dY^T copy, and W as it lies; the
            // fold reads the transposed columns through a view.
            None => dy_t
                .matmul(&wd.reshape(&[g, c_out / g, c_in_g * kh * kw])?)?
                .reshape(&[g, n, oh, ow, c_in_g, kh, kw])?
                .permute(&[1, 0, 4, 5, 6, 2, 3])?
                .reshape(&[n, g * c_in_g, kh, kw, oh, ow])?
                .fold2d(win),
        },
    }
}

/// The windows of a stride-1 convolution's input gradient over its output
/// gradient (kernel flipped, padding `dilation * (k - 1) - padding`), where
/// the texture kernel can fetch them: a CPU adapter, one group, output
/// channels in whole texels, and dY^T's rows (`batch` images) within a
/// texture's side. `None` where the GEMM-then-fold serves: materialized,
/// the windows would be C_out / C_in times that GEMM's output.
fn flipped_window(
    win: &Window2d,
    batch: usize,
    c_out: usize,
    groups: usize,
    device: &cinder_runtime::Device,
) -> Option<Window2d> {
    if win.stride != [1, 1]
        || !windows_fetchable(device, groups, c_out, &[batch * win.out[0] * win.out[1]])
    {
        return None;
    }
    let pad =
        |axis: usize| (win.dilation[axis] * (win.kernel[axis] - 1)).checked_sub(win.padding[axis]);
    Some(Window2d {
        image: win.out,
        out: win.image,
        kernel: win.kernel,
        stride: [1, 1],
        padding: [pad(0)?, pad(1)?],
        dilation: win.dilation,
    })
}

/// Input channels below which the GEMM-then-fold serves even where phases
/// could: the phases' products have C_in columns, padded to the texture
/// kernel's 32-column block (a DCGAN discriminator's first layer, over one
/// channel: 3.4 ms a phase, 13.7 ms for the four, against about 2.3 ms for
/// its GEMM and fold; bench gan 365 ms a step against 336).
const PHASE_MIN_CHANNELS: usize = 32;

/// A strided convolution's input gradient one output phase at a time, where
/// the texture kernel can fetch windows (as [`flipped_window`] requires) and
/// the stride divides the kernel and the image. Input pixel `(s * a + c)`
/// along an axis receives exactly the taps `ky = (c + p) % s + s * j` from
/// output rows `a + (c + p) / s - j`, `j < K / s`: for each phase `c`, a
/// stride-1 window of `K / s` taps over dY. Each phase is one implicit GEMM
/// of dY's windows by the taps of that phase, and the phases interleave into
/// dX. Against the GEMM-then-fold, no `[N * OH * OW, C_in * KH * KW]`
/// product is written and read back. `phases` come from [`phases`].
fn phase_input_gradient(
    dy_rows: &Tensor,
    weight: &Tensor,
    win: &Window2d,
    phases: &[Phase],
    [n, c_out, c_in]: [usize; 3],
) -> Result<Tensor> {
    let [kh, kw] = win.kernel;
    let [h, w] = win.image;
    let [sy, sx] = win.stride;
    let [ty, tx] = [kh / sy, kw / sx];
    let [a_n, b_n] = [h / sy, w / sx];
    let taps = (kh * kw) as i64;
    let mut products = Vec::with_capacity(phases.len());
    for phase in phases {
        let rows = Tensor::from_node(dy_rows.node().conv_rows(&phase.window)?);
        // Row (jy, jx, co) of the phase's weight: tap (first - s * j) of
        // W[co, :], walking the kernel backwards as j walks dY forwards.
        let phase_weight = Tensor::from_node(weight.node().view(
            &[ty, tx, c_out, c_in],
            ViewSpec {
                strides: vec![-((sy * kw) as i64), -(sx as i64), c_in as i64 * taps, taps],
                offset: phase.first_tap,
                mask: None,
            },
        )?)
        .reshape(&[ty * tx * c_out, c_in])?;
        products.push(rows.matmul(&phase_weight)?);
    }
    let parts: Vec<&Tensor> = products.iter().collect();
    Tensor::concat(&parts, 0)?
        .reshape(&[sy, sx, n, a_n, b_n, c_in])?
        .permute(&[2, 5, 3, 0, 4, 1])?
        .reshape(&[n, c_in, h, w])
}

/// One output phase of a strided convolution's input gradient: its window
/// over dY and the kernel tap (flattened) its last window tap meets.
struct Phase {
    window: Window2d,
    first_tap: i64,
}

/// The phases of [`phase_input_gradient`], row-major over the stride, or
/// `None` where the GEMM-then-fold serves: no texture kernel, groups, a
/// dilation, stride 1, output channels off whole texels, too few input
/// channels, a stride that does not divide the kernel or the image, rows
/// past a texture's side, or a phase whose first tap would lie past dY's
/// row `a` (`(c + p) / s >= K / s`, a padding of nearly the kernel).
fn phases(
    device: &cinder_runtime::Device,
    win: &Window2d,
    [n, c_out, c_in]: [usize; 3],
    groups: usize,
) -> Option<Vec<Phase>> {
    let [sy, sx] = win.stride;
    let fits = |axis: usize| {
        win.kernel[axis].is_multiple_of(win.stride[axis])
            && win.image[axis].is_multiple_of(win.stride[axis])
    };
    let rows = [
        n * win.out[0] * win.out[1],
        n * (win.image[0] / sy) * (win.image[1] / sx),
    ];
    if win.dilation != [1, 1]
        || win.stride == [1, 1]
        || c_in < PHASE_MIN_CHANNELS
        || !(fits(0) && fits(1))
        || !windows_fetchable(device, groups, c_out, &rows)
    {
        return None;
    }
    // Along one axis, phase c: the window's padding (taps before output
    // row a) and the first kernel tap its last window tap meets.
    let along = |axis: usize, c: usize| -> Option<(usize, usize)> {
        let (k, s, p) = (win.kernel[axis], win.stride[axis], win.padding[axis]);
        let taps = k / s;
        let pad = (taps - 1).checked_sub((c + p) / s)?;
        Some((pad, (c + p) % s + s * (taps - 1)))
    };
    let mut phases = Vec::with_capacity(sy * sx);
    for cy in 0..sy {
        for cx in 0..sx {
            let ((pad_y, first_y), (pad_x, first_x)) = (along(0, cy)?, along(1, cx)?);
            phases.push(Phase {
                window: Window2d {
                    image: win.out,
                    out: [win.image[0] / sy, win.image[1] / sx],
                    kernel: [win.kernel[0] / sy, win.kernel[1] / sx],
                    stride: [1, 1],
                    padding: [pad_y, pad_x],
                    dilation: [1, 1],
                },
                first_tap: (first_y * win.kernel[1] + first_x) as i64,
            });
        }
    }
    Some(phases)
}

/// `[KH * KW * C_out, C_in]`, row `(ky, kx, co)` holding
/// `weight[co, :, KH - 1 - ky, KW - 1 - kx]`: the flipped kernel that
/// [`flipped_window`]'s rows multiply.
fn flipped_weight(weight: &Tensor, [c_out, c_in, kh, kw]: [usize; 4]) -> Result<Tensor> {
    let taps = (kh * kw) as i64;
    let view = weight.node().view(
        &[kh, kw, c_out, c_in],
        ViewSpec {
            strides: vec![-(kw as i64), -1, c_in as i64 * taps, taps],
            offset: taps - 1,
            mask: None,
        },
    )?;
    Tensor::from_node(view).reshape(&[kh * kw * c_out, c_in])
}

impl Tensor {
    /// PyTorch's `conv_transpose2d`: `self` is `[N, C_in, H, W]`, `weight` is
    /// `[C_in, C_out / groups, KH, KW]`; the gradient of `conv2d` with
    /// respect to its input, as a GEMM followed by a fold.
    pub fn conv_transpose2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: Conv2dOptions,
        output_padding: [usize; 2],
    ) -> Result<Tensor> {
        const OP: &str = "conv_transpose2d";
        let [n, c_in, h, w] = image_dims(OP, self)?;
        let [w_in, c_out_g, kh, kw] = conv_weight(OP, weight, "C_in, C_out/groups", &opts)?;
        let g = opts.groups;
        if g == 0 || c_in % g != 0 || w_in != c_in {
            return Err(uneven_channels(OP, self, weight, g));
        }
        for axis in 0..2 {
            if output_padding[axis] >= opts.stride[axis].max(opts.dilation[axis]) {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "output_padding {output_padding:?} must be smaller than stride {:?} or dilation {:?}",
                        opts.stride, opts.dilation
                    ),
                ));
            }
        }
        let size = |axis: usize, input: usize, k: usize| -> Option<usize> {
            ((input - 1) * opts.stride[axis]
                + opts.dilation[axis] * (k - 1)
                + output_padding[axis]
                + 1)
            .checked_sub(2 * opts.padding[axis])
            .filter(|&s| s > 0)
        };
        let (Some(oh), Some(ow)) = (size(0, h, kh), size(1, w, kw)) else {
            return Err(Error::shape(
                OP,
                format!(
                    "padding {:?} leaves no output for input {:?}",
                    opts.padding,
                    self.shape()
                ),
            ));
        };
        let c_out = c_out_g * g;
        // One input pixel and nothing cropped or spread: each input channel
        // scales its whole kernel, so the layer is `x @ W`, which lies in
        // NCHW as it is computed and whose weight gradient `x^T @ dY` lies in
        // the weight's layout (a DCGAN generator's first layer, fed noise).
        // The GEMM-then-fold would transpose both.
        let one_pixel = h == 1
            && w == 1
            && g == 1
            && opts.padding == [0, 0]
            && opts.dilation == [1, 1]
            && output_padding == [0, 0];
        if one_pixel {
            let y = self
                .reshape(&[n, c_in])?
                .matmul(&weight.reshape(&[c_in, c_out * kh * kw])?)?
                .reshape(&[n, c_out, kh, kw])?;
            return add_channel_bias(OP, y, bias, c_out);
        }
        let win = Window2d {
            image: [oh, ow],
            out: [h, w],
            kernel: [kh, kw],
            stride: opts.stride,
            padding: opts.padding,
            dilation: opts.dilation,
        };
        let l = h * w;
        // The input gradient of the convolution whose transpose this is,
        // one output phase at a time (see `phase_input_gradient`), where
        // the texture kernel serves; the gradients are that convolution's
        // forward and weight gradient.
        if let Some(phases) = phases(self.device(), &win, [n, c_in, c_out], g) {
            let (x, wd, win_back) = (self.detach(), weight.detach(), win.clone());
            let x_rows = x.permute(&[0, 2, 3, 1])?.reshape(&[n * l, c_in])?;
            let y = phase_input_gradient(&x_rows, &wd, &win, &phases, [n, c_in, c_out])?;
            let weight_shape = weight.shape().to_vec();
            let taps = c_out_g * kh * kw;
            let y = Tensor::from_op(
                y.node().clone(),
                OP,
                &[self, weight],
                Box::new(move |grad, _| {
                    // dC, the gradient of the columns W^T @ x that a fold
                    // would sum: dY's windows, [C_out/g * KH * KW, N * H * W].
                    let d_cols = grad
                        .unfold2d(&win_back)?
                        .permute(&[1, 2, 3, 0, 4, 5])?
                        .reshape(&[g, taps, n * l])?;
                    let x_cols = x
                        .reshape(&[n, g, c_in / g, l])?
                        .permute(&[1, 2, 0, 3])?
                        .reshape(&[g, c_in / g, n * l])?;
                    let dx = wd
                        .reshape(&[g, c_in / g, taps])?
                        .matmul(&d_cols)?
                        .reshape(&[g, c_in / g, n, l])?
                        .permute(&[2, 0, 1, 3])?
                        .reshape(&[n, c_in, h, w])?;
                    let dw = d_cols
                        .matmul(&x_cols.transpose(1, 2)?)?
                        .transpose(1, 2)?
                        .reshape(&weight_shape)?;
                    Ok(vec![Some(dx), Some(dw)])
                }),
            );
            return add_channel_bias(OP, y, bias, c_out);
        }
        // cols[g] = W[g]^T @ x[g] over the whole batch: [C_out/g * KH * KW, N * H * W].
        let wt = weight
            .reshape(&[g, c_in / g, c_out_g * kh * kw])?
            .transpose(1, 2)?;
        let x = self
            .reshape(&[n, g, c_in / g, l])?
            .permute(&[1, 2, 0, 3])?
            .reshape(&[g, c_in / g, n * l])?;
        let y = wt
            .matmul(&x)?
            .reshape(&[c_out, kh, kw, n, h, w])?
            .permute(&[3, 0, 1, 2, 4, 5])?
            .fold2d(&win)?;
        add_channel_bias(OP, y, bias, c_out)
    }

    /// PyTorch's `max_pool2d`; windows that fall partly outside the image
    /// ignore the outside. The gradient goes to the first maximum of each
    /// window.
    pub fn max_pool2d(&self, opts: Pool2dOptions) -> Result<Tensor> {
        const OP: &str = "max_pool2d";
        // Pooling a ReLU's output is the ReLU of the pooled input, in values
        // and in gradients: the gradient goes to the window's first maximum
        // either way, and the ReLU's mask there is zero exactly when the
        // pooled value is not positive. Pooled first, the backward pass
        // reads the mask over a quarter of the elements (a 2x2 window).
        if let Some(grad_fn) = &self.0.grad_fn {
            if grad_fn.name == "relu" {
                return grad_fn.inputs[0].max_pool2d(opts)?.relu();
            }
        }
        let win = pool_window(OP, self, &opts)?;
        let [n, c, _, _] = image_dims(OP, self)?;
        let [oh, ow] = win.out;
        let taps = win.kernel[0] * win.kernel[1];
        let flat = self
            .node()
            .unfold(&win, Fill::NegInfinity)?
            .reshape(&[n, c, taps, oh, ow])?;
        let taps_of = Tensor::from_node(flat.clone());
        // Training needs the first maximum's position for the gradient: the
        // pooled value is then read there, one pass over the windows instead
        // of a max and an arg-max each reading every tap.
        let (pooled, first) = if crate::autograd::grad_enabled() && self.requires_grad() {
            let first = taps_of.argmax(2, true)?;
            (Node::gather(&flat, 2, first.node())?, Some(first))
        } else {
            (flat.reduce(cinder_runtime::ReduceOp::Max, &[2])?, None)
        };
        let out = pooled.reshape(&[n, c, oh, ow])?;
        let w = win.clone();
        Ok(Tensor::from_op(
            out,
            OP,
            &[self],
            Box::new(move |g, _| {
                let first = match &first {
                    Some(f) => f.clone(),
                    None => taps_of.argmax(2, true)?,
                };
                Ok(vec![Some(route_to_first(g, &first, &w)?)])
            }),
        ))
    }

    /// PyTorch's `avg_pool2d` with `count_include_pad`: the divisor counts
    /// padding but not window parts beyond it (which `ceil_mode` creates).
    pub fn avg_pool2d(&self, opts: Pool2dOptions, count_include_pad: bool) -> Result<Tensor> {
        const OP: &str = "avg_pool2d";
        if opts.dilation != [1, 1] {
            return Err(Error::invalid(OP, "avg_pool2d has no dilation"));
        }
        let win = pool_window(OP, self, &opts)?;
        let [n, c, h, w] = image_dims(OP, self)?;
        let [oh, ow] = win.out;
        let count = |axis: usize, o: usize, limit: usize| -> usize {
            let start = (o * win.stride[axis]) as i64 - win.padding[axis] as i64;
            let end = (start + win.kernel[axis] as i64).min(limit as i64);
            let start = if count_include_pad {
                start
            } else {
                start.max(0)
            };
            (end - start).max(0) as usize
        };
        let mut divisor = Vec::with_capacity(oh * ow);
        for y in 0..oh {
            for x in 0..ow {
                let (limit_h, limit_w) = if count_include_pad {
                    (h + win.padding[0], w + win.padding[1])
                } else {
                    (h, w)
                };
                let d = count(0, y, limit_h) * count(1, x, limit_w);
                divisor.push(1.0 / d.max(1) as f32);
            }
        }
        let scale = Tensor::from_slice(self.device(), &divisor, &[oh, ow])?;
        self.unfold2d(&win)?
            .reshape(&[n, c, win.kernel[0] * win.kernel[1], oh, ow])?
            .sum(&[2], false)?
            .mul(&scale)
    }

    /// PyTorch's `adaptive_avg_pool2d`: output cell `i` averages input rows
    /// `floor(i * H / OH)` to `ceil((i + 1) * H / OH)`. Averages over a
    /// rectangle separate into rows and columns, so this is two matmuls with
    /// constant averaging matrices.
    pub fn adaptive_avg_pool2d(&self, out: [usize; 2]) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d";
        let [_, _, h, w] = image_dims(OP, self)?;
        nonzero(OP, "output size", out)?;
        let averaging = |size: usize, cells: usize| -> Vec<f32> {
            let mut m = vec![0.0f32; cells * size];
            for i in 0..cells {
                let (start, end) = (i * size / cells, ((i + 1) * size).div_ceil(cells));
                for j in start..end {
                    m[i * size + j] = 1.0 / (end - start) as f32;
                }
            }
            m
        };
        self.separable(&averaging(h, out[0]), out[0], &averaging(w, out[1]), out[1])
    }
}

/// Max pooling's input gradient: each window's gradient `g`
/// (`[N, C, OH, OW]`) goes to the tap `first` (`[N, C, 1, OH, OW]`, i32)
/// and is summed onto the image.
pub(crate) fn route_to_first(g: &Tensor, first: &Tensor, w: &Window2d) -> Result<Tensor> {
    let (n, c) = (g.shape()[0], g.shape()[1]);
    let [oh, ow] = w.out;
    let shape = [n, c, w.kernel[0] * w.kernel[1], oh, ow];
    let tap = Tensor::from_node(Node::iota(g.device(), &shape, DType::I32, 2)?);
    let route = tap.eq(first)?.to_dtype(DType::F32)?;
    let spread = g.reshape(&[n, c, 1, oh, ow])?.masked(&route)?;
    spread
        .reshape(&[n, c, w.kernel[0], w.kernel[1], oh, ow])?
        .fold2d(w)
}

pub(crate) fn pool_window(op: &'static str, x: &Tensor, opts: &Pool2dOptions) -> Result<Window2d> {
    let [_, _, h, w] = image_dims(op, x)?;
    nonzero(op, "kernel size", opts.kernel)?;
    nonzero(op, "stride", opts.stride)?;
    nonzero(op, "dilation", opts.dilation)?;
    for axis in 0..2 {
        if 2 * opts.padding[axis] > opts.kernel[axis] {
            return Err(Error::invalid(
                op,
                format!(
                    "padding {:?} must be at most half the kernel size {:?}",
                    opts.padding, opts.kernel
                ),
            ));
        }
    }
    let out = |axis: usize, size: usize| {
        positions(
            size,
            opts.kernel[axis],
            opts.stride[axis],
            opts.padding[axis],
            opts.dilation[axis],
            opts.ceil_mode,
        )
    };
    let (Some(oh), Some(ow)) = (out(0, h), out(1, w)) else {
        return Err(Error::shape(
            op,
            format!(
                "window {:?} (dilation {:?}) is larger than the padded input {:?}",
                opts.kernel,
                opts.dilation,
                x.shape()
            ),
        ));
    };
    Ok(Window2d {
        image: [h, w],
        out: [oh, ow],
        kernel: opts.kernel,
        stride: opts.stride,
        padding: opts.padding,
        dilation: opts.dilation,
    })
}

fn add_channel_bias(
    op: &'static str,
    y: Tensor,
    bias: Option<&Tensor>,
    channels: usize,
) -> Result<Tensor> {
    match bias {
        None => Ok(y),
        Some(b) if b.shape() == [channels] => y.add(&b.reshape(&[1, channels, 1, 1])?),
        Some(b) => Err(bad_bias(op, channels, b)),
    }
}

fn bad_bias(op: &'static str, channels: usize, bias: &Tensor) -> Error {
    Error::shape(
        op,
        format!("bias must be [{channels}], got {:?}", bias.shape()),
    )
}
