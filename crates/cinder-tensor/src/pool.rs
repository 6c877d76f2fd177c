//! Max pooling that reports where each maximum came from, its inverse
//! (`max_unpool2d`), and adaptive max pooling. Indices are PyTorch's: the
//! flat position `h * W + w` of the maximum in its input plane, as i32
//! (cinder has no i64).

use cinder_runtime::{DType, Error, Fill, Node, Result, Window2d};

use crate::conv::{image_dims, nonzero, pool_window, route_to_first};
use crate::tensor::Tensor;
use crate::Pool2dOptions;

/// `table[t, oy, ox]`: the flat input position that tap `t` of window
/// `(oy, ox)` reads, for windows over an image of width `win.image[1]`
/// (positions of taps outside the image are never picked).
fn tap_positions(win: &Window2d) -> Vec<i32> {
    let [oh, ow] = win.out;
    let [kh, kw] = win.kernel;
    let width = win.image[1] as i64;
    let mut table = Vec::with_capacity(kh * kw * oh * ow);
    for ky in 0..kh {
        for kx in 0..kw {
            for oy in 0..oh {
                for ox in 0..ow {
                    let at = |axis: usize, o: usize, k: usize| {
                        (o * win.stride[axis] + k * win.dilation[axis]) as i64
                            - win.padding[axis] as i64
                    };
                    table.push((at(0, oy, ky) * width + at(1, ox, kx)) as i32);
                }
            }
        }
    }
    table
}

fn index_dtype(op: &'static str, indices: &Tensor) -> Result<Tensor> {
    match indices.dtype() {
        DType::I32 => Ok(indices.clone()),
        DType::U32 => indices.to_dtype(DType::I32),
        other => Err(Error::DType {
            op,
            expected: "i32 indices".into(),
            got: other.to_string(),
        }),
    }
}

impl Tensor {
    /// `max_pool2d(..., return_indices=True)`: the pooled values and, for
    /// each, the flat index `h * W + w` of its window's first maximum in
    /// the input plane (i32). The gradient goes to that maximum.
    pub fn max_pool2d_with_indices(&self, opts: Pool2dOptions) -> Result<(Tensor, Tensor)> {
        const OP: &str = "max_pool2d_with_indices";
        let win = pool_window(OP, self, &opts)?;
        let [n, c, _, _] = image_dims(OP, self)?;
        let [oh, ow] = win.out;
        let taps = win.kernel[0] * win.kernel[1];
        let flat = self
            .node()
            .unfold(&win, Fill::NegInfinity)?
            .reshape(&[n, c, taps, oh, ow])?;
        let first = Tensor::from_node(flat.clone()).argmax(2, true)?;
        let pooled = Node::gather(&flat, 2, first.node())?.reshape(&[n, c, oh, ow])?;
        let table = Tensor::from_slice(self.device(), &tap_positions(&win), &[1, 1, taps, oh, ow])?
            .broadcast_to(&[n, c, taps, oh, ow])?;
        let indices = table.gather(2, &first)?.reshape(&[n, c, oh, ow])?;
        let w = win.clone();
        let out = Tensor::from_op(
            pooled,
            OP,
            &[self],
            Box::new(move |g, _| Ok(vec![Some(route_to_first(g, &first, &w)?)])),
        );
        Ok((out, indices))
    }

    /// PyTorch's `max_unpool2d`: an `[N, C, OH, OW]` image of zeros with
    /// each input value written at its index (`h * OW + w`, from
    /// [`Tensor::max_pool2d_with_indices`] with the same kernel, stride and
    /// padding). The output size defaults to
    /// `(H - 1) * stride - 2 * padding + kernel`; `output_size` may differ
    /// from it by less than the stride, as in PyTorch. Where several
    /// inputs share an index the last one (in row-major order) is written,
    /// once, as PyTorch's CPU kernel does. The input gradient is the
    /// output gradient gathered at the indices.
    ///
    /// Each index must lie in its element's own pooling window (as max
    /// pooling's do); an index elsewhere writes nothing, where PyTorch
    /// would write it anywhere in the plane or raise for an index out of
    /// range (checking needs a read back).
    pub fn max_unpool2d(
        &self,
        indices: &Tensor,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        output_size: Option<[usize; 2]>,
    ) -> Result<Tensor> {
        const OP: &str = "max_unpool2d";
        let [n, c, h, w] = image_dims(OP, self)?;
        if indices.shape() != self.shape() {
            return Err(Error::shape(
                OP,
                format!(
                    "indices {:?} must have the input's shape {:?}",
                    indices.shape(),
                    self.shape()
                ),
            ));
        }
        let idx = index_dtype(OP, indices)?;
        nonzero(OP, "kernel size", kernel)?;
        nonzero(OP, "stride", stride)?;
        let mut out = [0usize; 2];
        for axis in 0..2 {
            let size = [h, w][axis];
            let default = ((size as i64 - 1) * stride[axis] as i64 + kernel[axis] as i64)
                - 2 * padding[axis] as i64;
            let want = match output_size {
                None => default,
                Some(o) => {
                    let (lo, hi) = (default - stride[axis] as i64, default + stride[axis] as i64);
                    let o = o[axis] as i64;
                    if o <= lo || o >= hi {
                        return Err(Error::invalid(
                            OP,
                            format!(
                                "invalid output_size {output_size:?} (dim {axis} must be between {lo} and {hi})"
                            ),
                        ));
                    }
                    o
                }
            };
            if want <= 0 {
                return Err(Error::shape(
                    OP,
                    format!(
                        "kernel {kernel:?}, stride {stride:?} and padding {padding:?} leave no output for input {:?}",
                        self.shape()
                    ),
                ));
            }
            out[axis] = want as usize;
        }
        // The pooling windows over the output: window (y, x) is where
        // input element (y, x) came from.
        let win = Window2d {
            image: out,
            out: [h, w],
            kernel,
            stride,
            padding,
            dilation: [1, 1],
        };
        let taps = kernel[0] * kernel[1];
        let table = Tensor::from_slice(self.device(), &tap_positions(&win), &[1, 1, taps, h, w])?;
        let idx5 = idx.reshape(&[n, c, 1, h, w])?;
        // Overlapping windows can share an index: only the last element
        // (in row-major order) holding it writes.
        let idx5 = match last_holders(&idx, kernel, stride)? {
            Some(last) => Tensor::where_cond(
                &last.reshape(&[n, c, 1, h, w])?,
                &idx5,
                &Tensor::full_dtype(self.device(), &[], DType::I32, -1.0),
            )?,
            None => idx5,
        };
        let hit = table.eq(&idx5)?;
        let x = self.detach();
        let zero = Tensor::zeros(self.device(), &[]);
        let value = Tensor::where_cond(&hit, &x.reshape(&[n, c, 1, h, w])?, &zero)?
            .reshape(&[n, c, kernel[0], kernel[1], h, w])?
            .fold2d(&win)?;
        let plane = out[0] * out[1];
        Ok(Tensor::from_op(
            value.node().clone(),
            OP,
            &[self],
            Box::new(move |g, _| {
                let picked = g
                    .reshape(&[n, c, plane])?
                    .gather(2, &idx.reshape(&[n, c, h * w])?)?;
                Ok(vec![Some(picked.reshape(&[n, c, h, w])?)])
            }),
        ))
    }

    /// PyTorch's `adaptive_max_pool2d`: output cell `i` takes the maximum
    /// of input rows `floor(i * H / OH)` to `ceil((i + 1) * H / OH)` (and
    /// columns likewise); the gradient goes to the first maximum.
    pub fn adaptive_max_pool2d(&self, out: [usize; 2]) -> Result<Tensor> {
        const OP: &str = "adaptive_max_pool2d";
        let [_, _, h, w] = image_dims(OP, self)?;
        nonzero(OP, "output size", out)?;
        if h.is_multiple_of(out[0]) && w.is_multiple_of(out[1]) {
            let k = [h / out[0], w / out[1]];
            return self.max_pool2d(uniform_windows(k));
        }
        Ok(self.adaptive_max_pool2d_with_indices(out)?.0)
    }

    /// [`Tensor::adaptive_max_pool2d`] with PyTorch's indices (flat
    /// `h * W + w` of each cell's first maximum, i32).
    pub fn adaptive_max_pool2d_with_indices(&self, out: [usize; 2]) -> Result<(Tensor, Tensor)> {
        const OP: &str = "adaptive_max_pool2d";
        let [n, c, h, w] = image_dims(OP, self)?;
        nonzero(OP, "output size", out)?;
        if h == 0 || w == 0 {
            return Err(Error::shape(
                OP,
                format!("expected a non-empty input, got {:?}", self.shape()),
            ));
        }
        if h.is_multiple_of(out[0]) && w.is_multiple_of(out[1]) {
            let k = [h / out[0], w / out[1]];
            return self.max_pool2d_with_indices(uniform_windows(k));
        }
        // Windows of unequal sizes: gather each cell's rows and columns,
        // padded to the longest window by repeating its last row or column
        // (which changes neither the maximum nor which one comes first).
        let span = |size: usize, cells: usize, i: usize| {
            let start = i * size / cells;
            (start, ((i + 1) * size).div_ceil(cells) - start)
        };
        let longest = |size: usize, cells: usize| {
            (0..cells)
                .map(|i| span(size, cells, i).1)
                .max()
                .unwrap_or(1)
        };
        let (kh, kw) = (longest(h, out[0]), longest(w, out[1]));
        let cells = out[0] * out[1];
        let taps = kh * kw;
        let mut table = Vec::with_capacity(taps * cells);
        for a in 0..kh {
            for b in 0..kw {
                for i in 0..out[0] {
                    let (r0, rl) = span(h, out[0], i);
                    for j in 0..out[1] {
                        let (c0, cl) = span(w, out[1], j);
                        table.push(((r0 + a.min(rl - 1)) * w + c0 + b.min(cl - 1)) as i32);
                    }
                }
            }
        }
        let table = Tensor::from_slice(self.device(), &table, &[1, 1, taps * cells])?;
        let flat = self.reshape(&[n, c, h * w])?;
        let first = flat
            .detach()
            .gather(2, &table.broadcast_to(&[n, c, taps * cells])?)?
            .reshape(&[n, c, taps, cells])?
            .argmax(2, true)?;
        let indices = table
            .reshape(&[1, 1, taps, cells])?
            .broadcast_to(&[n, c, taps, cells])?
            .gather(2, &first)?
            .reshape(&[n, c, cells])?;
        let pooled = flat.gather(2, &indices)?.reshape(&[n, c, out[0], out[1]])?;
        Ok((pooled, indices.reshape(&[n, c, out[0], out[1]])?))
    }
}

fn uniform_windows(k: [usize; 2]) -> Pool2dOptions {
    Pool2dOptions {
        kernel: k,
        stride: k,
        padding: [0, 0],
        dilation: [1, 1],
        ceil_mode: false,
    }
}

/// Where windows overlap (stride below kernel), a 0/1 mask (u32, the
/// indices' shape) of the elements whose index no later element in
/// row-major order repeats; `None` where windows cannot share a position.
/// Only elements whose windows overlap can share an index that lies in
/// both, so the comparison runs over those neighbours, as shifted views.
fn last_holders(idx: &Tensor, kernel: [usize; 2], stride: [usize; 2]) -> Result<Option<Tensor>> {
    let reach = [(kernel[0] - 1) / stride[0], (kernel[1] - 1) / stride[1]];
    if reach == [0, 0] {
        return Ok(None);
    }
    let [h, w] = [idx.shape()[2], idx.shape()[3]];
    // Indices + 1, so that the zeros shifted in at the borders match none.
    let shifted_from = idx.add(&Tensor::full_dtype(idx.device(), &[], DType::I32, 1.0))?;
    let mut repeats: Option<Tensor> = None;
    for dy in 0..=reach[0] as i64 {
        for dx in -(reach[1] as i64)..=reach[1] as i64 {
            if dy == 0 && dx <= 0 {
                continue; // only later elements: (dy, dx) after (0, 0)
            }
            let other = shift(&shifted_from, dy as usize, dx, [h, w])?;
            let same = shifted_from.eq(&other)?;
            repeats = Some(match repeats {
                None => same,
                Some(r) => r.add(&same)?,
            });
        }
    }
    match repeats {
        None => Ok(None),
        Some(r) => Ok(Some(r.eq(&Tensor::full_dtype(
            idx.device(),
            &[],
            DType::U32,
            0.0,
        ))?)),
    }
}

/// `out[y, x] = t[y + dy, x + dx]` over the last two dims, zero outside.
fn shift(t: &Tensor, dy: usize, dx: i64, [h, w]: [usize; 2]) -> Result<Tensor> {
    if dy >= h || dx.unsigned_abs() as usize >= w {
        return Ok(t.zeros_like());
    }
    let rows = t.narrow(2, dy, h - dy)?.pad_dim(2, 0, dy)?;
    let d = dx.unsigned_abs() as usize;
    if dx >= 0 {
        rows.narrow(3, d, w - d)?.pad_dim(3, 0, d)
    } else {
        rows.narrow(3, 0, w - d)?.pad_dim(3, d, 0)
    }
}
