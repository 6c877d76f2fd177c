//! Recurrent layers with PyTorch's semantics, parameter names and layouts:
//! `RNNCell`, `LSTMCell`, `GRUCell` and the sequence layers `RNN`, `LSTM`,
//! `GRU` (stacked, bidirectional, either batch layout, dropout between
//! layers, optional initial state, sequences of different lengths).
//!
//! A sequence layer projects the inputs of all time steps with one product
//! per layer and direction; each step then adds one recurrent product and its
//! gate arithmetic, which the planner fuses. The unrolled step is recorded
//! like any other graph, so a training loop replays one cached plan per
//! sequence length.

use cinder_tensor::{Device, Error, Result, Tensor};

use crate::init;
use crate::module::Module;
use crate::recurrence::{run_sequence, SequenceInputs};

/// Which recurrence a cell computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellKind {
    /// `h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`
    RnnTanh,
    /// `h' = relu(W_ih x + b_ih + W_hh h + b_hh)`
    RnnRelu,
    /// Gates i, f, g, o stacked in that order in the weights.
    Lstm,
    /// Gates r, z, n stacked in that order; `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`.
    Gru,
}

impl CellKind {
    /// How many `hidden_size` blocks the stacked weights hold.
    pub fn gates(self) -> usize {
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => "RNN",
            CellKind::Lstm => "LSTM",
            CellKind::Gru => "GRU",
        }
    }

    fn has_cell_state(self) -> bool {
        self == CellKind::Lstm
    }
}

/// The recurrent state: `h`, plus `c` for an LSTM.
#[derive(Clone)]
pub struct State {
    pub h: Tensor,
    pub c: Option<Tensor>,
}

/// The weights of one cell (or one layer and direction of a sequence layer):
/// `weight_ih: [G*H, I]`, `weight_hh: [G*H, H]`, `bias_ih`, `bias_hh: [G*H]`.
#[derive(Clone)]
pub struct CellParams {
    pub weight_ih: Tensor,
    pub weight_hh: Tensor,
    pub bias_ih: Option<Tensor>,
    pub bias_hh: Option<Tensor>,
}

impl CellParams {
    /// PyTorch's init: every weight and bias uniform in ±1/sqrt(hidden_size).
    pub fn new(
        device: &Device,
        kind: CellKind,
        input_size: usize,
        hidden_size: usize,
        bias: bool,
    ) -> Result<CellParams> {
        if input_size == 0 || hidden_size == 0 {
            return Err(Error::invalid(
                kind.name(),
                format!("sizes must be positive, got input {input_size}, hidden {hidden_size}"),
            ));
        }
        let rows = kind.gates() * hidden_size;
        let bound = 1.0 / (hidden_size as f32).sqrt();
        let param = |shape: &[usize]| -> Result<Tensor> {
            Ok(init::uniform(device, shape, -bound, bound)?.requires_grad_())
        };
        let weight_ih = param(&[rows, input_size])?;
        let weight_hh = param(&[rows, hidden_size])?;
        let (bias_ih, bias_hh) = if bias {
            (Some(param(&[rows])?), Some(param(&[rows])?))
        } else {
            (None, None)
        };
        Ok(CellParams {
            weight_ih,
            weight_hh,
            bias_ih,
            bias_hh,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.weight_hh.shape()[1]
    }

    pub fn input_size(&self) -> usize {
        self.weight_ih.shape()[1]
    }

    /// `(name, tensor)` in PyTorch's order, each name ending in `suffix`
    /// (`_l0`, `_l1_reverse`, or nothing for a cell).
    fn named(&self, suffix: &str) -> Vec<(String, Tensor)> {
        let mut out = vec![
            (format!("weight_ih{suffix}"), self.weight_ih.clone()),
            (format!("weight_hh{suffix}"), self.weight_hh.clone()),
        ];
        if let Some(b) = &self.bias_ih {
            out.push((format!("bias_ih{suffix}"), b.clone()));
        }
        if let Some(b) = &self.bias_hh {
            out.push((format!("bias_hh{suffix}"), b.clone()));
        }
        out
    }

    /// `x W_ih^T`, plus `b_ih` for a GRU (whose input and hidden sides
    /// stay apart); `x: [N, I]` gives `[N, G*H]`. The other biases go into
    /// the recurrence ([`CellParams::recurrent_bias`]).
    fn project_input(&self, kind: CellKind, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight_ih.t()?)?;
        match (kind, &self.bias_ih) {
            (CellKind::Gru, Some(b)) => y.add(b),
            _ => Ok(y),
        }
    }

    /// The bias the recurrence adds to each step's gates: `b_ih + b_hh`
    /// for RNN and LSTM (one pass over the projection fewer, and one sum
    /// over its rows for both gradients), `b_hh` for a GRU, whose `b_hn`
    /// sits inside the reset gate's product.
    fn recurrent_bias(&self, kind: CellKind) -> Result<Option<Tensor>> {
        Ok(match (kind, &self.bias_ih, &self.bias_hh) {
            (CellKind::Gru, _, hh) => hh.clone(),
            (_, Some(ih), Some(hh)) => Some(ih.add(hh)?),
            (_, ih, hh) => ih.clone().or_else(|| hh.clone()),
        })
    }

    /// One step from the projected input `xp: [B, G*H]` and the state.
    fn step(&self, kind: CellKind, xp: &Tensor, state: &State) -> Result<State> {
        let hh = state.h.matmul(&self.weight_hh.t()?)?;
        let hidden = self.hidden_size();
        let block = |t: &Tensor, k: usize| t.narrow(1, k * hidden, hidden);
        match kind {
            CellKind::RnnTanh => Ok(State {
                h: xp.add(&hh)?.tanh()?,
                c: None,
            }),
            CellKind::RnnRelu => Ok(State {
                h: xp.add(&hh)?.relu()?,
                c: None,
            }),
            CellKind::Lstm => {
                let c = state
                    .c
                    .as_ref()
                    .ok_or_else(|| Error::invalid("LSTM", "the state has no cell tensor c"))?;
                let gates = xp.add(&hh)?;
                let i = block(&gates, 0)?.sigmoid()?;
                let f = block(&gates, 1)?.sigmoid()?;
                let g = block(&gates, 2)?.tanh()?;
                let o = block(&gates, 3)?.sigmoid()?;
                let c_next = f.mul(c)?.add(&i.mul(&g)?)?;
                let h_next = o.mul(&c_next.tanh()?)?;
                Ok(State {
                    h: h_next,
                    c: Some(c_next),
                })
            }
            CellKind::Gru => {
                let hh = match &self.bias_hh {
                    Some(b) => hh.add(b)?,
                    None => hh,
                };
                let r = block(xp, 0)?.add(&block(&hh, 0)?)?.sigmoid()?;
                let z = block(xp, 1)?.add(&block(&hh, 1)?)?.sigmoid()?;
                let n = block(xp, 2)?.add(&r.mul(&block(&hh, 2)?)?)?.tanh()?;
                // (1 - z) * n + z * h, written with one product less.
                let h_next = n.add(&z.mul(&state.h.sub(&n)?)?)?;
                Ok(State { h: h_next, c: None })
            }
        }
    }
}

fn check_features(op: &'static str, input: &Tensor, expected: usize) -> Result<()> {
    let got = input.shape().last().copied().unwrap_or(0);
    if got != expected {
        return Err(Error::shape(
            op,
            format!(
                "input {:?} has {got} features, the layer takes {expected}",
                input.shape()
            ),
        ));
    }
    Ok(())
}

fn check_state(op: &'static str, what: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape() != shape {
        return Err(Error::shape(
            op,
            format!("{what} is {:?}, expected {shape:?}", t.shape()),
        ));
    }
    Ok(())
}

/// A single recurrent cell applied to one time step (`torch.nn.RNNCell`,
/// `LSTMCell`, `GRUCell`). Inputs are `[B, I]` or unbatched `[I]`.
pub struct Cell {
    kind: CellKind,
    pub params: CellParams,
}

impl Cell {
    pub fn new(
        device: &Device,
        kind: CellKind,
        input_size: usize,
        hidden_size: usize,
        bias: bool,
    ) -> Result<Cell> {
        Ok(Cell {
            kind,
            params: CellParams::new(device, kind, input_size, hidden_size, bias)?,
        })
    }

    /// A cell around existing weights (say, one layer of a sequence layer).
    pub fn from_params(kind: CellKind, params: CellParams) -> Result<Cell> {
        let rows = params.weight_ih.shape()[0];
        if rows != kind.gates() * params.hidden_size() || params.weight_hh.shape()[0] != rows {
            return Err(Error::shape(
                kind.name(),
                format!(
                    "weights {:?} and {:?} do not hold {} gate blocks",
                    params.weight_ih.shape(),
                    params.weight_hh.shape(),
                    kind.gates()
                ),
            ));
        }
        Ok(Cell { kind, params })
    }

    pub fn kind(&self) -> CellKind {
        self.kind
    }

    pub fn hidden_size(&self) -> usize {
        self.params.hidden_size()
    }

    /// One step. `state` defaults to zeros; for an LSTM it must hold `c`.
    /// Returns the next state (`h`, and `c` for an LSTM).
    pub fn step(&self, input: &Tensor, state: Option<&State>) -> Result<State> {
        let op = self.kind.name();
        check_features(op, input, self.params.input_size())?;
        let unbatched = match input.dims() {
            1 => true,
            2 => false,
            _ => {
                return Err(Error::shape(
                    op,
                    format!("cell input must be [B, I] or [I], got {:?}", input.shape()),
                ))
            }
        };
        let x = if unbatched {
            input.unsqueeze(0)?
        } else {
            input.clone()
        };
        let batch = x.shape()[0];
        let hidden = self.hidden_size();
        let batched = |t: &Tensor| {
            if unbatched {
                t.unsqueeze(0)
            } else {
                Ok(t.clone())
            }
        };
        let state_shape: &[usize] = if unbatched {
            &[hidden]
        } else {
            &[batch, hidden]
        };
        let state = match state {
            Some(s) => {
                check_state(op, "h", &s.h, state_shape)?;
                let c = match (&s.c, self.kind.has_cell_state()) {
                    (Some(c), true) => {
                        check_state(op, "c", c, state_shape)?;
                        Some(batched(c)?)
                    }
                    (None, true) => return Err(Error::invalid(op, "an LSTM state needs c")),
                    (_, false) => None,
                };
                State {
                    h: batched(&s.h)?,
                    c,
                }
            }
            None => zero_state(input.device(), self.kind, batch, hidden),
        };
        let mut xp = self.params.project_input(self.kind, &x)?;
        if self.kind != CellKind::Gru {
            if let Some(b) = self.params.recurrent_bias(self.kind)? {
                xp = xp.add(&b)?;
            }
        }
        let next = self.params.step(self.kind, &xp, &state)?;
        if unbatched {
            Ok(State {
                h: next.h.squeeze(0)?,
                c: next.c.map(|c| c.squeeze(0)).transpose()?,
            })
        } else {
            Ok(next)
        }
    }
}

impl Module for Cell {
    /// The next `h` from a zero state.
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self.step(input, None)?.h)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.params.named("")
    }
}

fn zero_state(device: &Device, kind: CellKind, batch: usize, hidden: usize) -> State {
    State {
        h: Tensor::zeros(device, &[batch, hidden]),
        c: kind
            .has_cell_state()
            .then(|| Tensor::zeros(device, &[batch, hidden])),
    }
}

/// `torch.nn.RNNCell(input_size, hidden_size, nonlinearity=tanh)`.
pub fn rnn_cell(device: &Device, input_size: usize, hidden_size: usize) -> Result<Cell> {
    Cell::new(device, CellKind::RnnTanh, input_size, hidden_size, true)
}

/// `torch.nn.LSTMCell(input_size, hidden_size)`.
pub fn lstm_cell(device: &Device, input_size: usize, hidden_size: usize) -> Result<Cell> {
    Cell::new(device, CellKind::Lstm, input_size, hidden_size, true)
}

/// `torch.nn.GRUCell(input_size, hidden_size)`.
pub fn gru_cell(device: &Device, input_size: usize, hidden_size: usize) -> Result<Cell> {
    Cell::new(device, CellKind::Gru, input_size, hidden_size, true)
}

/// The options of a sequence layer, with PyTorch's defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RnnOptions {
    pub num_layers: usize,
    pub bias: bool,
    /// Inputs and outputs are `[B, T, F]` instead of `[T, B, F]`.
    pub batch_first: bool,
    /// Dropout on the outputs of every layer but the last, in training mode.
    pub dropout: f32,
    pub bidirectional: bool,
}

impl Default for RnnOptions {
    fn default() -> Self {
        RnnOptions {
            num_layers: 1,
            bias: true,
            batch_first: false,
            dropout: 0.0,
            bidirectional: false,
        }
    }
}

impl RnnOptions {
    pub fn num_layers(self, num_layers: usize) -> Self {
        RnnOptions { num_layers, ..self }
    }
    pub fn bias(self, bias: bool) -> Self {
        RnnOptions { bias, ..self }
    }
    pub fn batch_first(self, batch_first: bool) -> Self {
        RnnOptions {
            batch_first,
            ..self
        }
    }
    pub fn dropout(self, dropout: f32) -> Self {
        RnnOptions { dropout, ..self }
    }
    pub fn bidirectional(self, bidirectional: bool) -> Self {
        RnnOptions {
            bidirectional,
            ..self
        }
    }
}

/// A multi-layer recurrent network over sequences (`torch.nn.RNN`, `LSTM`,
/// `GRU`): inputs `[T, B, I]` (or `[B, T, I]` with `batch_first`, or
/// unbatched `[T, I]`), outputs `[T, B, D*H]` and final states
/// `[num_layers*D, B, H]`, D being 2 when bidirectional.
pub struct Recurrent {
    kind: CellKind,
    hidden_size: usize,
    input_size: usize,
    options: RnnOptions,
    training: bool,
    /// Layer `l`, direction `d` at `l * D + d`.
    cells: Vec<CellParams>,
}

/// What a sequence layer returns: every step's top-layer output and the
/// final state of every layer and direction.
pub struct RnnOutput {
    /// `[T, B, D*H]` (`[B, T, D*H]` with `batch_first`); zero past each
    /// sequence's length.
    pub output: Tensor,
    /// `[num_layers*D, B, H]`: the state at each sequence's last real step
    /// (for the reverse direction, at its first).
    pub h_n: Tensor,
    /// The LSTM's cell state, shaped like `h_n`.
    pub c_n: Option<Tensor>,
}

impl Recurrent {
    pub fn new(
        device: &Device,
        kind: CellKind,
        input_size: usize,
        hidden_size: usize,
        options: RnnOptions,
    ) -> Result<Recurrent> {
        let op = kind.name();
        if options.num_layers == 0 {
            return Err(Error::invalid(op, "num_layers must be at least 1"));
        }
        if !(0.0..=1.0).contains(&options.dropout) || options.dropout.is_nan() {
            return Err(Error::invalid(
                op,
                format!(
                    "dropout must be a probability in [0, 1], got {}",
                    options.dropout
                ),
            ));
        }
        let directions = if options.bidirectional { 2 } else { 1 };
        let mut cells = Vec::with_capacity(options.num_layers * directions);
        for layer in 0..options.num_layers {
            let layer_input = if layer == 0 {
                input_size
            } else {
                hidden_size * directions
            };
            for _ in 0..directions {
                cells.push(CellParams::new(
                    device,
                    kind,
                    layer_input,
                    hidden_size,
                    options.bias,
                )?);
            }
        }
        Ok(Recurrent {
            kind,
            hidden_size,
            input_size,
            options,
            training: true,
            cells,
        })
    }

    pub fn kind(&self) -> CellKind {
        self.kind
    }

    pub fn options(&self) -> RnnOptions {
        self.options
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    pub fn input_size(&self) -> usize {
        self.input_size
    }

    pub fn directions(&self) -> usize {
        if self.options.bidirectional {
            2
        } else {
            1
        }
    }

    /// The weights of layer `layer`, direction `direction` (1 = reverse).
    pub fn cell(&self, layer: usize, direction: usize) -> Option<&CellParams> {
        if direction >= self.directions() {
            return None;
        }
        self.cells.get(layer * self.directions() + direction)
    }

    /// Runs the whole sequence. `state` holds `h_0` (and `c_0` for an LSTM),
    /// each `[num_layers*D, B, H]` (`[num_layers*D, H]` unbatched), zeros when
    /// absent. `lengths` gives each sequence's real length (1..=T), as
    /// PyTorch's packed sequences do: steps past it leave the state unchanged
    /// and output zeros, and the reverse direction starts at its last real step.
    pub fn run(
        &self,
        input: &Tensor,
        state: Option<&State>,
        lengths: Option<&[usize]>,
    ) -> Result<RnnOutput> {
        let (x, layout) = self.time_major(input)?;
        let (steps, batch) = (x.shape()[0], x.shape()[1]);
        let initial = self.initial_state(state, layout.unbatched, batch)?;
        let lengths =
            SequenceLengths::new(input.device(), self.kind.name(), lengths, batch, steps)?;
        let mut layer_input = x;
        let mut final_h = Vec::new();
        let mut final_c = Vec::new();
        for layer in 0..self.options.num_layers {
            let mut direction_outputs = Vec::with_capacity(self.directions());
            for direction in 0..self.directions() {
                let slot = layer * self.directions() + direction;
                let (output, state) = self.run_direction(
                    slot,
                    &layer_input,
                    self.slot_state(initial.as_ref(), slot, input.device(), batch)?,
                    &lengths,
                    direction == 1,
                )?;
                direction_outputs.push(output);
                final_h.push(state.h);
                final_c.extend(state.c);
            }
            let refs: Vec<&Tensor> = direction_outputs.iter().collect();
            layer_input = Tensor::concat(&refs, 2)?;
            if layer + 1 < self.options.num_layers {
                layer_input = layer_input.dropout(self.options.dropout, self.training)?;
            }
        }
        layout.finish(layer_input, &final_h, &final_c)
    }
}

/// How the caller laid out a sequence, to hand the results back the same way.
struct Layout {
    unbatched: bool,
    batch_first: bool,
}

impl Layout {
    /// The output in the input's layout and the final states stacked
    /// `[layers*D, B, H]` (`[layers*D, H]` unbatched).
    fn finish(&self, output: Tensor, final_h: &[Tensor], final_c: &[Tensor]) -> Result<RnnOutput> {
        let stack = |states: &[Tensor]| -> Result<Tensor> {
            let refs: Vec<&Tensor> = states.iter().collect();
            let stacked = Tensor::stack(&refs, 0)?;
            if self.unbatched {
                stacked.squeeze(1)
            } else {
                Ok(stacked)
            }
        };
        let output = if self.unbatched {
            output.squeeze(1)?
        } else if self.batch_first {
            output.permute(&[1, 0, 2])?
        } else {
            output
        };
        Ok(RnnOutput {
            output,
            h_n: stack(final_h)?,
            c_n: (!final_c.is_empty()).then(|| stack(final_c)).transpose()?,
        })
    }
}

/// Each sequence's length, as the fused recurrence reads it (`[B]` i32)
/// and as a mask of the real steps (`[T, B, 1]`, 1 within the sequence);
/// no mask when every sequence is full length.
struct SequenceLengths {
    on_device: Tensor,
    mask: Option<Tensor>,
}

impl SequenceLengths {
    fn new(
        device: &Device,
        op: &'static str,
        lengths: Option<&[usize]>,
        batch: usize,
        steps: usize,
    ) -> Result<SequenceLengths> {
        let mask = lengths
            .map(|l| step_mask(device, op, l, batch, steps))
            .transpose()?;
        let values: Vec<i32> = match lengths {
            Some(l) => l.iter().map(|&l| l as i32).collect(),
            None => vec![steps as i32; batch],
        };
        Ok(SequenceLengths {
            on_device: Tensor::from_vec(device, values, &[batch])?,
            mask,
        })
    }
}

impl Recurrent {
    /// The input as `[T, B, I]`, time first (each step's slice is then
    /// contiguous), and how it was laid out.
    fn time_major(&self, input: &Tensor) -> Result<(Tensor, Layout)> {
        let op = self.kind.name();
        check_features(op, input, self.input_size)?;
        let layout = Layout {
            unbatched: match input.dims() {
                2 => true,
                3 => false,
                _ => {
                    return Err(Error::shape(
                        op,
                        format!(
                            "input must be [T, B, I], [B, T, I] (batch_first) or [T, I], got {:?}",
                            input.shape()
                        ),
                    ))
                }
            },
            batch_first: self.options.batch_first && input.dims() == 3,
        };
        let x = if layout.unbatched {
            input.unsqueeze(1)?
        } else if layout.batch_first {
            input.permute(&[1, 0, 2])?
        } else {
            input.clone()
        };
        if x.shape()[0] == 0 || x.shape()[1] == 0 {
            return Err(Error::shape(
                op,
                format!("input {:?} has no steps or no batch", input.shape()),
            ));
        }
        Ok((x, layout))
    }

    /// The caller's initial state checked against the layer and batched
    /// (`[layers*D, B, H]`); `None` for zeros.
    fn initial_state(
        &self,
        state: Option<&State>,
        unbatched: bool,
        batch: usize,
    ) -> Result<Option<State>> {
        let Some(s) = state else {
            return Ok(None);
        };
        let op = self.kind.name();
        let slots = self.options.num_layers * self.directions();
        let shape: Vec<usize> = if unbatched {
            vec![slots, self.hidden_size]
        } else {
            vec![slots, batch, self.hidden_size]
        };
        let batched = |t: &Tensor| {
            if unbatched {
                t.unsqueeze(1)
            } else {
                Ok(t.clone())
            }
        };
        check_state(op, "h_0", &s.h, &shape)?;
        let c = match (&s.c, self.kind.has_cell_state()) {
            (Some(c), true) => {
                check_state(op, "c_0", c, &shape)?;
                Some(batched(c)?)
            }
            (None, true) => return Err(Error::invalid(op, "an LSTM's initial state needs c_0")),
            (_, false) => None,
        };
        Ok(Some(State {
            h: batched(&s.h)?,
            c,
        }))
    }

    /// Layer-direction `slot`'s initial state `[B, H]`.
    fn slot_state(
        &self,
        initial: Option<&State>,
        slot: usize,
        device: &Device,
        batch: usize,
    ) -> Result<State> {
        let hidden = self.hidden_size;
        let Some(s) = initial else {
            return Ok(zero_state(device, self.kind, batch, hidden));
        };
        let pick = |t: &Tensor| t.narrow(0, slot, 1)?.reshape(&[batch, hidden]);
        Ok(State {
            h: pick(&s.h)?,
            c: s.c.as_ref().map(pick).transpose()?,
        })
    }

    /// One layer-direction over the whole sequence: `[T, B, H]` outputs
    /// (zero past each length) and the state after the last step visited.
    fn run_direction(
        &self,
        slot: usize,
        layer_input: &Tensor,
        initial: State,
        lengths: &SequenceLengths,
        reverse: bool,
    ) -> Result<(Tensor, State)> {
        let [steps, batch, features] = [
            layer_input.shape()[0],
            layer_input.shape()[1],
            layer_input.shape()[2],
        ];
        let cell = &self.cells[slot];
        let projected = cell
            .project_input(self.kind, &layer_input.reshape(&[steps * batch, features])?)?
            .reshape(&[steps, batch, self.kind.gates() * self.hidden_size])?;
        self.fused_direction(cell, &projected, initial, lengths, reverse)
    }
}

impl Recurrent {
    /// One direction of one layer through the fused recurrence
    /// (`recurrence.rs`): `[T, B, H]` outputs (zero past each length) and
    /// the state after the last step visited.
    fn fused_direction(
        &self,
        cell: &CellParams,
        projected: &Tensor,
        initial: State,
        lengths: &SequenceLengths,
        reverse: bool,
    ) -> Result<(Tensor, State)> {
        let hidden = self.hidden_size;
        let steps = projected.shape()[0];
        let batch = projected.shape()[1];
        let bias = cell.recurrent_bias(self.kind)?;
        let states = run_sequence(&SequenceInputs {
            kind: self.kind,
            projected,
            weight_hh: &cell.weight_hh,
            bias: bias.as_ref(),
            h0: &initial.h,
            c0: initial.c.as_ref(),
            lengths: &lengths.on_device,
            reverse,
        })?;
        // The op's state: [c, h] for an LSTM, [h] otherwise.
        let h_at = if self.kind == CellKind::Lstm {
            hidden
        } else {
            0
        };
        let h_all = states.narrow(2, h_at, hidden)?;
        let output = match &lengths.mask {
            Some(m) => h_all.mul(m)?,
            None => h_all.clone(),
        };
        // Past a sequence's end the state is kept, so the last step visited
        // holds every sequence's final state.
        let last = if reverse { 0 } else { steps - 1 };
        let final_state = states.narrow(0, last, 1)?;
        let h = final_state
            .narrow(2, h_at, hidden)?
            .reshape(&[batch, hidden])?;
        let c = match self.kind {
            CellKind::Lstm => Some(
                final_state
                    .narrow(2, 0, hidden)?
                    .reshape(&[batch, hidden])?,
            ),
            _ => None,
        };
        Ok((output, State { h, c }))
    }
}

/// `[T, B, 1]`: 1 where step t is within sequence b.
fn step_mask(
    device: &Device,
    op: &'static str,
    lengths: &[usize],
    batch: usize,
    steps: usize,
) -> Result<Tensor> {
    if lengths.len() != batch {
        return Err(Error::shape(
            op,
            format!("{} lengths for a batch of {batch}", lengths.len()),
        ));
    }
    if let Some(bad) = lengths.iter().find(|&&l| l == 0 || l > steps) {
        return Err(Error::invalid(
            op,
            format!("every length must be in 1..={steps} (the padded length), got {bad}"),
        ));
    }
    let mut values = Vec::with_capacity(steps * batch);
    for t in 0..steps {
        values.extend(lengths.iter().map(|&l| if t < l { 1f32 } else { 0f32 }));
    }
    Tensor::from_vec(device, values, &[steps, batch, 1])
}

impl Module for Recurrent {
    /// The output sequence from a zero state, all sequences full length.
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self.run(input, None, None)?.output)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let directions = self.directions();
        self.cells
            .iter()
            .enumerate()
            .flat_map(|(slot, cell)| {
                let layer = slot / directions;
                let reverse = if slot % directions == 1 {
                    "_reverse"
                } else {
                    ""
                };
                cell.named(&format!("_l{layer}{reverse}"))
            })
            .collect()
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
}

/// `torch.nn.RNN(input_size, hidden_size, nonlinearity='tanh', ...)`.
pub fn rnn(
    device: &Device,
    input_size: usize,
    hidden_size: usize,
    options: RnnOptions,
) -> Result<Recurrent> {
    Recurrent::new(device, CellKind::RnnTanh, input_size, hidden_size, options)
}

/// `torch.nn.LSTM(input_size, hidden_size, ...)`.
pub fn lstm(
    device: &Device,
    input_size: usize,
    hidden_size: usize,
    options: RnnOptions,
) -> Result<Recurrent> {
    Recurrent::new(device, CellKind::Lstm, input_size, hidden_size, options)
}

/// `torch.nn.GRU(input_size, hidden_size, ...)`.
pub fn gru(
    device: &Device,
    input_size: usize,
    hidden_size: usize,
    options: RnnOptions,
) -> Result<Recurrent> {
    Recurrent::new(device, CellKind::Gru, input_size, hidden_size, options)
}

/// `torch.nn.Embedding(num_embeddings, embedding_dim, padding_idx)`: rows of
/// `weight: [N, D]` picked by integer indices of any shape. Initialised
/// N(0, 1) with the padding row zero; the padding row gets no gradient.
pub struct Embedding {
    pub weight: Tensor,
    pub padding_idx: Option<usize>,
}

impl Embedding {
    pub fn new(
        device: &Device,
        num_embeddings: usize,
        embedding_dim: usize,
        padding_idx: Option<usize>,
    ) -> Result<Embedding> {
        if num_embeddings == 0 || embedding_dim == 0 {
            return Err(Error::invalid(
                "Embedding",
                format!("sizes must be positive, got {num_embeddings} x {embedding_dim}"),
            ));
        }
        if let Some(p) = padding_idx {
            if p >= num_embeddings {
                return Err(Error::invalid(
                    "Embedding",
                    format!("padding_idx {p} is not below num_embeddings {num_embeddings}"),
                ));
            }
        }
        let mut values =
            init::normal(device, &[num_embeddings, embedding_dim], 0.0, 1.0)?.to_vec::<f32>()?;
        if let Some(p) = padding_idx {
            values[p * embedding_dim..(p + 1) * embedding_dim].fill(0.0);
        }
        let weight =
            Tensor::from_vec(device, values, &[num_embeddings, embedding_dim])?.requires_grad_();
        Ok(Embedding {
            weight,
            padding_idx,
        })
    }

    pub fn num_embeddings(&self) -> usize {
        self.weight.shape()[0]
    }

    pub fn embedding_dim(&self) -> usize {
        self.weight.shape()[1]
    }
}

impl Module for Embedding {
    /// Indices (i32 or u32) of shape `S` give `S + [D]`. Indices are not
    /// range-checked on the GPU; check them on the host where they come from.
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        if input.dtype() == cinder_tensor::DType::F32 {
            return Err(Error::DType {
                op: "Embedding",
                expected: "i32 or u32 indices".into(),
                got: "f32".into(),
            });
        }
        let flat = input.reshape(&[input.numel()])?;
        let rows = self.weight.index_select(0, &flat)?;
        let rows = match self.padding_idx {
            None => rows,
            Some(p) => {
                // The padding row's value, but no gradient through it: the
                // same rows read from a detached weight where the index is p.
                let frozen = self.weight.detach().index_select(0, &flat)?;
                let pad = Tensor::full_dtype(input.device(), &[], flat.dtype(), p as f64);
                let is_pad = flat.eq(&pad)?.reshape(&[flat.numel(), 1])?;
                Tensor::where_cond(&is_pad, &frozen, &rows)?
            }
        };
        let mut shape = input.shape().to_vec();
        shape.push(self.embedding_dim());
        rows.reshape(&shape)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
}
