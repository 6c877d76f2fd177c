//! Recurrent layers against a plain CPU reference in f64 (PyTorch's
//! equations, written out below): outputs and final states for every kind,
//! stacked and bidirectional, both batch layouts, initial states and
//! sequences of different lengths; every gradient (input, initial state,
//! each weight) against central differences of that reference.

mod common;

use cinder::nn::{gru, lstm, rnn, CellKind, Embedding, Module, Recurrent, RnnOptions, State};
use cinder::{Result, Tensor};

/// A seeded stream of numbers in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// One layer-direction's weights as plain row-major vectors.
#[derive(Clone)]
struct RefCell {
    w_ih: Vec<f64>,
    w_hh: Vec<f64>,
    b_ih: Vec<f64>,
    b_hh: Vec<f64>,
    input: usize,
}

/// The whole layer: `cells[l * D + d]`.
#[derive(Clone)]
struct RefNet {
    kind: CellKind,
    hidden: usize,
    layers: usize,
    directions: usize,
    cells: Vec<RefCell>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl RefNet {
    fn from(net: &Recurrent) -> Result<RefNet> {
        let directions = net.directions();
        let layers = net.options().num_layers;
        let mut cells = Vec::new();
        for l in 0..layers {
            for d in 0..directions {
                let c = net.cell(l, d).expect("cell exists");
                let read = |t: &Tensor| -> Result<Vec<f64>> {
                    Ok(t.to_vec::<f32>()?.into_iter().map(f64::from).collect())
                };
                let rows = c.weight_ih.shape()[0];
                cells.push(RefCell {
                    w_ih: read(&c.weight_ih)?,
                    w_hh: read(&c.weight_hh)?,
                    b_ih: match &c.bias_ih {
                        Some(b) => read(b)?,
                        None => vec![0.0; rows],
                    },
                    b_hh: match &c.bias_hh {
                        Some(b) => read(b)?,
                        None => vec![0.0; rows],
                    },
                    input: c.input_size(),
                });
            }
        }
        Ok(RefNet {
            kind: net.kind(),
            hidden: net.hidden_size(),
            layers,
            directions,
            cells,
        })
    }

    /// One step of PyTorch's equations for one sequence.
    fn step(&self, cell: &RefCell, x: &[f64], h: &[f64], c: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let hs = self.hidden;
        let rows = self.kind.gates() * hs;
        let mut xi = vec![0.0; rows];
        let mut hh = vec![0.0; rows];
        for r in 0..rows {
            xi[r] = cell.b_ih[r]
                + (0..cell.input)
                    .map(|k| cell.w_ih[r * cell.input + k] * x[k])
                    .sum::<f64>();
            hh[r] = cell.b_hh[r] + (0..hs).map(|k| cell.w_hh[r * hs + k] * h[k]).sum::<f64>();
        }
        match self.kind {
            CellKind::RnnTanh => ((0..hs).map(|j| (xi[j] + hh[j]).tanh()).collect(), vec![]),
            CellKind::RnnRelu => ((0..hs).map(|j| (xi[j] + hh[j]).max(0.0)).collect(), vec![]),
            CellKind::Lstm => {
                let mut h2 = vec![0.0; hs];
                let mut c2 = vec![0.0; hs];
                for j in 0..hs {
                    let g = |k: usize| xi[k * hs + j] + hh[k * hs + j];
                    let (i, f, gg, o) = (sigmoid(g(0)), sigmoid(g(1)), g(2).tanh(), sigmoid(g(3)));
                    c2[j] = f * c[j] + i * gg;
                    h2[j] = o * c2[j].tanh();
                }
                (h2, c2)
            }
            CellKind::Gru => {
                let mut h2 = vec![0.0; hs];
                for j in 0..hs {
                    let r = sigmoid(xi[j] + hh[j]);
                    let z = sigmoid(xi[hs + j] + hh[hs + j]);
                    let n = (xi[2 * hs + j] + r * hh[2 * hs + j]).tanh();
                    h2[j] = (1.0 - z) * n + z * h[j];
                }
                (h2, vec![])
            }
        }
    }

    /// `x[b][t][i]` (batch-major here whatever the layer's layout); returns
    /// `output[b][t][D*H]`, `h_n[slot][b][H]`, `c_n[slot][b][H]`.
    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        x: &[Vec<Vec<f64>>],
        h0: Option<&[Vec<Vec<f64>>]>,
        c0: Option<&[Vec<Vec<f64>>]>,
        lengths: &[usize],
    ) -> (Vec<Vec<Vec<f64>>>, Vec<Vec<Vec<f64>>>, Vec<Vec<Vec<f64>>>) {
        let hs = self.hidden;
        let batch = x.len();
        let steps = x[0].len();
        let slots = self.layers * self.directions;
        let mut h_n = vec![vec![vec![0.0; hs]; batch]; slots];
        let mut c_n = vec![vec![vec![0.0; hs]; batch]; slots];
        let mut layer_in: Vec<Vec<Vec<f64>>> = x.to_vec();
        for l in 0..self.layers {
            let mut out = vec![vec![vec![0.0; hs * self.directions]; steps]; batch];
            for d in 0..self.directions {
                let slot = l * self.directions + d;
                let cell = &self.cells[slot];
                for b in 0..batch {
                    let mut h = h0.map_or(vec![0.0; hs], |h0| h0[slot][b].clone());
                    let mut c = c0.map_or(vec![0.0; hs], |c0| c0[slot][b].clone());
                    let len = lengths[b];
                    let order: Vec<usize> = if d == 0 {
                        (0..len).collect()
                    } else {
                        (0..len).rev().collect()
                    };
                    for t in order {
                        let (h2, c2) = self.step(cell, &layer_in[b][t], &h, &c);
                        out[b][t][d * hs..(d + 1) * hs].copy_from_slice(&h2);
                        h = h2;
                        c = c2;
                    }
                    h_n[slot][b] = h;
                    c_n[slot][b] = c;
                }
            }
            layer_in = out;
        }
        (layer_in, h_n, c_n)
    }
}

fn flat3(v: &[Vec<Vec<f64>>]) -> Vec<f64> {
    v.iter().flatten().flatten().copied().collect()
}

fn nested(flat: &[f64], a: usize, b: usize, c: usize) -> Vec<Vec<Vec<f64>>> {
    (0..a)
        .map(|i| {
            (0..b)
                .map(|j| flat[(i * b + j) * c..(i * b + j + 1) * c].to_vec())
                .collect()
        })
        .collect()
}

/// `[B][T][F]` from a layer-layout tensor's values.
fn to_batch_major(flat: &[f64], shape: &[usize], batch_first: bool) -> Vec<Vec<Vec<f64>>> {
    if batch_first {
        return nested(flat, shape[0], shape[1], shape[2]);
    }
    let (steps, batch, f) = (shape[0], shape[1], shape[2]);
    (0..batch)
        .map(|b| {
            (0..steps)
                .map(|t| flat[(t * batch + b) * f..(t * batch + b + 1) * f].to_vec())
                .collect()
        })
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

fn f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_vec::<f32>()?.into_iter().map(f64::from).collect())
}

fn tensor(values: &[f64], shape: &[usize]) -> Result<Tensor> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(&common::device(), v, shape)
}

struct Case {
    kind: CellKind,
    options: RnnOptions,
    batch: usize,
    steps: usize,
    input: usize,
    hidden: usize,
    lengths: Option<Vec<usize>>,
    initial_state: bool,
}

/// Forward against the reference; with `grads`, every gradient against
/// central differences of the reference (in f64, so the differences are exact
/// to ~1e-9 and the tolerance only covers the GPU's f32 arithmetic).
fn check(case: &Case, seed: u64, grads: bool) -> Result<()> {
    let device = common::device();
    let net = match case.kind {
        CellKind::Lstm => lstm(&device, case.input, case.hidden, case.options)?,
        CellKind::Gru => gru(&device, case.input, case.hidden, case.options)?,
        _ => rnn(&device, case.input, case.hidden, case.options)?,
    };
    let reference = RefNet::from(&net)?;
    let mut rng = Rng(seed);
    let (b, t, i, h) = (case.batch, case.steps, case.input, case.hidden);
    let slots = reference.layers * reference.directions;
    let x_shape = if case.options.batch_first {
        vec![b, t, i]
    } else {
        vec![t, b, i]
    };
    let x_vals = rng.vec(b * t * i, 1.0);
    let x = tensor(&x_vals, &x_shape)?.requires_grad_();
    let lstm_like = case.kind == CellKind::Lstm;
    let (h0_vals, c0_vals) = (rng.vec(slots * b * h, 0.5), rng.vec(slots * b * h, 0.5));
    let state = if case.initial_state {
        Some(State {
            h: tensor(&h0_vals, &[slots, b, h])?.requires_grad_(),
            c: if lstm_like {
                Some(tensor(&c0_vals, &[slots, b, h])?.requires_grad_())
            } else {
                None
            },
        })
    } else {
        None
    };
    let lengths = case.lengths.clone().unwrap_or(vec![t; b]);
    let out = net.run(&x, state.as_ref(), case.lengths.as_deref())?;
    let out_shape = out.output.shape().to_vec();
    let d_h = reference.directions * h;
    let expected_shape = if case.options.batch_first {
        vec![b, t, d_h]
    } else {
        vec![t, b, d_h]
    };
    assert_eq!(out_shape, expected_shape, "output shape");
    assert_eq!(out.h_n.shape(), &[slots, b, h], "h_n shape");

    // The reference, as a function of every input, for the differences.
    let run_ref = |net: &RefNet, x_vals: &[f64], h0: &[f64], c0: &[f64]| {
        let xb = to_batch_major(x_vals, &x_shape, case.options.batch_first);
        let h0n = nested(h0, slots, b, h);
        let c0n = nested(c0, slots, b, h);
        net.run(
            &xb,
            case.initial_state.then_some(&h0n[..]),
            (case.initial_state && lstm_like).then_some(&c0n[..]),
            &lengths,
        )
    };
    let (want_out, want_h, want_c) = run_ref(&reference, &x_vals, &h0_vals, &c0_vals);
    let got_out = to_batch_major(&f64s(&out.output)?, &out_shape, case.options.batch_first);
    assert_close("output", &flat3(&got_out), &flat3(&want_out), 2e-5);
    assert_close("h_n", &f64s(&out.h_n)?, &flat3(&want_h), 2e-5);
    if lstm_like {
        let c_n = out.c_n.as_ref().expect("an LSTM returns c_n");
        assert_close("c_n", &f64s(c_n)?, &flat3(&want_c), 2e-5);
    } else {
        assert!(out.c_n.is_none());
    }
    if !grads {
        return Ok(());
    }

    // loss = <output, R1> + <h_n, R2> (+ <c_n, R3>): every output matters.
    let r1 = rng.vec(out.output.numel(), 1.0);
    let r2 = rng.vec(out.h_n.numel(), 1.0);
    let r3 = rng.vec(out.h_n.numel(), 1.0);
    let mut loss = out
        .output
        .mul(&tensor(&r1, &out_shape)?)?
        .sum_all()?
        .add(&out.h_n.mul(&tensor(&r2, &[slots, b, h])?)?.sum_all()?)?;
    if let Some(c_n) = &out.c_n {
        loss = loss.add(&c_n.mul(&tensor(&r3, &[slots, b, h])?)?.sum_all()?)?;
    }
    let g = loss.backward()?;
    // The reference loss, with R1 laid out in the layer's layout.
    let ref_loss = |net: &RefNet, x_vals: &[f64], h0: &[f64], c0: &[f64]| -> f64 {
        let (o, hn, cn) = run_ref(net, x_vals, h0, c0);
        let r1b = to_batch_major(&r1, &out_shape, case.options.batch_first);
        let mut s: f64 = flat3(&o).iter().zip(flat3(&r1b)).map(|(a, w)| a * w).sum();
        s += flat3(&hn).iter().zip(&r2).map(|(a, w)| a * w).sum::<f64>();
        if lstm_like {
            s += flat3(&cn).iter().zip(&r3).map(|(a, w)| a * w).sum::<f64>();
        }
        s
    };
    let eps = 1e-5;
    let numeric = |values: &[f64], f: &dyn Fn(&[f64]) -> f64| -> Vec<f64> {
        (0..values.len())
            .map(|k| {
                let mut up = values.to_vec();
                let mut down = values.to_vec();
                up[k] += eps;
                down[k] -= eps;
                (f(&up) - f(&down)) / (2.0 * eps)
            })
            .collect()
    };
    let grad_of = |t: &Tensor| -> Result<Vec<f64>> {
        match g.get(t) {
            Some(gt) => f64s(gt),
            None => Ok(vec![0.0; t.numel()]),
        }
    };
    let tol = 2e-3;
    let dx = numeric(&x_vals, &|v| ref_loss(&reference, v, &h0_vals, &c0_vals));
    assert_close("d input", &grad_of(&x)?, &dx, tol);
    if let Some(s) = &state {
        let dh0 = numeric(&h0_vals, &|v| ref_loss(&reference, &x_vals, v, &c0_vals));
        assert_close("d h_0", &grad_of(&s.h)?, &dh0, tol);
        if let Some(c) = &s.c {
            let dc0 = numeric(&c0_vals, &|v| ref_loss(&reference, &x_vals, &h0_vals, v));
            assert_close("d c_0", &grad_of(c)?, &dc0, tol);
        }
    }
    for l in 0..reference.layers {
        for d in 0..reference.directions {
            let slot = l * reference.directions + d;
            let cell = net.cell(l, d).expect("cell exists");
            type Pick = fn(&mut RefCell) -> &mut Vec<f64>;
            let parts: [(&str, &Tensor, Pick); 4] = [
                ("weight_ih", &cell.weight_ih, |c| &mut c.w_ih),
                ("weight_hh", &cell.weight_hh, |c| &mut c.w_hh),
                ("bias_ih", cell.bias_ih.as_ref().expect("bias"), |c| {
                    &mut c.b_ih
                }),
                ("bias_hh", cell.bias_hh.as_ref().expect("bias"), |c| {
                    &mut c.b_hh
                }),
            ];
            for (name, param, pick) in parts {
                let base = pick(&mut reference.cells[slot].clone()).clone();
                let want = numeric(&base, &|v| {
                    let mut perturbed = reference.clone();
                    *pick(&mut perturbed.cells[slot]) = v.to_vec();
                    ref_loss(&perturbed, &x_vals, &h0_vals, &c0_vals)
                });
                assert_close(
                    &format!("d {name} (layer {l}, direction {d})"),
                    &grad_of(param)?,
                    &want,
                    tol,
                );
            }
        }
    }
    Ok(())
}

fn case(kind: CellKind) -> Case {
    Case {
        kind,
        options: RnnOptions::default(),
        batch: 3,
        steps: 5,
        input: 7,
        hidden: 6,
        lengths: None,
        initial_state: false,
    }
}

#[test]
fn every_kind_matches_the_reference_with_gradients() -> Result<()> {
    for (seed, kind) in [
        CellKind::RnnTanh,
        CellKind::RnnRelu,
        CellKind::Lstm,
        CellKind::Gru,
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = case(kind);
        c.initial_state = true;
        check(&c, seed as u64 + 1, true)?;
    }
    Ok(())
}

#[test]
fn two_layer_bidirectional_stacks_with_lengths_and_state() -> Result<()> {
    for (seed, kind, batch_first) in [
        (11, CellKind::Lstm, false),
        (12, CellKind::Gru, true),
        (13, CellKind::RnnTanh, true),
    ] {
        let c = Case {
            options: RnnOptions::default()
                .num_layers(2)
                .bidirectional(true)
                .batch_first(batch_first),
            lengths: Some(vec![5, 2, 4]),
            initial_state: true,
            ..case(kind)
        };
        check(&c, seed, true)?;
    }
    Ok(())
}

#[test]
fn forward_only_shapes_layouts_and_no_bias() -> Result<()> {
    // Larger than one workgroup in every dimension, forward only.
    let c = Case {
        options: RnnOptions::default().batch_first(true).bias(true),
        batch: 33,
        steps: 9,
        input: 70,
        hidden: 65,
        lengths: Some((0..33).map(|k| 1 + k % 9).collect()),
        ..case(CellKind::Lstm)
    };
    check(&c, 21, false)?;
    let device = common::device();
    let no_bias = gru(&device, 4, 3, RnnOptions::default().bias(false))?;
    let names: Vec<String> = no_bias
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["weight_ih_l0", "weight_hh_l0"]);
    Ok(())
}

#[test]
fn parameter_names_shapes_and_init_follow_pytorch() -> Result<()> {
    let device = common::device();
    let net = lstm(
        &device,
        10,
        20,
        RnnOptions::default().num_layers(2).bidirectional(true),
    )?;
    let got: Vec<(String, Vec<usize>)> = net
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    let mut want = Vec::new();
    for l in 0..2 {
        for suffix in ["", "_reverse"] {
            let input = if l == 0 { 10 } else { 40 };
            want.push((format!("weight_ih_l{l}{suffix}"), vec![80, input]));
            want.push((format!("weight_hh_l{l}{suffix}"), vec![80, 20]));
            want.push((format!("bias_ih_l{l}{suffix}"), vec![80]));
            want.push((format!("bias_hh_l{l}{suffix}"), vec![80]));
        }
    }
    assert_eq!(got, want);
    let bound = 1.0 / 20f32.sqrt();
    for (name, t) in net.named_parameters() {
        let v = t.to_vec::<f32>()?;
        assert!(
            v.iter().all(|x| x.abs() <= bound),
            "{name} outside ±1/sqrt(H)"
        );
        let spread = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(spread > 0.8 * bound, "{name} does not fill ±1/sqrt(H)");
    }
    Ok(())
}

#[test]
fn cells_match_one_step_of_the_sequence_layer() -> Result<()> {
    let device = common::device();
    for kind in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh] {
        let layer = cinder::nn::Recurrent::new(&device, kind, 5, 4, RnnOptions::default())?;
        let params = layer.cell(0, 0).expect("one cell").clone();
        let cell = cinder::nn::Cell::from_params(kind, params)?;
        let mut rng = Rng(31);
        let x = tensor(&rng.vec(2 * 5, 1.0), &[2, 5])?;
        let h = tensor(&rng.vec(2 * 4, 0.5), &[2, 4])?;
        let c = tensor(&rng.vec(2 * 4, 0.5), &[2, 4])?;
        let state = State {
            h: h.clone(),
            c: (kind == CellKind::Lstm).then(|| c.clone()),
        };
        let one = cell.step(&x, Some(&state))?;
        let seq_state = State {
            h: h.unsqueeze(0)?,
            c: state.c.as_ref().map(|c| c.unsqueeze(0)).transpose()?,
        };
        let seq = layer.run(&x.unsqueeze(0)?, Some(&seq_state), None)?;
        assert_close("cell h", &f64s(&one.h)?, &f64s(&seq.h_n.squeeze(0)?)?, 1e-6);
        // Unbatched input gives the same row.
        let single = cell.step(&x.narrow(0, 1, 1)?.squeeze(0)?, None)?;
        let zero = cell.step(&x, None)?;
        assert_close(
            "unbatched",
            &f64s(&single.h)?,
            &f64s(&zero.h.narrow(0, 1, 1)?.squeeze(0)?)?,
            1e-6,
        );
    }
    Ok(())
}

/// Batches and hidden sizes big enough for the
/// CPU adapters' resident kernels (several units per invocation, several
/// sequences per workgroup, idle lanes): forward against the reference,
/// gradients against the same cells unrolled a step at a time with their
/// arithmetic on the tape.
#[test]
fn wide_layers_match_the_reference_and_their_unrolled_cells() -> Result<()> {
    for (seed, kind, batch, hidden, bidirectional) in [
        (51, CellKind::Lstm, 456, 24, true),
        (52, CellKind::Gru, 344, 32, false),
        // Wide enough that the backward kernel keeps each unit's column
        // of the stacked weights (288 floats) in two private arrays.
        (53, CellKind::Lstm, 52, 72, false),
        // An odd width: the state copy moves single floats, not pairs.
        (54, CellKind::Gru, 330, 33, false),
        // A plain RNN (one gate, a one-block record) through the same
        // kernels.
        (55, CellKind::RnnRelu, 66, 128, true),
        // 256 invocations of two units each, pairs of neighbours.
        (56, CellKind::Lstm, 5, 260, false),
    ] {
        let case = Case {
            kind,
            options: RnnOptions::default().bidirectional(bidirectional),
            batch,
            steps: 3,
            input: 5,
            hidden,
            lengths: Some((0..batch).map(|b| 3 - b % 3).collect()),
            initial_state: true,
        };
        check(&case, seed, false)?;
        unrolled_gradients(&case, seed)?;
    }
    // On a Vulkan CPU adapter (lavapipe, as in CI) those resident kernels
    // were translated by cinder without the zeroing of their private
    // arrays, so the checks above cover that path.
    let device = common::device();
    if device.is_cpu() && device.subgroups() && device.backend() == "Vulkan" {
        let spirv = device.stats().spirv_pipelines_created;
        assert!(spirv >= 2, "{spirv} kernels took the SPIR-V path");
    }
    Ok(())
}

/// Every gradient of a one-layer `case` against its cells stepped by hand.
fn unrolled_gradients(case: &Case, seed: u64) -> Result<()> {
    let device = common::device();
    let (b, t, h) = (case.batch, case.steps, case.hidden);
    let layer = Recurrent::new(&device, case.kind, case.input, h, case.options)?;
    let dirs = layer.directions();
    let lstm_like = case.kind == CellKind::Lstm;
    let mut rng = Rng(seed);
    let x = tensor(&rng.vec(t * b * case.input, 1.0), &[t, b, case.input])?.requires_grad_();
    let h0 = tensor(&rng.vec(dirs * b * h, 0.5), &[dirs, b, h])?.requires_grad_();
    let c0 = tensor(&rng.vec(dirs * b * h, 0.5), &[dirs, b, h])?.requires_grad_();
    let lengths = case.lengths.clone().expect("lengths");
    let state = State {
        h: h0.clone(),
        c: lstm_like.then(|| c0.clone()),
    };
    let got = layer.run(&x, Some(&state), Some(&lengths))?;

    let mut outputs = Vec::new();
    let mut finals = Vec::new();
    for d in 0..dirs {
        let cell =
            cinder::nn::Cell::from_params(case.kind, layer.cell(0, d).expect("cell").clone())?;
        let mut s = State {
            h: h0.narrow(0, d, 1)?.squeeze(0)?,
            c: lstm_like
                .then(|| c0.narrow(0, d, 1)?.squeeze(0))
                .transpose()?,
        };
        let mut per_step: Vec<Option<Tensor>> = vec![None; t];
        let order: Vec<usize> = if d == 0 {
            (0..t).collect()
        } else {
            (0..t).rev().collect()
        };
        for step in order {
            let m: Vec<f64> = lengths
                .iter()
                .map(|&l| f64::from(u8::from(step < l)))
                .collect();
            let m = tensor(&m, &[b, 1])?;
            let next = cell.step(&x.narrow(0, step, 1)?.squeeze(0)?, Some(&s))?;
            let keep = |old: &Tensor, new: &Tensor| old.add(&new.sub(old)?.mul(&m)?);
            per_step[step] = Some(next.h.mul(&m)?);
            s = State {
                h: keep(&s.h, &next.h)?,
                c: match (&s.c, &next.c) {
                    (Some(old), Some(new)) => Some(keep(old, new)?),
                    _ => None,
                },
            };
        }
        let per_step: Vec<Tensor> = per_step.into_iter().map(|o| o.expect("step")).collect();
        outputs.push(Tensor::stack(&per_step.iter().collect::<Vec<_>>(), 0)?);
        finals.push(s);
    }
    let want_out = Tensor::concat(&outputs.iter().collect::<Vec<_>>(), 2)?;
    let want_h = Tensor::stack(&finals.iter().map(|s| &s.h).collect::<Vec<_>>(), 0)?;

    // The same weighted sum of every output from both.
    let r1 = tensor(&rng.vec(want_out.numel(), 1.0), want_out.shape())?;
    let r2 = tensor(&rng.vec(want_h.numel(), 1.0), want_h.shape())?;
    let loss = |out: &Tensor, hn: &Tensor, cn: Option<&Tensor>| -> Result<Tensor> {
        let mut l = out.mul(&r1)?.sum_all()?.add(&hn.mul(&r2)?.sum_all()?)?;
        if let Some(c) = cn {
            l = l.add(&c.mul(&r2)?.sum_all()?)?;
        }
        Ok(l)
    };
    let want_c = match lstm_like {
        true => Some(Tensor::stack(
            &finals
                .iter()
                .filter_map(|s| s.c.as_ref())
                .collect::<Vec<_>>(),
            0,
        )?),
        false => None,
    };
    let got_grads = loss(&got.output, &got.h_n, got.c_n.as_ref())?.backward()?;
    let want_grads = loss(&want_out, &want_h, want_c.as_ref())?.backward()?;
    let mut leaves = vec![("input", x.clone()), ("h_0", h0.clone())];
    if lstm_like {
        leaves.push(("c_0", c0.clone()));
    }
    for (name, param) in layer.named_parameters() {
        leaves.push((
            if name.contains("reverse") {
                "reverse weights"
            } else {
                "weights"
            },
            param,
        ));
    }
    for (what, leaf) in leaves {
        let got = f64s(got_grads.get(&leaf).expect("a gradient"))?;
        let want = f64s(want_grads.get(&leaf).expect("a gradient"))?;
        assert_close(&format!("{:?} d {what}", case.kind), &got, &want, 2e-4);
    }
    Ok(())
}

#[test]
fn wrong_shapes_and_lengths_are_errors() -> Result<()> {
    let device = common::device();
    let net = lstm(&device, 3, 4, RnnOptions::default())?;
    let x = Tensor::zeros(&device, &[5, 2, 3]);
    let err = |r: Result<cinder::nn::RnnOutput>| match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err(net.run(&Tensor::zeros(&device, &[5, 2, 4]), None, None)).contains("features"));
    assert!(err(net.run(&x, None, Some(&[5, 6]))).contains("1..=5"));
    assert!(err(net.run(&x, None, Some(&[5, 0]))).contains("1..=5"));
    assert!(err(net.run(&x, None, Some(&[5]))).contains("lengths"));
    let h = Tensor::zeros(&device, &[1, 2, 4]);
    let no_c = State { h, c: None };
    assert!(err(net.run(&x, Some(&no_c), None)).contains("c_0"));
    assert!(lstm(&device, 3, 4, RnnOptions::default().num_layers(0)).is_err());
    assert!(lstm(&device, 3, 4, RnnOptions::default().dropout(1.5)).is_err());
    Ok(())
}

#[test]
fn dropout_between_layers_only_in_training() -> Result<()> {
    let device = common::device();
    let mut net = lstm(
        &device,
        3,
        8,
        RnnOptions::default().num_layers(2).dropout(0.5),
    )?;
    let x = tensor(&Rng(5).vec(4 * 2 * 3, 1.0), &[4, 2, 3])?;
    net.eval();
    let a = f64s(&net.forward(&x)?)?;
    let b = f64s(&net.forward(&x)?)?;
    assert_eq!(a, b, "eval mode is deterministic");
    let reference = RefNet::from(&net)?;
    let xb = to_batch_major(&f64s(&x)?, &[4, 2, 3], false);
    let (want, _, _) = reference.run(&xb, None, None, &[4, 4]);
    let got = to_batch_major(&a, &[4, 2, 8], false);
    assert_close("eval output", &flat3(&got), &flat3(&want), 2e-5);
    net.train();
    let c = f64s(&net.forward(&x)?)?;
    assert!(
        c.iter().zip(&a).any(|(p, q)| (p - q).abs() > 1e-4),
        "training mode drops units between the layers"
    );
    Ok(())
}

#[test]
fn embedding_rows_and_padding_gradient() -> Result<()> {
    let device = common::device();
    let emb = Embedding::new(&device, 6, 3, Some(2))?;
    let w = f64s(&emb.weight)?;
    assert!(
        w[6..9].iter().all(|&v| v == 0.0),
        "padding row starts at zero"
    );
    let idx = Tensor::from_vec(&device, vec![1i32, 2, 5, 1], &[2, 2])?;
    let out = emb.forward(&idx)?;
    assert_eq!(out.shape(), &[2, 2, 3]);
    let got = f64s(&out)?;
    for (k, &row) in [1usize, 2, 5, 1].iter().enumerate() {
        assert_eq!(&got[k * 3..k * 3 + 3], &w[row * 3..row * 3 + 3]);
    }
    let weights = tensor(&Rng(9).vec(12, 1.0), &[2, 2, 3])?;
    let g = out.mul(&weights)?.sum_all()?.backward()?;
    let gw = f64s(g.get(&emb.weight).expect("weight gradient"))?;
    let wv = f64s(&weights)?;
    for j in 0..3 {
        assert!(
            (gw[3 + j] - (wv[j] + wv[9 + j])).abs() < 1e-6,
            "row 1 sums its uses"
        );
        assert_eq!(gw[6 + j], 0.0, "the padding row gets no gradient");
        assert!((gw[15 + j] - wv[6 + j]).abs() < 1e-6);
    }
    assert!(Embedding::new(&device, 6, 3, Some(6)).is_err());
    assert!(emb.forward(&Tensor::zeros(&device, &[2])).is_err());
    Ok(())
}
