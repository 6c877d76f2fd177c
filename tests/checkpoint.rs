//! safetensors checkpoints with PyTorch's names: round trip, strict checks,
//! atomic writes.

mod common;

use cinder::nn::{load, save, Linear, Module, ReLU, Sequential};
use cinder::{Result, Tensor};

fn model(hidden: usize) -> Result<Sequential> {
    let device = common::device();
    Ok(Sequential::new()
        .add(Linear::new(&device, 5, hidden, true)?)
        .add(ReLU)
        .add(Linear::new(&device, hidden, 3, true)?))
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cinder-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn names_follow_pytorch_state_dict() -> Result<()> {
    let m = model(8)?;
    let names: Vec<String> = m.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias"]);
    assert_eq!(m.state_dict()[0].1.shape(), &[8, 5]);
    Ok(())
}

#[test]
fn save_then_load_reproduces_outputs() -> Result<()> {
    let device = common::device();
    let dir = temp_dir("roundtrip");
    let path = dir.join("m.safetensors");
    let a = model(8)?;
    let b = model(8)?;
    let x = Tensor::rand_seeded(&device, &[4, 5], -1.0, 1.0, 9)?;
    let ya = a.forward(&x)?.to_vec::<f32>()?;
    assert_ne!(ya, b.forward(&x)?.to_vec::<f32>()?);
    save(&path, &a)?;
    load(&path, &b)?;
    assert_eq!(ya, b.forward(&x)?.to_vec::<f32>()?);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn a_file_written_by_another_tool_loads_by_name() -> Result<()> {
    // What PyTorch's safetensors.torch.save_file writes for this architecture:
    // f32 tensors under state_dict names, in any order.
    let dir = temp_dir("foreign");
    let path = dir.join("torch.safetensors");
    let shapes = [
        ("2.bias", vec![3usize]),
        ("0.weight", vec![4, 5]),
        ("0.bias", vec![4]),
        ("2.weight", vec![3, 4]),
    ];
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = shapes
        .iter()
        .map(|(n, s)| {
            let count: usize = s.iter().product();
            let values: Vec<f32> = (0..count).map(|i| i as f32 * 0.01).collect();
            (
                n.to_string(),
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                s.clone(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, b, s)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .expect("view"),
            )
        })
        .collect();
    std::fs::write(
        &path,
        safetensors::serialize(views, None).expect("serialize"),
    )
    .expect("write");
    let m = model(4)?;
    load(&path, &m)?;
    let w = m.state_dict()[0].1.to_vec::<f32>()?;
    assert_eq!(w[7], 0.07);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[test]
fn mismatches_are_listed_and_change_nothing() -> Result<()> {
    let dir = temp_dir("mismatch");
    let path = dir.join("m.safetensors");
    save(&path, &model(8)?)?;
    let other = model(6)?;
    let before = other.state_dict()[0].1.to_vec::<f32>()?;
    let err = load(&path, &other)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("0.weight: shape [8, 5] in the file, the model has [6, 5]"),
        "{err}"
    );
    assert!(err.contains("2.weight"), "{err}");
    assert_eq!(before, other.state_dict()[0].1.to_vec::<f32>()?);

    let device = common::device();
    let extra = Sequential::new().add(Linear::new(&device, 5, 8, false)?);
    let err = load(&path, &extra)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("unexpected tensor \"0.bias\""), "{err}");

    std::fs::write(dir.join("junk.safetensors"), b"not a checkpoint").expect("write");
    let err = load(dir.join("junk.safetensors"), &other)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("junk.safetensors") && err.contains("not a safetensors file"),
        "{err}"
    );
    // A torch.save file that is cut short: a ZIP header and nothing else.
    std::fs::write(dir.join("cut.pt"), b"PK\x03\x04 and then nothing").expect("write");
    let err = load(dir.join("cut.pt"), &other)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("cut.pt") && err.contains("not a readable PyTorch file"),
        "{err}"
    );
    let err = load(dir.join("missing.safetensors"), &other)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("missing.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// A safetensors header 128 bytes long makes the file's first byte 0x80,
/// which is also how a pickle stream starts: it must still load as
/// safetensors, not be handed to the PyTorch reader.
#[test]
fn safetensors_header_length_ending_in_0x80_loads() -> Result<()> {
    let device = common::device();
    let m = Sequential::new().add(Linear::new(&device, 2, 3, false)?);
    let values: Vec<f32> = (1..=6).map(|v| v as f32).collect();
    let mut header =
        r#"{"0.weight":{"dtype":"F32","shape":[3,2],"data_offsets":[0,24]}}"#.to_string();
    while header.len() < 128 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    assert_eq!(bytes[0], 0x80);
    bytes.extend_from_slice(header.as_bytes());
    for v in &values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let dir = temp_dir("header80");
    let path = dir.join("w.safetensors");
    std::fs::write(&path, &bytes).expect("write");
    load(&path, &m)?;
    assert_eq!(m.state_dict()[0].1.to_vec::<f32>()?, values);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// An f64 tensor in a safetensors file loads into an f32 parameter, rounded
/// to nearest.
#[test]
fn f64_weights_load_rounded_to_f32() -> Result<()> {
    let device = common::device();
    let m = Sequential::new().add(Linear::new(&device, 2, 1, false)?);
    let values = [0.1f64, -1e-3];
    let header = r#"{"0.weight":{"dtype":"F64","shape":[1,2],"data_offsets":[0,16]}}    "#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let dir = temp_dir("f64");
    let path = dir.join("w.safetensors");
    std::fs::write(&path, &bytes).expect("write");
    load(&path, &m)?;
    assert_eq!(m.state_dict()[0].1.to_vec::<f32>()?, [0.1f32, -1e-3]);
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// Two saves of the same tensors and metadata are the same bytes, whatever
/// order the metadata map happens to iterate in: a run's files can be
/// compared with `cmp` and hashed.
#[test]
fn identical_saves_are_identical_bytes() -> Result<()> {
    use cinder::nn::checkpoint::save_tensors_with_metadata;
    let m = model(8)?;
    let dir = temp_dir("identical");
    // A fresh map each time: each HashMap has its own random iteration
    // order, so twenty keys would come out in a different order.
    let meta = || -> std::collections::HashMap<String, String> {
        (0..20)
            .map(|i| (format!("key{i}"), format!("value {i}")))
            .collect()
    };
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    save_tensors_with_metadata(&a, &m.state_dict(), meta())?;
    save_tensors_with_metadata(&b, &m.state_dict(), meta())?;
    let (a_bytes, b_bytes) = (
        std::fs::read(&a).expect("read a"),
        std::fs::read(&b).expect("read b"),
    );
    assert!(a_bytes == b_bytes, "two saves of the same model differ");
    // Still a safetensors file with every key.
    let read = cinder::nn::checkpoint::read_metadata(&a)?;
    assert_eq!(read.len(), 21, "{read:?}");
    assert_eq!(read.get("key7").map(String::as_str), Some("value 7"));
    load(&a, &model(8)?)?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// A checkpoint path that is not a regular file is an error at once, naming
/// it: reading `/dev/zero` would never end, opening a FIFO waits for a
/// writer that never comes.
#[cfg(unix)]
#[test]
fn paths_that_are_not_regular_files_are_refused_at_once() -> Result<()> {
    use cinder::nn::checkpoint::read_metadata;
    let dir = temp_dir("irregular");
    let fifo = dir.join("pipe.safetensors");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("running mkfifo");
    assert!(made.success(), "mkfifo failed");
    let sub = dir.join("sub.safetensors");
    std::fs::create_dir_all(&sub).expect("dir");
    let m = model(8)?;
    let paths = [sub.clone(), fifo.clone(), "/dev/zero".into()];
    // Each call runs on a thread, so a hang fails the test instead of
    // stalling it.
    for path in paths {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let meta = read_metadata(&p).err().map(|e| e.to_string());
            let _ = tx.send(meta);
        });
        let err = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("read_metadata({}) did not return", path.display()));
        let err = err.unwrap_or_else(|| panic!("{} was accepted", path.display()));
        assert!(
            err.contains(&path.display().to_string()) && err.contains("not a regular file"),
            "{err}"
        );
        // load makes the same check (the thread above proved it does not
        // block before it).
        let err = load(&path, &m)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not a regular file"), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// A header length larger than the file is a bad file before anything of
/// that size is read or allocated.
#[test]
fn a_header_longer_than_the_file_is_a_bad_file() -> Result<()> {
    let dir = temp_dir("hugeheader");
    let path = dir.join("huge.safetensors");
    let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
    bytes.extend_from_slice(br#"{"__metadata__":{}}"#);
    std::fs::write(&path, &bytes).expect("write");
    let m = model(8)?;
    for err in [
        cinder::nn::checkpoint::read_metadata(&path).err(),
        load(&path, &m).err(),
    ] {
        match err {
            Some(cinder::Error::BadFile { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(reason.contains("header"), "{reason}");
            }
            other => panic!("expected BadFile, got {other:?}"),
        }
    }
    // A header that fits but data cut short is also refused by
    // read_metadata, which reads only the header.
    let good = dir.join("good.safetensors");
    save(&good, &m)?;
    let full = std::fs::read(&good).expect("read");
    std::fs::write(&good, &full[..full.len() - 4]).expect("write");
    let err = cinder::nn::checkpoint::read_metadata(&good).err();
    assert!(
        matches!(&err, Some(cinder::Error::BadFile { reason, .. }) if reason.contains("truncated")),
        "{err:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// A write that fails removes its temporary file; temporary files have a
/// recognisable name, and a killed run's leftovers can be cleaned.
#[test]
fn temporary_files_are_removed_on_failure_and_stale_ones_cleaned() -> Result<()> {
    use cinder::nn::checkpoint::{remove_stale_temp_files, write_atomic};
    let dir = temp_dir("tempfiles");
    // The target is an existing directory: the rename fails.
    let target = dir.join("model.safetensors");
    std::fs::create_dir_all(target.join("inside")).expect("dir");
    let err = write_atomic(&target, b"weights").err();
    assert!(err.is_some(), "renaming over a directory must fail");
    let names = |dir: &std::path::Path| -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(&dir),
        ["model.safetensors"],
        "a temporary file remains"
    );

    // What a run killed between write and rename leaves behind, next to
    // files that are not cinder's.
    let stale = [
        ".checkpoint.safetensors.4242-0.cinder-tmp",
        ".metrics.csv.17-3.cinder-tmp",
        // The name write_atomic used before it had its own suffix.
        ".model.safetensors.4242.tmp",
    ];
    for name in stale {
        std::fs::write(dir.join(name), b"half a file").expect("write");
    }
    let keep = ["notes.tmp", ".hidden", "metrics.csv", ".x.cinder-tmp.bak"];
    for name in keep {
        std::fs::write(dir.join(name), b"user data").expect("write");
    }
    let mut removed = remove_stale_temp_files(&dir)?;
    removed.sort();
    let mut want: Vec<std::path::PathBuf> = stale.iter().map(|n| dir.join(n)).collect();
    want.sort();
    assert_eq!(removed, want);
    let mut left = keep.to_vec();
    left.push("model.safetensors");
    left.sort();
    assert_eq!(names(&dir), left);
    // A directory with nothing to clean, and one that does not exist.
    assert!(remove_stale_temp_files(&dir)?.is_empty());
    assert!(remove_stale_temp_files(dir.join("absent"))?.is_empty());

    // A successful write leaves the file and nothing else.
    let ok = dir.join("ok.bin");
    write_atomic(&ok, b"bytes")?;
    assert_eq!(std::fs::read(&ok).expect("read"), b"bytes");
    assert!(!names(&dir).iter().any(|n| n.ends_with(".cinder-tmp")));
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// `check_finite` names each tensor holding NaN or infinite values, with
/// their counts, and passes finite weights.
#[test]
fn non_finite_weights_are_named_with_their_counts() -> Result<()> {
    use cinder::nn::checkpoint::check_finite;
    let device = common::device();
    let m = model(4)?;
    check_finite(&m.state_dict())?;
    let mut state = m.state_dict();
    let poison = |t: &Tensor, bad: &[f32]| -> Result<Tensor> {
        let mut values = t.to_vec::<f32>()?;
        values[..bad.len()].copy_from_slice(bad);
        Tensor::from_slice(&device, &values, t.shape())
    };
    state[0].1 = poison(&state[0].1, &[f32::NAN; 3])?;
    state[3].1 = poison(&state[3].1, &[f32::NAN, f32::NEG_INFINITY])?;
    let err = check_finite(&state)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("0.weight has 3 NaN values"), "{err}");
    assert!(
        err.contains("2.bias has 1 NaN value and 1 infinite value"),
        "{err}"
    );
    assert!(
        !err.contains("0.bias") && !err.contains("2.weight"),
        "{err}"
    );
    Ok(())
}
