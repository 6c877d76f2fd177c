//! A sequence classifier: a recurrent stack over `[B, T, I]` inputs, the top
//! layer's final state (both directions' when bidirectional), a linear layer
//! to the class scores.

use std::collections::HashMap;

use cinder_nn::module::prefixed;
use cinder_nn::{CellKind, Linear, Module, Recurrent, RnnOptions};
use cinder_tensor::{Device, Error, Result, Tensor};

/// What builds a [`SequenceClassifier`]; stored in its files' headers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SequenceSpec {
    pub cell: CellKind,
    /// Steps per sequence the model was trained on (`T`), and features per
    /// step (`I`).
    pub steps: usize,
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub bidirectional: bool,
    /// Between recurrent layers, and before the classifier.
    pub dropout: f32,
    pub classes: usize,
}

impl SequenceSpec {
    /// One LSTM layer of `hidden_size` units over `steps` steps of
    /// `input_size` features.
    pub fn lstm(steps: usize, input_size: usize, hidden_size: usize, classes: usize) -> Self {
        SequenceSpec {
            cell: CellKind::Lstm,
            steps,
            input_size,
            hidden_size,
            num_layers: 1,
            bidirectional: false,
            dropout: 0.0,
            classes,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let op = "sequence model";
        if self.steps == 0 || self.input_size == 0 || self.hidden_size == 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "steps ({}), input size ({}) and hidden size ({}) must be at least 1",
                    self.steps, self.input_size, self.hidden_size
                ),
            ));
        }
        if self.num_layers == 0 {
            return Err(Error::invalid(op, "the model needs at least one layer"));
        }
        if self.classes < 2 {
            return Err(Error::invalid(
                op,
                format!(
                    "a classifier needs at least 2 classes, got {}",
                    self.classes
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(
                op,
                format!("dropout must be in [0, 1), got {}", self.dropout),
            ));
        }
        Ok(())
    }

    /// `lstm128`, `gru64x2`, `bilstm128x2`: cell, width, layers.
    pub fn arch_name(&self) -> String {
        let cell = match self.cell {
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
            CellKind::RnnTanh => "rnn",
            CellKind::RnnRelu => "rnnrelu",
        };
        let bi = if self.bidirectional { "bi" } else { "" };
        let layers = if self.num_layers > 1 {
            format!("x{}", self.num_layers)
        } else {
            String::new()
        };
        format!("{bi}{cell}{}{layers}", self.hidden_size)
    }

    fn directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    pub fn build(&self, device: &Device) -> Result<SequenceClassifier> {
        self.validate()?;
        let options = RnnOptions::default()
            .num_layers(self.num_layers)
            .bidirectional(self.bidirectional)
            .batch_first(true)
            .dropout(if self.num_layers > 1 {
                self.dropout
            } else {
                0.0
            });
        Ok(SequenceClassifier {
            spec: *self,
            rnn: Recurrent::new(
                device,
                self.cell,
                self.input_size,
                self.hidden_size,
                options,
            )?,
            head: Linear::new(
                device,
                self.directions() * self.hidden_size,
                self.classes,
                true,
            )?,
            training: true,
        })
    }

    /// Stored in a model file's header (`cinder.family = sequence`).
    pub fn to_metadata(&self) -> HashMap<String, String> {
        HashMap::from([
            ("cinder.family".to_string(), "sequence".to_string()),
            ("cinder.arch".to_string(), self.arch_name()),
            (
                "cinder.input".to_string(),
                format!("{}x{}", self.steps, self.input_size),
            ),
            ("cinder.classes".to_string(), self.classes.to_string()),
            ("cinder.dropout".to_string(), self.dropout.to_string()),
        ])
    }

    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<SequenceSpec> {
        let bad = |what: String| Error::invalid("checkpoint", what);
        let get = |key: &str| {
            meta.get(key).ok_or_else(|| {
                bad(format!(
                    "the file has no {key:?} entry: it was not written by `cinder train rnn`"
                ))
            })
        };
        if get("cinder.family")? != "sequence" {
            return Err(bad("not a sequence model's file".into()));
        }
        let arch = get("cinder.arch")?;
        let (bidirectional, rest) = match arch.strip_prefix("bi") {
            Some(rest) => (true, rest),
            None => (false, arch.as_str()),
        };
        let (cell, rest) = [
            ("rnnrelu", CellKind::RnnRelu),
            ("lstm", CellKind::Lstm),
            ("gru", CellKind::Gru),
            ("rnn", CellKind::RnnTanh),
        ]
        .iter()
        .find_map(|(name, kind)| rest.strip_prefix(name).map(|r| (*kind, r)))
        .ok_or_else(|| bad(format!("unknown architecture {arch:?}")))?;
        let (hidden, layers) = rest.split_once('x').unwrap_or((rest, "1"));
        let number = |text: &str, what: &str| {
            text.parse::<usize>()
                .map_err(|_| bad(format!("bad {what} {text:?} in {arch:?}")))
        };
        let input = get("cinder.input")?;
        let (steps, input_size) = input
            .split_once('x')
            .ok_or_else(|| bad(format!("bad input shape {input:?}")))?;
        let spec = SequenceSpec {
            cell,
            steps: number(steps, "steps")?,
            input_size: number(input_size, "input size")?,
            hidden_size: number(hidden, "hidden size")?,
            num_layers: number(layers, "layer count")?,
            bidirectional,
            dropout: get("cinder.dropout")?
                .parse()
                .map_err(|_| bad("bad dropout".into()))?,
            classes: number(get("cinder.classes")?, "class count")?,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// A recurrent stack and a linear classifier of its top layer's final state.
/// Takes `[B, T, I]` (or any `[B, ...]` of `T * I` values per sample, such
/// as `[B, 1, 28, 28]` images read row by row).
pub struct SequenceClassifier {
    spec: SequenceSpec,
    rnn: Recurrent,
    head: Linear,
    training: bool,
}

impl SequenceClassifier {
    pub fn spec(&self) -> &SequenceSpec {
        &self.spec
    }

    pub fn rnn(&self) -> &Recurrent {
        &self.rnn
    }

    /// The device its weights live on.
    pub fn device(&self) -> &Device {
        self.head.weight.device()
    }

    /// Class scores `[B, classes]` of `input` whose sequences end at
    /// `lengths` (all full length when `None`).
    pub fn classify(&self, input: &Tensor, lengths: Option<&[usize]>) -> Result<Tensor> {
        let batch = input.shape().first().copied().unwrap_or(0);
        let per_sample = self.spec.steps * self.spec.input_size;
        if batch == 0 || input.numel() != batch * per_sample {
            return Err(Error::shape(
                "sequence model",
                format!(
                    "input {:?} is not a batch of {} steps of {} features",
                    input.shape(),
                    self.spec.steps,
                    self.spec.input_size
                ),
            ));
        }
        let x = input.reshape(&[batch, self.spec.steps, self.spec.input_size])?;
        let out = self.rnn.run(&x, None, lengths)?;
        let directions = self.spec.directions();
        let top = (self.spec.num_layers - 1) * directions;
        // h_n's last layer, [D, B, H] -> [B, D*H] (forward then reverse, as
        // the output's features are ordered).
        let last = out.h_n.narrow(0, top, directions)?;
        let features = last
            .permute(&[1, 0, 2])?
            .reshape(&[batch, directions * self.spec.hidden_size])?;
        let features = features.dropout(self.spec.dropout, self.training)?;
        self.head.forward(&features)
    }
}

impl Module for SequenceClassifier {
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.classify(input, None)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut params = prefixed("rnn", self.rnn.named_parameters());
        params.extend(prefixed("head", self.head.named_parameters()));
        params
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
        self.rnn.set_training(training);
    }
}
