//! State_dicts saved by PyTorch load into cinder-cnn's networks and give
//! PyTorch's numbers: eval-mode logits, and in training mode the logits, the
//! loss, every parameter's gradient and batch norm's updated running
//! statistics; recurrent layers give PyTorch's packed-sequence outputs,
//! final states and gradients. The fixtures come from `tools/torch_fixtures.py` (PyTorch
//! 2.5.1 on the CPU); the file says how to write them again.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cinder::cnn::models::ModelSpec;
use cinder::nn::{checkpoint, Module};
use cinder::{Result, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every tensor of a safetensors file as f32 (int tensors converted), with its shape.
fn read_all(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                safetensors::Dtype::I32 => data
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                    .collect(),
                safetensors::Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|b| {
                        i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                    })
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// Element-wise |got - want| <= atol + rtol * |want|, with the worst element
/// named on failure.
fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        assert!(!g.is_nan(), "{what}[{i}] is NaN, PyTorch has {w}");
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 0.0,
        "{what}[{i}]: cinder {} vs PyTorch {} (rtol {rtol}, atol {atol})",
        got[i],
        want[i]
    );
}

/// Loads `file` (a state_dict PyTorch wrote for network `name`) and checks
/// the network against what PyTorch computed with it.
fn check_network(name: &str, file: &str, spec: ModelSpec) -> Result<()> {
    let device = common::device();
    let mut model = spec.build(&device)?;
    // Exactly the file PyTorch wrote: int64 counters and all.
    checkpoint::load(fixture(file), &*model)?;
    let expected = read_all(&fixture(&format!("{name}_expected.safetensors")));
    let get = |key: &str| -> &(Vec<usize>, Vec<f32>) {
        expected
            .get(key)
            .unwrap_or_else(|| panic!("{name}_expected has no {key}"))
    };
    let (x_shape, x_data) = get("x");
    let x = Tensor::from_slice(&device, x_data, x_shape)?;
    let labels: Vec<i32> = get("y").1.iter().map(|&v| v as i32).collect();
    let y = Tensor::from_slice(&device, &labels, &[labels.len()])?;

    model.set_training(false);
    let logits = model.forward(&x)?.to_vec::<f32>()?;
    assert_close(
        &format!("{name} eval logits"),
        &logits,
        &get("eval_logits").1,
        1e-4,
        1e-4,
    );

    model.set_training(true);
    let logits = model.forward(&x)?;
    let loss = logits.cross_entropy(&y)?;
    let grads = loss.backward()?;
    assert_close(
        &format!("{name} train logits"),
        &logits.to_vec::<f32>()?,
        &get("train_logits").1,
        1e-4,
        1e-4,
    );
    assert_close(
        &format!("{name} loss"),
        &[loss.item()?],
        &get("loss").1,
        1e-5,
        1e-6,
    );
    let params = model.named_parameters();
    assert!(!params.is_empty());
    for (pname, p) in &params {
        let want = &get(&format!("grad.{pname}")).1;
        let got = grads
            .get(p)
            .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"))
            .to_vec::<f32>()?;
        // Gradients are sums over the batch and the image: judge each
        // against the scale of its tensor, not element by element.
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_close(
            &format!("{name} grad of {pname}"),
            &got,
            want,
            1e-3,
            1e-4 * scale.max(1e-3),
        );
    }
    for (bname, b) in model.named_buffers() {
        let got: Vec<f32> = match b.dtype() {
            cinder::DType::F32 => b.to_vec::<f32>()?,
            _ => b.to_vec::<i32>()?.into_iter().map(|v| v as f32).collect(),
        };
        assert_close(
            &format!("{name} {bname} after a training forward"),
            &got,
            &get(&format!("after.{bname}")).1,
            1e-4,
            1e-5,
        );
    }
    Ok(())
}

#[test]
fn pytorch_lenet_state_dict_gives_pytorch_outputs_and_gradients() -> Result<()> {
    let spec = ModelSpec::lenet(8, 8, 10);
    check_network("torch_lenet", "torch_lenet.safetensors", spec)
}

#[test]
fn pytorch_resnet_state_dict_gives_pytorch_outputs_gradients_and_statistics() -> Result<()> {
    let spec = ModelSpec::resnet(12, 12, 10);
    check_network("torch_resnet", "torch_resnet.safetensors", spec)
}

/// `torch.save(model.state_dict(), "torch_lenet.pt")`, read as it is.
#[test]
fn pytorch_pt_file_loads_directly() -> Result<()> {
    check_network("torch_lenet", "torch_lenet.pt", ModelSpec::lenet(8, 8, 10))
}

/// `torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
/// "epoch": 3}, "torch_resnet.pt")`: the state_dict under a key, next to an
/// optimizer's tensors and a value that is not a tensor.
#[test]
fn pytorch_pt_file_with_the_state_dict_under_a_key_loads() -> Result<()> {
    check_network(
        "torch_resnet",
        "torch_resnet.pt",
        ModelSpec::resnet(12, 12, 10),
    )
}

/// A PyTorch file for another network is refused with every mismatch named.
#[test]
fn pytorch_pt_file_for_another_network_is_refused() -> Result<()> {
    let device = common::device();
    let model = ModelSpec::lenet(8, 8, 10).build(&device)?;
    let err = checkpoint::load(fixture("torch_resnet.pt"), &*model)
        .expect_err("a ResNet's state_dict loaded into a LeNet")
        .to_string();
    assert!(err.contains("torch_resnet.pt"), "{err}");
    assert!(err.contains("missing tensor"), "{err}");
    assert!(err.contains("unexpected tensor"), "{err}");
    Ok(())
}

/// Weights saved in float16 and bfloat16 are converted to f32 on load, as
/// PyTorch's `load_state_dict` copies them into f32 parameters.
#[test]
fn half_precision_weights_are_converted() -> Result<()> {
    let device = common::device();
    let model = cinder::nn::Sequential::new().add(cinder::nn::Linear::new(&device, 2, 3, true)?);
    checkpoint::load(fixture("half_weights.pt"), &model)?;
    let state = model.state_dict();
    assert_eq!(
        state[0].1.to_vec::<f32>()?,
        [1.5, -2.0, 171.0 / 512.0, 65504.0, -0.0, 3.0]
    );
    assert_eq!(state[1].1.to_vec::<f32>()?, [1.0, -3.5, 0.0078125]);
    Ok(())
}

/// A recurrent layer with PyTorch's state_dict (`.pt` and safetensors)
/// runs PyTorch's packed sequences: the same padded output, final states,
/// and gradients of every weight, the input and the initial state.
fn check_recurrent(name: &str, layer: cinder::nn::Recurrent) -> Result<()> {
    use cinder::nn::State;
    let device = common::device();
    let expected = read_all(&fixture(&format!("{name}_expected.safetensors")));
    let get = |key: &str| -> (Vec<usize>, Vec<f32>) {
        expected
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: no {key}"))
    };
    let tensor = |key: &str| -> Result<Tensor> {
        let (shape, values) = get(key);
        Tensor::from_vec(&device, values, &shape)
    };
    for file in [format!("{name}.pt"), format!("{name}.safetensors")] {
        checkpoint::load(fixture(&file), &layer)?;
        let x = tensor("x")?.requires_grad_();
        let h0 = tensor("h0")?.requires_grad_();
        let lstm = expected.contains_key("c0");
        let c0 = if lstm {
            Some(tensor("c0")?.requires_grad_())
        } else {
            None
        };
        let lengths: Vec<usize> = get("lengths").1.iter().map(|&l| l as usize).collect();
        let state = State {
            h: h0.clone(),
            c: c0.clone(),
        };
        let out = layer.run(&x, Some(&state), Some(&lengths))?;
        assert_close(
            &format!("{file} output"),
            &out.output.to_vec::<f32>()?,
            &get("output").1,
            1e-4,
            1e-5,
        );
        assert_close(
            &format!("{file} h_n"),
            &out.h_n.to_vec::<f32>()?,
            &get("h_n").1,
            1e-4,
            1e-5,
        );
        let mut loss = out
            .output
            .mul(&tensor("w_out")?)?
            .sum_all()?
            .add(&out.h_n.mul(&tensor("w_h")?)?.sum_all()?)?;
        if let Some(c_n) = &out.c_n {
            assert_close(
                &format!("{file} c_n"),
                &c_n.to_vec::<f32>()?,
                &get("c_n").1,
                1e-4,
                1e-5,
            );
            loss = loss.add(&c_n.mul(&tensor("w_c")?)?.sum_all()?)?;
        }
        assert_close(
            &format!("{file} loss"),
            &[loss.item()?],
            &get("loss").1,
            1e-4,
            1e-4,
        );
        let grads = loss.backward()?;
        let mut checked = vec![("x", x), ("h0", h0)];
        if let Some(c0) = c0 {
            checked.push(("c0", c0));
        }
        for (key, t) in &checked {
            let g = grads
                .get(t)
                .ok_or_else(|| cinder::Error::invalid("test", "no grad"))?;
            assert_close(
                &format!("{file} grad.{key}"),
                &g.to_vec::<f32>()?,
                &get(&format!("grad.{key}")).1,
                1e-3,
                1e-4,
            );
        }
        for (key, p) in layer.named_parameters() {
            let g = grads
                .get(&p)
                .ok_or_else(|| cinder::Error::invalid("test", "no grad"))?;
            assert_close(
                &format!("{file} grad.{key}"),
                &g.to_vec::<f32>()?,
                &get(&format!("grad.{key}")).1,
                1e-3,
                1e-4,
            );
        }
    }
    Ok(())
}

#[test]
fn pytorch_lstm_state_dict_gives_pytorch_packed_outputs_and_gradients() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let options = cinder::nn::RnnOptions::default()
        .num_layers(2)
        .bidirectional(true)
        .batch_first(true);
    check_recurrent("torch_lstm", cinder::nn::lstm(&device, 5, 6, options)?)
}

#[test]
fn pytorch_gru_state_dict_gives_pytorch_packed_outputs_and_gradients() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let options = cinder::nn::RnnOptions::default().batch_first(true);
    check_recurrent("torch_gru", cinder::nn::gru(&device, 5, 7, options)?)
}

/// Checks each of `params` against PyTorch's gradient `{prefix}.{name}`,
/// where the fixture has one, each against the scale of its tensor.
fn check_grads(
    what: &str,
    grads: &cinder::Gradients,
    params: &[(String, Tensor)],
    expected: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    prefix: &str,
) -> Result<usize> {
    let mut checked = 0;
    for (pname, p) in params {
        let Some((_, want)) = expected.get(&format!("{prefix}.{pname}")) else {
            continue;
        };
        let got = grads
            .get(p)
            .unwrap_or_else(|| panic!("{what}: no gradient for {pname}"))
            .to_vec::<f32>()?;
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_close(
            &format!("{what} grad of {pname}"),
            &got,
            want,
            1e-3,
            1e-4 * scale.max(1e-3),
        );
        checked += 1;
    }
    Ok(checked)
}

/// A DCGAN pair PyTorch trained two steps and saved: outputs in both
/// modes, one step's losses and gradients in PyTorch's order (D on real,
/// G, D on the detached fake, backward; D on the same fake for G's loss,
/// backward), and the batch norms' running statistics after it.
fn check_gan(name: &str, spec: cinder::gan::GanSpec, g_file: &str) -> Result<()> {
    use cinder::prelude::Reduction;
    // Batch norm's pending writes are the device's: another test's
    // realization on the shared device would run them early.
    let _serial = common::serial();
    let device = common::device();
    let mut g = spec.generator(&device)?;
    let mut d = spec.discriminator(&device)?;
    checkpoint::load(fixture(g_file), &g)?;
    checkpoint::load(fixture(&format!("{name}_d.safetensors")), &d)?;
    let expected = read_all(&fixture(&format!("{name}_expected.safetensors")));
    let get = |key: &str| -> &(Vec<usize>, Vec<f32>) {
        expected
            .get(key)
            .unwrap_or_else(|| panic!("{name}_expected has no {key}"))
    };
    let tensor = |key: &str| -> Result<Tensor> {
        let (shape, data) = get(key);
        Tensor::from_slice(&device, data, shape)
    };
    let (z, images) = (tensor("z")?, tensor("images")?);
    let labels = match expected.get("labels") {
        Some((_, l)) => {
            let l: Vec<i32> = l.iter().map(|&v| v as i32).collect();
            Some(Tensor::from_slice(&device, &l, &[l.len()])?)
        }
        None => None,
    };
    let labels = labels.as_ref();
    let close = |what: &str, got: &Tensor, key: &str| -> Result<()> {
        assert_close(
            &format!("{name} {what}"),
            &got.to_vec::<f32>()?,
            &get(key).1,
            1e-4,
            1e-5,
        );
        Ok(())
    };

    g.eval();
    d.eval();
    close("eval images", &g.generate(&z, labels)?, "g_eval")?;
    close("eval logits", &d.logits(&images, labels)?, "d_eval")?;
    // Without autodiff the discriminator's convolutions over whole texels
    // fetch their windows (no unfold): the same numbers.
    let no_grad_logits = cinder::with_no_grad(|| d.logits(&images, labels))?;
    close("eval logits under no_grad", &no_grad_logits, "d_eval")?;

    g.train();
    d.train();
    let bce = |logits: &Tensor, target: f32| -> Result<Tensor> {
        let t = Tensor::full(&device, logits.shape(), target);
        logits.binary_cross_entropy_with_logits(&t, None, None, Reduction::Mean)
    };
    let d_real = d.logits(&images, labels)?;
    let fake = g.generate(&z, labels)?;
    let d_loss = bce(&d_real, 1.0)?.add(&bce(&d.logits(&fake.detach(), labels)?, 0.0)?)?;
    let d_grads = d_loss.backward()?;
    close("train logits", &d_real, "d_train")?;
    close("train images", &fake, "g_train")?;
    close("discriminator loss", &d_loss, "loss_d")?;
    // As the GAN's task does: the discriminator frozen for the generator's
    // loss (its convolutions then fetch their windows).
    let g_logits = {
        let _frozen = cinder::freeze(&d.parameters());
        d.logits(&fake, labels)?
    };
    let g_loss = bce(&g_logits, 1.0)?;
    let g_grads = g_loss.backward()?;
    close("generator loss", &g_loss, "loss_g")?;
    let d_params = d.named_parameters();
    let g_params = g.named_parameters();
    assert_eq!(
        check_grads(name, &d_grads, &d_params, &expected, "d_grad")?,
        d_params.len()
    );
    let skipped = usize::from(!spec.is_conditional());
    assert_eq!(
        check_grads(name, &g_grads, &g_params, &expected, "g_grad")?,
        g_params.len() - skipped
    );
    for (part, buffers) in [
        ("g_after", g.named_buffers()),
        ("d_after", d.named_buffers()),
    ] {
        for (bname, b) in buffers.iter().filter(|(n, _)| n.contains("running")) {
            close(&format!("{part} {bname}"), b, &format!("{part}.{bname}"))?;
        }
    }
    Ok(())
}

#[test]
fn pytorch_dcgan_state_dicts_give_pytorch_images_losses_and_gradients() -> Result<()> {
    // The generator from PyTorch's own torch.save format.
    check_gan(
        "torch_dcgan",
        cinder::gan::GanSpec::dcgan(28, 100),
        "torch_dcgan_g.pt",
    )
}

#[test]
fn pytorch_conditional_dcgan_state_dicts_give_pytorch_numbers() -> Result<()> {
    check_gan(
        "torch_cdcgan",
        cinder::gan::GanSpec::conditional(8, 16, 10),
        "torch_cdcgan_g.safetensors",
    )
}
