//! Shared helpers for cinder-tensor's correctness tests: one device per test
//! binary, a seeded PRNG, f64 CPU references, closeness assertions and a
//! gradient checker.
//!
//! Tolerances (docs/architecture.md, "Numerics"):
//! - forward: `|a - b| <= 1e-5 + 1e-4 * |b|` against an f64 CPU reference;
//! - gradients: `1e-4 + 1e-3 * |b|` against an f64 CPU reference (here: central
//!   differences in f64 of the CPU reference, see [`check_grad`]);
//! - gradients against finite differences taken on the GPU (f32 forward
//!   passes): `2e-3 + 2e-2 * |b|`, see [`FD_ATOL`].
#![allow(dead_code)]

use std::sync::OnceLock;

use cinder_tensor::{no_grad, read_all, Device, Result, Tensor};

// ---- the device -----------------------------------------------------------------

static DEVICE: OnceLock<Device> = OnceLock::new();

/// The one device of this test binary. A machine without an adapter makes every
/// test FAIL with cinder's error, which says how to install a software adapter;
/// tests never skip.
pub fn device() -> &'static Device {
    DEVICE.get_or_init(|| match Device::new() {
        Ok(d) => d,
        Err(e) => panic!("cinder tests need a GPU adapter and never skip: {e}"),
    })
}

/// Unwraps a cinder result with the error's message (not its Debug form).
pub fn ok<T>(what: &str, r: Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: unexpected error: {e}"),
    }
}

// ---- tolerances -----------------------------------------------------------------

/// Forward ops against the f64 CPU reference.
pub const ATOL: f64 = 1e-5;
pub const RTOL: f64 = 1e-4;
/// Analytic GPU gradients against f64 CPU gradients.
pub const GRAD_ATOL: f64 = 1e-4;
pub const GRAD_RTOL: f64 = 1e-3;
/// Analytic GPU gradients against central differences of f32 GPU forward
/// passes. Each perturbed loss carries f32 rounding (about 6e-8 relative per
/// output element, several ulp for exp/log/tanh on GPUs) which the difference
/// quotient divides by `2 * eps` (about 1e-2), and the difference itself has an
/// O(eps^2) truncation error; 2e-3 + 2e-2*|b| covers both with margin while a
/// wrong VJP (a missing factor, a wrong sign, a dropped broadcast sum) is off
/// by O(1).
pub const FD_ATOL: f64 = 2e-3;
pub const FD_RTOL: f64 = 2e-2;

// ---- PRNG -----------------------------------------------------------------------

/// SplitMix64: tiny, seeded, good enough for test inputs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator seeded from a test's name, so every test has its own stream.
    pub fn named(name: &str) -> Rng {
        Rng(fnv1a(name))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn range(&mut self, lo: f64, hi: f64) -> f32 {
        (lo + (hi - lo) * self.uniform()) as f32
    }

    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }

    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * scale) as f32).collect()
    }

    pub fn index(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn indices_i32(&mut self, count: usize, n: usize) -> Vec<i32> {
        (0..count).map(|_| self.index(n) as i32).collect()
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.index(i + 1);
            v.swap(i, j);
        }
    }

    /// `n` distinct values `offset + spacing * k` in random order: no ties, and
    /// any two differ by at least `spacing` (for max/min and their gradients).
    pub fn distinct(&mut self, n: usize, spacing: f64, offset: f64) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n)
            .map(|k| (offset + spacing * k as f64) as f32)
            .collect();
        self.shuffle(&mut v);
        v
    }

    /// Values in `[lo, hi]` at least `gap` away from zero (for kinks at 0).
    pub fn away_from_zero(&mut self, n: usize, lo: f64, hi: f64, gap: f64) -> Vec<f32> {
        (0..n)
            .map(|_| loop {
                let x = self.range(lo, hi);
                if (x as f64).abs() >= gap {
                    break x;
                }
            })
            .collect()
    }
}

pub fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

// ---- tensors from host data ------------------------------------------------------

pub fn tensor(data: &[f32], shape: &[usize]) -> Tensor {
    ok("from_slice", Tensor::from_slice(device(), data, shape))
}

pub fn tensor_i32(data: &[i32], shape: &[usize]) -> Tensor {
    ok("from_slice", Tensor::from_slice(device(), data, shape))
}

pub fn tensor_u32(data: &[u32], shape: &[usize]) -> Tensor {
    ok("from_slice", Tensor::from_slice(device(), data, shape))
}

pub fn read_f32(what: &str, t: &Tensor) -> Vec<f32> {
    ok(what, t.to_vec::<f32>())
}

pub fn read_i32(what: &str, t: &Tensor) -> Vec<i32> {
    ok(what, t.to_vec::<i32>())
}

pub fn read_u32(what: &str, t: &Tensor) -> Vec<u32> {
    ok(what, t.to_vec::<u32>())
}

// ---- shapes -----------------------------------------------------------------------

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![0; shape.len()];
    let mut acc = 1;
    for d in (0..shape.len()).rev() {
        s[d] = acc;
        acc *= shape[d];
    }
    s
}

pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        if shape[d] > 0 {
            c[d] = i % shape[d];
            i /= shape[d];
        }
    }
    c
}

pub fn ravel(c: &[usize], shape: &[usize]) -> usize {
    let mut i = 0;
    for d in 0..shape.len() {
        i = i * shape[d] + c[d];
    }
    i
}

/// A possibly negative axis as an index below `rank`.
pub fn axis(a: isize, rank: usize) -> usize {
    let r = rank as isize;
    let x = if a < 0 { a + r } else { a };
    assert!(
        (0..r.max(1)).contains(&x),
        "axis {a} out of range for rank {rank}"
    );
    x as usize
}

/// NumPy broadcasting; None when the shapes do not fit.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() < rank {
            1
        } else {
            a[i + a.len() - rank]
        };
        let db = if i + b.len() < rank {
            1
        } else {
            b[i + b.len() - rank]
        };
        *o = if da == db {
            da
        } else if da == 1 {
            db
        } else if db == 1 {
            da
        } else {
            return None;
        };
    }
    Some(out)
}

// ---- the f64 CPU reference --------------------------------------------------------

/// A row-major f64 array: the CPU reference every op is compared with.
#[derive(Clone, Debug, PartialEq)]
pub struct Arr {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Arr {
    pub fn new(shape: &[usize], data: Vec<f64>) -> Arr {
        assert_eq!(
            numel(shape),
            data.len(),
            "Arr::new: {} values for shape {shape:?}",
            data.len()
        );
        Arr {
            shape: shape.to_vec(),
            data,
        }
    }

    pub fn from_f32(data: &[f32], shape: &[usize]) -> Arr {
        Arr::new(shape, data.iter().map(|&x| x as f64).collect())
    }

    pub fn from_i32(data: &[i32], shape: &[usize]) -> Arr {
        Arr::new(shape, data.iter().map(|&x| x as f64).collect())
    }

    pub fn full(shape: &[usize], v: f64) -> Arr {
        Arr::new(shape, vec![v; numel(shape)])
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn at(&self, c: &[usize]) -> f64 {
        self.data[ravel(c, &self.shape)]
    }

    pub fn reshape(&self, shape: &[usize]) -> Arr {
        Arr::new(shape, self.data.clone())
    }

    /// Builds an array by evaluating `f` at every coordinate of `shape`.
    pub fn from_fn(shape: &[usize], f: impl Fn(&[usize]) -> f64) -> Arr {
        let data = (0..numel(shape)).map(|i| f(&unravel(i, shape))).collect();
        Arr::new(shape, data)
    }

    pub fn broadcast_to(&self, shape: &[usize]) -> Arr {
        assert!(
            shape.len() >= self.rank(),
            "broadcast {:?} to {shape:?}",
            self.shape
        );
        let lead = shape.len() - self.rank();
        for (d, &n) in self.shape.iter().enumerate() {
            assert!(
                n == shape[lead + d] || n == 1,
                "broadcast {:?} to {shape:?}",
                self.shape
            );
        }
        Arr::from_fn(shape, |c| {
            let src: Vec<usize> = (0..self.rank())
                .map(|d| if self.shape[d] == 1 { 0 } else { c[lead + d] })
                .collect();
            self.at(&src)
        })
    }

    pub fn map(&self, f: impl Fn(f64) -> f64) -> Arr {
        Arr::new(&self.shape, self.data.iter().map(|&x| f(x)).collect())
    }

    /// Element-wise with broadcasting.
    pub fn zip(&self, other: &Arr, f: impl Fn(f64, f64) -> f64) -> Arr {
        let shape = broadcast_shapes(&self.shape, &other.shape).unwrap_or_else(|| {
            panic!(
                "reference: cannot broadcast {:?} with {:?}",
                self.shape, other.shape
            )
        });
        let (a, b) = (self.broadcast_to(&shape), other.broadcast_to(&shape));
        Arr::new(
            &shape,
            a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect(),
        )
    }

    pub fn add(&self, o: &Arr) -> Arr {
        self.zip(o, |a, b| a + b)
    }
    pub fn sub(&self, o: &Arr) -> Arr {
        self.zip(o, |a, b| a - b)
    }
    pub fn mul(&self, o: &Arr) -> Arr {
        self.zip(o, |a, b| a * b)
    }
    pub fn div(&self, o: &Arr) -> Arr {
        self.zip(o, |a, b| a / b)
    }

    pub fn abs(&self) -> Arr {
        self.map(f64::abs)
    }

    /// Reduces `axes` (already non-negative, all when empty) with `f`.
    pub fn reduce(
        &self,
        axes: &[usize],
        keepdim: bool,
        init: f64,
        f: impl Fn(f64, f64) -> f64,
    ) -> Arr {
        let axes: Vec<usize> = if axes.is_empty() {
            (0..self.rank()).collect()
        } else {
            axes.to_vec()
        };
        let kept: Vec<usize> = self
            .shape
            .iter()
            .enumerate()
            .map(|(d, &s)| if axes.contains(&d) { 1 } else { s })
            .collect();
        let mut out = vec![init; numel(&kept)];
        for (i, &x) in self.data.iter().enumerate() {
            let mut c = unravel(i, &self.shape);
            for &a in &axes {
                c[a] = 0;
            }
            let o = ravel(&c, &kept);
            out[o] = f(out[o], x);
        }
        let shape = if keepdim {
            kept
        } else {
            squeeze_axes(&self.shape, &axes)
        };
        Arr::new(&shape, out)
    }

    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Arr {
        self.reduce(&norm(axes, self.rank()), keepdim, 0.0, |a, b| a + b)
    }

    pub fn count(&self, axes: &[isize]) -> usize {
        let ax = norm(axes, self.rank());
        if ax.is_empty() {
            self.numel()
        } else {
            ax.iter().map(|&a| self.shape[a]).product()
        }
    }

    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Arr {
        let n = self.count(axes) as f64;
        self.sum(axes, keepdim).map(|s| s / n)
    }

    pub fn max(&self, axes: &[isize], keepdim: bool) -> Arr {
        self.reduce(
            &norm(axes, self.rank()),
            keepdim,
            f64::NEG_INFINITY,
            nan_max,
        )
    }

    pub fn min(&self, axes: &[isize], keepdim: bool) -> Arr {
        self.reduce(&norm(axes, self.rank()), keepdim, f64::INFINITY, nan_min)
    }

    pub fn var(&self, axes: &[isize], correction: usize, keepdim: bool) -> Arr {
        let n = self.count(axes);
        let mean = self.mean(axes, true);
        let d = self.sub(&mean);
        d.mul(&d)
            .sum(axes, keepdim)
            .map(|s| s / (n - correction) as f64)
    }

    /// Index of the first maximum (or minimum) along `axis`; NaN counts as the
    /// largest (and smallest) value, as in PyTorch.
    pub fn arg(&self, axis_: isize, keepdim: bool, max: bool) -> Arr {
        let a = axis(axis_, self.rank());
        let mut kept = self.shape.clone();
        kept[a] = 1;
        let out = Arr::from_fn(&kept, |c| {
            let mut c = c.to_vec();
            let mut best = (0usize, f64::NAN);
            for j in 0..self.shape[a] {
                c[a] = j;
                let x = self.at(&c);
                let better = if j == 0 {
                    true
                } else if best.1.is_nan() {
                    false
                } else if x.is_nan() {
                    true
                } else if max {
                    x > best.1
                } else {
                    x < best.1
                };
                if better {
                    best = (j, x);
                }
            }
            best.0 as f64
        });
        if keepdim {
            out
        } else {
            out.reshape(&squeeze_axes(&self.shape, &[a]))
        }
    }

    pub fn permute(&self, perm: &[usize]) -> Arr {
        let shape: Vec<usize> = perm.iter().map(|&p| self.shape[p]).collect();
        Arr::from_fn(&shape, |c| {
            let mut src = vec![0; self.rank()];
            for (i, &p) in perm.iter().enumerate() {
                src[p] = c[i];
            }
            self.at(&src)
        })
    }

    pub fn transpose(&self, d0: isize, d1: isize) -> Arr {
        let (a, b) = (axis(d0, self.rank()), axis(d1, self.rank()));
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Arr {
        let d = axis(dim, self.rank());
        let mut shape = self.shape.clone();
        shape[d] = len;
        Arr::from_fn(&shape, |c| {
            let mut src = c.to_vec();
            src[d] += start;
            self.at(&src)
        })
    }

    /// Zero padding of one dimension.
    pub fn pad_dim(&self, dim: usize, before: usize, after: usize) -> Arr {
        let mut shape = self.shape.clone();
        shape[dim] += before + after;
        Arr::from_fn(&shape, |c| {
            if c[dim] < before || c[dim] >= before + self.shape[dim] {
                0.0
            } else {
                let mut src = c.to_vec();
                src[dim] -= before;
                self.at(&src)
            }
        })
    }

    pub fn concat(parts: &[&Arr], dim: isize) -> Arr {
        let d = axis(dim, parts[0].rank());
        let mut shape = parts[0].shape.clone();
        shape[d] = parts.iter().map(|p| p.shape[d]).sum();
        Arr::from_fn(&shape, |c| {
            let mut c = c.to_vec();
            for p in parts {
                if c[d] < p.shape[d] {
                    return p.at(&c);
                }
                c[d] -= p.shape[d];
            }
            unreachable!()
        })
    }

    pub fn stack(parts: &[&Arr], dim: isize) -> Arr {
        let d = axis(dim, parts[0].rank() + 1);
        let expanded: Vec<Arr> = parts
            .iter()
            .map(|p| {
                let mut s = p.shape.clone();
                s.insert(d, 1);
                p.reshape(&s)
            })
            .collect();
        let refs: Vec<&Arr> = expanded.iter().collect();
        Arr::concat(&refs, d as isize)
    }

    /// `torch.gather`: `out[c] = self[c with c[dim] = index[c]]`.
    pub fn gather(&self, dim: isize, index: &Arr) -> Arr {
        let d = axis(dim, self.rank());
        Arr::from_fn(&index.shape, |c| {
            let mut src = c.to_vec();
            src[d] = index.at(c) as usize;
            self.at(&src)
        })
    }

    pub fn index_select(&self, dim: isize, index: &[usize]) -> Arr {
        let d = axis(dim, self.rank());
        let mut shape = self.shape.clone();
        shape[d] = index.len();
        Arr::from_fn(&shape, |c| {
            let mut src = c.to_vec();
            src[d] = index[c[d]];
            self.at(&src)
        })
    }

    /// Matrix product with PyTorch's rules (1-D operands are vectors, batch
    /// dimensions broadcast).
    pub fn matmul(&self, other: &Arr) -> Arr {
        let (a, drop_m) = if self.rank() == 1 {
            (self.reshape(&[1, self.shape[0]]), true)
        } else {
            (self.clone(), false)
        };
        let (b, drop_n) = if other.rank() == 1 {
            (other.reshape(&[other.shape[0], 1]), true)
        } else {
            (other.clone(), false)
        };
        let (ra, rb) = (a.rank(), b.rank());
        let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
        let (k2, n) = (b.shape[rb - 2], b.shape[rb - 1]);
        assert_eq!(
            k, k2,
            "reference matmul {:?} @ {:?}",
            self.shape, other.shape
        );
        let batch =
            broadcast_shapes(&a.shape[..ra - 2], &b.shape[..rb - 2]).expect("matmul batch dims");
        let nb = numel(&batch);
        let mut sa = batch.clone();
        sa.extend([m, k]);
        let mut sb = batch.clone();
        sb.extend([k, n]);
        let (af, bf) = (a.broadcast_to(&sa), b.broadcast_to(&sb));
        let mut out = vec![0.0; nb * m * n];
        // Row by row, K outermost within a row: each output still sums its
        // terms in order of p, and the inner loop runs along rows of B
        // (strided columns made the big products' references take seconds).
        for bi in 0..nb {
            for i in 0..m {
                let row = &mut out[bi * m * n + i * n..bi * m * n + (i + 1) * n];
                for p in 0..k {
                    let x = af.data[bi * m * k + i * k + p];
                    let b_row = &bf.data[bi * k * n + p * n..bi * k * n + (p + 1) * n];
                    for (o, &y) in row.iter_mut().zip(b_row) {
                        *o += x * y;
                    }
                }
            }
        }
        let mut shape = batch;
        if !drop_m {
            shape.push(m);
        }
        if !drop_n {
            shape.push(n);
        }
        Arr::new(&shape, out)
    }

    pub fn softmax(&self, dim: isize) -> Arr {
        let m = self.max(&[dim], true);
        let e = self.sub(&m).map(f64::exp);
        let s = e.sum(&[dim], true);
        e.div(&s)
    }

    pub fn log_softmax(&self, dim: isize) -> Arr {
        let m = self.max(&[dim], true);
        let sh = self.sub(&m);
        let lse = sh.map(f64::exp).sum(&[dim], true).map(f64::ln);
        sh.sub(&lse)
    }

    /// Mean cross-entropy of `[N, C]` logits against class indices.
    pub fn cross_entropy(&self, targets: &[usize]) -> Arr {
        let lp = self.log_softmax(-1);
        let n = self.shape[0];
        let mut acc = 0.0;
        for (i, &t) in targets.iter().enumerate() {
            acc -= lp.at(&[i, t]);
        }
        Arr::new(&[], vec![acc / n as f64])
    }

    pub fn mse_loss(&self, target: &Arr) -> Arr {
        let d = self.sub(target);
        let n = d.numel() as f64;
        Arr::new(&[], vec![d.data.iter().map(|x| x * x).sum::<f64>() / n])
    }

    pub fn one_hot(labels: &[i64], shape: &[usize], classes: usize) -> Arr {
        let mut s = shape.to_vec();
        s.push(classes);
        Arr::from_fn(&s, |c| {
            let i = ravel(&c[..c.len() - 1], shape);
            if labels[i] == c[c.len() - 1] as i64 {
                1.0
            } else {
                0.0
            }
        })
    }
}

fn norm(axes: &[isize], rank: usize) -> Vec<usize> {
    let mut v: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect();
    v.sort_unstable();
    v
}

pub fn squeeze_axes(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect()
}

pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

pub fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

// ---- scalar functions in f64 ------------------------------------------------------

/// erf in f64: `2/sqrt(pi) * exp(-x^2) * sum 2^n x^(2n+1) / (1*3*...*(2n+1))`,
/// a series of positive terms (no cancellation); |erf(x)| = 1 to f64 precision
/// beyond 6.
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    if a == 0.0 {
        return x;
    }
    if a > 6.0 {
        return x.signum();
    }
    let mut term = a;
    let mut sum = a;
    let mut n = 0.0;
    loop {
        n += 1.0;
        term *= 2.0 * a * a / (2.0 * n + 1.0);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    x.signum() * 2.0 / std::f64::consts::PI.sqrt() * (-a * a).exp() * sum
}

pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

pub fn gelu_grad(x: f64) -> f64 {
    let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    cdf + x * pdf
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

// ---- closeness ----------------------------------------------------------------------

/// `|got - want| <= atol + rtol * |want|` element by element (NaN must match
/// NaN, infinities must match exactly); panics naming the first failing index.
pub fn assert_close(got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_close_msg("", got, want, atol, rtol);
}

pub fn assert_close_msg(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_close_scaled(what, got, want, None, atol, rtol);
}

/// Like [`assert_close_msg`], with the relative part taken against
/// `max(|want|, scale[i])`. Reductions and matmul accumulate in f32, so their
/// rounding error is proportional to the sum of the absolute values of the
/// terms, not to the (possibly cancelled) result; `scale` is that sum.
pub fn assert_close_scaled(
    what: &str,
    got: &[f32],
    want: &[f64],
    scale: Option<&[f64]>,
    atol: f64,
    rtol: f64,
) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: got {} values, want {}",
        got.len(),
        want.len()
    );
    let mut first: Option<String> = None;
    let mut bad = 0;
    let mut worst = (0usize, 0.0f64);
    for i in 0..got.len() {
        let (g, w) = (got[i] as f64, want[i]);
        let s = scale.map_or(w.abs(), |s| s[i].max(w.abs()));
        let tol = atol + rtol * s;
        let pass = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol
        };
        if !pass {
            bad += 1;
            let excess = if g.is_finite() {
                (g - w).abs() / tol
            } else {
                f64::INFINITY
            };
            if excess > worst.1 {
                worst = (i, excess);
            }
            if first.is_none() {
                first = Some(format!(
                    "first at index {i}: got {g:e}, want {w:e}, |diff| {:e} > tol {tol:e}",
                    (g - w).abs()
                ));
            }
        }
    }
    if let Some(first) = first {
        let (wi, _) = worst;
        panic!(
            "{what}: {bad} of {} values out of tolerance (atol {atol:e}, rtol {rtol:e}); {first}; \
             worst at index {wi}: got {:e}, want {:e}",
            got.len(),
            got[wi],
            want[wi]
        );
    }
}

/// Forward check of a tensor against the reference: same shape, values within
/// the forward tolerance.
pub fn check(what: &str, t: &Tensor, want: &Arr) {
    check_tol(what, t, want, ATOL, RTOL);
}

pub fn check_tol(what: &str, t: &Tensor, want: &Arr, atol: f64, rtol: f64) {
    assert_eq!(t.shape(), &want.shape[..], "{what}: shape");
    let got = read_f32(what, t);
    assert_close_msg(what, &got, &want.data, atol, rtol);
}

/// Forward check of an f32-accumulating op (sum, matmul, ...) with the error
/// scale `scale` (see [`assert_close_scaled`]).
pub fn check_scaled(what: &str, t: &Tensor, want: &Arr, scale: &Arr) {
    assert_eq!(t.shape(), &want.shape[..], "{what}: shape");
    assert_eq!(scale.shape, want.shape, "{what}: scale shape");
    let got = read_f32(what, t);
    assert_close_scaled(what, &got, &want.data, Some(&scale.data), ATOL, RTOL);
}

// ---- gradient checking ----------------------------------------------------------------

/// One f32 input of a function under a gradient check.
#[derive(Clone, Debug)]
pub struct Input {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

pub fn input(data: Vec<f32>, shape: &[usize]) -> Input {
    assert_eq!(
        data.len(),
        numel(shape),
        "input: {} values for {shape:?}",
        data.len()
    );
    Input {
        data,
        shape: shape.to_vec(),
    }
}

pub fn rand_input(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> Input {
    input(rng.vec(numel(shape), lo, hi), shape)
}

#[derive(Clone, Debug)]
pub struct GradOpts {
    /// Step of the GPU central differences (f32 forward passes).
    pub eps: f64,
    pub atol: f64,
    pub rtol: f64,
}

impl Default for GradOpts {
    fn default() -> Self {
        GradOpts {
            eps: 1e-2,
            atol: FD_ATOL,
            rtol: FD_RTOL,
        }
    }
}

/// What a gradient check measured, for further assertions.
pub struct GradCheck {
    /// Analytic gradients from `backward`, one per input.
    pub grads: Vec<Vec<f32>>,
    /// The fixed random weights w of the loss `sum(w * f(inputs))`.
    pub weights: Vec<f64>,
    pub out_shape: Vec<usize>,
    pub out: Vec<f32>,
}

/// Checks `backward` of `f` at `inputs` against central differences taken on
/// the GPU: the loss is `sum(w * f(inputs))` with fixed random weights `w` (so
/// every output element matters), each input element is moved by `±eps` and the
/// perturbed outputs are read back and weighted in f64 on the host.
pub fn check_grad(
    name: &str,
    inputs: &[Input],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> GradCheck {
    check_grad_full(
        name,
        &GradOpts::default(),
        inputs,
        f,
        None::<fn(&[Arr]) -> Arr>,
    )
}

pub fn check_grad_with(
    name: &str,
    opts: &GradOpts,
    inputs: &[Input],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> GradCheck {
    check_grad_full(name, opts, inputs, f, None::<fn(&[Arr]) -> Arr>)
}

/// [`check_grad`], plus: the forward value is compared with the f64 reference
/// `cpu`, and the analytic GPU gradient with central differences of `cpu` in
/// f64 (step 1e-6), at the architecture's gradient tolerance 1e-4 + 1e-3*|b|.
pub fn check_grad_ref(
    name: &str,
    inputs: &[Input],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    cpu: impl Fn(&[Arr]) -> Arr,
) -> GradCheck {
    check_grad_full(name, &GradOpts::default(), inputs, f, Some(cpu))
}

pub fn check_grad_full(
    name: &str,
    opts: &GradOpts,
    inputs: &[Input],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    cpu: Option<impl Fn(&[Arr]) -> Arr>,
) -> GradCheck {
    let dev = device();
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|i| ok(name, Tensor::from_slice(dev, &i.data, &i.shape)).requires_grad_())
        .collect();
    let out = ok(&format!("{name}: forward"), f(&leaves));
    assert!(
        out.requires_grad(),
        "{name}: the output does not require grad"
    );
    let out_shape = out.shape().to_vec();
    let mut rng = Rng::named(name);
    let w32: Vec<f32> = rng.vec(out.numel(), -1.0, 1.0);
    let weights: Vec<f64> = w32.iter().map(|&w| w as f64).collect();
    let wt = tensor(&w32, &out_shape);
    let loss = ok(
        &format!("{name}: loss"),
        out.mul(&wt).and_then(|l| l.sum_all()),
    );
    let grads = ok(&format!("{name}: backward"), loss.backward());
    let mut grad_tensors = Vec::new();
    for (k, leaf) in leaves.iter().enumerate() {
        let g = grads.get(leaf).unwrap_or_else(|| {
            panic!(
                "{name}: backward gave no gradient for input {k} {:?}",
                inputs[k].shape
            )
        });
        assert_eq!(
            g.shape(),
            &inputs[k].shape[..],
            "{name}: gradient shape of input {k}"
        );
        grad_tensors.push(g.clone());
    }
    let mut to_read: Vec<&Tensor> = grad_tensors.iter().collect();
    to_read.push(&out);
    let mut values = ok(&format!("{name}: reading gradients"), read_all(&to_read));
    let out_vals = values.pop().unwrap_or_default();
    let analytic = values;

    // The forward against the reference, and the gradient against f64 central
    // differences of the reference.
    if let Some(cpu) = &cpu {
        let arrs: Vec<Arr> = inputs
            .iter()
            .map(|i| Arr::from_f32(&i.data, &i.shape))
            .collect();
        let want = cpu(&arrs);
        assert_eq!(want.shape, out_shape, "{name}: reference output shape");
        assert_close_msg(
            &format!("{name}: forward vs f64 reference"),
            &out_vals,
            &want.data,
            ATOL,
            RTOL,
        );
        let loss_of =
            |a: &[Arr]| -> f64 { cpu(a).data.iter().zip(&weights).map(|(x, w)| x * w).sum() };
        for k in 0..inputs.len() {
            let mut cpu_grad = Vec::with_capacity(inputs[k].data.len());
            let mut arrs = arrs.clone();
            for j in 0..inputs[k].data.len() {
                let x = arrs[k].data[j];
                let h = 1e-6 * x.abs().max(1.0);
                arrs[k].data[j] = x + h;
                let lp = loss_of(&arrs);
                arrs[k].data[j] = x - h;
                let lm = loss_of(&arrs);
                arrs[k].data[j] = x;
                cpu_grad.push((lp - lm) / (2.0 * h));
            }
            assert_close_msg(
                &format!(
                    "{name}: d/d(input {k} {:?}) vs f64 differences of the reference",
                    inputs[k].shape
                ),
                &analytic[k],
                &cpu_grad,
                GRAD_ATOL,
                GRAD_RTOL,
            );
        }
    }

    // Central differences of the GPU forward pass itself.
    let eval = |vals: &[Vec<f32>]| -> f64 {
        let _guard = no_grad();
        let ts: Vec<Tensor> = vals
            .iter()
            .zip(inputs)
            .map(|(v, i)| tensor(v, &i.shape))
            .collect();
        let o = ok(&format!("{name}: perturbed forward"), f(&ts));
        let v = read_f32(name, &o);
        v.iter().zip(&weights).map(|(&x, w)| x as f64 * w).sum()
    };
    let mut vals: Vec<Vec<f32>> = inputs.iter().map(|i| i.data.clone()).collect();
    for k in 0..inputs.len() {
        let mut fd = Vec::with_capacity(vals[k].len());
        for j in 0..vals[k].len() {
            let x = vals[k][j];
            let (xp, xm) = (x + opts.eps as f32, x - opts.eps as f32);
            vals[k][j] = xp;
            let lp = eval(&vals);
            vals[k][j] = xm;
            let lm = eval(&vals);
            vals[k][j] = x;
            fd.push((lp - lm) / (xp as f64 - xm as f64));
        }
        assert_close_msg(
            &format!(
                "{name}: d/d(input {k} {:?}) vs GPU central differences (eps {})",
                inputs[k].shape, opts.eps
            ),
            &analytic[k],
            &fd,
            opts.atol,
            opts.rtol,
        );
    }
    GradCheck {
        grads: analytic,
        weights,
        out_shape,
        out: out_vals,
    }
}
