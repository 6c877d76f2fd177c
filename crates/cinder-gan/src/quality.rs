//! How good generated digits are, measured by a digit classifier cinder
//! trains itself (a LeNet on the same data, "the judge"): a Fréchet
//! distance between the judge's penultimate features on real and on
//! generated images ("FID on a digit classifier": the formula of the
//! Fréchet Inception Distance, with the judge's 128 features in place of
//! Inception's 2048, so its values are not comparable with published
//! FIDs), the share of each class among generated digits, and the share the
//! judge calls with at least 90% confidence.

use std::path::Path;

use cinder_cnn::models::{lenet, ModelSpec};
use cinder_cnn::train::{train as train_classifier, TrainOptions};
use cinder_data::Split;
use cinder_nn::checkpoint::{load_tensors, read_metadata};
use cinder_nn::{Module, Sequential};
use cinder_tensor::{no_grad, Device, Error, Result, Tensor};
use cinder_train::{Observer, Schedule, Start};
use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// The LeNet's layers up to its 128-unit hidden layer's ReLU.
pub const FEATURE_LAYERS: usize = 9;
/// The judge's confidence that counts a digit as clearly drawn.
pub const CONFIDENT: f32 = 0.9;
/// Epochs the judge trains for (about 97% held-out on mnist-5k).
pub const JUDGE_EPOCHS: usize = 5;

/// A LeNet trained on the digits, in evaluation mode.
pub struct DigitJudge {
    net: Sequential,
    spec: ModelSpec,
}

/// What the judge makes of a batch of images.
pub struct Judgement {
    /// `[N, 128]`, row after row.
    pub features: Vec<f32>,
    /// `[N, classes]` softmax probabilities.
    pub probabilities: Vec<f32>,
}

impl DigitJudge {
    /// The judge's network for `side` x `side` digits of 10 classes.
    pub fn spec(side: usize) -> ModelSpec {
        ModelSpec::lenet(side, side, 10)
    }

    /// A judge saved by [`DigitJudge::train`] (a `cinder train cnn` LeNet's
    /// `model.safetensors` of the same size also serves).
    pub fn load(path: &Path, side: usize, device: &Device) -> Result<DigitJudge> {
        let meta = read_metadata(path)?;
        let spec = ModelSpec::from_metadata(&meta)?;
        if spec != DigitJudge::spec(side) {
            return Err(Error::bad_file(
                path,
                format!(
                    "the judge must be a LeNet of 10 classes on {side}x{side} images, this is {}",
                    spec.arch_name()
                ),
            ));
        }
        let mut net = lenet(device, &spec)?;
        load_tensors(path, &net.state_dict())?;
        net.eval();
        Ok(DigitJudge { net, spec })
    }

    /// Trains a judge on `split` into `dir` (its own run folder:
    /// `model.safetensors` and the usual run files), replacing what is
    /// there, and loads it.
    pub fn train(
        split: &Split,
        dir: &Path,
        device: &Device,
        observer: &mut dyn Observer,
    ) -> Result<DigitJudge> {
        let side = split.train.feature_shape.last().copied().unwrap_or(0);
        let spec = DigitJudge::spec(side);
        let options = TrainOptions {
            epochs: JUDGE_EPOCHS,
            batch_size: 32,
            lr: 2e-3,
            weight_decay: 0.01,
            schedule: Schedule::cosine(0.0),
            clip_grad_norm: None,
            augment: false,
            // Smoothing would cap its confidence near 0.91 and so the
            // share of digits called with 90%.
            label_smoothing: 0.0,
            seed: 0,
            data: "the GAN's data".into(),
            out_dir: dir.to_path_buf(),
            start: Start::Overwrite,
        };
        train_classifier(&spec, split.clone(), &options, device, observer)?;
        DigitJudge::load(&dir.join("model.safetensors"), side, device)
    }

    /// Features and class probabilities of `images`, `[N, 1, S, S]` in the
    /// data's [0, 1].
    pub fn judge(&self, images: &Tensor) -> Result<Judgement> {
        let _no_grad = no_grad();
        let expected = [self.spec.in_channels, self.spec.height, self.spec.width];
        if images.dims() != 4 || images.shape()[1..] != expected {
            return Err(Error::shape(
                "DigitJudge",
                format!(
                    "images must be [N, 1, {}, {}], got {:?}",
                    expected[1],
                    expected[2],
                    images.shape()
                ),
            ));
        }
        let features = self.net.forward_through(images, FEATURE_LAYERS)?;
        let probabilities = self.net.forward(images)?.softmax(-1)?;
        Ok(Judgement {
            features: features.to_vec::<f32>()?,
            probabilities: probabilities.to_vec::<f32>()?,
        })
    }
}

/// Mean and covariance (divided by n - 1) of `n` rows of `dim` values.
fn moments(rows: &[f32], dim: usize) -> Result<(DVector<f64>, DMatrix<f64>)> {
    let n = rows.len().checked_div(dim).unwrap_or(0);
    if n < 2 || rows.len() != n * dim {
        return Err(Error::invalid(
            "frechet_distance",
            format!("{} values are not at least two rows of {dim}", rows.len()),
        ));
    }
    let x = DMatrix::from_row_iterator(n, dim, rows.iter().map(|&v| v as f64));
    let mean = x.row_mean().transpose();
    let mut centred = x;
    for mut row in centred.row_iter_mut() {
        row -= mean.transpose();
    }
    let covariance = centred.transpose() * &centred / (n as f64 - 1.0);
    Ok((mean, covariance))
}

/// The Fréchet distance between Gaussians fitted to two sets of feature
/// rows: `|m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`, with the trace of
/// the square root taken as the sum of the square roots of the eigenvalues
/// of `S1^(1/2) S2 S1^(1/2)` (symmetric, so exact where `S1 S2` is not).
pub fn frechet_distance(a: &[f32], b: &[f32], dim: usize) -> Result<f64> {
    let (m1, s1) = moments(a, dim)?;
    let (m2, s2) = moments(b, dim)?;
    let eig = SymmetricEigen::new(s1.clone());
    let root_values = eig.eigenvalues.map(|v| v.max(0.0).sqrt());
    let root_s1 =
        &eig.eigenvectors * DMatrix::from_diagonal(&root_values) * eig.eigenvectors.transpose();
    let middle = &root_s1 * &s2 * &root_s1;
    let middle = (&middle + middle.transpose()) * 0.5;
    let trace_root: f64 = SymmetricEigen::new(middle)
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum();
    Ok((m1 - m2).norm_squared() + s1.trace() + s2.trace() - 2.0 * trace_root)
}

/// Which classes the judge sees among generated digits.
#[derive(Clone, Debug, PartialEq)]
pub struct Coverage {
    /// Per class, the share of digits whose most likely class it is.
    pub class_shares: Vec<f64>,
    /// The share called with at least [`CONFIDENT`] probability.
    pub confident: f64,
}

/// The coverage of `probabilities`, rows of `classes`.
pub fn coverage(probabilities: &[f32], classes: usize) -> Coverage {
    let rows = probabilities.chunks_exact(classes.max(1));
    let n = rows.len().max(1) as f64;
    let mut counts = vec![0usize; classes];
    let mut confident = 0usize;
    for row in rows {
        let (best, p) =
            row.iter().enumerate().fold(
                (0, f32::NEG_INFINITY),
                |m, (i, &p)| if p > m.1 { (i, p) } else { m },
            );
        counts[best] += 1;
        confident += usize::from(p >= CONFIDENT);
    }
    Coverage {
        class_shares: counts.iter().map(|&c| c as f64 / n).collect(),
        confident: confident as f64 / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frechet_distance_of_gaussians_has_its_closed_form() {
        // Two dimensions with diagonal covariances: per axis
        // (m1 - m2)^2 + s1^2 + s2^2 - 2 s1 s2 = (m1 - m2)^2 + (s1 - s2)^2.
        let cloud = |mx: f32, my: f32, sx: f32, sy: f32| -> Vec<f32> {
            // Points at +-1 in each axis (a 2x2 grid, mean 0, sample
            // variance 4/3 per axis), scaled and shifted.
            let unit = [(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)];
            unit.iter()
                .flat_map(|&(x, y): &(f32, f32)| [mx + sx * x, my + sy * y])
                .collect()
        };
        let a = cloud(0.0, 0.0, 1.0, 2.0);
        let b = cloud(3.0, -1.0, 2.0, 2.0);
        let v = 4.0 / 3.0f64;
        let want = 9.0 + 1.0 + v * ((1.0f64 - 2.0).powi(2) + 0.0);
        let got = frechet_distance(&a, &b, 2).unwrap(); // ok: a test
        assert!((got - want).abs() < 1e-9, "{got} against {want}");
        assert!(frechet_distance(&a, &a, 2).unwrap().abs() < 1e-9); // ok: a test
                                                                    // Correlated covariances: a rotation of the same cloud is as far
                                                                    // as the spread along the axes says, and symmetric.
        let c: Vec<f32> = [
            (1.0f32, 2.0f32),
            (2.0, 1.0),
            (0.0, 0.5),
            (3.0, 3.5),
            (1.5, 1.0),
        ]
        .iter()
        .flat_map(|&(x, y)| [x, y])
        .collect();
        let d: Vec<f32> = [
            (0.0f32, 0.0f32),
            (1.0, 3.0),
            (2.0, -1.0),
            (0.5, 0.5),
            (1.0, 2.0),
        ]
        .iter()
        .flat_map(|&(x, y)| [x, y])
        .collect();
        let cd = frechet_distance(&c, &d, 2).unwrap(); // ok: a test
        let dc = frechet_distance(&d, &c, 2).unwrap(); // ok: a test
        assert!((cd - dc).abs() < 1e-9 && cd > 0.0, "{cd} {dc}");
        assert!(frechet_distance(&a[..2], &b, 2).is_err());
    }

    #[test]
    fn coverage_counts_classes_and_confident_calls() {
        let p = [
            0.95, 0.05, 0.0, 0.2, 0.7, 0.1, 0.0, 0.05, 0.95, 0.1, 0.85, 0.05,
        ];
        let c = coverage(&p, 3);
        assert_eq!(c.class_shares, vec![0.25, 0.5, 0.25]);
        assert_eq!(c.confident, 0.5);
        let p = [0.95, 0.05, 0.0];
        assert_eq!(coverage(&p, 3).class_shares, vec![1.0, 0.0, 0.0]);
    }
}
