//! One LSTM or GRU layer-direction over a whole sequence, with a backward
//! pass written for the whole sequence.
//!
//! Left to autograd, an unrolled recurrence differentiates step by step:
//! each step's slice of the input projection scatters a full-size gradient
//! that is summed over all steps, each step multiplies out its own share of
//! `dW_hh` (a product, its operand packs and a split-K sum per step), and
//! each gate's gradient is its own value. Here each forward step is one
//! product (`h W_hh^T`) and one kernel (`recurrence/*_forward.wgsl`: the
//! gates, the cell and the hidden state, written as the step's record),
//! run without a tape; one op ([`Recurrence`]) stands for the whole
//! sequence on the tape, and its backward rule walks back through time with
//! one product and one kernel per step (`*_backward.wgsl`), then computes
//! `dW_hh` as one product over every step and hands the input projection
//! its gradient as one tensor.

use std::sync::Arc;

use cinder_tensor::{CustomKernel, CustomOp, DType, Error, Result, Tensor};

use crate::rnn::CellKind;

/// Where a record's blocks of `hidden` values sit: LSTM `[i, f, g, o, c,
/// h]`, GRU `[r, z, n, hn, h]` (`hn = W_hn h + b_hn`, which the reset gate
/// scales).
fn record_blocks(kind: CellKind) -> usize {
    match kind {
        CellKind::Lstm => 6,
        _ => 5,
    }
}

pub(crate) fn h_block(kind: CellKind) -> usize {
    record_blocks(kind) - 1
}

pub(crate) const LSTM_C_BLOCK: usize = 4;

/// The inputs of one layer-direction's recurrence.
pub(crate) struct SequenceInputs<'a> {
    pub kind: CellKind,
    /// `[T, B, G*H]`, time first: the input projection with the biases
    /// that can be added before the recurrence.
    pub projected: &'a Tensor,
    /// `[G*H, H]`.
    pub weight_hh: &'a Tensor,
    /// The GRU's `b_hh` (`[3H]`); `None` without biases or for an LSTM.
    pub bias_hh: Option<&'a Tensor>,
    pub h0: &'a Tensor,
    /// The LSTM's initial cell `[B, H]`.
    pub c0: Option<&'a Tensor>,
    /// Each sequence's length, `[B]` i32 (the padded length where none
    /// were given).
    pub lengths: &'a Tensor,
    pub reverse: bool,
}

/// The state after every step, `[T, B, 2H]` (`[c, h]`) for an LSTM and
/// `[T, B, H]` for a GRU, in time order, differentiable with respect to the
/// projection, the weights, the GRU's `b_hh` and the initial state. Past a
/// sequence's end a step keeps the state.
pub(crate) fn run_sequence(inputs: &SequenceInputs) -> Result<Tensor> {
    let kind = inputs.kind;
    let shape = inputs.projected.shape();
    let (steps, batch) = (shape[0], shape[1]);
    let hidden = inputs.weight_hh.shape()[1];
    if batch > 65535 {
        // The cell kernels run a row of workgroups per batch row.
        return Err(Error::invalid(
            kind.name(),
            format!("a batch of {batch} sequences; at most 65535 run at once"),
        ));
    }
    let device = inputs.h0.device();
    let weight_t = inputs.weight_hh.detach().t()?;
    let bias_hh = inputs.bias_hh.map(Tensor::detach);
    let projected = inputs.projected.detach();
    // The record "before" the first step: the initial state in its blocks.
    let gate_blocks = Tensor::zeros(device, &[batch, 4 * hidden]);
    let initial = match (kind, inputs.c0) {
        (CellKind::Lstm, Some(c0)) => {
            Tensor::concat(&[&gate_blocks, &c0.detach(), &inputs.h0.detach()], 1)?
        }
        (CellKind::Lstm, None) => {
            return Err(Error::invalid("LSTM", "the state has no cell tensor c"))
        }
        _ => Tensor::concat(&[&gate_blocks, &inputs.h0.detach()], 1)?,
    };
    let hb = h_block(kind);
    let mut previous = initial.clone();
    let mut records: Vec<Option<Tensor>> = vec![None; steps];
    for t in order(steps, inputs.reverse) {
        let h = previous.narrow(1, hb * hidden, hidden)?;
        let mut hh = h.matmul(&weight_t)?;
        if let Some(b) = &bias_hh {
            hh = hh.add(b)?;
        }
        let step = CellStep {
            kind,
            backward: false,
            batch,
            hidden,
            t,
            t_prev: 0,
        };
        let record = Tensor::custom(
            Arc::new(step),
            &[&hh, &projected, &previous, inputs.lengths],
        )?;
        previous = record.clone();
        records[t] = Some(record);
    }
    let records: Vec<Tensor> = records
        .into_iter()
        .map(|r| r.ok_or_else(|| Error::invalid(kind.name(), "a time step was not computed")))
        .collect::<Result<_>>()?;
    let refs: Vec<&Tensor> = records.iter().collect();
    let stacked = Tensor::stack(&refs, 0)?;

    // The op's inputs are what gradients flow to; the last is the records,
    // which its kernel copies out.
    let zeros;
    let extra = match (kind, inputs.c0, inputs.bias_hh) {
        (CellKind::Lstm, Some(c0), _) => c0,
        (_, _, Some(b)) => b,
        _ => {
            zeros = Tensor::zeros(device, &[1]);
            &zeros
        }
    };
    let op = Recurrence {
        kind,
        hidden,
        reverse: inputs.reverse,
        initial,
        lengths: inputs.lengths.clone(),
        has_bias_hh: inputs.bias_hh.is_some(),
    };
    Tensor::custom(
        Arc::new(op),
        &[
            inputs.projected,
            inputs.weight_hh,
            inputs.h0,
            extra,
            &stacked,
        ],
    )
}

/// One step's kernel, forward or back (see the `.wgsl` files beside this
/// one). Its time indices are parameters, so every step of a sequence
/// shares one pipeline.
struct CellStep {
    kind: CellKind,
    backward: bool,
    batch: usize,
    hidden: usize,
    t: usize,
    /// The step visited before `t` (backward only); `None` is the initial
    /// state.
    t_prev: u32,
}

const COMMON_WGSL: &str = include_str!("recurrence/common.wgsl");

impl CustomKernel for CellStep {
    fn name(&self) -> &str {
        match (self.kind, self.backward) {
            (CellKind::Lstm, false) => "lstm step",
            (CellKind::Lstm, true) => "lstm step backward",
            (_, false) => "gru step",
            (_, true) => "gru step backward",
        }
    }

    fn wgsl(&self) -> String {
        let body = match (self.kind, self.backward) {
            (CellKind::Lstm, false) => include_str!("recurrence/lstm_forward.wgsl"),
            (CellKind::Lstm, true) => include_str!("recurrence/lstm_backward.wgsl"),
            (_, false) => include_str!("recurrence/gru_forward.wgsl"),
            (_, true) => include_str!("recurrence/gru_backward.wgsl"),
        };
        format!("{COMMON_WGSL}\n{body}")
    }

    /// One invocation per batch row and hidden unit: a row of workgroups
    /// of 64 units per batch row.
    fn workgroups(&self, _output: &[usize], _inputs: &[&[usize]]) -> [u32; 3] {
        [
            self.hidden.div_ceil(64).max(1) as u32,
            self.batch.max(1) as u32,
            1,
        ]
    }

    fn params(&self, _output: &[usize], _inputs: &[&[usize]]) -> Vec<u32> {
        vec![
            self.batch as u32,
            self.hidden as u32,
            self.t as u32,
            self.t_prev,
        ]
    }
}

impl CustomOp for CellStep {
    fn output(&self, _inputs: &[&Tensor]) -> Result<(Vec<usize>, DType)> {
        let width = record_blocks(self.kind) * self.hidden;
        Ok((vec![self.batch, width], DType::F32))
    }
}

/// Time indices in the order the direction visits them.
fn order(steps: usize, reverse: bool) -> Vec<usize> {
    if reverse {
        (0..steps).rev().collect()
    } else {
        (0..steps).collect()
    }
}

/// The whole sequence's recurrence on the tape: its kernel copies the state
/// out of the records computed by the forward steps; its backward rule is
/// the backward pass through time.
struct Recurrence {
    kind: CellKind,
    hidden: usize,
    reverse: bool,
    /// The record before the first step (the initial state), detached.
    initial: Tensor,
    lengths: Tensor,
    has_bias_hh: bool,
}

impl CustomKernel for Recurrence {
    fn name(&self) -> &str {
        "recurrence"
    }

    fn wgsl(&self) -> String {
        // Every input must be bound (the pipeline's layout comes from what
        // the shader reads), so the others are read under a condition that
        // never holds.
        "
@group(0) @binding(0) var<storage, read> projected: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> initial: array<f32>;
@group(0) @binding(3) var<storage, read> extra: array<f32>;
@group(0) @binding(4) var<storage, read> records: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> dims: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= dims[0]) { return; }
    // out[t, b, o] = records[t, b, 4H + o]: the state blocks of each record.
    let width = dims[1];
    let record = dims[2];
    var v = records[(i / width) * record + record - width + i % width];
    if (width == 0u) {
        v += projected[0] + weight[0] + initial[0] + extra[0];
    }
    out[i] = v;
}
"
        .to_string()
    }

    fn params(&self, output: &[usize], _inputs: &[&[usize]]) -> Vec<u32> {
        vec![
            output.iter().product::<usize>() as u32,
            self.state_width() as u32,
            (record_blocks(self.kind) * self.hidden) as u32,
        ]
    }
}

impl Recurrence {
    /// The state blocks the op hands on, last in each record: LSTM `[c,
    /// h]`, GRU `[h]`.
    fn state_width(&self) -> usize {
        match self.kind {
            CellKind::Lstm => 2 * self.hidden,
            _ => self.hidden,
        }
    }
}

impl CustomOp for Recurrence {
    fn output(&self, inputs: &[&Tensor]) -> Result<(Vec<usize>, DType)> {
        match inputs {
            [_, _, _, _, records] => Ok((
                vec![records.shape()[0], records.shape()[1], self.state_width()],
                DType::F32,
            )),
            _ => Err(Error::invalid(
                "recurrence",
                "takes the projection, W_hh, h_0, c_0 or b_hh, and the records",
            )),
        }
    }

    fn backward(
        &self,
        inputs: &[Tensor],
        output: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let [_, weight_hh, h0, _, records] = inputs else {
            return Err(Error::invalid("recurrence", "backward without its inputs"));
        };
        let kind = self.kind;
        let hidden = self.hidden;
        let shape = records.shape();
        let (steps, batch, width) = (shape[0], shape[1], shape[2]);
        let gates = kind.gates() * hidden;
        let device = records.device();
        let visit = order(steps, self.reverse);
        let grad = grad.detach();
        let _ = output;

        // What each step hands the one visited before it (see the kernels).
        let mut next = Tensor::zeros(device, &[batch, width]);
        let mut rec_dh = Tensor::zeros(device, &[batch, hidden]);
        let mut per_step: Vec<Option<Tensor>> = vec![None; steps];
        for (n, &t) in visit.iter().enumerate().rev() {
            let step = CellStep {
                kind,
                backward: true,
                batch,
                hidden,
                t,
                t_prev: n.checked_sub(1).map_or(u32::MAX, |p| visit[p] as u32),
            };
            let d = Tensor::custom(
                Arc::new(step),
                &[&grad, records, &self.initial, &rec_dh, &next, &self.lengths],
            )?;
            rec_dh = d.narrow(1, 0, gates)?.matmul(weight_hh)?;
            next = d.clone();
            per_step[t] = Some(d);
        }
        // After the first step visited: the initial state's gradients.
        let skip = match kind {
            CellKind::Lstm => 5,
            _ => 4,
        };
        let dh0 = rec_dh.add(&next.narrow(1, skip * hidden, hidden)?)?;
        let dc0 = match kind {
            CellKind::Lstm => Some(next.narrow(1, LSTM_C_BLOCK * hidden, hidden)?),
            _ => None,
        };
        let hb = h_block(kind);

        let stack = |parts: Vec<Option<Tensor>>| -> Result<Tensor> {
            let parts: Vec<Tensor> = parts
                .into_iter()
                .map(|p| p.ok_or_else(|| Error::invalid("recurrence", "a step without gradient")))
                .collect::<Result<_>>()?;
            let refs: Vec<&Tensor> = parts.iter().collect();
            Tensor::stack(&refs, 0)
        };
        let all = stack(per_step)?;
        // The recurrent pre-activations' gradients come first in each
        // step's output; a GRU's input side has d_n where the recurrent
        // side has d_hn.
        let d_recurrent = all.narrow(2, 0, gates)?;
        let d_projected = match kind {
            CellKind::Lstm => d_recurrent.clone(),
            _ => Tensor::concat(
                &[
                    &all.narrow(2, 0, 2 * hidden)?,
                    &all.narrow(2, 3 * hidden, hidden)?,
                ],
                2,
            )?,
        };
        // Each step's h_{t-1}, in time order: h_0 first for the forward
        // direction, last for the reverse one.
        let h_all = records.narrow(2, hb * hidden, hidden)?;
        let h0_row = h0.unsqueeze(0)?;
        let h_prev = match (steps, self.reverse) {
            (1, _) => h0_row,
            (_, false) => Tensor::concat(&[&h0_row, &h_all.narrow(0, 0, steps - 1)?], 0)?,
            (_, true) => Tensor::concat(&[&h_all.narrow(0, 1, steps - 1)?, &h0_row], 0)?,
        };
        let flat_pre = d_recurrent.reshape(&[steps * batch, gates])?;
        let d_weight = flat_pre
            .t()?
            .matmul(&h_prev.reshape(&[steps * batch, hidden])?)?;
        let d_extra = match kind {
            CellKind::Lstm => dc0,
            _ if self.has_bias_hh => Some(flat_pre.sum(&[0], false)?),
            _ => None,
        };
        Ok(vec![
            Some(d_projected),
            Some(d_weight),
            Some(dh0),
            d_extra,
            None,
        ])
    }
}
