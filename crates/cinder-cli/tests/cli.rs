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

/// A black "1" on white, 60x60: a picture every model can classify.
fn one_png(dir: &Path) -> PathBuf {
    let mut img = image::RgbImage::from_pixel(60, 60, image::Rgb([255, 255, 255]));
    for y in 10..50 {
        for x in 27..33 {
            img.put_pixel(x, y, image::Rgb([0, 0, 0]));
        }
    }
    let path = dir.join("one.png");
    img.save(&path).expect("writing a png");
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

/// Settings that cannot train are refused before any work (no folder is
/// made); a folder holding a run is neither replaced nor continued with
/// other settings without a word.
#[test]
fn train_refuses_bad_settings_and_protects_a_finished_run() {
    let dir = scratch("guard");
    let out = dir.join("run");
    let train = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "train".as_ref(),
            "mlp".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        if !extra.contains(&"--epochs") {
            args.extend(["--epochs", "1"].map(std::ffi::OsStr::new));
        }
        args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
        cinder(&args)
    };
    for (flags, says) in [
        (
            &["--lr", "-1"][..],
            "learning rate must be positive, got -1",
        ),
        (
            &["--weight-decay", "-5"][..],
            "weight decay must be at least 0, got -5",
        ),
        (&["--step-size", "0"][..], "step size must be at least 1"),
        (
            &["--schedule", "step", "--gamma", "0"][..],
            "gamma must be in (0, 1], got 0",
        ),
        (&["--batch-size", "0"][..], "batch size must be at least 1"),
        (&["--epochs", "0"][..], "epochs must be at least 1"),
        (
            &["--clip-grad", "-2"][..],
            "clipping norm must be positive, got -2",
        ),
        (
            &["--label-smoothing", "1.5"][..],
            "label smoothing must be in [0, 1), got 1.5",
        ),
    ] {
        let (ok, stdout, stderr) = train(flags);
        assert!(!ok, "{flags:?} must be refused: {stdout}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
        assert!(
            !stdout.contains("adapter:"),
            "{flags:?} started work: {stdout}"
        );
        assert!(!out.exists(), "{flags:?} made {}", out.display());
    }

    let (ok, stdout, stderr) = train(&[]);
    assert!(ok, "{stdout}\n{stderr}");
    let model = std::fs::read(out.join("model.safetensors")).expect("model.safetensors");
    let (ok, stdout, stderr) = train(&[]);
    assert!(
        !ok,
        "a second run into {} must be refused: {stdout}",
        out.display()
    );
    assert!(
        stderr.contains("--resume") && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("adapter:"),
        "checked before any work: {stdout}"
    );
    let (ok, _, stderr) = train(&["--resume", "--epochs", "2", "--lr", "0.01", "--seed", "3"]);
    assert!(!ok);
    assert!(
        stderr.contains("lr: 0.003 -> 0.01") && stderr.contains("seed: 0 -> 3"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).expect("model.safetensors"),
        model,
        "refusals must leave the run as it was"
    );
    let (ok, stdout, stderr) = train(&["--resume", "--epochs", "2"]);
    assert!(
        ok && stdout.contains("after 2 epochs"),
        "{stdout}\n{stderr}"
    );
    let settings = std::fs::read_to_string(out.join("settings.txt")).expect("settings.txt");
    assert!(settings.contains("# resumed after epoch 1"), "{settings}");
    let (ok, stdout, stderr) = train(&["--overwrite"]);
    assert!(ok, "{stdout}\n{stderr}");
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).expect("metrics.csv");
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
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
    let good = one_png(&dir);
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

/// A checkpoint or image path that is not a regular file (a directory, a
/// FIFO, /dev/zero) is an error at once naming it; the other images are
/// still classified.
#[cfg(unix)]
#[test]
fn paths_that_are_not_regular_files_fail_at_once() {
    let dir = scratch("irregular");
    let model = model_file(&dir);
    let fifo = dir.join("pipe.png");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("running mkfifo");
    assert!(made.success(), "mkfifo failed");
    let folder = dir.join("folder.png");
    std::fs::create_dir_all(&folder).expect("dir");
    let zero = Path::new("/dev/zero");
    for checkpoint in [folder.as_path(), fifo.as_path(), zero] {
        let (ok, _, stderr) = cinder_within(
            &[
                "predict".as_ref(),
                "--checkpoint".as_ref(),
                checkpoint.as_os_str(),
                "x.png".as_ref(),
            ],
            &[],
            LIMIT,
        );
        assert!(!ok);
        assert!(
            stderr.contains(&checkpoint.display().to_string())
                && stderr.contains("not a regular file"),
            "{stderr}"
        );
        let (ok, _, stderr) = cinder_within(
            &[
                "eval".as_ref(),
                "--checkpoint".as_ref(),
                checkpoint.as_os_str(),
            ],
            &[],
            LIMIT,
        );
        assert!(!ok && stderr.contains("not a regular file"), "{stderr}");
    }
    // A crafted header length of 2^60 bytes.
    let crafted = dir.join("crafted.safetensors");
    let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}      ");
    std::fs::write(&crafted, &bytes).expect("write");
    let (ok, _, stderr) = cinder_within(
        &[
            "eval".as_ref(),
            "--checkpoint".as_ref(),
            crafted.as_os_str(),
        ],
        &[],
        LIMIT,
    );
    assert!(!ok && stderr.contains("crafted.safetensors"), "{stderr}");

    let good = one_png(&dir);
    let (ok, stdout, stderr) = cinder_within(
        &[
            "predict".as_ref(),
            "--checkpoint".as_ref(),
            model.as_os_str(),
            folder.as_os_str(),
            fifo.as_os_str(),
            zero.as_os_str(),
            good.as_os_str(),
        ],
        &[],
        LIMIT,
    );
    assert!(!ok, "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("one.png") && l.contains('%')),
        "{stdout} / {stderr}"
    );
    for bad in [&folder, &fifo, &zero.to_path_buf()] {
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&bad.display().to_string()))
            .unwrap_or_else(|| panic!("no line for {} in {stderr}", bad.display()));
        assert!(line.contains("not a regular file"), "{line}");
    }
    assert!(stderr.contains("3 of 4 files"), "{stderr}");
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

/// A photo-like picture: a dark stroke on light, textured paper, so that
/// its JPEG is large and a tenth of it holds the whole header.
fn textured_digit(width: u32, height: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        let ink = (width * 45 / 100..width * 55 / 100).contains(&x)
            && (height / 6..height * 5 / 6).contains(&y);
        let grain = ((x * 7919 + y * 104_729) % 23) as u8;
        if ink {
            image::Rgb([20 + grain, 20 + grain, 30 + grain])
        } else {
            image::Rgb([210 + grain, 205 + grain, 200 + grain])
        }
    })
}

/// A JPEG cut to a tenth of its bytes decodes (the missing rows grey) and
/// was classified with confidence; a cut PNG was "not an image"; a blank
/// picture was classified too. Each is now reported, the good file still
/// classified, and the exit status fails.
#[test]
fn predict_warns_on_truncated_and_blank_images() {
    let dir = scratch("truncated");
    // One model: each image style's checks are unit tests in cinder-cnn's
    // imagefile.rs; this is the command's plumbing (each process compiles
    // its kernels afresh when Mesa's cache is empty).
    let model = dir.join("mnist.safetensors");
    {
        let spec = ModelSpec::lenet(28, 28, 10);
        let device = cinder::Device::new().unwrap_or_else(|e| panic!("{e}"));
        let net = spec.build(&device).unwrap_or_else(|e| panic!("{e}"));
        save_tensors_with_metadata(&model, &net.state_dict(), spec.to_metadata())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let img = textured_digit(400, 400);
    let good = dir.join("good.jpg");
    img.save(&good).expect("writing a jpeg");
    let jpeg = std::fs::read(&good).expect("read");
    let cut_jpeg = dir.join("cut.jpg");
    std::fs::write(&cut_jpeg, &jpeg[..jpeg.len() / 10]).expect("write");
    // Only the end-of-image marker missing.
    let no_eoi = dir.join("no-end.jpg");
    std::fs::write(&no_eoi, &jpeg[..jpeg.len() - 2]).expect("write");
    let png = dir.join("full.png");
    img.save(&png).expect("writing a png");
    let png_bytes = std::fs::read(&png).expect("read");
    let cut_png = dir.join("cut.png");
    std::fs::write(&cut_png, &png_bytes[..png_bytes.len() / 2]).expect("write");
    let blank = dir.join("blank.png");
    image::RgbImage::from_pixel(120, 90, image::Rgb([240, 240, 235]))
        .save(&blank)
        .expect("writing a png");
    let black = dir.join("black.jpg");
    image::RgbImage::from_pixel(64, 64, image::Rgb([0, 0, 0]))
        .save(&black)
        .expect("writing a jpeg");

    {
        let (ok, stdout, stderr) = cinder_within(
            &[
                "predict".as_ref(),
                "--checkpoint".as_ref(),
                model.as_os_str(),
                cut_jpeg.as_os_str(),
                good.as_os_str(),
                no_eoi.as_os_str(),
                cut_png.as_os_str(),
                blank.as_os_str(),
                black.as_os_str(),
                png.as_os_str(),
            ],
            &[],
            LIMIT,
        );
        assert!(
            !ok,
            "unclassifiable files must fail the exit status: {stdout}"
        );
        for name in ["good.jpg", "full.png"] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.contains(name) && l.matches('%').count() == 3),
                "{model:?}: {name} must be classified: {stdout} / {stderr}"
            );
        }
        for (name, why) in [
            ("cut.jpg", "truncated"),
            ("no-end.jpg", "truncated"),
            ("cut.png", "truncated"),
            ("blank.png", "blank"),
            ("black.jpg", "blank"),
        ] {
            assert!(
                !stdout.contains(name),
                "{model:?}: {name} must not be classified: {stdout}"
            );
            let line = stderr
                .lines()
                .find(|l| l.contains(name))
                .unwrap_or_else(|| panic!("{model:?}: no warning for {name}: {stderr}"));
            assert!(line.contains(why), "{model:?}: {line}");
        }
        assert!(stderr.contains("5 of 7 files"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `eval --mnist DIR` needs only the test files (t10k-*).
#[test]
fn eval_on_mnist_needs_only_the_test_files() {
    use cinder::data::{write_idx, Mnist};
    let dir = scratch("mnist-test-only");
    let n = 30;
    let pixels: Vec<u8> = (0..n * 784).map(|i| ((i * 31) % 253) as u8).collect();
    let classes: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    write_idx(dir.join(Mnist::TEST_IMAGES), &[n, 28, 28], &pixels)
        .unwrap_or_else(|e| panic!("{e}"));
    write_idx(dir.join(Mnist::TEST_LABELS), &[n], &classes).unwrap_or_else(|e| panic!("{e}"));
    let spec = ModelSpec::lenet(28, 28, 10);
    let device = cinder::Device::new().unwrap_or_else(|e| panic!("{e}"));
    let model = spec.build(&device).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("model.safetensors");
    save_tensors_with_metadata(&path, &model.state_dict(), spec.to_metadata())
        .unwrap_or_else(|e| panic!("{e}"));
    let (ok, stdout, stderr) = cinder_within(
        &[
            "eval".as_ref(),
            "--checkpoint".as_ref(),
            path.as_os_str(),
            "--mnist".as_ref(),
            dir.as_os_str(),
        ],
        &[],
        LIMIT,
    );
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("(30 images)"), "{stdout}");
    // Without the test files the error names what is missing.
    std::fs::remove_file(dir.join(Mnist::TEST_LABELS)).expect("remove");
    let (ok, _, stderr) = cinder_within(
        &[
            "eval".as_ref(),
            "--checkpoint".as_ref(),
            path.as_os_str(),
            "--mnist".as_ref(),
            dir.as_os_str(),
        ],
        &[],
        LIMIT,
    );
    assert!(!ok && stderr.contains(Mnist::TEST_LABELS), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The sequence commands: an untrained spoken-digit model classifies a
/// real recording (found by its file's header without `--task`) and reports
/// a bad file without stopping; a character model writes the asked length;
/// settings that do not apply are refused before any work.
#[test]
fn sequence_commands_predict_generate_and_refuse() {
    use cinder::rnn::lm::CharLmSpec;
    use cinder::rnn::speech;
    let dir = scratch("sequences");
    let device = cinder::Device::new().unwrap_or_else(|e| panic!("{e}"));
    let spec = speech::spec(cinder::nn::CellKind::Gru, 8);
    let model = spec.build(&device).unwrap_or_else(|e| panic!("{e}"));
    let mut meta = spec.to_metadata();
    meta.insert("cinder.task".into(), "spoken-digits".into());
    let speech_model = dir.join("speech.safetensors");
    save_tensors_with_metadata(&speech_model, &cinder::nn::Module::state_dict(&model), meta)
        .unwrap_or_else(|e| panic!("{e}"));
    let wav = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/spoken-digits/7_en-us_m4_s150_p40.wav");
    let (ok, out, err) = cinder(&[
        "predict".as_ref(),
        "--checkpoint".as_ref(),
        speech_model.as_os_str(),
        wav.as_os_str(),
        "/dev/zero".as_ref(),
    ]);
    assert!(!ok, "a bad file must fail the command");
    assert!(out.contains("7_en-us_m4_s150_p40.wav: "), "{out}");
    assert!(err.contains("/dev/zero"), "{err}");

    let vocab = cinder::data::Vocab::from_text("abc ");
    let lm_spec = CharLmSpec {
        vocab_size: vocab.len(),
        embedding_dim: 4,
        hidden_size: 8,
        num_layers: 1,
        dropout: 0.0,
    };
    let lm_model = lm_spec.build(&device).unwrap_or_else(|e| panic!("{e}"));
    let lm_path = dir.join("lm.safetensors");
    save_tensors_with_metadata(
        &lm_path,
        &cinder::nn::Module::state_dict(&lm_model),
        lm_spec.to_metadata(&vocab),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (ok, out, err) = cinder(&[
        "generate".as_ref(),
        "char-lm".as_ref(),
        "--checkpoint".as_ref(),
        lm_path.as_os_str(),
        "--prompt".as_ref(),
        "ab".as_ref(),
        "--length".as_ref(),
        "25".as_ref(),
    ]);
    assert!(ok, "{err}");
    let text = out.trim_end_matches('\n');
    assert_eq!(text.chars().count(), 27, "{out:?}");
    assert!(text.chars().all(|c| "abc ".contains(c)), "{out:?}");

    for bad in [
        &["train", "rnn", "--task", "char-lm", "--cell", "gru"][..],
        &["train", "rnn", "--task", "spoken-digits", "--cell", "rnn"][..],
        &["train", "rnn", "--task", "mnist-rows", "--lr", "-1"][..],
        &["train", "rnn", "--task", "mnist-rows", "--dropout", "1.5"][..],
    ] {
        let mut args: Vec<&std::ffi::OsStr> = bad.iter().map(|a| a.as_ref()).collect();
        let out_dir = dir.join("never");
        args.push("--out".as_ref());
        args.push(out_dir.as_os_str());
        let (ok, _, err) = cinder(&args);
        assert!(!ok && err.contains("error"), "{bad:?}: {err}");
        assert!(!out_dir.exists(), "{bad:?} wrote {}", out_dir.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn predict_segments_scenes_and_draws_their_masks() {
    use cinder::cnn::segment::UNetSpec;
    use cinder::data::{DigitScenes, Mnist};
    let dir = scratch("segment");
    let device = cinder::Device::new().unwrap_or_else(|e| panic!("{e}"));
    let spec = UNetSpec {
        width: 4,
        ..UNetSpec::digit_scenes()
    };
    let unet = spec.build(&device).unwrap_or_else(|e| panic!("{e}"));
    let model = dir.join("unet.safetensors");
    save_tensors_with_metadata(
        &model,
        &cinder::nn::Module::state_dict(&unet),
        spec.to_metadata(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // A held-out scene as a picture a user might have: dark ink on white.
    let split = Mnist::bundled().unwrap_or_else(|e| panic!("{e}"));
    let (_, held_out) = DigitScenes::from_split(split, 1, 1, 4).unwrap_or_else(|e| panic!("{e}"));
    let scene = held_out.scene(0);
    let picture = image::GrayImage::from_fn(96, 96, |x, y| {
        image::Luma([255 - (scene.image[(y * 96 + x) as usize] * 255.0) as u8])
    });
    let scene_png = dir.join("scene.png");
    picture.save(&scene_png).expect("writing a png");
    let missing = dir.join("missing.png");
    let out = dir.join("masks");
    let (ok, stdout, stderr) = cinder(&[
        "predict".as_ref(),
        "--checkpoint".as_ref(),
        model.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        scene_png.as_os_str(),
        missing.as_os_str(),
    ]);
    assert!(!ok, "a missing file fails the command: {stdout} {stderr}");
    assert!(
        stdout.contains("scene.png") && stdout.contains("mask in"),
        "{stdout}"
    );
    assert!(stderr.contains("missing.png"), "{stderr}");
    let sheet = image::open(out.join("scene.segment.png")).expect("the mask picture");
    // The image and its mask, each twice size, side by side over a legend.
    assert!(
        sheet.width() >= 2 * 2 * 96 && sheet.height() > 2 * 96,
        "{:?}",
        (sheet.width(), sheet.height())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn predict_boxes_digits_and_draws_them() {
    use cinder::cnn::detect::DetectorSpec;
    use cinder::data::{DigitScenes, Mnist};
    let dir = scratch("detect");
    let device = cinder::Device::new().unwrap_or_else(|e| panic!("{e}"));
    let spec = DetectorSpec {
        width: 4,
        ..DetectorSpec::digit_scenes()
    };
    let detector = spec.build(&device).unwrap_or_else(|e| panic!("{e}"));
    // Untrained, but sure of every class everywhere: boxes to print and draw.
    let mut bias = vec![8.0f32; spec.classes];
    bias.extend([1.0; 4]);
    let state: Vec<(String, cinder::Tensor)> = cinder::nn::Module::state_dict(&detector)
        .into_iter()
        .map(|(name, t)| match name.as_str() {
            "out.bias" => {
                let sure = cinder::Tensor::from_slice(&device, &bias, &[spec.classes + 4])
                    .unwrap_or_else(|e| panic!("{e}"));
                (name, sure)
            }
            _ => (name, t),
        })
        .collect();
    let model = dir.join("detector.safetensors");
    save_tensors_with_metadata(&model, &state, spec.to_metadata())
        .unwrap_or_else(|e| panic!("{e}"));
    let split = Mnist::bundled().unwrap_or_else(|e| panic!("{e}"));
    let (_, held_out) = DigitScenes::from_split(split, 1, 1, 4).unwrap_or_else(|e| panic!("{e}"));
    let scene = held_out.scene(0);
    let picture = image::GrayImage::from_fn(96, 96, |x, y| {
        image::Luma([(scene.image[(y * 96 + x) as usize] * 255.0) as u8])
    });
    let scene_png = dir.join("scene.png");
    picture.save(&scene_png).expect("writing a png");
    let out = dir.join("boxes");
    let (ok, stdout, stderr) = cinder(&[
        "predict".as_ref(),
        "--checkpoint".as_ref(),
        model.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        scene_png.as_os_str(),
    ]);
    assert!(ok, "{stdout} {stderr}");
    assert!(
        stdout.contains("scene.png")
            && stdout.contains("(1.00) at [")
            && stdout.contains("boxes in"),
        "{stdout}"
    );
    let sheet = image::open(out.join("scene.detect.png")).expect("the boxes' picture");
    assert!(
        sheet.width() >= 2 * 96 && sheet.height() > 2 * 96,
        "{:?}",
        (sheet.width(), sheet.height())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A user's own files: scenes saved as PNGs with grey class masks (for
/// `train segment --images --masks`) and a COCO file of their boxes (for
/// `train detect --boxes`), each trained for one short epoch.
#[test]
fn train_segment_and_detect_read_a_users_files() {
    use cinder::data::{DigitScenes, Mnist};
    let dir = scratch("user-data");
    let (images, masks) = (dir.join("images"), dir.join("masks"));
    for d in [&images, &masks] {
        std::fs::create_dir_all(d).expect("a folder");
    }
    let split = Mnist::bundled().unwrap_or_else(|e| panic!("{e}"));
    let (scenes, _) = DigitScenes::from_split(split, 10, 1, 8).unwrap_or_else(|e| panic!("{e}"));
    let (mut coco_images, mut annotations) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let scene = scenes.scene(i);
        let name = format!("scene{i}.png");
        let at = |x: u32, y: u32| (y * 96 + x) as usize;
        image::GrayImage::from_fn(96, 96, |x, y| {
            image::Luma([(scene.image[at(x, y)] * 255.0) as u8])
        })
        .save(images.join(&name))
        .expect("an image");
        image::GrayImage::from_fn(96, 96, |x, y| image::Luma([scene.mask[at(x, y)] as u8]))
            .save(masks.join(&name))
            .expect("a mask");
        coco_images.push(format!(r#"{{"id": {i}, "file_name": "{name}"}}"#));
        for (b, c) in scene.boxes.iter().zip(&scene.classes) {
            annotations.push(format!(
                r#"{{"image_id": {i}, "category_id": {c}, "bbox": [{}, {}, {}, {}]}}"#,
                b[0],
                b[1],
                b[2] - b[0],
                b[3] - b[1]
            ));
        }
    }
    let categories: Vec<String> = (0..10).map(|c| format!(r#"{{"id": {c}}}"#)).collect();
    let coco = dir.join("boxes.json");
    std::fs::write(
        &coco,
        format!(
            r#"{{"images": [{}], "annotations": [{}], "categories": [{}]}}"#,
            coco_images.join(","),
            annotations.join(","),
            categories.join(",")
        ),
    )
    .expect("the COCO file");
    let common = ["--epochs", "1", "--batch-size", "4", "--width", "4"];
    let run = |task: &str, data: &[&std::ffi::OsStr], out: &PathBuf| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["train".as_ref(), task.as_ref()];
        args.extend_from_slice(data);
        args.extend(common.iter().map(std::ffi::OsStr::new));
        args.extend(["--out".as_ref(), out.as_os_str()]);
        cinder(&args)
    };
    let out = dir.join("segment");
    let (ok, stdout, stderr) = run(
        "segment",
        &[
            "--images".as_ref(),
            images.as_os_str(),
            "--masks".as_ref(),
            masks.as_os_str(),
        ],
        &out,
    );
    assert!(ok, "{stdout} {stderr}");
    assert!(stdout.contains("8 training and 2 held-out"), "{stdout}");
    assert!(
        out.join("model.safetensors").is_file() && out.join("predictions/epoch_001.png").is_file()
    );
    let out = dir.join("detect");
    let (ok, stdout, stderr) = run(
        "detect",
        &[
            "--boxes".as_ref(),
            coco.as_os_str(),
            "--images".as_ref(),
            images.as_os_str(),
        ],
        &out,
    );
    assert!(ok, "{stdout} {stderr}");
    assert!(
        stdout.contains("8 training and 2 held-out") && stdout.contains("mAP@0.5"),
        "{stdout}"
    );
    assert!(out.join("predictions/epoch_001.png").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
