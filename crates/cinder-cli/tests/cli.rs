//! The `cinder` binary end to end: `predict` classifies good files and
//! reports bad ones without stopping, `eval` prints accuracy and a
//! confusion matrix. The model is untrained: these check the plumbing, the
//! training tests check learning.

use std::path::{Path, PathBuf};
use std::process::Command;

use cinder::cnn::models::ModelSpec;
use cinder::nn::checkpoint::save_tensors_with_metadata;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cinder-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn model_file(dir: &Path) -> PathBuf {
    let device = cinder::Device::new().unwrap_or_else(|e| panic!("{e}"));
    let spec = ModelSpec::lenet(8, 8, 10);
    let model = spec.build(&device).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("model.safetensors");
    save_tensors_with_metadata(&path, &model.state_dict(), spec.to_metadata())
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

fn cinder(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cinder"))
        .args(args)
        .output()
        .expect("running cinder");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn predict_classifies_good_files_and_reports_bad_ones() {
    let dir = scratch("predict");
    let model = model_file(&dir);
    // A dark digit-like stroke on light paper, larger than the model's input.
    let mut img = image::RgbImage::from_pixel(120, 90, image::Rgb([235, 230, 220]));
    for y in 15..75 {
        for x in 55..65 {
            img.put_pixel(x, y, image::Rgb([20, 20, 30]));
        }
    }
    let good = dir.join("one.png");
    img.save(&good).expect("writing a png");
    let empty = dir.join("empty.png");
    std::fs::write(&empty, b"").expect("writing an empty file");
    let text = dir.join("notes.png");
    std::fs::write(&text, b"not an image at all").expect("writing a text file");
    let missing = dir.join("missing.jpg");

    let (ok, stdout, stderr) = cinder(&[
        "predict".as_ref(),
        "--checkpoint".as_ref(),
        model.as_os_str(),
        empty.as_os_str(),
        good.as_os_str(),
        text.as_os_str(),
        missing.as_os_str(),
    ]);
    assert!(!ok, "bad files must make the exit status fail");
    let line = stdout
        .lines()
        .find(|l| l.contains("one.png"))
        .unwrap_or_else(|| panic!("no prediction for one.png in {stdout:?} / {stderr}"));
    assert_eq!(line.matches('%').count(), 3, "top-3 classes: {line}");
    assert!(
        stderr.contains("empty.png") && stderr.contains("empty"),
        "{stderr}"
    );
    assert!(
        stderr.contains("notes.png") && stderr.contains("not an image"),
        "{stderr}"
    );
    assert!(stderr.contains("missing.jpg"), "{stderr}");
    assert!(stderr.contains("3 of 4 files"), "{stderr}");

    let (ok, stdout, stderr) =
        cinder(&["eval".as_ref(), "--checkpoint".as_ref(), model.as_os_str()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("accuracy") && stdout.contains("recall"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `--mnist DIR` reads the four IDX files (here small ones the test writes)
/// and trains the 28x28 network; `--resume` then continues the same run.
#[test]
fn train_cnn_on_mnist_files_and_resume() {
    use cinder::data::{write_idx, Mnist};
    let dir = scratch("mnist");
    let write = |images: &str, labels: &str, n: usize| {
        let pixels: Vec<u8> = (0..n * 784).map(|i| ((i * 37) % 251) as u8).collect();
        let classes: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        write_idx(dir.join(images), &[n, 28, 28], &pixels).unwrap_or_else(|e| panic!("{e}"));
        write_idx(dir.join(labels), &[n], &classes).unwrap_or_else(|e| panic!("{e}"));
    };
    write(Mnist::TRAIN_IMAGES, Mnist::TRAIN_LABELS, 48);
    write(Mnist::TEST_IMAGES, Mnist::TEST_LABELS, 20);
    let out = dir.join("run");
    let run = |epochs: &str, resume: bool| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "train".as_ref(),
            "cnn".as_ref(),
            "--mnist".as_ref(),
            dir.as_os_str(),
            "--epochs".as_ref(),
            epochs.as_ref(),
            "--batch-size".as_ref(),
            "16".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        if resume {
            args.push("--resume".as_ref());
        }
        cinder(&args)
    };
    let (ok, stdout, stderr) = run("1", false);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("48 training and 20 held-out"), "{stdout}");
    let (ok, stdout, stderr) = run("2", true);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("after 2 epochs"), "{stdout}");
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).expect("metrics.csv");
    assert_eq!(metrics.lines().count(), 3, "{metrics}");
    let (ok, stdout, stderr) = cinder(&[
        "eval".as_ref(),
        "--checkpoint".as_ref(),
        out.join("model.safetensors").as_os_str(),
    ]);
    assert!(
        ok && stdout.contains("bundled MNIST") && stdout.contains("(1000 images)"),
        "eval of a 28x28 model without --mnist uses the shipped MNIST: {stdout} {stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `--arch resnet` trains the small ResNet; the files say so, and `eval`
/// rebuilds it from them.
#[test]
fn train_cnn_resnet_then_eval() {
    use cinder::data::{write_idx, Mnist};
    let dir = scratch("resnet");
    let write = |images: &str, labels: &str, n: usize| {
        let pixels: Vec<u8> = (0..n * 784).map(|i| ((i * 53) % 241) as u8).collect();
        let classes: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        write_idx(dir.join(images), &[n, 28, 28], &pixels).unwrap_or_else(|e| panic!("{e}"));
        write_idx(dir.join(labels), &[n], &classes).unwrap_or_else(|e| panic!("{e}"));
    };
    write(Mnist::TRAIN_IMAGES, Mnist::TRAIN_LABELS, 32);
    write(Mnist::TEST_IMAGES, Mnist::TEST_LABELS, 12);
    let out = dir.join("run");
    let (ok, stdout, stderr) = cinder(&[
        "train".as_ref(),
        "cnn".as_ref(),
        "--arch".as_ref(),
        "resnet".as_ref(),
        "--mnist".as_ref(),
        dir.as_os_str(),
        "--epochs".as_ref(),
        "1".as_ref(),
        "--batch-size".as_ref(),
        "16".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let model = out.join("model.safetensors");
    let meta = cinder::nn::checkpoint::read_metadata(&model).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(meta.get("cinder.arch").map(String::as_str), Some("resnet"));
    let (ok, stdout, stderr) = cinder(&[
        "eval".as_ref(),
        "--checkpoint".as_ref(),
        model.as_os_str(),
        "--mnist".as_ref(),
        dir.as_os_str(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("accuracy") && stdout.contains("(12 images)"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `cinder` with `envs` set, killed after `limit`: a command that hangs
/// fails its test instead of stalling the suite.
fn cinder_within(
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &str)],
    limit: std::time::Duration,
) -> (bool, String, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cinder"))
        .args(args)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running cinder");
    // Read both pipes on threads so a full pipe cannot block the child.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for cinder") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cinder {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (
        status.success(),
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

const LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A model of `spec` whose tensor `index` holds `bad` in its first
/// `count` values; returns the file and that tensor's name.
fn poisoned_model(
    dir: &Path,
    file: &str,
    spec: ModelSpec,
    index: usize,
    bad: f32,
    count: usize,
) -> (PathBuf, String) {
    let device = cinder::Device::new().unwrap_or_else(|e| panic!("{e}"));
    let model = spec.build(&device).unwrap_or_else(|e| panic!("{e}"));
    let mut state = model.state_dict();
    let (name, tensor) = state[index].clone();
    let mut values = tensor.to_vec::<f32>().unwrap_or_else(|e| panic!("{e}"));
    values.iter_mut().take(count).for_each(|v| *v = bad);
    let poisoned = cinder::Tensor::from_slice(&device, &values, tensor.shape())
        .unwrap_or_else(|e| panic!("{e}"));
    state[index] = (name.clone(), poisoned);
    let path = dir.join(file);
    save_tensors_with_metadata(&path, &state, spec.to_metadata()).unwrap_or_else(|e| panic!("{e}"));
    (path, name)
}

/// A checkpoint whose weights hold NaN or infinite values (a run that
/// diverged) is refused by `eval` and `predict`, naming the tensor, instead
/// of predicting "0 (NaN%)".
#[test]
fn weights_with_nan_or_inf_are_refused() {
    let dir = scratch("nan");
    let spec = ModelSpec::lenet(8, 8, 10);
    let (nan, nan_name) = poisoned_model(&dir, "nan.safetensors", spec, 0, f32::NAN, 12);
    let (inf, inf_name) = poisoned_model(&dir, "inf.safetensors", spec, 2, f32::INFINITY, 1);
    let mut img = image::RgbImage::from_pixel(60, 60, image::Rgb([255, 255, 255]));
    for y in 10..50 {
        for x in 27..33 {
            img.put_pixel(x, y, image::Rgb([0, 0, 0]));
        }
    }
    let good = dir.join("one.png");
    img.save(&good).expect("writing a png");
    for (model, want) in [
        (&nan, format!("{nan_name} has 12 NaN values")),
        (&inf, format!("{inf_name} has 1 infinite value")),
    ] {
        let (ok, stdout, stderr) = cinder_within(
            &[
                "predict".as_ref(),
                "--checkpoint".as_ref(),
                model.as_os_str(),
                good.as_os_str(),
            ],
            &[],
            LIMIT,
        );
        assert!(!ok, "predict must refuse: {stdout}");
        assert!(
            !stdout.contains('%'),
            "no prediction from such weights: {stdout}"
        );
        assert!(stderr.contains(&want), "{stderr}");
        let (ok, stdout, stderr) = cinder_within(
            &["eval".as_ref(), "--checkpoint".as_ref(), model.as_os_str()],
            &[],
            LIMIT,
        );
        assert!(!ok, "eval must refuse: {stdout}");
        assert!(stderr.contains(&want), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `cinder info` with a filter that matches nothing says so, names the
/// filter and what exists, and fails.
#[test]
fn info_with_a_filter_that_matches_nothing_fails() {
    let adapters = cinder::runtime::list_adapters();
    let first = adapters
        .first()
        .unwrap_or_else(|| panic!("no adapter: these tests need one (Mesa lavapipe)"));
    // A backend this machine lacks (on Linux: Metal and DX12).
    let backends = ["metal", "dx12", "vulkan", "gl"];
    let absent = backends.into_iter().find(|b| {
        !adapters
            .iter()
            .any(|a| a.backend.to_lowercase().starts_with(&b[..2]))
    });
    let mut cases = vec![
        (
            "CINDER_ADAPTER",
            "no-such-adapter-anywhere",
            "CINDER_ADAPTER=no-such-adapter-anywhere",
        ),
        ("CINDER_BACKEND", "teapot", "teapot"),
    ];
    if let Some(b) = absent {
        cases.push(("CINDER_BACKEND", b, ""));
    }
    for (var, value, named) in cases {
        let named = if named.is_empty() {
            format!("CINDER_BACKEND={value}")
        } else {
            named.to_string()
        };
        let (ok, stdout, stderr) = cinder_within(&["info".as_ref()], &[(var, value)], LIMIT);
        assert!(!ok, "{var}={value} must fail: {stdout}");
        assert!(stderr.contains(&named), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(&first.name),
            "{var}={value}: the error lists what exists: {stderr}"
        );
    }
    // Without a filter, and with one that matches, info succeeds.
    let (ok, stdout, stderr) = cinder_within(&["info".as_ref()], &[], LIMIT);
    assert!(ok && stdout.contains(&first.name), "{stdout} {stderr}");
    let (ok, stdout, stderr) = cinder_within(
        &["info".as_ref()],
        &[("CINDER_ADAPTER", &first.name)],
        LIMIT,
    );
    assert!(
        ok && stdout.contains("<- Device::new() picks this one"),
        "{stdout} {stderr}"
    );
}
