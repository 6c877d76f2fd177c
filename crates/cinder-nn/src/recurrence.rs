//! One recurrent layer-direction (RNN, LSTM or GRU) over a whole
//! sequence, forward and back, each in one dispatch.
//!
//! Left to autograd, an unrolled recurrence differentiates step by step:
//! each step's slice of the input projection scatters a full-size gradient
//! that is summed over all steps, each step multiplies out its own share of
//! `dW_hh`, and each gate's gradient is its own value; and even written by
//! hand, a product and a cell kernel per step make some 60 dispatches for
//! 28 steps, which on a software adapter cost more than their arithmetic.
//! Here the sequences of a batch are independent, so one workgroup per
//! sequence walks every step in a single dispatch (`recurrence/forward.wgsl`),
//! waiting at a storage barrier between steps, and writes each step's
//! record (gates and state). One op ([`Recurrence`]) stands for the whole
//! sequence on the tape; its backward rule walks back through time the same
//! way (`recurrence/backward.wgsl`), then computes `dW_hh` as one product
//! over every step and hands the input projection its gradient as one
//! tensor. The cell arithmetic of each kind is in `recurrence/<kind>_*.wgsl`.

use std::sync::Arc;

use cinder_tensor::{CustomKernel, CustomOp, DType, Device, Error, Result, Tensor};

use crate::rnn::CellKind;

/// How a kind's records, state and gradients are laid out, in blocks of
/// `hidden` values.
#[derive(Clone, Copy)]
struct Blocks {
    /// Gate blocks of the stacked weights (`G`).
    gates: usize,
    /// Blocks of a record (`R`): LSTM `[i, f, g, o, c, h]`, GRU `[r, z, n,
    /// hn, h]` (`hn = W_hn h + b_hn`, which the reset gate scales), RNN
    /// `[h]`.
    record: usize,
    /// The first state block of a record; the blocks before it are gates.
    state_from: usize,
    /// The hidden state's block.
    h: usize,
    /// Blocks of the op's output per step (`S`): LSTM `[c, h]`, else `[h]`.
    state: usize,
    /// Blocks of a step's gradient (`D`): the recurrent pre-activations'
    /// first, then (GRU) the input side's `n`.
    grad: usize,
}

impl Blocks {
    fn of(kind: CellKind) -> Blocks {
        match kind {
            CellKind::Lstm => Blocks {
                gates: 4,
                record: 6,
                state_from: 4,
                h: 5,
                state: 2,
                grad: 4,
            },
            CellKind::Gru => Blocks {
                gates: 3,
                record: 5,
                state_from: 4,
                h: 4,
                state: 1,
                grad: 4,
            },
            CellKind::RnnTanh | CellKind::RnnRelu => Blocks {
                gates: 1,
                record: 1,
                state_from: 0,
                h: 0,
                state: 1,
                grad: 1,
            },
        }
    }
}

/// The inputs of one layer-direction's recurrence.
pub(crate) struct SequenceInputs<'a> {
    pub kind: CellKind,
    /// `[T, B, G*H]`, time first: the input projection (with `b_ih` for
    /// a GRU).
    pub projected: &'a Tensor,
    /// `[G*H, H]`.
    pub weight_hh: &'a Tensor,
    /// `[G*H]`, added in the kernel: `b_ih + b_hh` for RNN and LSTM (one
    /// pass over the projection fewer), `b_hh` for a GRU (whose `b_hn`
    /// sits inside the reset gate's product); `None` without biases.
    pub bias: Option<&'a Tensor>,
    pub h0: &'a Tensor,
    /// The LSTM's initial cell `[B, H]`.
    pub c0: Option<&'a Tensor>,
    /// Each sequence's length, `[B]` i32 (the padded length where none
    /// were given).
    pub lengths: &'a Tensor,
    pub reverse: bool,
}

/// The state after every step, `[T, B, 2H]` (`[c, h]`) for an LSTM and
/// `[T, B, H]` otherwise, in time order, differentiable with respect to the
/// projection, the weights, the bias and the initial state. Past a
/// sequence's end a step keeps the state.
pub(crate) fn run_sequence(inputs: &SequenceInputs) -> Result<Tensor> {
    let kind = inputs.kind;
    let shape = inputs.projected.shape();
    let batch = shape[1];
    let hidden = inputs.weight_hh.shape()[1];
    if batch > 65535 {
        // A workgroup per sequence, in one row of workgroups.
        return Err(Error::invalid(
            kind.name(),
            format!("a batch of {batch} sequences; at most 65535 run at once"),
        ));
    }
    let c0 = match (kind, inputs.c0) {
        (CellKind::Lstm, Some(c0)) => Some(c0),
        (CellKind::Lstm, None) => {
            return Err(Error::invalid("LSTM", "the state has no cell tensor c"))
        }
        _ => None,
    };
    let device = inputs.h0.device();
    let unread = Tensor::zeros(device, &[1]);
    let forward = SequenceKernel {
        kind,
        hidden,
        backward: false,
        has_bias: inputs.bias.is_some(),
        reverse: inputs.reverse,
        resident: resident_pays(device, kind, batch, hidden),
    };
    let records = Tensor::custom(
        Arc::new(forward),
        &[
            &inputs.projected.detach(),
            &inputs.weight_hh.detach().t()?,
            &inputs.bias.map_or_else(|| unread.clone(), Tensor::detach),
            &inputs.h0.detach(),
            &c0.map_or_else(|| unread.clone(), Tensor::detach),
            inputs.lengths,
        ],
    )?;
    // The op's inputs are what gradients flow to; the last is the records,
    // which its kernel copies out.
    let op = Recurrence {
        backward: SequenceKernel {
            backward: true,
            ..forward
        },
        lengths: inputs.lengths.clone(),
    };
    Tensor::custom(
        Arc::new(op),
        &[
            inputs.projected,
            inputs.weight_hh,
            inputs.h0,
            c0.unwrap_or(&unread),
            inputs.bias.unwrap_or(&unread),
            &records,
        ],
    )
}

/// A whole sequence's recurrence in one dispatch, forward or back (see
/// the `.wgsl` files beside this one): a workgroup per sequence walks
/// every time step, with a storage barrier between steps.
#[derive(Clone, Copy)]
struct SequenceKernel {
    kind: CellKind,
    hidden: usize,
    backward: bool,
    has_bias: bool,
    reverse: bool,
    /// The CPU adapters' kernels (`*_resident.wgsl`): weights kept in each
    /// invocation's private memory, several sequences per workgroup.
    resident: bool,
}

const COMMON_WGSL: &str = include_str!("recurrence/common.wgsl");

/// Sequences a resident kernel steps together: each weight it loads from
/// private memory serves this many.
const RESIDENT_ROWS: usize = 4;

/// Whether the resident kernels run: on a CPU adapter with subgroups, for
/// recurrences of at least 2^20 multiply-adds a step. They halve an LSTM's
/// training step there, but the adapter's compiler takes seconds over their
/// private arrays, which small recurrences do not win back.
fn resident_pays(device: &Device, kind: CellKind, batch: usize, hidden: usize) -> bool {
    let per_step = batch * Blocks::of(kind).gates * hidden * hidden;
    device.is_cpu() && device.subgroups() && per_step >= 1 << 20
}

/// Sequences per workgroup of the resident kernels: enough workgroups to
/// keep every core busy twice over, each loading the weights once.
fn rows_per_group(batch: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    batch.div_ceil(2 * cores).max(1)
}

impl SequenceKernel {
    /// Invocations per workgroup and hidden units per invocation. The
    /// portable kernels run a unit per invocation up to 256. The resident
    /// ones give each invocation up to 4 units (each unit's product reuses
    /// the broadcast hidden state), in workgroups of whole 8-lane
    /// subgroups.
    fn lanes(&self) -> (usize, usize) {
        let hidden = self.hidden;
        if !self.resident {
            let lanes = hidden.next_power_of_two().clamp(32, 256);
            return (lanes, hidden.div_ceil(lanes));
        }
        // Private memory is cheap to read but slow to compile: the adapter's
        // compiler takes seconds over a few thousand floats.
        let gates = Blocks::of(self.kind).gates;
        let per_lane = (2048 / (gates * hidden.div_ceil(8) * 8)).clamp(1, 2);
        let lanes = (hidden.div_ceil(per_lane).div_ceil(8) * 8).min(256);
        (lanes, hidden.div_ceil(lanes))
    }

    /// Whether the kernel addresses its buffers in pairs of floats (u64s),
    /// each invocation taking two neighbouring units
    /// (`recurrence/*_pairs.wgsl`): the resident kernels, where two units
    /// per invocation fit and the width is even.
    fn pairs(&self) -> bool {
        self.resident && self.lanes().1 == 2 && self.hidden.is_multiple_of(2)
    }

    /// Values a subgroup broadcasts per load of its 8 lanes: 16 in pairs.
    /// The weight arrays are padded to a multiple of it.
    fn broadcast_step(&self) -> usize {
        if self.pairs() {
            16
        } else {
            8
        }
    }

    /// Unit `unit` of the units of invocation `lid`, as WGSL.
    fn unit_of(&self, unit: usize) -> String {
        match self.pairs() {
            true => format!("2u * lid + {unit}u"),
            false => format!("{unit}u * WG + lid"),
        }
    }

    /// The resident kernels' weights in private memory: a unit's gate row
    /// per block forward, a unit's column of the stacked weights backward.
    fn resident_weights(&self) -> ResidentWeights {
        let gates = Blocks::of(self.kind).gates;
        let (_, units) = self.lanes();
        let step = self.broadcast_step();
        let (name, blocks, len) = match self.backward {
            false => ("w", units * gates, self.hidden.div_ceil(step) * step),
            true => ("wc", units, (gates * self.hidden).div_ceil(step) * step),
        };
        ResidentWeights { name, blocks, len }
    }

    /// The private arrays and `fill_weights`, which writes them whole
    /// before the first step (the kernel says so: see
    /// `writes_private_arrays_first`), zero past the matrix's edges.
    /// Forward, block `u * G + g` holds unit j's row of gate g
    /// (`weight_t` is W_hh transposed); backward, block u holds unit j's
    /// column of the stacked W_hh.
    fn resident_weights_wgsl(&self, weights: &ResidentWeights) -> String {
        let gates = Blocks::of(self.kind).gates;
        let mut src = String::new();
        for m in 0..weights.blocks {
            for p in 0..weights.pieces() {
                let array = weights.array(m, p);
                src += &format!("var<private> {array}: array<f32, {}>;\n", weights.piece(p));
            }
        }
        if !self.backward {
            let (_, units) = self.lanes();
            for u in 0..units {
                for g in 0..gates {
                    src += &format!("var<private> bias{u}_{g}: f32;\n");
                }
            }
        }
        src += "\nfn fill_weights(lid: u32) {\n";
        for m in 0..weights.blocks {
            let (unit, inside, at) = match self.backward {
                false => (
                    m / gates,
                    "i < H",
                    format!("weight_t[i * G * H + {}u * H + j]", m % gates),
                ),
                true => (m, "i < G * H", "weight[i * H + j]".to_string()),
            };
            src += &format!("    let j{m} = {};\n", self.unit_of(unit));
            for p in 0..weights.pieces() {
                src += &format!(
                    "    for (var e = 0u; e < {piece}u; e++) {{\n        \
                     let i = {start}u + e;\n        \
                     let j = j{m};\n        \
                     var v = 0.0;\n        \
                     if ({inside} && j < H) {{ v = {at}; }}\n        \
                     {array}[e] = v;\n    }}\n",
                    piece = weights.piece(p),
                    start = p * PIECE,
                    array = weights.array(m, p),
                );
            }
        }
        if !self.backward {
            // Each unit's gate biases, read once rather than at every step
            // (a buffer read there cost the bench's forward kernel 13%).
            let (_, units) = self.lanes();
            for u in 0..units {
                src += &format!("    let jb{u} = min({}, H - 1u);\n", self.unit_of(u));
                for g in 0..gates {
                    src += &format!("    bias{u}_{g} = gate_bias({g}u, jb{u});\n");
                }
            }
        }
        src += "}\n";
        src
    }

    /// The resident kernels' generated code: their weight arrays and
    /// `fill_weights`, then `step_rows` (forward) or `carry_rows`
    /// (backward), their loops over units, gates and the eight broadcast
    /// lanes (of single floats or pairs) unrolled.
    fn resident_functions(&self) -> String {
        let weights = self.resident_weights();
        let signature = match self.backward {
            false => "step_rows(b0: u32, end: u32, tb: vec2<u32>, lid: u32, lane8: u32)",
            true => "carry_rows(b0: u32, end: u32, t: u32, lid: u32, lane8: u32)",
        };
        format!(
            "{}fn {signature} {{\n{}{}}}\n",
            self.resident_weights_wgsl(&weights),
            self.resident_product(&weights),
            self.resident_epilogue(),
        )
    }

    /// The first part of `step_rows`/`carry_rows`' body: the products of
    /// RESIDENT_ROWS sequences' previous hidden states (forward) or
    /// gradients (backward) with the weights, into `acc[block * RR + row]`.
    fn resident_product(&self, weights: &ResidentWeights) -> String {
        let rows = RESIDENT_ROWS;
        let mut src = String::new();
        let mut line = |text: String| {
            src.push_str(&text);
            src.push('\n');
        };
        // Row r of the RR: sequence b0 + r, or the last one again past the
        // end (its product is computed and dropped).
        let (vector, load_at) = match self.backward {
            false => ("h", "rec[hp{r} + min(i0 + lane8, H - 1u)]"),
            true => ("d", "out[dp{r} + min(i0 + lane8, G * H - 1u)]"),
        };
        line("    let batch = dims[0];".into());
        if self.backward {
            line("    let steps = dims[1];".into());
        }
        line(match self.backward {
            false => format!("    var acc: array<f32, {}>;", weights.blocks * rows),
            true => format!("    var acc: array<f32, {}>;", weights.blocks * rows),
        });
        for r in 0..rows {
            line(format!("    let row{r} = min(b0 + {r}u, end - 1u);"));
            if self.backward {
                line(format!("    let dp{r} = (t * batch + row{r}) * D * H;"));
            } else {
                line(format!(
                    "    let hp{r} = (tb.y * batch + row{r}) * R * H + HB * H;"
                ));
            }
        }
        // Each lane loads one value (a pair with `pairs`) of those the
        // subgroup broadcasts.
        let step = self.broadcast_step();
        for p in 0..weights.pieces() {
            line(format!(
                "    for (var e = 0u; e < {}u; e += {step}u) {WGSL_OPEN}",
                weights.piece(p)
            ));
            line(format!("        let i0 = {}u + e;", p * PIECE));
            for r in 0..rows {
                if self.pairs() {
                    line(format!(
                        "        let mine{r} = {};",
                        match self.backward {
                            false => format!(
                                "unpack(rec[hp{r} / 2u + min(i0 / 2u + lane8, H / 2u - 1u)])"
                            ),
                            true => format!(
                                "unpack(out[dp{r} / 2u + min(i0 / 2u + lane8, G * H / 2u - 1u)])"
                            ),
                        }
                    ));
                    for k in 0..8 {
                        line(format!(
                            "        let {vector}{r}_{} = subgroupBroadcast(mine{r}.x, {k}u);",
                            2 * k
                        ));
                        line(format!(
                            "        let {vector}{r}_{} = subgroupBroadcast(mine{r}.y, {k}u);",
                            2 * k + 1
                        ));
                    }
                    continue;
                }
                line(format!(
                    "        let mine{r} = {};",
                    load_at.replace("{r}", &r.to_string())
                ));
                for k in 0..8 {
                    line(format!(
                        "        let {vector}{r}_{k} = subgroupBroadcast(mine{r}, {k}u);"
                    ));
                }
            }
            for m in 0..weights.blocks {
                line(format!("        {WGSL_OPEN}"));
                for k in 0..step {
                    line(format!(
                        "        let w{k} = {}[e + {k}u];",
                        weights.array(m, p)
                    ));
                }
                for r in 0..rows {
                    let terms: Vec<String> = (0..step)
                        .map(|k| format!("{vector}{r}_{k} * w{k}"))
                        .collect();
                    line(format!(
                        "        acc[{}] += {};",
                        m * rows + r,
                        terms.join(" + ")
                    ));
                }
                line(format!("        {WGSL_CLOSE}"));
            }
            line(format!("    {WGSL_CLOSE}"));
        }
        src
    }

    /// The rest of `step_rows`/`carry_rows`' body: each real row's products
    /// through the cell (forward; past a sequence's end its state is
    /// carried) or into the gradient carried back (backward). Unrolled: as
    /// a loop over rows and units the bench's forward kernel took 20.6 to
    /// 21.7 ms against 17.4 to 17.8 ms, for 0.2 s less compiling.
    fn resident_epilogue(&self) -> String {
        let gates = Blocks::of(self.kind).gates;
        let (_, units) = self.lanes();
        let rows = RESIDENT_ROWS;
        let mut src = String::new();
        let mut line = |text: String| {
            src.push_str(&text);
            src.push('\n');
        };
        for u in 0..units {
            line(format!("    let j{u} = {};", self.unit_of(u)));
        }
        for r in 0..rows {
            line(format!("    if (b0 + {r}u < end) {WGSL_OPEN}"));
            if self.backward {
                line(format!("        if (i32(t) < lengths[row{r}]) {WGSL_OPEN}"));
                line(format!(
                    "            let carry = steps * batch * D * H + row{r} * 2u * H;"
                ));
                if self.pairs() {
                    // j0 and j1 are one pair: one read and one write.
                    line(format!(
                        "            if (j1 < H) {{ let c = (carry + j0) / 2u; out[c] = pack(unpack(out[c]) + vec2<f32>(acc[{r}], acc[{}])); }}",
                        rows + r
                    ));
                }
                for u in (0..units).filter(|_| !self.pairs()) {
                    line(format!(
                        "            if (j{u} < H) {{ out[carry + j{u}] += acc[{}]; }}",
                        u * rows + r
                    ));
                }
                line(format!("        {WGSL_CLOSE}"));
            } else {
                line(format!(
                    "        let here = (tb.x * batch + row{r}) * R * H;"
                ));
                line(format!(
                    "        let prev = (tb.y * batch + row{r}) * R * H;"
                ));
                line(format!(
                    "        if (i32(tb.x) < lengths[row{r}]) {WGSL_OPEN}"
                ));
                line(format!(
                    "            let x = (tb.x * batch + row{r}) * G * H;"
                ));
                let products = |u: usize| {
                    let a: Vec<String> = (0..gates)
                        .map(|g| format!("acc[{}] + bias{u}_{g}", (u * gates + g) * rows + r))
                        .collect();
                    format!("array<f32, G>({})", a.join(", "))
                };
                if self.pairs() {
                    // j0 and j1 are one pair.
                    line(format!(
                        "            if (j1 < H) {{ cell_forward_pair({}, {}, here, prev, x, lid); }}",
                        products(0),
                        products(1)
                    ));
                    line("        } else {".into());
                    line("            if (j1 < H) { carry_pair(here, prev, lid); }".into());
                } else {
                    for u in 0..units {
                        line(format!(
                            "            if (j{u} < H) {{ cell_forward({}, here, prev, x, j{u}); }}",
                            products(u)
                        ));
                    }
                    line("        } else {".into());
                    for u in 0..units {
                        line(format!(
                            "            if (j{u} < H) {{ carry_slot(here, prev, j{u}); }}"
                        ));
                    }
                }
                line(format!("        {WGSL_CLOSE}"));
            }
            line(format!("    {WGSL_CLOSE}"));
        }
        src
    }
}

/// A WGSL block's braces where a generated line opens or closes one that
/// another line closes or opens (so that the Rust around them reads
/// balanced).
const WGSL_OPEN: &str = "{";
const WGSL_CLOSE: &str = "}";

/// Private arrays of at most this many floats. llvmpipe compiles a store at
/// a computed index into a private array as code over the whole array, in
/// one block that its scheduler takes quadratic time over: a kernel filling
/// one 2048-float array compiled in 1.6 s, one filling eight of 256 in
/// 0.18 s.
const PIECE: usize = 256;

/// Where a resident kernel keeps its weights: `blocks` blocks of `len`
/// floats (a multiple of 8), each in pieces of PIECE floats, the last
/// shorter.
struct ResidentWeights {
    name: &'static str,
    blocks: usize,
    len: usize,
}

impl ResidentWeights {
    fn pieces(&self) -> usize {
        self.len.div_ceil(PIECE)
    }

    /// The length of piece `p` of every block.
    fn piece(&self, p: usize) -> usize {
        PIECE.min(self.len - p * PIECE)
    }

    /// The array holding piece `p` of block `m`.
    fn array(&self, m: usize, p: usize) -> String {
        format!("{}{m}_{p}", self.name)
    }
}

impl CustomKernel for SequenceKernel {
    fn name(&self) -> &str {
        match self.backward {
            false => "recurrence forward",
            true => "recurrence backward",
        }
    }

    fn wgsl(&self) -> String {
        let blocks = Blocks::of(self.kind);
        let skeleton = match (self.backward, self.resident) {
            (false, false) => include_str!("recurrence/forward.wgsl"),
            (false, true) => include_str!("recurrence/forward_resident.wgsl"),
            (true, false) => include_str!("recurrence/backward.wgsl"),
            (true, true) => include_str!("recurrence/backward_resident.wgsl"),
        };
        let shared = match (self.backward, self.pairs()) {
            (false, false) => concat!(
                include_str!("recurrence/forward_shared.wgsl"),
                include_str!("recurrence/forward_common.wgsl")
            ),
            (false, true) => concat!(
                include_str!("recurrence/pairs.wgsl"),
                include_str!("recurrence/forward_shared.wgsl"),
                include_str!("recurrence/forward_pairs.wgsl")
            ),
            (true, false) => include_str!("recurrence/backward_common.wgsl"),
            (true, true) => concat!(
                include_str!("recurrence/pairs.wgsl"),
                include_str!("recurrence/backward_pairs.wgsl")
            ),
        };
        let generated = match self.resident {
            true => self.resident_functions(),
            false => String::new(),
        };
        let cell = match (self.kind, self.backward) {
            (CellKind::Lstm, false) => include_str!("recurrence/lstm_forward.wgsl"),
            (CellKind::Lstm, true) => include_str!("recurrence/lstm_backward.wgsl"),
            (CellKind::Gru, false) => include_str!("recurrence/gru_forward.wgsl"),
            (CellKind::Gru, true) => include_str!("recurrence/gru_backward.wgsl"),
            (_, false) => include_str!("recurrence/rnn_forward.wgsl"),
            (_, true) => include_str!("recurrence/rnn_backward.wgsl"),
        };
        // The sizes are constants so that the loops over units and gates
        // have fixed bounds; the batch and the steps stay parameters, so
        // every sequence length shares one pipeline.
        let hidden = self.hidden;
        let constants = format!(
            "const H: u32 = {hidden}u;\n\
             const G: u32 = {}u;\n\
             const R: u32 = {}u;\n\
             const STATE_FROM: u32 = {}u;\n\
             const HB: u32 = {}u;\n\
             const S: u32 = {}u;\n\
             const D: u32 = {}u;\n\
             const WG: u32 = {}u;\n\
             const U: u32 = {}u;\n\
             const H8: u32 = {}u;\n\
             const GH8: u32 = {}u;\n\
             const RR: u32 = {RESIDENT_ROWS}u;\n\
             const DC: u32 = {}u;\n\
             const RELU: bool = {};\n",
            blocks.gates,
            blocks.record,
            blocks.state_from,
            blocks.h,
            blocks.state * hidden,
            blocks.grad,
            self.lanes().0,
            self.lanes().1,
            hidden.div_ceil(8) * 8,
            (blocks.gates * hidden).div_ceil(8) * 8,
            blocks.grad + 2,
            self.kind == CellKind::RnnRelu,
        );
        format!("{constants}{COMMON_WGSL}\n{shared}\n{skeleton}\n{cell}\n{generated}")
    }

    fn workgroups(&self, _output: &[usize], inputs: &[&[usize]]) -> [u32; 3] {
        let batch = inputs.first().and_then(|s| s.get(1)).copied().unwrap_or(1);
        let groups = match self.resident {
            true => batch.div_ceil(rows_per_group(batch)),
            false => batch,
        };
        [groups.max(1) as u32, 1, 1]
    }

    fn params(&self, _output: &[usize], inputs: &[&[usize]]) -> Vec<u32> {
        // Forward: the projection [T, B, G*H]; backward: the gradient
        // [T, B, S]. Both put the steps first and the batch second.
        let shape = inputs.first().copied().unwrap_or(&[]);
        let (steps, batch) = (shape.first().copied(), shape.get(1).copied());
        let mut params = vec![
            batch.unwrap_or(0) as u32,
            steps.unwrap_or(0) as u32,
            u32::from(self.reverse),
        ];
        if !self.backward {
            params.push(u32::from(self.has_bias));
        }
        if self.resident {
            params.push(rows_per_group(batch.unwrap_or(1)) as u32);
        }
        params
    }

    fn writes_private_arrays_first(&self) -> bool {
        // The resident kernels fill their weight arrays whole before the
        // first step (`fill_weights`); zeroing them first made Mesa compile
        // each of these kernels for 5 to 10 s.
        self.resident
    }
}

impl CustomOp for SequenceKernel {
    fn output(&self, inputs: &[&Tensor]) -> Result<(Vec<usize>, DType)> {
        let blocks = Blocks::of(self.kind);
        let hidden = self.hidden;
        let Some(&[steps, batch, _]) = inputs.first().map(|t| t.shape()) else {
            return Err(Error::invalid("recurrence", "takes [T, B, ...] first"));
        };
        if self.backward {
            let len = steps * batch * blocks.grad * hidden + batch * 2 * hidden;
            Ok((vec![len], DType::F32))
        } else {
            Ok((vec![steps + 1, batch, blocks.record * hidden], DType::F32))
        }
    }
}

/// The whole sequence's recurrence on the tape: its kernel copies the state
/// out of the records computed by the forward steps; its backward rule is
/// the backward pass through time.
struct Recurrence {
    /// The backward pass's kernel, which also names the kind, size and
    /// direction.
    backward: SequenceKernel,
    lengths: Tensor,
}

impl CustomKernel for Recurrence {
    fn name(&self) -> &str {
        "recurrence"
    }

    fn wgsl(&self) -> String {
        // The widths are constants so that the adapter divides by them with
        // a multiply and shifts, and with the resident kernels (a CPU
        // adapter, where a buffer is read and written lane by lane) the copy
        // moves pairs of floats as u64s: a runtime divisor and single floats made it 2.6 ms of the
        // LSTM bench's step on lavapipe. Every input must be bound (the
        // pipeline's layout comes from what the shader reads), so the others
        // are read under a condition that never holds.
        let per = self.per_item();
        let item = if per == 2 { "u64" } else { "f32" };
        let unused = match per {
            2 => "v += u64(bitcast<u32>(projected[0] + weight[0] + h0[0] + c0[0] + bias[0]));",
            _ => "v += projected[0] + weight[0] + h0[0] + c0[0] + bias[0];",
        };
        format!(
            "
const WIDTH: u32 = {width}u;
const RECORD: u32 = {record}u;
@group(0) @binding(0) var<storage, read> projected: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> h0: array<f32>;
@group(0) @binding(3) var<storage, read> c0: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> records: array<{item}>;
@group(0) @binding(6) var<storage, read_write> out: array<{item}>;
@group(0) @binding(7) var<storage, read> dims: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {{
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= dims[0]) {{ return; }}
    // out[t, b, o] = records[t, b, 4H + o]: the state blocks of each record
    // (counted in items of {per} floats).
    var v = records[(i / WIDTH) * RECORD + RECORD - WIDTH + i % WIDTH];
    if (dims[1] == 0u) {{
        {unused}
    }}
    out[i] = v;
}}
",
            width = self.state_width() / per,
            record = Blocks::of(self.backward.kind).record * self.backward.hidden / per,
        )
    }

    fn workgroups(&self, output: &[usize], _inputs: &[&[usize]]) -> [u32; 3] {
        let items = output.iter().product::<usize>() / self.per_item();
        let groups = items.div_ceil(256).max(1);
        let y = groups.div_ceil(65535);
        [groups.div_ceil(y) as u32, y as u32, 1]
    }

    fn params(&self, output: &[usize], _inputs: &[&[usize]]) -> Vec<u32> {
        vec![
            (output.iter().product::<usize>() / self.per_item()) as u32,
            self.state_width() as u32,
        ]
    }
}

impl Recurrence {
    /// Floats the state copy moves at a time: pairs with the resident
    /// kernels (a CPU adapter with 64-bit integers, a big enough
    /// recurrence) where every record's blocks are whole pairs.
    fn per_item(&self) -> usize {
        match self.backward.resident && self.backward.hidden.is_multiple_of(2) {
            true => 2,
            false => 1,
        }
    }

    /// The state blocks the op hands on, last in each record: LSTM `[c,
    /// h]`, else `[h]`.
    fn state_width(&self) -> usize {
        Blocks::of(self.backward.kind).state * self.backward.hidden
    }
}

impl CustomOp for Recurrence {
    fn output(&self, inputs: &[&Tensor]) -> Result<(Vec<usize>, DType)> {
        match inputs {
            // The records hold one slot more than there are steps: the
            // initial state, last.
            [_, _, _, _, _, records] if records.shape()[0] > 1 => Ok((
                vec![
                    records.shape()[0] - 1,
                    records.shape()[1],
                    self.state_width(),
                ],
                DType::F32,
            )),
            _ => Err(Error::invalid(
                "recurrence",
                "takes the projection, W_hh, h_0, c_0, the bias and the records",
            )),
        }
    }

    fn backward(
        &self,
        inputs: &[Tensor],
        _output: &Tensor,
        grad: &Tensor,
    ) -> Result<Vec<Option<Tensor>>> {
        let [_, weight_hh, _, _, _, records] = inputs else {
            return Err(Error::invalid("recurrence", "backward without its inputs"));
        };
        let kernel = self.backward;
        let (kind, hidden) = (kernel.kind, kernel.hidden);
        let blocks = Blocks::of(kind);
        let (steps, batch) = (records.shape()[0] - 1, records.shape()[1]);
        let gates = blocks.gates * hidden;
        let out = Tensor::custom(
            Arc::new(kernel),
            &[&grad.detach(), records, &weight_hh.detach(), &self.lengths],
        )?;
        let per_step = steps * batch * blocks.grad * hidden;
        let all = out
            .narrow(0, 0, per_step)?
            .reshape(&[steps, batch, blocks.grad * hidden])?;
        let carried = out
            .narrow(0, per_step, batch * 2 * hidden)?
            .reshape(&[batch, 2 * hidden])?;
        let dh0 = carried.narrow(1, 0, hidden)?;
        let d_recurrent = all.narrow(2, 0, gates)?;
        // A GRU's input side has d_n where the recurrent side has d_hn.
        let d_projected = match kind {
            CellKind::Gru => Tensor::concat(
                &[
                    &all.narrow(2, 0, 2 * hidden)?,
                    &all.narrow(2, 3 * hidden, hidden)?,
                ],
                2,
            )?,
            _ => d_recurrent.clone(),
        };
        // Each step's h_{t-1}, in time order, from the records: the initial
        // state's slot (last) before step 0 going forward, after step T-1
        // going back.
        let h_slots = records.narrow(2, blocks.h * hidden, hidden)?;
        let h_prev = match (steps, kernel.reverse) {
            (_, true) => h_slots.narrow(0, 1, steps)?,
            (1, false) => h_slots.narrow(0, 1, 1)?,
            (_, false) => Tensor::concat(
                &[
                    &h_slots.narrow(0, steps, 1)?,
                    &h_slots.narrow(0, 0, steps - 1)?,
                ],
                0,
            )?,
        };
        let flat_pre = d_recurrent.reshape(&[steps * batch, gates])?;
        let d_weight = flat_pre
            .t()?
            .matmul(&h_prev.reshape(&[steps * batch, hidden])?)?;
        let dc0 = match kind {
            CellKind::Lstm => Some(carried.narrow(1, hidden, hidden)?),
            _ => None,
        };
        let d_bias = match kernel.has_bias {
            true => Some(flat_pre.sum(&[0], false)?),
            false => None,
        };
        Ok(vec![
            Some(d_projected),
            Some(d_weight),
            Some(dh0),
            dc0,
            d_bias,
            None,
        ])
    }
}
