//! Convolution, pooling and normalisation layers: PyTorch's parameter and
//! buffer names, train/eval behaviour, and batch norm's running statistics.

mod common;

use cinder::nn::{
    AdaptiveAvgPool2d, AdaptiveMaxPool2d, BatchNorm1d, BatchNorm2d, Conv2d, ConvTranspose2d,
    Dropout, GroupNorm, Hardtanh, InstanceNorm2d, LayerNorm, LeakyReLU, MaxPool2d, MaxUnpool2d,
    Module, Optimizer, Sequential, Sgd, Softplus, Upsample, UpsampleMode, ELU, GELU,
};
use cinder::tensor::Conv2dOptions;
use cinder::{Result, Tensor};

fn names(m: &dyn Module) -> Vec<(String, Vec<usize>)> {
    m.state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect()
}

#[test]
fn state_dict_names_and_shapes_match_pytorch() -> Result<()> {
    let device = common::device();
    let model = Sequential::new()
        .add(Conv2d::new(
            &device,
            3,
            8,
            3,
            Conv2dOptions::default().padding(1),
            true,
        )?)
        .add(BatchNorm2d::new(&device, 8)?)
        .add(ConvTranspose2d::new(
            &device,
            8,
            4,
            2,
            Conv2dOptions::default().stride(2),
            0,
            false,
        )?)
        .add(LayerNorm::new(&device, &[4, 6, 6])?);
    let want: Vec<(String, Vec<usize>)> = [
        ("0.weight", vec![8, 3, 3, 3]),
        ("0.bias", vec![8]),
        ("1.weight", vec![8]),
        ("1.bias", vec![8]),
        ("2.weight", vec![8, 4, 2, 2]),
        ("3.weight", vec![4, 6, 6]),
        ("3.bias", vec![4, 6, 6]),
        ("1.running_mean", vec![8]),
        ("1.running_var", vec![8]),
        ("1.num_batches_tracked", vec![]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    assert_eq!(names(&model), want);
    // Parameters first (registration order), then buffers, as PyTorch lists them.
    let x = Tensor::rand_seeded(&device, &[2, 3, 3, 3], -1.0, 1.0, 5)?;
    assert_eq!(model.forward(&x)?.shape(), &[2, 4, 6, 6]);
    Ok(())
}

#[test]
fn batch_norm_running_statistics_follow_pytorch() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let mut bn = BatchNorm2d::new(&device, 2)?;
    let data: Vec<f32> = (0..2 * 2 * 3)
        .map(|i| ((i * 7) % 11) as f32 / 4.0)
        .collect();
    let x = Tensor::from_slice(&device, &data, &[2, 2, 3, 1])?;
    let stats = |ch: usize| -> (f64, f64) {
        let vals: Vec<f64> = (0..2)
            .flat_map(|n| (0..3).map(move |p| (n * 2 + ch) * 3 + p))
            .map(|i| data[i] as f64)
            .collect();
        let m = vals.iter().sum::<f64>() / 6.0;
        (m, vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 5.0)
    };
    // Two training steps: the updates ride along with each optimizer step.
    let mut opt = Sgd::new(bn.parameters(), 0.0)?;
    for _ in 0..2 {
        let loss = bn.forward(&x)?.sum_all()?;
        opt.step(&loss.backward()?)?;
    }
    let mean = bn.running_mean.to_vec::<f32>()?;
    let var = bn.running_var.to_vec::<f32>()?;
    for ch in 0..2 {
        let (m, v) = stats(ch);
        // After two updates with momentum 0.1 from (0, 1).
        let want_mean = 0.1 * m * 0.9 + 0.1 * m;
        let want_var = (0.9 * 1.0 + 0.1 * v) * 0.9 + 0.1 * v;
        assert!(
            (mean[ch] as f64 - want_mean).abs() < 1e-5,
            "mean {ch}: {}",
            mean[ch]
        );
        assert!(
            (var[ch] as f64 - want_var).abs() < 1e-5,
            "var {ch}: {}",
            var[ch]
        );
    }
    assert_eq!(bn.num_batches_tracked.to_vec::<i32>()?, vec![2]);

    // Evaluation normalises with the running statistics and updates nothing.
    bn.eval();
    let y = bn.forward(&x)?.to_vec::<f32>()?;
    for (i, &v) in y.iter().enumerate() {
        let ch = (i / 3) % 2;
        let want = (data[i] - mean[ch]) / (var[ch] + 1e-5).sqrt();
        assert!((v - want).abs() < 1e-5, "eval output {i}: {v} vs {want}");
    }
    assert_eq!(bn.num_batches_tracked.to_vec::<i32>()?, vec![2]);

    // momentum None: the cumulative average of the batches seen.
    let mut cumulative = BatchNorm2d::new(&device, 2)?;
    cumulative.momentum = None;
    cumulative.forward(&x)?.realize()?;
    let first = cumulative.running_mean.to_vec::<f32>()?;
    for (ch, &got) in first.iter().enumerate() {
        assert!(
            (got as f64 - stats(ch).0).abs() < 1e-5,
            "cumulative mean {ch}"
        );
    }
    cumulative.train();
    assert!(cumulative.is_training());
    Ok(())
}

#[test]
fn dropout_and_upsample_layers() -> Result<()> {
    let device = common::device();
    let x = Tensor::ones(&device, &[4, 100]);
    let mut drop = Dropout::new(0.5)?;
    let zeros = drop
        .forward(&x)?
        .to_vec::<f32>()?
        .iter()
        .filter(|&&v| v == 0.0)
        .count();
    assert!(zeros > 100 && zeros < 300, "{zeros} of 400 dropped");
    drop.eval();
    assert_eq!(drop.forward(&x)?.to_vec::<f32>()?, vec![1.0; 400]);
    assert!(Dropout::new(-0.1).is_err());

    let img = Tensor::from_slice(&device, &[1.0f32, 2.0, 3.0, 4.0], &[1, 1, 2, 2])?;
    let up = Upsample::scale(2, UpsampleMode::Nearest).forward(&img)?;
    assert_eq!(
        up.to_vec::<f32>()?,
        vec![1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
    );
    let pooled = AdaptiveAvgPool2d([1, 1]).forward(&img)?;
    assert_eq!(pooled.to_vec::<f32>()?, vec![2.5]);
    Ok(())
}

#[test]
fn batch_norm_1d_follows_pytorch() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    // [N, C] and [N, C, L], with odd sizes.
    for shape in [vec![5usize, 3], vec![4, 3, 7]] {
        let mut bn = BatchNorm1d::new(&device, 3)?;
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| ((i * 7) % 11) as f32 / 4.0 - 1.0).collect();
        let x = Tensor::from_slice(&device, &data, &shape)?;
        let len = if shape.len() == 3 { shape[2] } else { 1 };
        let channel = |i: usize| (i / len) % 3;
        let count = n / 3;
        let stats = |ch: usize| -> (f64, f64) {
            let vals: Vec<f64> = (0..n)
                .filter(|&i| channel(i) == ch)
                .map(|i| data[i] as f64)
                .collect();
            let m = vals.iter().sum::<f64>() / count as f64;
            (
                m,
                vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / count as f64,
            )
        };
        let y = bn.forward(&x)?.to_vec::<f32>()?;
        for (i, &v) in y.iter().enumerate() {
            let (m, var) = stats(channel(i));
            let want = (data[i] as f64 - m) / (var + 1e-5).sqrt();
            assert!(
                (v as f64 - want).abs() < 1e-5,
                "{shape:?} output {i}: {v} vs {want}"
            );
        }
        // Running statistics: momentum 0.1 from (0, 1), unbiased variance.
        let mean = bn.running_mean.to_vec::<f32>()?;
        let var = bn.running_var.to_vec::<f32>()?;
        for ch in 0..3 {
            let (m, v) = stats(ch);
            let unbiased = v * count as f64 / (count - 1) as f64;
            assert!(
                (mean[ch] as f64 - 0.1 * m).abs() < 1e-6,
                "{shape:?} mean {ch}"
            );
            assert!(
                (var[ch] as f64 - (0.9 + 0.1 * unbiased)).abs() < 1e-6,
                "{shape:?} var {ch}: {} vs {}",
                var[ch],
                0.9 + 0.1 * unbiased
            );
        }
        assert_eq!(bn.num_batches_tracked.to_vec::<i32>()?, vec![1]);
        bn.eval();
        let y = bn.forward(&x)?.to_vec::<f32>()?;
        for (i, &v) in y.iter().enumerate() {
            let ch = channel(i);
            let want = (data[i] - mean[ch]) / (var[ch] + 1e-5).sqrt();
            assert!((v - want).abs() < 1e-5, "{shape:?} eval output {i}");
        }
    }
    let bn = BatchNorm1d::new(&device, 3)?;
    let bad = Tensor::zeros(&device, &[2, 3, 4, 5]);
    let msg = bn
        .forward(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("BatchNorm1d") && msg.contains("[N, C] or [N, C, L]"),
        "{msg}"
    );
    let msg = bn
        .forward(&Tensor::zeros(&device, &[2, 4]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("3 channels"), "{msg}");
    Ok(())
}

#[test]
fn new_norm_layers_have_pytorch_state_dicts() -> Result<()> {
    let device = common::device();
    let model = Sequential::new()
        .add(BatchNorm1d::new(&device, 4)?)
        .add(GroupNorm::new(&device, 3, 6)?)
        .add(GroupNorm::with_options(&device, 2, 6, 1e-5, false)?)
        .add(InstanceNorm2d::new(&device, 5)?)
        .add(InstanceNorm2d::with_options(&device, 5, 1e-5, true)?)
        .add(LayerNorm::with_options(&device, &[7], 1e-5, false, true)?)
        .add(LayerNorm::with_options(&device, &[7], 1e-5, true, false)?);
    let want: Vec<(String, Vec<usize>)> = [
        ("0.weight", vec![4]),
        ("0.bias", vec![4]),
        ("1.weight", vec![6]),
        ("1.bias", vec![6]),
        ("4.weight", vec![5]),
        ("4.bias", vec![5]),
        ("6.weight", vec![7]),
        ("0.running_mean", vec![4]),
        ("0.running_var", vec![4]),
        ("0.num_batches_tracked", vec![]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    assert_eq!(names(&model), want);
    let msg = GroupNorm::new(&device, 4, 6)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("divisible"), "{msg}");

    // InstanceNorm2d takes unbatched [C, H, W] images too.
    let inorm = InstanceNorm2d::new(&device, 2)?;
    let x = Tensor::rand_seeded(&device, &[2, 3, 4], -1.0, 1.0, 9)?;
    let batched = inorm.forward(&x.unsqueeze(0)?)?.to_vec::<f32>()?;
    let unbatched = inorm.forward(&x)?;
    assert_eq!(unbatched.shape(), &[2, 3, 4]);
    assert_eq!(unbatched.to_vec::<f32>()?, batched);
    Ok(())
}

#[test]
fn activation_and_pooling_layers() -> Result<()> {
    let device = common::device();
    // LeakyReLU's gradient at 0 is its slope, as in PyTorch.
    let x = Tensor::from_slice(&device, &[0.0f32, -2.0, 3.0], &[3])?.requires_grad_();
    let g = LeakyReLU(0.2).forward(&x)?.sum_all()?.backward()?;
    let got = g.get(&x).map(|t| t.to_vec::<f32>()).transpose()?;
    assert_eq!(got, Some(vec![0.2, 0.2, 1.0]));
    assert_eq!(LeakyReLU::default().0, 0.01);
    let y = ELU::default().forward(&x)?.to_vec::<f32>()?;
    assert!((y[1] - ((-2.0f32).exp() - 1.0)).abs() < 1e-6, "{y:?}");
    assert_eq!(
        Hardtanh::default().forward(&x)?.to_vec::<f32>()?,
        vec![0.0, -1.0, 1.0]
    );
    let sp = Softplus::default().forward(&x)?.to_vec::<f32>()?;
    assert!((sp[0] - 2f32.ln()).abs() < 1e-6, "{sp:?}");
    let exact = GELU::default().forward(&x)?.to_vec::<f32>()?;
    let tanh = GELU::tanh().forward(&x)?.to_vec::<f32>()?;
    assert_eq!(tanh, x.gelu_tanh()?.to_vec::<f32>()?);
    assert_eq!(exact, x.gelu()?.to_vec::<f32>()?);

    // MaxPool2d's indices feed MaxUnpool2d.
    let img = Tensor::from_slice(
        &device,
        &[1.0f32, 5.0, 2.0, 0.0, 3.0, 4.0, 8.0, 6.0, 7.0],
        &[1, 1, 3, 3],
    )?;
    let (pooled, idx) = MaxPool2d::new(2).forward_with_indices(&img)?;
    assert_eq!(idx.to_vec::<i32>()?, vec![1]);
    let back = MaxUnpool2d::new(2).forward(&pooled, &idx, Some([3, 3]))?;
    assert_eq!(
        back.to_vec::<f32>()?,
        vec![0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    );
    let (m, i) = AdaptiveMaxPool2d([2, 2]).forward_with_indices(&img)?;
    assert_eq!(m.to_vec::<f32>()?, vec![5.0, 5.0, 8.0, 7.0]);
    assert_eq!(i.to_vec::<i32>()?, vec![1, 1, 6, 8]);
    assert_eq!(
        AdaptiveMaxPool2d([1, 1]).forward(&img)?.to_vec::<f32>()?,
        vec![8.0]
    );
    Ok(())
}
