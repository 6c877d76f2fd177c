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
