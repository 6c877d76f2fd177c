//! WGSL generation for fused element-wise kernels and reductions. A fused
//! kernel evaluates an expression tree per output element; views, broadcasts,
//! generators and gathers become index arithmetic inside it.

use std::collections::HashMap;
use std::fmt::Write;

use crate::canon::Entry;
use crate::graph::{
    contiguous_strides, numel, BinaryOp, DType, Fill, Op, ReduceOp, UnaryOp, Window2d,
};

pub(crate) const ELEMENTWISE_WG: u32 = 256;
pub(crate) const REDUCE_WG: u32 = 64;

/// Helpers every generated kernel may call.
const PRELUDE: &str = include_str!("../shaders/prelude.wgsl");

/// Whether inlined `entry` reads exactly one buffer, once, through views and
/// element-wise arithmetic (constants, a word each of the scalars buffer
/// that every lane shares, do not count): an unfold that reads such a value
/// at every tap loads no more than it would from the value's own buffer.
pub(crate) fn reads_one_buffer(
    entries: &[Entry],
    materialized: &dyn Fn(usize) -> bool,
    entry: usize,
) -> bool {
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![entry];
    let mut buffers = 0;
    while let Some(j) = stack.pop() {
        if !seen.insert(j) {
            continue;
        }
        if j != entry && materialized(j) {
            buffers += 1;
            continue;
        }
        match &entries[j].op {
            Op::Const | Op::Iota { .. } => {}
            Op::Unary(_, a) | Op::Cast(a) | Op::View(_, a) => stack.push(*a),
            Op::Binary(_, a, b) => stack.extend([*a, *b]),
            Op::Where(c, a, b) => stack.extend([*c, *a, *b]),
            _ => return false,
        }
    }
    buffers == 1
}

/// How many bindings a tensor of `numel` elements needs when one binding
/// holds at most `chunk` elements.
pub(crate) fn chunk_count(numel: usize, chunk: usize) -> usize {
    numel.div_ceil(chunk).max(1)
}

pub(crate) struct Generated {
    pub source: String,
    /// Entries bound read-only, in binding order (bindings 0..n).
    pub inputs: Vec<usize>,
    /// How the kernel reads each of `inputs`.
    pub forms: Vec<InputForm>,
    /// Rand entries (seeds) and constants whose values fill the scalars
    /// buffer, two u32 words each: values are not baked into the source, so a
    /// changed constant reuses the same pipeline, and the driver cannot fold
    /// IEEE special cases (x / 0, inf * 0) away.
    pub seeds: Vec<usize>,
    /// Number of threads or workgroups the dispatch must cover.
    pub items: u64,
    /// Loads one invocation issues (a vec4 counts as one): on lavapipe each
    /// is a loop over the lanes, whatever it reads. `guarded_loads` of them
    /// happen only under a condition (see [`Gen::guarded`]).
    pub loads: usize,
    pub guarded_loads: usize,
}

/// How a generated kernel reads one of its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InputForm {
    /// A storage buffer of elements, in chunks (see [`chunk_count`]).
    Storage,
    /// A uniform buffer of vec4s (see [`UNIFORM_INPUT_BYTES`]), bound whole
    /// to a multiple of 16 bytes.
    Uniform,
    /// A storage buffer of vec4s, bound whole (to its padded size): a
    /// kernel that computes four consecutive elements per invocation
    /// reads four consecutive elements of this input in one load (see
    /// [`Quad`]). The same entry may also be bound as `Storage`.
    Quads,
}

struct Gen<'a> {
    entries: &'a [Entry],
    materialized: &'a dyn Fn(usize) -> bool,
    /// Elements one storage binding may hold; larger tensors are bound as
    /// several consecutive ranges and read through a helper.
    chunk: usize,
    inputs: Vec<usize>,
    /// Parallel to `inputs`.
    forms: Vec<InputForm>,
    /// Whether inputs may be uniform buffers at all (not in a matmul's
    /// epilogue, whose bindings the matmul kernel lays out).
    uniform_ok: bool,
    seeds: Vec<usize>,
    memo: HashMap<(usize, String), String>,
    /// Index variables whose mixed-radix digits are known (outermost first,
    /// each digit with its extent, none of extent 1): a coordinate of such
    /// an index is a digit, or a few digits, instead of a division and a
    /// remainder of the whole index (see [`Gen::coord`]).
    digits: HashMap<String, Vec<(String, usize)>>,
    /// Index variables that are element `k` of a quad (see [`Quad`]).
    quads: HashMap<String, Quad>,
    /// In a tile ([`StoreForm::Tiles`]): index variables that are element
    /// `k` of a tile's column, four rows apart at the output. An input
    /// that lies transposed to the output reads a column as one vec4.
    column_quads: HashMap<String, Quad>,
    /// Where each view read each index it was asked for: by the view's
    /// entry and the index, its input's index (a column's later elements
    /// find their first element's there).
    view_children: HashMap<(usize, String), String>,
    loads: usize,
    guarded_loads: usize,
    /// Where a view reads a quad's first element: its input's index and
    /// mask, by the view's entry and the quad's first index.
    quad_views: HashMap<(usize, String), (String, Option<String>)>,
    counter: usize,
    /// In a matmul epilogue: the matmul entry and the variable holding its
    /// value at the element being stored.
    substitute: Option<(usize, String)>,
    /// The scalars buffer and the word where constants and seeds start
    /// (after a matmul's shape words in an epilogue).
    scalars: &'static str,
    scalar_base: usize,
}

impl<'a> Gen<'a> {
    fn new(
        entries: &'a [Entry],
        materialized: &'a dyn Fn(usize) -> bool,
        rules: BindingRules,
    ) -> Self {
        Gen {
            entries,
            materialized,
            chunk: rules.chunk,
            inputs: Vec::new(),
            forms: Vec::new(),
            uniform_ok: rules.uniform_inputs,
            seeds: Vec::new(),
            memo: HashMap::new(),
            digits: HashMap::new(),
            quads: HashMap::new(),
            column_quads: HashMap::new(),
            view_children: HashMap::new(),
            loads: 0,
            guarded_loads: 0,
            quad_views: HashMap::new(),
            counter: 0,
            substitute: None,
            scalars: "scalars",
            scalar_base: 0,
        }
    }
}

/// How a generated kernel may bind its inputs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BindingRules {
    /// Elements one storage binding holds.
    pub chunk: usize,
    /// Small inputs may be uniform buffers (see [`UNIFORM_INPUT_BYTES`]):
    /// on a CPU adapter only. A GPU's constant cache serves lanes that
    /// read different addresses one after another, and a bias read along
    /// its rows' last axis would be read so.
    pub uniform_inputs: bool,
    /// Kernels compute and read four consecutive elements at a time where
    /// they can ([`StoreForm::Quads`], and sums: [`reduce_quads`]): on a
    /// CPU adapter, which loads and stores lane by lane.
    pub quads: bool,
}

/// Where a generated kernel writes: an entry's buffer, as elements of the
/// given WGSL type (u64 for paired stores), or an operand texture.
enum Output<'t> {
    Buffer(usize, &'t str),
    Texture,
    /// Several entries of one length, `out0`, `out1`, ..., one binding each.
    Buffers(&'t [usize]),
}

fn zero(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "0.0",
        DType::I32 => "0i",
        DType::U32 => "0u",
    }
}

pub(crate) fn literal(dtype: DType, v: f64) -> String {
    match dtype {
        // Exact bits: a constant must not change by a round trip through decimal.
        DType::F32 => format!("bitcast<f32>({}u)", (v as f32).to_bits()),
        DType::I32 => {
            let x = v as i64 as i32;
            if x == i32::MIN {
                "i32(-2147483647 - 1)".to_string()
            } else {
                format!("i32({x})")
            }
        }
        DType::U32 => format!("{}u", v as u64 as u32),
    }
}

/// Inputs up to this size are read as uniform buffers: lavapipe gathers
/// a uniform load across the lanes in one go (one load where the offset is
/// the same for all), where a storage load loops over the lanes with a
/// bounds check each. Batch norm's per-channel statistics and a layer's
/// bias are read once per element, so this halves the loads of many
/// element-wise kernels. Well under the 64 KiB every adapter binds.
pub(crate) const UNIFORM_INPUT_BYTES: usize = 16 << 10;

/// Uniform inputs one kernel reads at most (devices allow 12 uniform
/// buffers per stage; the scalars take one).
const MAX_UNIFORM_INPUTS: usize = 8;

/// The vec4 words of a generated kernel's uniform scalars for `seeds`
/// constants and seeds (two words each).
pub(crate) fn scalar_vec4s(seeds: usize) -> usize {
    (2 * seeds).div_ceil(4).max(1)
}

/// Row-major coordinate `d` of linear index `idx` in `shape`.
fn coord(idx: &str, shape: &[usize], d: usize) -> String {
    let inner: usize = shape[d + 1..].iter().product();
    let outer_trivial = shape[..d].iter().all(|&s| s == 1);
    match (inner, outer_trivial) {
        (1, true) => idx.to_string(),
        (1, false) => format!("({idx} % {}u)", shape[d]),
        (_, true) => format!("({idx} / {inner}u)"),
        (_, false) => format!("(({idx} / {inner}u) % {}u)", shape[d]),
    }
}

/// How much of `n` the innermost digits make up whole: the first of them
/// (`j`, counting from the outermost) and the factor of `n` left over.
fn whole_inner_digits(digits: &[(String, usize)], n: usize) -> (usize, usize) {
    let (mut rest, mut j) = (n, digits.len());
    while j > 0 && rest.is_multiple_of(digits[j - 1].1) {
        rest /= digits[j - 1].1;
        j -= 1;
    }
    (j, rest)
}

/// Digits `digits` (see `Gen::digits`) divided by `divisor`: the outer
/// digits, the last of them divided too where the divisor ends inside it.
/// `None` where the division does not fall on the digits (a divisor that
/// shares only part of a digit's factors).
fn digits_div(digits: &[(String, usize)], divisor: usize) -> Option<Vec<(String, usize)>> {
    let (j, rest) = whole_inner_digits(digits, divisor);
    if rest == 1 || j == 0 {
        // With j == 0 the divisor is at least the whole range: quotient 0.
        return Some(if rest == 1 {
            digits[..j].to_vec()
        } else {
            Vec::new()
        });
    }
    let (e, extent) = &digits[j - 1];
    if !extent.is_multiple_of(rest) {
        return None;
    }
    let mut q = digits[..j - 1].to_vec();
    if extent / rest > 1 {
        q.push((format!("({e} / {rest}u)"), extent / rest));
    }
    Some(q)
}

/// Digits `digits` modulo `modulus`: the inner digits, the first of them
/// reduced too where the modulus ends inside it; `None` as for
/// [`digits_div`].
fn digits_rem(digits: &[(String, usize)], modulus: usize) -> Option<Vec<(String, usize)>> {
    let (j, rest) = whole_inner_digits(digits, modulus);
    if rest == 1 || j == 0 {
        // With j == 0 the modulus covers the whole range: the index itself.
        return Some(digits[j..].to_vec());
    }
    let (e, extent) = &digits[j - 1];
    if !extent.is_multiple_of(rest) {
        return None;
    }
    let mut r = vec![(format!("({e} % {rest}u)"), rest)];
    r.extend_from_slice(&digits[j..]);
    Some(r)
}

/// The digits of the index a view reads, where the view only reorders
/// its input's axes (a permutation, with reshapes around it): the view's
/// coordinates `coords` (axis, u32 expression; extent-1 axes left out)
/// ordered by decreasing stride, when the strides are exactly the
/// row-major strides of that order.
fn permuted_digits(
    spec: &crate::graph::ViewSpec,
    shape: &[usize],
    mut coords: Vec<(usize, String)>,
) -> Option<Vec<(String, usize)>> {
    if spec.offset != 0 || spec.mask.is_some() {
        return None;
    }
    coords.retain(|&(d, _)| shape[d] > 1);
    coords.sort_by_key(|&(d, _)| std::cmp::Reverse(spec.strides[d]));
    let mut stride = 1i64;
    for &(d, _) in coords.iter().rev() {
        if spec.strides[d] != stride {
            return None;
        }
        stride *= shape[d] as i64;
    }
    Some(coords.into_iter().map(|(d, c)| (c, shape[d])).collect())
}

/// The value of digits (a u32 expression).
fn digits_value(digits: &[(String, usize)]) -> String {
    let mut terms = Vec::new();
    let mut stride = 1;
    for (e, extent) in digits.iter().rev() {
        terms.push(if stride == 1 {
            e.clone()
        } else {
            format!("{e} * {stride}u")
        });
        stride *= extent;
    }
    match terms.len() {
        0 => "0u".to_string(),
        1 => terms.remove(0),
        _ => {
            terms.reverse();
            format!("({})", terms.join(" + "))
        }
    }
}

impl Gen<'_> {
    /// Row-major coordinate `d` of index `idx` in `shape`: from `idx`'s
    /// digits where they are known and line up with `shape`'s axes (an
    /// unfold read through a permuted view, say, whose index would
    /// otherwise be linearized and divided apart again), else by division.
    fn coord(&self, idx: &str, shape: &[usize], d: usize) -> String {
        let inner: usize = shape[d + 1..].iter().product();
        self.digits
            .get(idx)
            .and_then(|digits| digits_div(digits, inner))
            .and_then(|q| digits_rem(&q, shape[d]))
            .map_or_else(|| coord(idx, shape, d), |c| digits_value(&c))
    }

    /// `idx / divisor`, from `idx`'s digits where they allow.
    fn quotient(&self, idx: &str, divisor: usize) -> String {
        self.digits
            .get(idx)
            .and_then(|digits| digits_div(digits, divisor))
            .map_or_else(|| format!("({idx} / {divisor}u)"), |q| digits_value(&q))
    }

    /// `idx % modulus`, from `idx`'s digits where they allow.
    fn remainder(&self, idx: &str, modulus: usize) -> String {
        self.digits
            .get(idx)
            .and_then(|digits| digits_rem(digits, modulus))
            .map_or_else(|| format!("({idx} % {modulus}u)"), |r| digits_value(&r))
    }

    /// Word `w` of the kernel's scalars. A generated kernel's own scalars
    /// are a uniform buffer of vec4 words (uniform arrays have a 16-byte
    /// stride): lavapipe loads a uniform at a fixed offset once for all
    /// lanes, where a storage load loops over the lanes, each with a bounds
    /// check. A matmul epilogue reads the matmul's storage `dims` words.
    fn scalar_word(&self, w: usize) -> String {
        if self.scalars == "scalars" {
            format!("scalars[{}u][{}u]", w / 4, w % 4)
        } else {
            format!("{}[{w}u]", self.scalars)
        }
    }

    /// A new variable name. Prefixes must not end a WGSL type name when a
    /// number follows: "i" would make `i32`, shadowing the conversion.
    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    fn binding_of(&mut self, i: usize) -> usize {
        let found = (0..self.inputs.len())
            .find(|&p| self.inputs[p] == i && self.forms[p] != InputForm::Quads);
        if let Some(p) = found {
            return p;
        }
        let uniforms = self.forms.iter().filter(|&&f| f == InputForm::Uniform);
        let form = if self.uniform_candidate(i) && uniforms.count() < MAX_UNIFORM_INPUTS {
            InputForm::Uniform
        } else {
            InputForm::Storage
        };
        self.inputs.push(i);
        self.forms.push(form);
        self.inputs.len() - 1
    }

    /// Whether entry `i` is small enough to read as a uniform buffer.
    fn uniform_candidate(&self, i: usize) -> bool {
        let e = &self.entries[i];
        self.uniform_ok
            && numel(&e.shape) * e.dtype.size() <= UNIFORM_INPUT_BYTES
            && self.chunks(i) == 1
    }

    /// The binding that reads entry `i` a vec4 at a time.
    fn quad_binding_of(&mut self, i: usize) -> usize {
        let found = (0..self.inputs.len())
            .find(|&p| self.inputs[p] == i && self.forms[p] == InputForm::Quads);
        found.unwrap_or_else(|| {
            self.inputs.push(i);
            self.forms.push(InputForm::Quads);
            self.inputs.len() - 1
        })
    }

    /// A materialized entry `i` at `idx`: one component of a vec4 load
    /// shared by the quad's four elements where `idx` is a quad's element
    /// and `i` lies in one storage binding, else a load of its own.
    fn leaf(&mut self, body: &mut String, i: usize, idx: &str) -> String {
        let vec4_ok =
            self.chunks(i) == 1 && !self.uniform_candidate(i) && self.entries[i].dtype.size() == 4;
        let contiguous = |q: Option<&Quad>| q.filter(|q| q.stride == 1 && vec4_ok).cloned();
        let (Quad { base, k, .. }, what) = match (
            contiguous(self.quads.get(idx)),
            contiguous(self.column_quads.get(idx)),
        ) {
            (Some(q), _) => (q, "quad"),
            (None, Some(q)) => (q, "column"),
            (None, None) => {
                self.loads += 1;
                return self.load(i, idx);
            }
        };
        let key = (i, format!("{what} {base}"));
        let q = match self.memo.get(&key) {
            Some(q) => q.clone(),
            None => {
                let b = self.quad_binding_of(i);
                let q = self.fresh("q");
                let _ = writeln!(body, "    let {q} = b{b}[({base}) / 4u];");
                self.memo.insert(key, q.clone());
                self.loads += 1;
                q
            }
        };
        format!("{q}.{}", ["x", "y", "z", "w"][k])
    }

    /// Whether the four elements that `idx` belongs to along the output's
    /// rows (a quad) or down a tile's column are read by one vec4 load.
    fn shares_a_load(&self, idx: &str) -> bool {
        let contiguous = |q: Option<&Quad>| q.is_some_and(|q| q.stride == 1);
        contiguous(self.quads.get(idx)) || contiguous(self.column_quads.get(idx))
    }

    /// Emits statements into `body` computing entry `i` at linear index `idx`
    /// (a u32 expression naming a variable); returns the value's variable.
    fn value(&mut self, body: &mut String, i: usize, idx: &str, top: bool) -> String {
        if let Some((m, v)) = &self.substitute {
            // The epilogue's chain reaches the matmul exactly once, at the
            // element being stored (whatever its index expression says).
            if *m == i {
                return v.clone();
            }
        }
        if let Some(v) = self.memo.get(&(i, idx.to_string())) {
            return v.clone();
        }
        // A constant is the same at every index: one scalar word serves
        // all the elements an invocation computes.
        let constant = matches!(self.entries[i].op, Op::Const);
        if let Some(v) = self.memo.get(&(i, String::new())).filter(|_| constant) {
            return v.clone();
        }
        let e = &self.entries[i];
        let ty = e.dtype.wgsl();
        let v = self.fresh("v");
        if !top && (self.materialized)(i) {
            let load = self.leaf(body, i, idx);
            let _ = writeln!(body, "    let {v} = {load};");
            self.memo.insert((i, idx.to_string()), v.clone());
            return v;
        }
        let expr = match e.op.clone() {
            Op::External
            | Op::Upload
            | Op::Reduce { .. }
            | Op::Matmul { .. }
            | Op::Concat { .. }
            | Op::Custom(..) => self.leaf(body, i, idx),
            Op::Const => {
                let s = self.seeds.len();
                self.seeds.push(i);
                match e.dtype {
                    DType::U32 => self.scalar_word(self.scalar_base + 2 * s),
                    other => format!(
                        "bitcast<{}>({})",
                        other.wgsl(),
                        self.scalar_word(self.scalar_base + 2 * s)
                    ),
                }
            }
            Op::Iota { axis } => format!("{ty}({})", self.coord(idx, &e.shape, axis)),
            Op::Rand { normal } => {
                let s = self.seeds.len();
                self.seeds.push(i);
                let f = if normal {
                    "rand_normal"
                } else {
                    "rand_uniform"
                };
                let w = self.scalar_base + 2 * s;
                format!(
                    "{f}({idx}, {}, {})",
                    self.scalar_word(w),
                    self.scalar_word(w + 1)
                )
            }
            Op::Unary(op, a) => {
                let x = self.value(body, a, idx, false);
                unary(op, e.dtype, &x)
            }
            Op::Binary(BinaryOp::Masked, a, mask) if self.shares_a_load(idx) => {
                // A quad's load serves four elements: cheaper taken than
                // guarded four times.
                let m = self.value(body, mask, idx, false);
                let x = self.value(body, a, idx, false);
                let z = zero(self.entries[mask].dtype);
                format!("select({}, {x}, {m} != {z})", zero(e.dtype))
            }
            Op::Binary(BinaryOp::Masked, a, mask) => {
                // The mask first; the value is read only where it holds (on
                // lavapipe every load costs, wanted or not).
                let m = self.value(body, mask, idx, false);
                let z = zero(self.entries[mask].dtype);
                let cond = format!("{m} != {z}");
                let x = self.guarded(body, &cond, idx, a, zero(e.dtype), ty);
                self.memo.insert((i, idx.to_string()), x.clone());
                return x;
            }
            Op::Binary(op, a, b) => {
                let in_ty = self.entries[a].dtype;
                let x = self.value(body, a, idx, false);
                let y = self.value(body, b, idx, false);
                binary(op, in_ty, &x, &y)
            }
            Op::Where(c, a, b) => {
                let cv = self.value(body, c, idx, false);
                let cond = match self.entries[c].dtype {
                    DType::F32 => format!("{cv} != 0.0"),
                    DType::I32 => format!("{cv} != 0i"),
                    DType::U32 => format!("{cv} != 0u"),
                };
                let x = self.value(body, a, idx, false);
                let y = self.value(body, b, idx, false);
                format!("select({y}, {x}, {cond})")
            }
            Op::Cast(a) => {
                let x = self.value(body, a, idx, false);
                format!("{ty}({x})")
            }
            Op::View(spec, a) if is_reshape(&spec, &e.shape) => {
                // A reshape reads its input at the same linear index.
                let x = self.value(body, a, idx, false);
                self.memo.insert((i, idx.to_string()), x.clone());
                return x;
            }
            Op::View(spec, a) => return self.viewed(body, i, &spec, a, idx),
            Op::Unfold(win, fill, a) => {
                self.unfolded(body, (&e.shape, e.dtype), &win, fill, a, idx)
            }
            Op::Fold(win, a) => self.fold(body, &e.shape, e.dtype, &win, a, idx),
            Op::ConvRows(win, a) => {
                let channels = self.entries[a].shape[1];
                let (m, child) = self.conv_rows(body, &win, channels, idx);
                self.guarded(body, &m, &child, a, zero(e.dtype), ty)
            }
            Op::Gather { axis, src, index } => {
                return self.gathered(body, i, (axis, src, index), idx);
            }
        };
        let _ = writeln!(body, "    let {v}: {ty} = {expr};");
        self.memo.insert((i, idx.to_string()), v.clone());
        if constant {
            self.memo.insert((i, String::new()), v.clone());
        }
        v
    }

    /// Element `idx` of an unfold (of `shape` and `dtype`) of `input`: the
    /// image's value at the tap, or `fill` where the tap lies outside it.
    fn unfolded(
        &mut self,
        body: &mut String,
        (shape, dtype): (&[usize], DType),
        win: &Window2d,
        fill: Fill,
        input: usize,
        idx: &str,
    ) -> String {
        let (m, child) = self.unfold(body, shape, win, idx);
        let outside = match (fill, dtype) {
            (Fill::Zero, dtype) => zero(dtype).to_string(),
            (Fill::NegInfinity, DType::F32) => "bitcast<f32>(0xff800000u)".to_string(),
            (Fill::NegInfinity, DType::I32) => literal(DType::I32, i32::MIN as f64),
            (Fill::NegInfinity, DType::U32) => "0u".to_string(),
        };
        if (self.materialized)(input) || reads_one_buffer(self.entries, self.materialized, input) {
            // A stored image, or one load's arithmetic, is read
            // unconditionally (the index is 0 outside) and the padding
            // selected: the few taps in the padding save less than the
            // branch costs (bench gan's 1024x3136 unfolds, 11.4 -> 9.7 ms
            // on lavapipe).
            let x = self.value(body, input, &child, false);
            format!("select({outside}, {x}, {m})")
        } else {
            self.guarded(body, &m, &child, input, &outside, dtype.wgsl())
        }
    }

    /// Where element `idx` of a view of `shape` reads its input: writes
    /// the input's index (and, for a masked view, the condition that the
    /// element lies inside the mask, with the index clamped to 0 outside)
    /// and returns their names.
    fn view_index(
        &mut self,
        body: &mut String,
        spec: &crate::graph::ViewSpec,
        shape: &[usize],
        idx: &str,
    ) -> (String, Option<String>) {
        let child = self.fresh("ix");
        let mut terms = vec![format!("{}", spec.offset)];
        let mut conds = Vec::new();
        let mut coords = Vec::new();
        for d in 0..shape.len() {
            if shape[d] == 1 && spec.mask.is_none() {
                continue;
            }
            let u = self.coord(idx, shape, d);
            let c = format!("i32({u})");
            coords.push((d, u));
            if spec.strides[d] != 0 {
                terms.push(format!("{c} * {}", spec.strides[d]));
            }
            if let Some(m) = &spec.mask {
                let (lo, hi) = m[d];
                if lo > 0 {
                    conds.push(format!("{c} >= {lo}"));
                }
                if hi < shape[d] {
                    conds.push(format!("{c} < {hi}"));
                }
            }
        }
        let linear = terms.join(" + ");
        if conds.is_empty() {
            let _ = writeln!(body, "    let {child} = u32({linear});");
            if let Some(digits) = permuted_digits(spec, shape, coords) {
                self.digits.insert(child.clone(), digits);
            }
            return (child, None);
        }
        let m = self.fresh("m");
        let _ = writeln!(body, "    let {m} = {};", conds.join(" && "));
        let _ = writeln!(body, "    let {child} = select(0u, u32({linear}), {m});");
        (child, Some(m))
    }

    /// `input` at `child` where `m` holds, else `outside`. The read happens
    /// only under the condition: a padding row, or the part of a
    /// concatenation that another input fills, then costs no load (a kernel
    /// on lavapipe pays for every load, wanted or not). `child` must be in
    /// bounds either way.
    fn guarded(
        &mut self,
        body: &mut String,
        m: &str,
        child: &str,
        input: usize,
        outside: &str,
        ty: &str,
    ) -> String {
        let v = self.fresh("g");
        // Values and indices computed inside the branch are not visible
        // after it.
        let saved = (
            self.memo.clone(),
            self.quad_views.clone(),
            self.view_children.clone(),
        );
        let mut inner = String::new();
        let loads = self.loads;
        let x = self.value(&mut inner, input, child, false);
        self.guarded_loads += self.loads - loads;
        (self.memo, self.quad_views, self.view_children) = saved;
        let _ = write!(
            body,
            "    var {v}: {ty} = {outside};\n    if ({m}) {{\n{inner}    {v} = {x};\n    }}\n"
        );
        v
    }

    /// Tap `(kh, kw)` of window `(oh, ow)` for output element `idx` of an
    /// unfold: whether it is inside the image, and the index read there.
    fn unfold(
        &mut self,
        body: &mut String,
        shape: &[usize],
        win: &Window2d,
        idx: &str,
    ) -> (String, String) {
        let [h, w] = win.image;
        let taps: usize = shape[2..].iter().product();
        let (kh, kw, oh, ow) = (
            self.coord(idx, shape, 2),
            self.coord(idx, shape, 3),
            self.coord(idx, shape, 4),
            self.coord(idx, shape, 5),
        );
        let image = self.quotient(idx, taps);
        let (y, x, m, child) = (
            self.fresh("y"),
            self.fresh("x"),
            self.fresh("m"),
            self.fresh("ix"),
        );
        let _ = writeln!(
            body,
            "    let {y} = i32({oh} * {}u + {kh} * {}u) - {};",
            win.stride[0], win.dilation[0], win.padding[0]
        );
        let _ = writeln!(
            body,
            "    let {x} = i32({ow} * {}u + {kw} * {}u) - {};",
            win.stride[1], win.dilation[1], win.padding[1]
        );
        let _ = writeln!(
            body,
            "    let {m} = {y} >= 0 && {y} < {h} && {x} >= 0 && {x} < {w};"
        );
        // Outside the image the load reads element 0 and is discarded.
        let _ = writeln!(
            body,
            "    let {child} = select(0u, {image} * {}u + u32({y}) * {w}u + u32({x}), {m});",
            h * w
        );
        // The image's coordinates as the index's digits, for a view read
        // through it (the tap clamped into the image, where the value is
        // discarded anyway): then that view divides nothing.
        let (yc, xc) = (self.fresh("y"), self.fresh("x"));
        let _ = writeln!(body, "    let {yc} = u32(select(0, {y}, {m}));");
        let _ = writeln!(body, "    let {xc} = u32(select(0, {x}, {m}));");
        let digits: Vec<(String, usize)> = [(image, shape[0] * shape[1]), (yc, h), (xc, w)]
            .into_iter()
            .filter(|&(_, extent)| extent > 1)
            .collect();
        self.digits.insert(child.clone(), digits);
        (m, child)
    }

    /// Element `idx` of a channels-last unfold (`Op::ConvRows`): row
    /// `(n, oy, ox)`, column `(ky, kx, c)`; whether the tap is inside the
    /// image, and the image element read there.
    fn conv_rows(
        &mut self,
        body: &mut String,
        win: &Window2d,
        channels: usize,
        idx: &str,
    ) -> (String, String) {
        let [h, w] = win.image;
        let [oh_n, ow_n] = win.out;
        let taps = win.kernel[0] * win.kernel[1] * channels;
        let (row, col, y, x, m, child) = (
            self.fresh("row"),
            self.fresh("col"),
            self.fresh("y"),
            self.fresh("x"),
            self.fresh("m"),
            self.fresh("ix"),
        );
        let (row_value, col_value) = (self.quotient(idx, taps), self.remainder(idx, taps));
        let _ = writeln!(body, "    let {row} = {row_value};");
        let _ = writeln!(body, "    let {col} = {col_value};");
        let tap = |axis: usize| {
            if axis == 0 {
                format!("({col} / {}u)", win.kernel[1] * channels)
            } else {
                format!("(({col} / {channels}u) % {}u)", win.kernel[1])
            }
        };
        let _ = writeln!(
            body,
            "    let {y} = i32((({row} / {ow_n}u) % {oh_n}u) * {}u + {} * {}u) - {};",
            win.stride[0],
            tap(0),
            win.dilation[0],
            win.padding[0]
        );
        let _ = writeln!(
            body,
            "    let {x} = i32(({row} % {ow_n}u) * {}u + {} * {}u) - {};",
            win.stride[1],
            tap(1),
            win.dilation[1],
            win.padding[1]
        );
        let _ = writeln!(
            body,
            "    let {m} = {y} >= 0 && {y} < {h} && {x} >= 0 && {x} < {w};"
        );
        // Outside the image the load reads element 0 and is discarded.
        let _ = writeln!(
            body,
            "    let {child} = select(0u, ((({row} / {}u) * {}u + u32({y}) * {w}u + u32({x})) * {channels}u + {col} % {channels}u), {m});",
            oh_n * ow_n,
            h * w
        );
        (m, child)
    }

    /// Output pixel `idx` of a fold: the sum of every tap that reads it.
    fn fold(
        &mut self,
        body: &mut String,
        shape: &[usize],
        dtype: DType,
        win: &Window2d,
        input: usize,
        idx: &str,
    ) -> String {
        let [kh_n, kw_n] = win.kernel;
        let [oh_n, ow_n] = win.out;
        let plane = shape[2] * shape[3];
        let (acc, nc, kh, kw, ty, tx, oh, ow, child) = (
            self.fresh("acc"),
            self.fresh("nc"),
            self.fresh("kh"),
            self.fresh("kw"),
            self.fresh("ty"),
            self.fresh("tx"),
            self.fresh("oh"),
            self.fresh("ow"),
            self.fresh("ix"),
        );
        // Through a view (the input gradient of conv2d folds a permuted GEMM
        // product), the source's index is composed from the tap's
        // coordinates instead of linearized and divided apart again.
        let in_shape = &self.entries[input].shape;
        let (src, tap_index) = match &self.entries[input].op {
            Op::View(spec, s)
                if spec.mask.is_none() && in_shape.len() == 6 && !(self.materialized)(input) =>
            {
                let c_n = in_shape[1];
                let st = &spec.strides;
                let index = format!(
                    "u32({} + i32({nc} / {c_n}u) * {} + i32({nc} % {c_n}u) * {} + i32({kh}) * {} + i32({kw}) * {} + i32({oh}) * {} + i32({ow}) * {})",
                    spec.offset, st[0], st[1], st[2], st[3], st[4], st[5]
                );
                (*s, index)
            }
            _ => (
                input,
                format!(
                    "(({nc} * {kh_n}u + {kh}) * {kw_n}u + {kw}) * {}u + {oh} * {ow_n}u + {ow}",
                    oh_n * ow_n
                ),
            ),
        };
        let image = self.quotient(idx, plane);
        let mut inner = String::new();
        let v = self.value(&mut inner, src, &child, false);
        if win.stride == win.kernel && win.dilation == [1, 1] {
            // Windows that tile the image: each pixel is one tap of at most
            // one window, found by division instead of a loop over taps.
            let valid = self.fresh("ok");
            let _ = write!(
                body,
                "    let {nc} = {image};
    let {ty} = {row} + {ph}u;
    let {tx} = {col} + {pw}u;
    let {oh} = {ty} / {sh}u;
    let {ow} = {tx} / {sw}u;
    let {kh} = {ty} % {sh}u;
    let {kw} = {tx} % {sw}u;
    let {valid} = {oh} < {oh_n}u && {ow} < {ow_n}u;
    let {child} = select(0u, {tap_index}, {valid});
{inner}    let {acc} = select({zero}, {v}, {valid});
",
                row = self.coord(idx, shape, 2),
                col = self.coord(idx, shape, 3),
                ph = win.padding[0],
                pw = win.padding[1],
                sh = win.stride[0],
                sw = win.stride[1],
                zero = zero(dtype),
            );
            return acc;
        }
        if win.dilation == [1, 1] {
            // Only the taps that land on a window: every stride-th from the
            // first, between bounds, with no test per tap (a transposed
            // convolution of stride 2 visits 4 of its 16 taps).
            let (t_h, lo_h, hi_h) = self.tap_bounds(
                body,
                &self.coord(idx, shape, 2),
                win.padding[0],
                win.stride[0],
                oh_n,
                kh_n,
            );
            let (t_w, lo_w, hi_w) = self.tap_bounds(
                body,
                &self.coord(idx, shape, 3),
                win.padding[1],
                win.stride[1],
                ow_n,
                kw_n,
            );
            let (ih, iw) = (self.fresh("ih"), self.fresh("iw"));
            let _ = write!(
                body,
                "    var {acc}: {ty_name} = {zero};
    let {nc} = {image};
    for (var {ih} = {lo_h}; {ih} <= {hi_h}; {ih} += {sh}) {{
    let {kh} = u32({ih});
    let {oh} = u32(({t_h} - {ih}) / {sh});
    for (var {iw} = {lo_w}; {iw} <= {hi_w}; {iw} += {sw}) {{
    let {kw} = u32({iw});
    let {ow} = u32(({t_w} - {iw}) / {sw});
    let {child} = {tap_index};
{inner}    {acc} += {v};
    }}
    }}
",
                ty_name = dtype.wgsl(),
                zero = zero(dtype),
                sh = win.stride[0],
                sw = win.stride[1],
            );
            return acc;
        }
        let _ = write!(
            body,
            "    var {acc}: {ty_name} = {zero};
    let {nc} = {image};
    for (var {kh} = 0u; {kh} < {kh_n}u; {kh}++) {{
    let {ty} = i32({row}) + {ph} - i32({kh} * {dh}u);
    if ({ty} < 0 || {ty} % {sh} != 0 || {ty} / {sh} >= {oh_n}) {{ continue; }}
    let {oh} = u32({ty} / {sh});
    for (var {kw} = 0u; {kw} < {kw_n}u; {kw}++) {{
    let {tx} = i32({col}) + {pw} - i32({kw} * {dw}u);
    if ({tx} < 0 || {tx} % {sw} != 0 || {tx} / {sw} >= {ow_n}) {{ continue; }}
    let {ow} = u32({tx} / {sw});
    let {child} = {tap_index};
{inner}    {acc} += {v};
    }}
    }}
",
            ty_name = dtype.wgsl(),
            zero = zero(dtype),
            row = self.coord(idx, shape, 2),
            col = self.coord(idx, shape, 3),
            ph = win.padding[0],
            pw = win.padding[1],
            dh = win.dilation[0],
            dw = win.dilation[1],
            sh = win.stride[0],
            sw = win.stride[1],
        );
        acc
    }

    /// A fold's taps along one axis for output coordinate `coord`: tap `k`
    /// reads window `(t - k) / stride` with `t = coord + pad`, and exists
    /// where `t - k` is a multiple of the stride in `0..=stride * (windows -
    /// 1)` and `k < taps`. Writes `t` and the first and last such tap (i32;
    /// none when first > last) and returns their names.
    fn tap_bounds(
        &mut self,
        body: &mut String,
        coord: &str,
        pad: usize,
        stride: usize,
        windows: usize,
        taps: usize,
    ) -> (String, String, String) {
        let (t, low, lo, hi) = (
            self.fresh("t"),
            self.fresh("low"),
            self.fresh("lo"),
            self.fresh("hi"),
        );
        let _ = write!(
            body,
            "    let {t} = i32({coord}) + {pad};
    let {hi} = min({t}, {last_tap});
    let {low} = max(0, {t} - {reach});
    let {lo} = {low} + ({t} - {low}) % {stride};
",
            last_tap = taps as i64 - 1,
            reach = stride * windows.saturating_sub(1),
        );
        (t, lo, hi)
    }

    fn chunks(&self, i: usize) -> usize {
        chunk_count(numel(&self.entries[i].shape), self.chunk)
    }

    /// View `i` (of `spec`, over `input`) at `idx`: a quad's element
    /// where the view keeps the quad (see [`Quad::through`]), else element
    /// by element, `0` outside a mask. Memoised.
    fn viewed(
        &mut self,
        body: &mut String,
        i: usize,
        spec: &crate::graph::ViewSpec,
        input: usize,
        idx: &str,
    ) -> String {
        let shape = self.entries[i].shape.clone();
        let kept = self.quads.get(idx).cloned().and_then(|q| {
            let stride = q.through(spec, &shape)?;
            Some((q, stride))
        });
        let (child, m) = match &kept {
            Some((q, stride)) => self.quad_child(body, i, spec, q, *stride),
            // Element by element.
            None => self.view_index(body, spec, &shape, idx),
        };
        self.view_children
            .insert((i, idx.to_string()), child.clone());
        // Down a tile's column the view may keep four elements together
        // too; the column's first element went through it first.
        let column = self.column_quads.get(idx).cloned().and_then(|q| {
            let stride = q.through(spec, &shape)?;
            let base = match q.k {
                0 => child.clone(),
                _ => self.view_children.get(&(i, q.base.clone()))?.clone(),
            };
            Some(Quad {
                base,
                k: q.k,
                stride,
            })
        });
        let shared = kept.is_some() || column.is_some();
        if let Some(column) = column {
            self.column_quads.insert(child.clone(), column);
        }
        let dtype = self.entries[i].dtype;
        let v = match m {
            None => self.value(body, input, &child, false),
            // Four elements share the mask: one load serves them, taken
            // whether or not they lie inside.
            Some(m) if shared => {
                let x = self.value(body, input, &child, false);
                let v = self.fresh("v");
                let zero = zero(dtype);
                let _ = writeln!(
                    body,
                    "    let {v}: {} = select({zero}, {x}, {m});",
                    dtype.wgsl()
                );
                v
            }
            // Else the input is read only inside the mask.
            Some(m) => self.guarded(body, &m, &child, input, zero(dtype), dtype.wgsl()),
        };
        self.memo.insert((i, idx.to_string()), v.clone());
        v
    }

    /// Gather `i` (`src` at `index` along `axis`) at `idx`, the index
    /// clamped into the axis. Memoised.
    fn gathered(
        &mut self,
        body: &mut String,
        i: usize,
        (axis, src, index): (usize, usize, usize),
        idx: &str,
    ) -> String {
        let ix = self.value(body, index, idx, false);
        let shape = self.entries[i].shape.clone();
        let src_shape = self.entries[src].shape.clone();
        let strides = contiguous_strides(&src_shape);
        let dim = src_shape[axis] as i64;
        let child = self.fresh("ix");
        let mut terms = Vec::new();
        for d in 0..shape.len() {
            if d == axis {
                terms.push(format!(
                    "u32(clamp(i32({ix}), 0i, {}i)) * {}u",
                    dim - 1,
                    strides[d]
                ));
            } else if src_shape[d] > 1 {
                terms.push(format!("{} * {}u", self.coord(idx, &shape, d), strides[d]));
            }
        }
        let _ = writeln!(body, "    let {child} = {};", terms.join(" + "));
        let x = self.value(body, src, &child, false);
        self.memo.insert((i, idx.to_string()), x.clone());
        x
    }

    /// Where view `i` (of `spec`) reads element `q.k` of quad `q`, which
    /// it keeps as a quad `stride` apart (see [`Quad::through`]): the
    /// first element's index (and mask) computed once for the four, the
    /// others `stride` on from it. Registers the index as the input's quad.
    fn quad_child(
        &mut self,
        body: &mut String,
        i: usize,
        spec: &crate::graph::ViewSpec,
        q: &Quad,
        stride: usize,
    ) -> (String, Option<String>) {
        let key = (i, q.base.clone());
        let (first, m) = match self.quad_views.get(&key) {
            Some(found) => found.clone(),
            None => {
                let shape = self.entries[i].shape.clone();
                let found = self.view_index(body, spec, &shape, &q.base);
                self.quad_views.insert(key, found.clone());
                found
            }
        };
        let child = if q.k == 0 || stride == 0 {
            first.clone()
        } else {
            let c = self.fresh("ix");
            let _ = writeln!(body, "    let {c} = {first} + {}u;", q.k * stride);
            c
        };
        let quad = Quad {
            base: first,
            k: q.k,
            stride,
        };
        self.quads.insert(child.clone(), quad);
        (child, m)
    }

    fn load(&mut self, i: usize, idx: &str) -> String {
        let b = self.binding_of(i);
        if self.forms[b] == InputForm::Uniform {
            format!("b{b}[({idx}) / 4u][({idx}) % 4u]")
        } else if self.chunks(i) > 1 {
            format!("ld_b{b}({idx})")
        } else {
            format!("b{b}[{idx}]")
        }
    }

    /// Declares a buffer of `chunks` bindings starting at `*next`; a chunked
    /// buffer also gets a load (or store) helper that picks the binding.
    fn declare(
        &self,
        s: &mut String,
        next: &mut usize,
        name: &str,
        ty: &str,
        chunks: usize,
        write: bool,
    ) {
        let access = if write { "read_write" } else { "read" };
        if chunks == 1 {
            let _ = writeln!(
                s,
                "@group(0) @binding({next}) var<storage, {access}> {name}: array<{ty}>;"
            );
            *next += 1;
            return;
        }
        for c in 0..chunks {
            let _ = writeln!(
                s,
                "@group(0) @binding({next}) var<storage, {access}> {name}_{c}: array<{ty}>;"
            );
            *next += 1;
        }
        let chunk = self.chunk;
        let mut branches = String::new();
        for c in 0..chunks - 1 {
            let target = if write {
                format!("{name}_{c}[i - {}u] = v; return;", c * chunk)
            } else {
                format!("return {name}_{c}[i - {}u];", c * chunk)
            };
            let _ = writeln!(branches, "    if (i < {}u) {{ {target} }}", (c + 1) * chunk);
        }
        let last = chunks - 1;
        if write {
            let _ = writeln!(
                s,
                "fn st_{name}(i: u32, v: {ty}) {{\n{branches}    {name}_{last}[i - {}u] = v;\n}}",
                last * chunk
            );
        } else {
            let _ = writeln!(
                s,
                "fn ld_{name}(i: u32) -> {ty} {{\n{branches}    return {name}_{last}[i - {}u];\n}}",
                last * chunk
            );
        }
    }

    fn declarations(&self, out: usize) -> String {
        self.declarations_for(Output::Buffer(out, self.entries[out].dtype.wgsl()))
    }

    /// The kernel's bindings: a texture output first, then the inputs, a
    /// buffer output, the scalars.
    fn declarations_for(&self, output: Output<'_>) -> String {
        let mut s = String::new();
        let mut next = 0;
        if let Output::Texture = output {
            let _ = writeln!(
                s,
                "@group(0) @binding(0) var out: texture_storage_2d<rgba32float, write>;"
            );
            next = 1;
        }
        for (b, &i) in self.inputs.iter().enumerate() {
            let ty = self.entries[i].dtype.wgsl();
            if self.forms[b] == InputForm::Quads {
                let _ = writeln!(
                    s,
                    "@group(0) @binding({next}) var<storage, read> b{b}: array<vec4<{ty}>>;"
                );
                next += 1;
                continue;
            }
            if self.forms[b] == InputForm::Uniform {
                let vec4s = numel(&self.entries[i].shape).div_ceil(4).max(1);
                let _ = writeln!(
                    s,
                    "@group(0) @binding({next}) var<uniform> b{b}: array<vec4<{ty}>, {vec4s}>;"
                );
                next += 1;
                continue;
            }
            self.declare(
                &mut s,
                &mut next,
                &format!("b{b}"),
                ty,
                self.chunks(i),
                false,
            );
        }
        match output {
            Output::Buffer(out, ty) => {
                self.declare(&mut s, &mut next, "out", ty, self.chunks(out), true)
            }
            Output::Buffers(outs) => {
                for (k, &out) in outs.iter().enumerate() {
                    let ty = self.entries[out].dtype.wgsl();
                    self.declare(&mut s, &mut next, &format!("out{k}"), ty, 1, true);
                }
            }
            Output::Texture => {}
        }
        if !self.seeds.is_empty() {
            let _ = writeln!(
                s,
                "@group(0) @binding({next}) var<uniform> scalars: array<vec4<u32>, {}>;",
                scalar_vec4s(self.seeds.len())
            );
        }
        s
    }

    /// The kernel's bound on invocations, `count` of them. An output in one
    /// binding is bound to exactly its elements, so its length serves: the
    /// source then names no size, and kernels that differ only in their
    /// tensors' sizes (a network's initialisers, a smaller last batch) share
    /// one compiled pipeline.
    fn bound(&self, out: usize, count: usize) -> String {
        if self.chunks(out) == 1 {
            "arrayLength(&out)".to_string()
        } else {
            format!("{count}u")
        }
    }

    fn store(&self, out: usize, idx: &str, v: &str) -> String {
        if self.chunks(out) > 1 {
            format!("st_out({idx}, {v});")
        } else {
            format!("out[{idx}] = {v};")
        }
    }
}

fn unary(op: UnaryOp, dtype: DType, x: &str) -> String {
    let z = zero(dtype);
    match (op, dtype) {
        (UnaryOp::Neg, _) => format!("-{x}"),
        (UnaryOp::Abs, DType::U32) => x.to_string(),
        (UnaryOp::Abs, _) => format!("abs({x})"),
        (UnaryOp::Relu, _) => format!("select({x}, {z}, {x} < {z})"),
        (UnaryOp::Sign, DType::U32) => format!("min({x}, 1u)"),
        (UnaryOp::Sign, _) => format!("sign({x})"),
        (UnaryOp::Step, _) => format!("select({z}, {}, {x} > {z})", literal(dtype, 1.0)),
        (UnaryOp::Not, _) => format!("select({z}, {}, {x} == {z})", literal(dtype, 1.0)),
        (UnaryOp::Exp, _) => format!("exp({x})"),
        (UnaryOp::Log, _) => format!("log({x})"),
        (UnaryOp::Log1p, _) => format!("log1p_f({x})"),
        (UnaryOp::Sqrt, _) => format!("sqrt({x})"),
        (UnaryOp::Rsqrt, _) => format!("inverseSqrt({x})"),
        (UnaryOp::Sigmoid, _) => format!("sigmoid_f({x})"),
        (UnaryOp::Tanh, _) => format!("tanh_f({x})"),
        (UnaryOp::Gelu, _) => format!("gelu_f({x})"),
        (UnaryOp::GeluGrad, _) => format!("gelu_grad_f({x})"),
        (UnaryOp::Recip, _) => format!("(1.0 / {x})"),
        (UnaryOp::Floor, _) => format!("floor({x})"),
        (UnaryOp::Sin, _) => format!("sin({x})"),
        (UnaryOp::Cos, _) => format!("cos({x})"),
    }
}

fn binary(op: BinaryOp, dtype: DType, x: &str, y: &str) -> String {
    let float = dtype == DType::F32;
    match op {
        BinaryOp::Add => format!("({x} + {y})"),
        BinaryOp::Sub => format!("({x} - {y})"),
        BinaryOp::Mul => format!("({x} * {y})"),
        BinaryOp::Masked => {
            let z = zero(dtype);
            format!("select({z}, {x}, {y} != {z})")
        }
        BinaryOp::Div => format!("({x} / {y})"),
        BinaryOp::Pow => format!("pow_f({x}, {y})"),
        BinaryOp::Max if float => format!("max_f({x}, {y})"),
        BinaryOp::Min if float => format!("min_f({x}, {y})"),
        BinaryOp::Max => format!("max({x}, {y})"),
        BinaryOp::Min => format!("min({x}, {y})"),
        BinaryOp::Eq => format!("u32({x} == {y})"),
        // `!=` compiles to an ordered comparison, false for NaN; IEEE says true.
        BinaryOp::Ne => format!("u32(!({x} == {y}))"),
        BinaryOp::Lt => format!("u32({x} < {y})"),
        BinaryOp::Le => format!("u32({x} <= {y})"),
        BinaryOp::Gt => format!("u32({x} > {y})"),
        BinaryOp::Ge => format!("u32({x} >= {y})"),
    }
}

/// Element-wise kernels at least this long compute several elements per
/// invocation ([`StoreForm`]): lavapipe stores lane by lane, and a copy
/// kernel over 3.6M floats ran in 21-23 ms as u64 pairs against 26 ms.
/// Shorter kernels keep one element per invocation, which compiles faster
/// (each stored value's code is emitted once per element).
const WIDE_STORE_MIN: usize = 1 << 18;

/// How many elements an element-wise kernel computes per invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreForm {
    Single,
    /// Two, stored as one u64.
    Pairs,
    /// Four consecutive, stored as one vec4, each input that keeps the
    /// quads together read as one vec4 too (see [`Quad`]). lavapipe
    /// loads and stores lane by lane, each lane's load or store a loop
    /// step of its own: over 0.8M elements of `a * b + a`, 0.73 to 0.80 ms
    /// a vec4 at a time, against 1.07 to 1.10 ms for two scalar loads each
    /// and a u64 store.
    Quads,
    /// A 4x4 tile: four quads, one in each of four consecutive rows of
    /// `run` elements (the output's innermost axes). An input that lies
    /// transposed to the output, contiguous down the rows, reads each of
    /// the tile's columns as one vec4 instead of four scalars. Chosen over
    /// [`StoreForm::Quads`] only where that saves loads (see
    /// [`tile_run`]).
    Tiles {
        run: usize,
    },
}

impl StoreForm {
    /// Elements per invocation.
    pub(crate) fn width(self) -> usize {
        match self {
            StoreForm::Single => 1,
            StoreForm::Pairs => 2,
            StoreForm::Quads => 4,
            StoreForm::Tiles { .. } => 16,
        }
    }
}

/// The row of a [`StoreForm::Tiles`] kernel over `shape`: its innermost
/// axes, as few as make a multiple of 4 elements, with a multiple of 4 rows
/// above them. `None` where there is no such row.
pub(crate) fn tile_run(shape: &[usize]) -> Option<usize> {
    let n = numel(shape);
    let mut run = 1;
    for &extent in shape.iter().rev() {
        run *= extent;
        if run.is_multiple_of(4) {
            let rows = n / run;
            return (rows >= 4 && rows.is_multiple_of(4)).then_some(run);
        }
    }
    None
}

/// How [`elementwise_stored`] stores this output (see
/// [`WIDE_STORE_MIN`]): 4-byte elements in one binding, in quads where
/// `rules` allow them and they divide the count, else in pairs where the
/// device has 64-bit integers and the count is even.
pub(crate) fn store_form(
    entries: &[Entry],
    out: usize,
    rules: BindingRules,
    int64: bool,
) -> StoreForm {
    let n = numel(&entries[out].shape);
    if entries[out].dtype.size() != 4 || n < WIDE_STORE_MIN || chunk_count(n, rules.chunk) > 1 {
        StoreForm::Single
    } else if rules.quads && n.is_multiple_of(4) {
        StoreForm::Quads
    } else if int64 && n.is_multiple_of(2) {
        StoreForm::Pairs
    } else {
        StoreForm::Single
    }
}

/// One thread per output element; `load_root` makes the root a plain copy
/// of its (materialized) buffer, which is what an in-place assignment needs.
pub(crate) fn elementwise(
    entries: &[Entry],
    materialized: &dyn Fn(usize) -> bool,
    rules: BindingRules,
    root: usize,
    out: usize,
    load_root: bool,
) -> Generated {
    elementwise_stored(
        entries,
        materialized,
        rules,
        root,
        out,
        load_root,
        StoreForm::Single,
    )
}

/// [`elementwise`], computing `form.width()` elements per invocation (see
/// [`store_form`]).
pub(crate) fn elementwise_stored(
    entries: &[Entry],
    materialized: &dyn Fn(usize) -> bool,
    rules: BindingRules,
    root: usize,
    out: usize,
    load_root: bool,
    form: StoreForm,
) -> Generated {
    let mut g = Gen::new(entries, materialized, rules);
    let mut body = String::new();
    let n = numel(&entries[root].shape);
    let ty = entries[out].dtype.wgsl();
    let (out_ty, indices, store) = match form {
        StoreForm::Single => {
            let v = g.value(&mut body, root, "gid", !load_root);
            (ty.to_string(), String::new(), g.store(out, "gid", &v))
        }
        StoreForm::Pairs => {
            let lo = g.value(&mut body, root, "e0", !load_root);
            let hi = g.value(&mut body, root, "e1", !load_root);
            let store =
                format!("out[gid] = u64(bitcast<u32>({lo})) | (u64(bitcast<u32>({hi})) << 32u);");
            let indices = "    let e0 = 2u * gid;\n    let e1 = e0 + 1u;\n".to_string();
            ("u64".to_string(), indices, store)
        }
        StoreForm::Quads => {
            let mut indices = "    let e0 = 4u * gid;\n".to_string();
            let mut values = Vec::new();
            for k in 0..4 {
                let e = format!("e{k}");
                if k > 0 {
                    let _ = writeln!(indices, "    let {e} = e0 + {k}u;");
                }
                let quad = Quad {
                    base: "e0".to_string(),
                    k,
                    stride: 1,
                };
                g.quads.insert(e.clone(), quad);
                values.push(g.value(&mut body, root, &e, !load_root));
            }
            let store = format!("out[gid] = vec4<{ty}>({});", values.join(", "));
            (format!("vec4<{ty}>"), indices, store)
        }
        StoreForm::Tiles { run } => {
            let cols = run / 4;
            let mut indices = format!(
                "    let t0 = (gid / {cols}u) * {}u + (gid % {cols}u) * 4u;\n",
                4 * run
            );
            let element = |i: usize, j: usize| format!("e{i}_{j}");
            for i in 0..4 {
                for j in 0..4 {
                    let e = element(i, j);
                    let _ = writeln!(indices, "    let {e} = t0 + {}u;", i * run + j);
                    let along_row = Quad {
                        base: element(i, 0),
                        k: j,
                        stride: 1,
                    };
                    let down_column = Quad {
                        base: element(0, j),
                        k: i,
                        stride: run,
                    };
                    g.quads.insert(e.clone(), along_row);
                    g.column_quads.insert(e, down_column);
                }
            }
            // Each row is stored once computed, so that only the shared
            // column loads stay live across rows.
            for i in 0..4 {
                let row: Vec<String> = (0..4)
                    .map(|j| g.value(&mut body, root, &element(i, j), !load_root))
                    .collect();
                let _ = writeln!(
                    body,
                    "    out[{} / 4u] = vec4<{ty}>({});",
                    element(i, 0),
                    row.join(", ")
                );
            }
            (format!("vec4<{ty}>"), indices, String::new())
        }
    };
    let items = n / form.width();
    let mut src = String::from(PRELUDE);
    src.push_str(&g.declarations_for(Output::Buffer(out, &out_ty)));
    let bound = match form {
        // The output is bound as vec4s, four to a tile.
        StoreForm::Tiles { .. } if g.chunks(out) == 1 => "arrayLength(&out) / 4u".to_string(),
        _ => g.bound(out, items),
    };
    src.push_str(&elementwise_main(
        &bound,
        &format!("{indices}{body}    {store}\n"),
    ));
    Generated {
        source: src,
        inputs: g.inputs,
        forms: g.forms,
        seeds: g.seeds,
        items: items as u64,
        loads: g.loads,
        guarded_loads: g.guarded_loads,
    }
}

/// [`elementwise`] for a value that only texture matmuls read: it is
/// computed straight into their rgba32float operand texture (see
/// shaders/pack_texture.wgsl for the layout) instead of into a buffer that a
/// pack kernel would then copy. The value is read as a `rows x cols`
/// matrix; one invocation computes texel `(q, r)`, columns `4q..4q+3` of row
/// `r`, zero past the last column and on the texture's padding rows. The
/// texture is binding 0, the inputs follow.
pub(crate) fn elementwise_texels(
    entries: &[Entry],
    materialized: &dyn Fn(usize) -> bool,
    rules: BindingRules,
    root: usize,
    cols: usize,
    width: u32,
    height: u32,
) -> Generated {
    let mut g = Gen::new(entries, materialized, rules);
    let mut body = String::new();
    let n = numel(&entries[root].shape);
    let rows = n / cols.max(1);
    // The four elements are a loop, not four copies of the expression: the
    // kernel compiles once per element's code (LLVM takes ~50-100 ms per
    // copy with Mesa's cache empty). Padding lanes compute a clamped element
    // and discard it: cheaper on lavapipe than a branch around it all.
    // Element e is (row, column) of the matrix: with both known, an index
    // computed from e's coordinates need not divide e apart again. Padding
    // lanes clamp both, which keeps e in range.
    let whole = rows * cols == n && n > 0;
    if whole {
        let digits: Vec<(String, usize)> = [("er", rows), ("ec", cols)]
            .into_iter()
            .filter(|&(_, extent)| extent > 1)
            .map(|(name, extent)| (name.to_string(), extent))
            .collect();
        g.digits.insert("e".to_string(), digits);
    }
    let v = g.value(&mut body, root, "e", true);
    let element = if whole {
        format!(
            "let er = min(r, {}u);\n    let ec = min(4u * q + t, {}u);\n    let e = er * {cols}u + ec;",
            rows - 1,
            cols - 1
        )
    } else {
        format!("let e = min(r * {cols}u + 4u * q + t, {}u);", n.max(1) - 1)
    };
    let indices = format!(
        "    let q = gid % {width}u;\n    let r = gid / {width}u;\n    var texel = vec4<f32>(0.0);\n    for (var t = 0u; t < 4u; t++) {{\n    {element}\n"
    );
    let store = format!(
        "    texel[t] = select(0.0, {v}, r < {rows}u && 4u * q + t < {cols}u);\n    }}\n    textureStore(out, vec2<u32>(q, r), texel);"
    );
    let mut src = String::from(PRELUDE);
    src.push_str(&g.declarations_for(Output::Texture));
    let items = width as usize * height as usize;
    src.push_str(&elementwise_main(
        &format!("{items}u"),
        &format!("{indices}{body}{store}\n"),
    ));
    Generated {
        source: src,
        inputs: g.inputs,
        forms: g.forms,
        seeds: g.seeds,
        items: items as u64,
        loads: g.loads,
        guarded_loads: g.guarded_loads,
    }
}

/// Several element-wise entries of one length (each in one binding) in one
/// kernel: thread `gid` computes element `gid` of each and stores it. The
/// entries are computed inline (`materialized` must not hold for them), so
/// what they share, and one entry that another reads at the same element,
/// is computed once per thread. The outputs are bound after the inputs, in
/// order.
pub(crate) fn elementwise_group(
    entries: &[Entry],
    materialized: &dyn Fn(usize) -> bool,
    rules: BindingRules,
    outs: &[usize],
) -> Generated {
    let mut g = Gen::new(entries, materialized, rules);
    let mut body = String::new();
    let n = outs.first().map_or(0, |&o| numel(&entries[o].shape));
    let mut stores = String::new();
    for (k, &out) in outs.iter().enumerate() {
        let v = g.value(&mut body, out, "gid", true);
        let _ = writeln!(stores, "    out{k}[gid] = {v};");
    }
    let mut src = String::from(PRELUDE);
    src.push_str(&g.declarations_for(Output::Buffers(outs)));
    src.push_str(&elementwise_main(
        "arrayLength(&out0)",
        &format!("{body}{stores}"),
    ));
    Generated {
        source: src,
        inputs: g.inputs,
        forms: g.forms,
        seeds: g.seeds,
        items: n as u64,
        loads: g.loads,
        guarded_loads: g.guarded_loads,
    }
}

/// An element-wise kernel's entry point: invocation `gid` of a grid folded
/// into two dimensions, those from `bound` on returning at once.
fn elementwise_main(bound: &str, body: &str) -> String {
    format!(
        "
@compute @workgroup_size({ELEMENTWISE_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
    let gid = (wid.y * nwg.x + wid.x) * {ELEMENTWISE_WG}u + lid;
    if (gid >= {bound}) {{ return; }}
{body}}}
"
    )
}

/// A reduction's starting value and, for Max/Min (arg or not), the WGSL
/// test that `x` replaces the running `acc` (NaN wins, as in PyTorch).
fn reduce_start(op: ReduceOp, in_ty: DType) -> (String, String) {
    match (op, in_ty) {
        (ReduceOp::Sum, _) => (zero(in_ty).to_string(), String::new()),
        (ReduceOp::Max | ReduceOp::ArgMax, DType::F32) => (
            "bitcast<f32>(0xff800000u)".into(),
            "(is_nan_f(x) && !is_nan_f(acc)) || x > acc".into(),
        ),
        (ReduceOp::Min | ReduceOp::ArgMin, DType::F32) => (
            "bitcast<f32>(0x7f800000u)".into(),
            "(is_nan_f(x) && !is_nan_f(acc)) || x < acc".into(),
        ),
        (ReduceOp::Max | ReduceOp::ArgMax, DType::I32) => {
            ("i32(-2147483647 - 1)".into(), "x > acc".into())
        }
        (ReduceOp::Min | ReduceOp::ArgMin, DType::I32) => ("2147483647i".into(), "x < acc".into()),
        (ReduceOp::Max | ReduceOp::ArgMax, DType::U32) => ("0u".into(), "x > acc".into()),
        (ReduceOp::Min | ReduceOp::ArgMin, DType::U32) => ("4294967295u".into(), "x < acc".into()),
    }
}

/// Reductions this short run one thread per output, serially: a 64-thread
/// workgroup and its barrier tree cost far more than a few additions, and
/// pooling windows and small grouped sums are exactly this shape.
const SERIAL_SPAN: usize = 64;

/// On a CPU adapter, reductions up to this long run serially too when
/// there are at least [`CPU_SERIAL_OUTPUTS`] of them: there a workgroup
/// costs about as much as a thousand loads, and its lanes load one by one
/// whatever their addresses. A softmax over a character model's 86
/// classes, 3200 rows, took 5.4 to 7.8 ms a reduction with a workgroup per
/// row and 0.4 to 0.6 ms serially.
const CPU_SERIAL_SPAN: usize = 1024;
const CPU_SERIAL_OUTPUTS: usize = 1024;

/// Whether `reduce` generates the one-thread-per-output form, whose grid is
/// counted in threads of `ELEMENTWISE_WG` rather than in workgroups.
pub(crate) fn serial_reduce(span: usize, parts: usize, outputs: usize, cpu: bool) -> bool {
    parts <= 1
        && (span <= SERIAL_SPAN
            || (cpu && span <= CPU_SERIAL_SPAN && outputs >= CPU_SERIAL_OUTPUTS))
}

/// Threads of a reduction's subgroup form: one subgroup of a device whose
/// subgroups hold at least 8 invocations (`Target::subgroup_matmul`).
pub(crate) const SUBGROUP_REDUCE_WG: u32 = 8;

/// How [`reduce`] lays out a reduction's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReduceForm {
    /// One thread per output, serially (see [`serial_reduce`]).
    Serial,
    /// A workgroup of [`REDUCE_WG`] threads per output (or part), combined
    /// by a tree through workgroup memory.
    Workgroup,
    /// One subgroup per output (or part), combined by `subgroupAdd`. On a
    /// CPU adapter a workgroup is one SIMD group and needs no barrier,
    /// where each of the tree's barriers switches between the groups of a
    /// 64-thread workgroup: a per-channel sum over `[64, 128, 7, 7]` took
    /// 0.33 to 0.37 ms against 0.47 to 0.49 ms. Sums only.
    Subgroup,
}

impl ReduceForm {
    /// The form for `outputs` reductions of `span` elements in `parts`
    /// parts each, on a CPU adapter or not, with subgroups or not.
    pub(crate) fn choose(
        op: ReduceOp,
        span: usize,
        parts: usize,
        outputs: usize,
        cpu: bool,
        subgroups: bool,
    ) -> ReduceForm {
        if serial_reduce(span, parts, outputs, cpu) {
            ReduceForm::Serial
        } else if cpu && subgroups && op == ReduceOp::Sum {
            ReduceForm::Subgroup
        } else {
            ReduceForm::Workgroup
        }
    }

    /// Threads per workgroup.
    pub(crate) fn threads(self) -> u32 {
        match self {
            ReduceForm::Serial => ELEMENTWISE_WG,
            ReduceForm::Workgroup => REDUCE_WG,
            ReduceForm::Subgroup => SUBGROUP_REDUCE_WG,
        }
    }
}

/// Where a reduction's thread reads: every coordinate of the element is a
/// variable, the kept ones divided out of the output index `o` once per
/// thread, the reduced ones (`rd{axis}`) counted along with the loop's
/// counter `r` (see [`advance_digits`]). Registered as `ridx`'s digits,
/// they spare the body's views from dividing the index apart again, which
/// lavapipe pays for in every lane of every element.
struct ReduceIndex {
    /// Statements defining the kept coordinates `od{axis}` from `o`.
    kept: String,
    /// The input index of the first element of `o`'s range.
    base: String,
    /// The input index at the counter's digits (`ridx`).
    element: String,
    /// The reduced axes of extent over 1, in the order `r` counts them.
    axes: Vec<usize>,
    extents: Vec<usize>,
    /// Elements each output reduces: 0 where a reduced axis is empty.
    total: usize,
    /// `ridx`'s digits over the input's shape; none for an empty input,
    /// where the loop never runs and extent-0 digits would divide by zero.
    digits: Option<Vec<(String, usize)>>,
}

impl ReduceIndex {
    fn new(in_shape: &[usize], out_shape: &[usize], axes: &[usize]) -> ReduceIndex {
        let cs = contiguous_strides(in_shape);
        let empty = in_shape.contains(&0);
        let mut kept = String::new();
        let mut base_terms = vec!["0u".to_string()];
        let mut digits = Vec::new();
        for d in 0..in_shape.len() {
            if in_shape[d] == 1 || empty {
                continue;
            }
            if axes.contains(&d) {
                digits.push((format!("rd{d}"), in_shape[d]));
            } else {
                let _ = writeln!(kept, "    let od{d} = {};", coord("o", out_shape, d));
                base_terms.push(format!("od{d} * {}u", cs[d]));
                digits.push((format!("od{d}"), in_shape[d]));
            }
        }
        let counted: Vec<usize> = axes.iter().copied().filter(|&a| in_shape[a] > 1).collect();
        let mut element_terms = vec!["base".to_string()];
        element_terms.extend(counted.iter().map(|&a| format!("rd{a} * {}u", cs[a])));
        ReduceIndex {
            kept,
            base: base_terms.join(" + "),
            element: element_terms.join(" + "),
            extents: counted.iter().map(|&a| in_shape[a]).collect(),
            axes: counted,
            total: axes.iter().map(|&a| in_shape[a]).product(),
            digits: (!empty).then_some(digits),
        }
    }

    /// Declarations of the counter's digits at counter value `r`.
    fn start(&self, r: &str) -> String {
        let mut s = String::new();
        for (j, &a) in self.axes.iter().enumerate() {
            let _ = writeln!(s, "    var rd{a}: u32 = {};", coord(r, &self.extents, j));
        }
        s
    }

    /// Statements moving the counter's digits on by `step`.
    fn advance(&self, step: usize) -> String {
        advance_digits(&self.axes, &self.extents, step)
    }
}

/// A reduction's loop step over value `v`, and the workgroup tree's
/// combining step: a sum adds; max, min and their arg forms keep the
/// winner (NaN first, then on a tie the smaller index, as in PyTorch).
fn reduce_steps(op: ReduceOp, in_ty: DType, v: &str) -> (String, String) {
    if op == ReduceOp::Sum {
        return (
            format!("acc = acc + {v};"),
            "red_v[lid] = red_v[lid] + red_v[lid + s];".to_string(),
        );
    }
    let (_, take) = reduce_start(op, in_ty);
    let arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
    let tie = match (arg, in_ty) {
        // Equal values, or two NaNs: the smaller index wins, as in PyTorch.
        (true, DType::F32) => {
            " || ((x == acc || (is_nan_f(x) && is_nan_f(acc))) && red_i[lid + s] < red_i[lid])"
        }
        (true, _) => " || (x == acc && red_i[lid + s] < red_i[lid])",
        _ => "",
    };
    (
        format!("let x = {v}; if ({take}) {{ acc = x; acci = r; }}"),
        format!(
            "let x = red_v[lid + s]; let acc = red_v[lid]; if ({take}{tie}) {{ red_v[lid] = x; red_i[lid] = red_i[lid + s]; }}"
        ),
    )
}

/// One workgroup per output element; threads stride over the reduced
/// elements, then a fixed-order tree combines them (deterministic, no
/// atomics). With `ReduceForm::Serial` (see [`serial_reduce`]), one thread
/// per output; with `ReduceForm::Subgroup`, one subgroup per output.
/// With `parts > 1`, each output's range is split over `parts` workgroups
/// that write partial results to `out` (shape `[outputs, parts]`); a second
/// reduction combines them. This keeps every workgroup's share bounded, which
/// both spreads a large reduction over the GPU and stays clear of a lavapipe
/// miscompile of loops that run 65535 or more times per thread.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reduce(
    entries: &[Entry],
    materialized: &dyn Fn(usize) -> bool,
    rules: BindingRules,
    root: usize,
    out: usize,
    op: ReduceOp,
    axes: &[usize],
    input: usize,
    parts: usize,
    form: ReduceForm,
) -> Generated {
    // The caller dispatches `form.threads()` a workgroup: only the forms
    // `ReduceForm::choose` gives may reach here.
    debug_assert!(form != ReduceForm::Serial || parts <= 1);
    debug_assert!(form != ReduceForm::Subgroup || op == ReduceOp::Sum);
    let mut g = Gen::new(entries, materialized, rules);
    let in_ty = entries[input].dtype;
    let index = ReduceIndex::new(&entries[input].shape, &entries[root].shape, axes);
    if let Some(digits) = index.digits.clone() {
        g.digits.insert("ridx".to_string(), digits);
    }
    let quads =
        rules.quads && op == ReduceOp::Sum && reduce_quads(&entries[input].shape, &index.axes);
    let width = if quads { 4 } else { 1 };
    let mut body = String::new();
    let mut indices = String::new();
    let mut values = Vec::new();
    for k in 0..width {
        let ridx = match k {
            0 => "ridx".to_string(),
            k => {
                let _ = writeln!(indices, "        let ridx{k} = ridx + {k}u;");
                format!("ridx{k}")
            }
        };
        if width > 1 {
            let quad = Quad {
                base: "ridx".to_string(),
                k,
                stride: 1,
            };
            g.quads.insert(ridx.clone(), quad);
        }
        values.push(g.value(&mut body, input, &ridx, false));
    }
    let (step, combine) = reduce_steps(op, in_ty, &values.join(" + "));
    let loop_body = format!(
        "        let ridx = {};\n{indices}{body}        {step}\n",
        index.element
    );
    let n_out = numel(&entries[root].shape);
    let kernel = ReduceKernel {
        g: &g,
        out,
        op,
        in_ty,
        index,
        loop_body,
        width,
    };
    let (source, items) = if form == ReduceForm::Serial && parts <= 1 {
        (kernel.serial_source(), n_out)
    } else {
        let source = kernel.parallel_source(&combine, n_out, parts, form);
        (source, n_out * parts.max(1) * form.threads() as usize)
    };
    Generated {
        source,
        inputs: g.inputs,
        forms: g.forms,
        seeds: g.seeds,
        items: items as u64,
        loads: g.loads,
        guarded_loads: g.guarded_loads,
    }
}

/// What both forms of a reduction's kernel are made of.
struct ReduceKernel<'g, 'a> {
    g: &'g Gen<'a>,
    out: usize,
    op: ReduceOp,
    in_ty: DType,
    index: ReduceIndex,
    /// Reads and accumulates `width` consecutive elements, before the
    /// counter moves on.
    loop_body: String,
    width: usize,
}

impl ReduceKernel<'_, '_> {
    /// Whether the result is the winner's index (ArgMax, ArgMin).
    fn arg(&self) -> bool {
        matches!(self.op, ReduceOp::ArgMax | ReduceOp::ArgMin)
    }

    /// The prelude and the bindings, which every form starts with.
    fn head(&self) -> String {
        let mut src = String::from(PRELUDE);
        src.push_str(&self.g.declarations(self.out));
        src
    }

    /// The accumulator's declarations and the loop over the counter from
    /// `r0`, `step` at a time, while `r < end`.
    fn accumulate(&self, r0: &str, end: &str, step: usize) -> String {
        let index = &self.index;
        format!(
            "{start}    var acc: {ty} = {init};
    var acci: u32 = 0u;
    for (var r: u32 = {r0}; r < {end}; r = r + {step}u) {{
{body}{advance}    }}
",
            start = index.start(r0),
            ty = self.in_ty.wgsl(),
            init = reduce_start(self.op, self.in_ty).0,
            body = self.loop_body,
            advance = index.advance(step),
        )
    }

    /// The one-thread-per-output form's source.
    fn serial_source(&self) -> String {
        let result = if self.arg() { "i32(acci)" } else { "acc" };
        let store = self.g.store(self.out, "o", result);
        let mut src = self.head();
        let _ = write!(
            src,
            "
@compute @workgroup_size({ELEMENTWISE_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
    let o = (wid.y * nwg.x + wid.x) * {ELEMENTWISE_WG}u + lid;
    if (o >= {n_out}u) {{ return; }}
{kept}    let base = {base};
{accumulate}    {store}
}}
",
            n_out = numel(&self.g.entries[self.out].shape),
            kept = self.index.kept,
            base = self.index.base,
            accumulate = self.accumulate("0u", &format!("{}u", self.index.total), self.width),
        );
        src
    }

    /// The workgroup and subgroup forms' source, `parts` workgroups per
    /// output. The subgroup form combines its lanes with one `subgroupAdd`;
    /// the workgroup form through workgroup memory, by a tree (`combine`).
    fn parallel_source(
        &self,
        combine: &str,
        n_out: usize,
        parts: usize,
        form: ReduceForm,
    ) -> String {
        // The dispatch counts `form.threads()` a workgroup, so the kernel does.
        let threads = form.threads();
        let (shared, tail) = if form == ReduceForm::Subgroup && self.op == ReduceOp::Sum {
            let store = self.g.store(self.out, "wg", "total");
            (
                String::new(),
                format!("    let total = subgroupAdd(acc);\n    if (lid == 0u) {{ {store} }}\n"),
            )
        } else {
            let result = if self.arg() {
                "i32(red_i[0])"
            } else {
                "red_v[0]"
            };
            let store = self.g.store(self.out, "wg", result);
            let ty = self.in_ty.wgsl();
            (
                format!(
                    "\nvar<workgroup> red_v: array<{ty}, {threads}>;\nvar<workgroup> red_i: array<u32, {threads}>;\n"
                ),
                format!(
                    "    red_v[lid] = acc;
    red_i[lid] = acci;
    workgroupBarrier();
    for (var s: u32 = {half}u; s > 0u; s = s >> 1u) {{
        if (lid < s) {{ {combine} }}
        workgroupBarrier();
    }}
    if (lid == 0u) {{ {store} }}
",
                    half = threads / 2
                ),
            )
        };
        let parts = parts.max(1);
        // Each part starts on a whole group of `width` elements.
        let span = self
            .index
            .total
            .div_ceil(parts)
            .next_multiple_of(self.width);
        let mut src = self.head();
        let _ = write!(
            src,
            "{shared}
@compute @workgroup_size({threads})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
    let wg = wid.y * nwg.x + wid.x;
    if (wg >= {n_wg}u) {{ return; }}
    let o = wg / {parts}u;
    let first = (wg % {parts}u) * {span}u;
    let end = min(first + {span}u, {total}u);
{kept}    let base = {base};
    let r0 = first + lid * {width}u;
{accumulate}{tail}}}
",
            n_wg = n_out * parts,
            total = self.index.total,
            kept = self.index.kept,
            base = self.index.base,
            width = self.width,
            accumulate = self.accumulate("r0", "end", self.width * threads as usize),
        );
        src
    }
}

/// Statements that move the digits `rd{axis}` of a reduction's counter
/// (extents `shape`, outermost first) on by `step`: the step's own digits
/// added from the innermost out, each sum at most one extent over, so one
/// conditional subtraction and a carry replace dividing the counter anew.
/// The outermost digit keeps what overflows; the loop bound stops it.
fn advance_digits(axes: &[usize], shape: &[usize], step: usize) -> String {
    let mut s = String::new();
    let mut rest = step;
    let mut carry: Option<String> = None;
    for j in (0..axes.len()).rev() {
        let a = axes[j];
        let add = if j == 0 { rest } else { rest % shape[j] };
        rest /= shape[j];
        let mut terms = Vec::new();
        if add > 0 {
            terms.push(format!("{add}u"));
        }
        if let Some(c) = carry.take() {
            terms.push(format!("select(0u, 1u, {c})"));
        }
        if terms.is_empty() {
            continue;
        }
        let _ = writeln!(s, "        rd{a} = rd{a} + {};", terms.join(" + "));
        if j > 0 {
            let c = format!("rc{a}");
            let _ = writeln!(
                s,
                "        let {c} = rd{a} >= {e}u;\n        rd{a} = select(rd{a}, rd{a} - {e}u, {c});",
                e = shape[j]
            );
            carry = Some(c);
        }
    }
    s
}

/// Four elements an invocation computes together, as one tensor's indices
/// see them: `base + j * stride` for `j` in 0..4, where `base / stride` is a
/// multiple of 4 (so the four differ in one digit, by 0 to 3, and no carry
/// reaches the digits above), or all four `base` where `stride` is 0 (a
/// broadcast read them from one element). This index is element `k`. At the kernel's
/// output the four are consecutive (`stride` 1); a view may keep them a
/// quad of its input at another stride (see [`Quad::through`]), and an
/// input reached at stride 1 is read as one aligned vec4.
#[derive(Clone, Debug)]
pub(crate) struct Quad {
    pub base: String,
    pub k: usize,
    pub stride: usize,
}

impl Quad {
    /// The stride at which a view of `shape` (`spec`) keeps this quad a
    /// quad of its input, all four inside its mask or all outside; `None`
    /// where it does not. The quad's digit must fall on a run of the
    /// view's axes, unmasked, over a multiple of 4 elements, that the view
    /// reads contiguously at a positive stride `t`; the view's other axes
    /// and offset must change the input's index only in multiples of `4t`
    /// or below `t` altogether, so the four stay aligned.
    pub(crate) fn through(&self, spec: &crate::graph::ViewSpec, shape: &[usize]) -> Option<usize> {
        step_quad(spec, shape, self.stride)
    }
}

/// [`Quad::through`] for a quad `stride` apart.
pub(crate) fn step_quad(
    spec: &crate::graph::ViewSpec,
    shape: &[usize],
    stride: usize,
) -> Option<usize> {
    if stride == 0 {
        // One element read four times stays one element.
        return Some(0);
    }
    let whole = |d: usize| spec.mask.as_ref().is_none_or(|m| m[d] == (0, shape[d]));
    let logical = contiguous_strides(shape);
    let axes: Vec<usize> = (0..shape.len()).filter(|&d| shape[d] > 1).collect();
    // The run's innermost axis: the one whose digit the quad steps.
    let mut at = axes.iter().position(|&d| logical[d] == stride as i64)?;
    let inner = axes[at];
    let step = spec.strides[inner];
    if step < 0 || !whole(inner) {
        return None;
    }
    let (mut run, mut parent_stride) = (shape[inner], step * shape[inner] as i64);
    while !run.is_multiple_of(4) {
        let d = *axes.get(at.checked_sub(1)?)?;
        if spec.strides[d] != parent_stride || !whole(d) {
            return None;
        }
        run *= shape[d];
        parent_stride *= shape[d] as i64;
        at -= 1;
    }
    if step == 0 {
        // A broadcast along the run: the four read one element.
        return Some(0);
    }
    let run_axes = &axes[at..=axes.iter().position(|&d| d == inner)?];
    // The other axes and the offset: multiples of 4t, or a sum below t.
    let quad = 4 * step;
    let mut below = spec.offset.rem_euclid(quad);
    for &d in &axes {
        if run_axes.contains(&d) || spec.strides[d].rem_euclid(quad) == 0 {
            continue;
        }
        if spec.strides[d] < 0 {
            return None;
        }
        below += spec.strides[d] * (shape[d] as i64 - 1);
    }
    (below < step).then_some(step as usize)
}

/// Whether a reduction over `counted` axes of `shape` (those of extent over
/// 1, in its counter's order) reads four consecutive counter values from
/// four consecutive input elements, a quad at stride 1: its innermost
/// counted axes are the input's innermost axes, over a multiple of 4
/// elements (then every reduced range is too, and starts on a quad).
pub(crate) fn reduce_quads(shape: &[usize], counted: &[usize]) -> bool {
    let inner = (0..shape.len()).rev().filter(|&d| shape[d] > 1);
    let mut run = 1;
    for (&c, d) in counted.iter().rev().zip(inner) {
        if c != d {
            return false;
        }
        run *= shape[d];
        if run.is_multiple_of(4) {
            return true;
        }
    }
    false
}

/// Whether a view reads its input in order, element for element: a reshape.
/// Strides of size-1 dimensions are never followed, so they may be anything.
pub(crate) fn is_reshape(spec: &crate::graph::ViewSpec, shape: &[usize]) -> bool {
    spec.mask.is_none()
        && spec.offset == 0
        && spec
            .strides
            .iter()
            .zip(contiguous_strides(shape))
            .zip(shape)
            .all(|((&s, c), &n)| n == 1 || s == c)
}

/// Whether a view reorders its input's elements one to one: no mask, no
/// offset, and its (stride, size) pairs are the input's contiguous strides in
/// some order (permutes and reshapes of permutes).
pub(crate) fn is_permutation_view(spec: &crate::graph::ViewSpec, shape: &[usize]) -> bool {
    if spec.mask.is_some() || spec.offset != 0 {
        return false;
    }
    let mut dims: Vec<(i64, usize)> = spec
        .strides
        .iter()
        .zip(shape)
        .filter(|(_, &n)| n > 1)
        .map(|(&st, &n)| (st, n))
        .collect();
    dims.sort_by_key(|d| std::cmp::Reverse(d.0));
    let mut expected = 1i64;
    for &(st, n) in dims.iter().rev() {
        if st != expected {
            return false;
        }
        expected *= n as i64;
    }
    true
}

/// The store functions of a matmul whose output `matmul` feeds, through the
/// single-use `chain` (element-wise ops and one-to-one views, bottom up), the
/// materialized entry `out`: `store1(e, v)` receives the product's element
/// `e` and writes `out`'s element that depends on it. Inputs of the epilogue
/// are bound from binding 4; constants follow the matmul's `dims_words`.
pub(crate) fn matmul_epilogue(
    entries: &[Entry],
    materialized: &dyn Fn(usize) -> bool,
    rules: BindingRules,
    matmul: usize,
    chain: &[usize],
    dims_words: usize,
) -> Generated {
    let mut g = Gen::new(entries, materialized, rules);
    g.scalars = "dims";
    g.scalar_base = dims_words;
    g.uniform_ok = false;
    g.substitute = Some((matmul, "v".to_string()));
    let mut body = String::new();
    // Where the product's element e lands in each node up the chain.
    let mut at = "e".to_string();
    for &p in chain {
        if let Op::View(spec, _) = &entries[p].op {
            let shape = &entries[p].shape;
            let reshape = is_reshape(spec, shape);
            if !reshape {
                let cs = contiguous_strides(shape);
                let terms: Vec<String> = (0..shape.len())
                    .filter(|&d| shape[d] > 1)
                    .map(|d| {
                        format!(
                            "(({at} / {}u) % {}u) * {}u",
                            spec.strides[d], shape[d], cs[d]
                        )
                    })
                    .collect();
                let next = g.fresh("ix");
                let sum = if terms.is_empty() {
                    "0u".to_string()
                } else {
                    terms.join(" + ")
                };
                let _ = writeln!(body, "    let {next} = {sum};");
                at = next;
            }
        }
    }
    let out = chain[chain.len() - 1];
    let value = g.value(&mut body, out, &at, true);
    let mut decls = String::new();
    let mut next = 4;
    for (b, &i) in g.inputs.iter().enumerate() {
        g.declare(
            &mut decls,
            &mut next,
            &format!("b{b}"),
            entries[i].dtype.wgsl(),
            g.chunks(i),
            false,
        );
    }
    let source = format!(
        "{PRELUDE}{decls}fn store1(e: u32, v: f32) {{
{body}    c[{at} / 4u][{at} % 4u] = {value};
}}
// A loop, not four calls: the kernel calls store4 dozens of times, each
// call is inlined, and four copies of the epilogue per call took LLVM
// seconds to compile. The bound is opaque (e < 2^31 always) so that Mesa
// does not unroll the loop again.
fn store4(e: u32, v: vec4<f32>) {{
    for (var q = 0u; q < 4u + (e >> 31u); q++) {{
        store1(e + q, v[q]);
    }}
}}
"
    );
    Generated {
        source,
        inputs: g.inputs,
        forms: g.forms,
        seeds: g.seeds,
        items: 0,
        loads: 0,
        guarded_loads: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::{digits_div, digits_rem, digits_value, step_quad};
    use crate::graph::ViewSpec;

    #[test]
    fn views_that_keep_a_quad_read_one_at_the_stride_they_say() {
        // Every small view of up to three axes, strides from -2 to 9 (0, a
        // broadcast, included), offsets 0 to 8, unmasked or masked on one
        // axis, and quads 1, 2, 3, 4 or 7 apart: where `step_quad` gives a
        // stride, each quad of the view (first index `b`, `b / stride` a
        // multiple of 4) lies inside the mask or outside it whole, and
        // inside reads four indices that stride apart from an aligned one.
        let extents = [1usize, 2, 3, 4, 6, 7, 8];
        let strides = [-2i64, 0, 1, 2, 3, 4, 6, 7, 8, 9];
        let (mut kept, mut broken, mut apart) = (0, 0, 0);
        let mut shapes = Vec::new();
        for &a in &extents {
            for &b in &extents {
                shapes.push(vec![a, b]);
                for &c in &[1usize, 2, 4, 7] {
                    shapes.push(vec![c, a, b]);
                }
            }
        }
        for shape in &shapes {
            for offset in 0..=8i64 {
                for s0 in strides {
                    for s1 in strides {
                        let mut all = vec![s0, s1];
                        if shape.len() == 3 {
                            all.insert(0, 4 * s0 + s1);
                        }
                        for masked in 0..=shape.len() {
                            let mask = (masked < shape.len()).then(|| {
                                (0..shape.len())
                                    .map(|d| match d == masked {
                                        true => (1, shape[d].saturating_sub(1)),
                                        false => (0, shape[d]),
                                    })
                                    .collect::<Vec<_>>()
                            });
                            let spec = ViewSpec {
                                strides: all.clone(),
                                offset,
                                mask,
                            };
                            for quad in [1, 2, 3, 4, 7] {
                                match step_quad(&spec, shape, quad) {
                                    None => broken += 1,
                                    Some(t) => {
                                        kept += 1;
                                        apart += usize::from(t != 1);
                                        check_quads(shape, &spec, quad, t);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(
            kept > 1000 && broken > 1000 && apart > 100,
            "{kept} kept, {broken} broken, {apart} apart"
        );
    }

    /// The property `step_quad` promises (see the test above).
    fn check_quads(shape: &[usize], spec: &ViewSpec, quad: usize, t: usize) {
        let n: usize = shape.iter().product();
        let coords = |e: usize| {
            let mut rest = e;
            let mut c = vec![0; shape.len()];
            for d in (0..shape.len()).rev() {
                c[d] = rest % shape[d];
                rest /= shape[d];
            }
            c
        };
        let index = |c: &[usize]| {
            spec.offset
                + (0..shape.len())
                    .map(|d| c[d] as i64 * spec.strides[d])
                    .sum::<i64>()
        };
        let inside = |c: &[usize]| {
            spec.mask
                .as_ref()
                .is_none_or(|m| (0..shape.len()).all(|d| c[d] >= m[d].0 && c[d] < m[d].1))
        };
        let what = format!("{shape:?} {spec:?} quads {quad} apart, read {t} apart");
        for b in (0..n).filter(|b| (b / quad).is_multiple_of(4)) {
            assert!(b + 3 * quad < n, "{what}: quad at {b} past the end");
            let first = coords(b);
            for k in 1..4 {
                let c = coords(b + k * quad);
                assert_eq!(inside(&c), inside(&first), "{what}: quad at {b}");
                if inside(&first) {
                    let i0 = index(&first);
                    // (A real view's indices are never negative; these
                    // may be, and stay aligned in the same sense.)
                    let aligned = t == 0 || i0.div_euclid(t as i64).rem_euclid(4) == 0;
                    assert!(aligned, "{what}: quad at {b}");
                    assert_eq!(index(&c), i0 + (k * t) as i64, "{what}: quad at {b}");
                }
            }
        }
    }

    #[test]
    fn a_mask_across_a_quad_breaks_it() {
        let view = |strides: [i64; 2], mask: Option<Vec<(usize, usize)>>| ViewSpec {
            strides: strides.to_vec(),
            offset: 0,
            mask,
        };
        let across = view([4, 1], Some(vec![(0, 4), (1, 4)]));
        assert_eq!(step_quad(&across, &[4, 4], 1), None);
        let rows = view([4, 1], Some(vec![(1, 3), (0, 4)]));
        assert_eq!(step_quad(&rows, &[4, 4], 1), Some(1));
        // A transpose keeps a quad of rows a quad of columns, 4 apart.
        let transpose = view([1, 4], None);
        assert_eq!(step_quad(&transpose, &[4, 4], 1), Some(4));
        assert_eq!(step_quad(&transpose, &[4, 4], 4), Some(1));
        // A broadcast along the quad: one element for the four.
        let broadcast = view([1, 0], None);
        assert_eq!(step_quad(&broadcast, &[4, 4], 1), Some(0));
        assert_eq!(step_quad(&broadcast, &[4, 4], 0), Some(0));
    }

    /// Evaluates the u32 expressions digits produce: literals `7u`,
    /// parentheses, `+`, `*`, `/` and `%` with WGSL's precedence.
    fn eval(src: &str) -> u64 {
        fn sum(t: &[String], i: &mut usize) -> u64 {
            let mut v = product(t, i);
            while t.get(*i).is_some_and(|s| s == "+") {
                *i += 1;
                v += product(t, i);
            }
            v
        }
        fn product(t: &[String], i: &mut usize) -> u64 {
            let mut v = atom(t, i);
            while let Some(op) = t.get(*i).filter(|s| ["*", "/", "%"].contains(&s.as_str())) {
                let op = op.clone();
                *i += 1;
                let r = atom(t, i);
                v = match op.as_str() {
                    "*" => v * r,
                    "/" => v / r,
                    _ => v % r,
                };
            }
            v
        }
        fn atom(t: &[String], i: &mut usize) -> u64 {
            *i += 1;
            if t[*i - 1] == "(" {
                let v = sum(t, i);
                assert_eq!(t[*i], ")");
                *i += 1;
                return v;
            }
            t[*i - 1].trim_end_matches('u').parse().unwrap() // ok: test literals, digits and a `u`
        }
        let spaced = src.replace('(', " ( ").replace(')', " ) ");
        let tokens: Vec<String> = spaced.split_whitespace().map(String::from).collect();
        let mut i = 0;
        let v = sum(&tokens, &mut i);
        assert_eq!(i, tokens.len(), "{src}");
        v
    }

    /// Every index of a few mixed-radix layouts, divided and reduced by
    /// every divisor that lines up with its digits, against the plain
    /// arithmetic; divisors that do not line up are refused.
    #[test]
    fn digits_divide_and_reduce_like_the_index() {
        for extents in [vec![4, 6], vec![3, 8, 5], vec![2, 12], vec![7]] {
            let total: usize = extents.iter().product();
            for x in 0..total {
                let mut rest = x;
                let mut digits = vec![(String::new(), 0); extents.len()];
                for (j, &e) in extents.iter().enumerate().rev() {
                    digits[j] = (format!("{}u", rest % e), e);
                    rest /= e;
                }
                assert_eq!(eval(&digits_value(&digits)), x as u64);
                for d in 1..=2 * total {
                    if let Some(q) = digits_div(&digits, d) {
                        assert_eq!(eval(&digits_value(&q)), (x / d) as u64, "{x} / {d}");
                        // Each digit stays below its extent, which later
                        // divisions rely on.
                        assert!(q.iter().all(|(e, n)| eval(e) < *n as u64));
                    }
                    if let Some(r) = digits_rem(&digits, d) {
                        assert_eq!(eval(&digits_value(&r)), (x % d) as u64, "{x} % {d}");
                        assert!(r.iter().all(|(e, n)| eval(e) < *n as u64));
                    }
                }
            }
        }
        let digits = vec![("a".to_string(), 4), ("b".to_string(), 6)];
        // 4 shares only a factor 2 with the inner digit's 6.
        assert!(digits_div(&digits, 4).is_none());
        assert!(digits_rem(&digits, 4).is_none());
        assert!(digits_div(&digits, 12).is_some_and(|q| q.len() == 1 && q[0].1 == 2));
    }
}
