//! The recurrent sequence classifier (cinder-rnn) on cinder-train's loop:
//! real digits read row by row, its loss falls, its model file loads back
//! with the same predictions, and its description round-trips.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use cinder::data::{Mnist, Split};
use cinder::nn::{CellKind, Module};
use cinder::rnn::models::SequenceSpec;
use cinder::rnn::train::{load_model, train};
use cinder::train::{Schedule, Silent, Start, TrainOptions};
use cinder::{DType, Result, Tensor};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cinder-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn gru_reads_mnist_rows_and_its_model_file_predicts_the_same() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let mnist = Mnist::bundled()?;
    let split = Split {
        train: mnist.train.head(256),
        test: mnist.test.head(100),
    };
    let test_images = split.test.features[..16 * 784].to_vec();
    let spec = SequenceSpec {
        cell: CellKind::Gru,
        ..SequenceSpec::lstm(28, 28, 32, 10)
    };
    let out = scratch("rnn-rows");
    let options = TrainOptions {
        epochs: 4,
        batch_size: 32,
        lr: 1e-2,
        weight_decay: 0.0,
        schedule: Schedule::constant(),
        clip_grad_norm: Some(1.0),
        augment: false,
        label_smoothing: 0.0,
        seed: 5,
        data: "mnist-5k subset".into(),
        out_dir: out.clone(),
        start: Start::New,
    };
    device.manual_seed(11);
    let (history, evaluation) = train(&spec, split, &options, &device, &mut Silent)?;
    let column = |name: &str| -> Vec<f64> {
        history
            .rows
            .iter()
            .map(|r| r.get(name).unwrap_or(f64::NAN))
            .collect()
    };
    let test_loss = column("test_loss");
    let train_loss = column("train_loss");
    assert!(
        test_loss[3] < 0.6 * test_loss[0] && train_loss[3] < train_loss[0],
        "the loss did not fall: held-out {test_loss:?}, training {train_loss:?}"
    );
    // Ten classes: chance is 10%.
    assert!(
        evaluation.accuracy > 0.5,
        "held-out accuracy {}",
        evaluation.accuracy
    );

    // The model file describes the model and predicts what the run's model
    // predicted for the same digits.
    let model = load_model(&out.join("model.safetensors"), &device)?;
    assert_eq!(model.spec(), &spec);
    let x = Tensor::from_slice(&device, &test_images, &[16, 1, 28, 28])?;
    let predicted: Vec<i32> = model
        .forward(&x)?
        .argmax(-1, false)?
        .to_dtype(DType::F32)?
        .to_vec::<f32>()?
        .into_iter()
        .map(|p| p as i32)
        .collect();
    assert_eq!(predicted, evaluation.predicted[..16].to_vec());
    // A training checkpoint is not a model file.
    assert!(load_model(&out.join("checkpoint.safetensors"), &device).is_err());
    std::fs::remove_dir_all(&out).ok();
    Ok(())
}

#[test]
fn sequence_specs_round_trip_through_their_metadata() -> Result<()> {
    let lstm = SequenceSpec::lstm(28, 28, 128, 10);
    let specs = [
        lstm,
        SequenceSpec {
            cell: CellKind::Gru,
            hidden_size: 64,
            ..lstm
        },
        SequenceSpec {
            num_layers: 2,
            bidirectional: true,
            dropout: 0.25,
            ..lstm
        },
        SequenceSpec {
            cell: CellKind::RnnRelu,
            num_layers: 3,
            ..lstm
        },
        SequenceSpec {
            cell: CellKind::RnnTanh,
            steps: 100,
            input_size: 40,
            ..lstm
        },
    ];
    for spec in specs {
        let back = SequenceSpec::from_metadata(&spec.to_metadata())?;
        assert_eq!(back, spec, "{}", spec.arch_name());
    }
    assert_eq!(specs[2].arch_name(), "bilstm128x2");

    // A CNN's file, or a damaged description, is refused with a reason.
    let mut meta: HashMap<String, String> = lstm.to_metadata();
    meta.remove("cinder.family");
    assert!(SequenceSpec::from_metadata(&meta).is_err());
    let mut meta = lstm.to_metadata();
    meta.insert("cinder.arch".into(), "transformer128".into());
    let err = SequenceSpec::from_metadata(&meta).unwrap_err().to_string();
    assert!(err.contains("transformer128"), "{err}");
    let mut meta = lstm.to_metadata();
    meta.insert("cinder.input".into(), "28".into());
    assert!(SequenceSpec::from_metadata(&meta).is_err());

    // Settings that cannot build a model.
    for bad in [
        SequenceSpec {
            hidden_size: 0,
            ..lstm
        },
        SequenceSpec {
            num_layers: 0,
            ..lstm
        },
        SequenceSpec { classes: 1, ..lstm },
        SequenceSpec {
            dropout: 1.0,
            ..lstm
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    Ok(())
}

#[test]
fn the_classifier_refuses_inputs_of_the_wrong_size() -> Result<()> {
    let _serial = common::serial();
    let device = common::device();
    let model = SequenceSpec::lstm(4, 3, 5, 2).build(&device)?;
    let x = Tensor::zeros(&device, &[2, 4, 4]);
    let err = model
        .forward(&x)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("4 steps of 3 features"), "{err}");
    // Any layout of 12 values per sample reads as 4 steps of 3.
    let x = Tensor::zeros(&device, &[2, 12]);
    assert_eq!(model.forward(&x)?.shape(), &[2, 2]);
    Ok(())
}

/// Training batches read stretches of the text side by side: each batch's
/// rows go on where the previous batch's ended, flagged as continuing,
/// and every epoch has as many batches.
#[test]
fn text_streams_continue_from_batch_to_batch() -> Result<()> {
    use cinder::rnn::lm::TextStreams;
    use cinder::train::Batches;
    let device = common::device();
    let streams = TextStreams {
        text: (0..500).collect(),
        steps: 7,
        streams: 3,
        seed: 5,
        device: device.clone(),
    };
    let chunks = (500 - 7) / 3 / 7;
    assert_eq!(streams.len(), chunks);
    for epoch in 0..3 {
        let batches = streams.epoch(epoch).collect::<Result<Vec<_>>>()?;
        assert_eq!(batches.len(), chunks);
        let mut previous: Option<Vec<i32>> = None;
        for (i, batch) in batches.iter().enumerate() {
            assert_eq!(batch.continues, i > 0);
            assert_eq!(batch.x.shape(), &[3, 7]);
            let x = batch.x.to_vec::<i32>()?;
            let y = batch.y.to_vec::<i32>()?;
            // The text is its own index: targets are the inputs plus one.
            assert!(x.iter().zip(&y).all(|(a, b)| b - a == 1));
            for row in 0..3 {
                let first = x[row * 7];
                assert!(x[row * 7..row * 7 + 7].windows(2).all(|w| w[1] - w[0] == 1));
                if let Some(p) = &previous {
                    assert_eq!(first, p[row * 7 + 6] + 1, "row {row} of batch {i}");
                }
            }
            // Stretches follow each other: row r + 1 starts a stretch later.
            assert_eq!(x[7] - x[0], (chunks * 7) as i32);
            previous = Some(x);
        }
    }
    Ok(())
}

/// Trained with the state carried from batch to batch, the character model
/// learns what windows of 4 characters cannot hold: each line repeats its
/// first letter after six dots, so that letter is known once the model
/// remembers 7 characters back. After 3 epochs the training text costs
/// 0.39 bits per character with the state carried, 0.66 with every batch
/// from a zero state (PyTorch's LSTM: 0.35 and 0.67). The floor is 1/9:
/// the first letter is a coin toss.
#[test]
fn char_lm_carries_its_state_beyond_a_window() -> Result<()> {
    use cinder::data::Corpus;
    use cinder::rnn::lm::{self, CharLmSpec, LmOptions};
    let _serial = common::serial();
    let device = common::device();
    let mut seed = 7u64;
    let text: String = (0..400)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let letter = if seed >> 63 == 0 { 'a' } else { 'b' };
            format!("{letter}......{letter}\n")
        })
        .collect();
    let corpus = Corpus::from_text(&text, Vec::new())?;
    let spec = CharLmSpec {
        vocab_size: corpus.vocab.len(),
        embedding_dim: 8,
        hidden_size: 16,
        num_layers: 1,
        dropout: 0.0,
    };
    let out = scratch("char-lm-memory");
    let options = LmOptions {
        train: TrainOptions {
            epochs: 3,
            batch_size: 8,
            lr: 1e-2,
            weight_decay: 0.0,
            schedule: Schedule::constant(),
            clip_grad_norm: None,
            augment: false,
            label_smoothing: 0.0,
            seed: 1,
            data: "letters".into(),
            out_dir: out.clone(),
            start: Start::New,
        },
        steps: 4,
    };
    device.manual_seed(0);
    let report = lm::train(&spec, &corpus, &options, &device, &mut Silent)?;
    let bits: Vec<f64> = report
        .history
        .rows
        .iter()
        .map(|r| r.get("train_bits_per_char").unwrap_or(f64::NAN))
        .collect();
    assert!(bits[2] < 0.5, "training bits per character: {bits:?}");
    std::fs::remove_dir_all(&out).ok();
    Ok(())
}

/// The character model on a small text: its held-out loss falls below the
/// first epoch's and the n-gram baseline is computed; its model file loads
/// back and writes text from the corpus's own characters, the same for the
/// same seed.
#[test]
fn char_lm_learns_a_text_and_writes_with_its_characters() -> Result<()> {
    use cinder::data::Corpus;
    use cinder::rnn::lm::{self, CharLmSpec, LmOptions};
    let _serial = common::serial();
    let device = common::device();
    let sentence = "the quick brown fox jumps over the lazy dog. ";
    let text: String = (0..40).map(|i| sentence.repeat(1 + i % 2)).collect();
    let corpus = Corpus::from_text(&text, Vec::new())?;
    let spec = CharLmSpec {
        vocab_size: corpus.vocab.len(),
        embedding_dim: 8,
        hidden_size: 32,
        num_layers: 2,
        dropout: 0.0,
    };
    let out = scratch("char-lm");
    let options = LmOptions {
        train: TrainOptions {
            epochs: 4,
            batch_size: 16,
            lr: 1e-2,
            weight_decay: 0.0,
            schedule: Schedule::constant(),
            clip_grad_norm: Some(1.0),
            augment: false,
            label_smoothing: 0.0,
            seed: 2,
            data: "pangrams".into(),
            out_dir: out.clone(),
            start: Start::New,
        },
        steps: 12,
    };
    device.manual_seed(4);
    let report = lm::train(&spec, &corpus, &options, &device, &mut Silent)?;
    let bits: Vec<f64> = report
        .history
        .rows
        .iter()
        .map(|r| r.get("test_bits_per_char").unwrap_or(f64::NAN))
        .collect();
    assert!(
        bits[3] < 0.7 * bits[0],
        "held-out bits per character did not fall: {bits:?}"
    );
    // A repeated sentence is easy for the n-gram too.
    assert!(report.baseline_bits_per_char > 0.0 && report.baseline_bits_per_char < 2.0);

    let (model, vocab) = lm::load(&out.join("model.safetensors"), &device)?;
    assert_eq!(vocab, corpus.vocab);
    let a = lm::generate(&model, &vocab, "the ", 0.5, 40, 9)?;
    let b = lm::generate(&model, &vocab, "the ", 0.5, 40, 9)?;
    assert_eq!(a, b);
    assert_eq!(a.chars().count(), 40);
    assert!(a.chars().all(|c| sentence.contains(c)), "{a:?}");
    // Each character costs the same: the state is kept, not recomputed
    // from the prompt on.
    let dispatches = |length: usize| -> Result<u64> {
        let before = device.stats().dispatches;
        lm::generate(&model, &vocab, "the ", 0.5, length, 3)?;
        Ok(device.stats().dispatches - before)
    };
    let (short, long) = (dispatches(10)?, dispatches(30)?);
    assert!(
        long * 10 <= short * 36,
        "{short} dispatches for 10 characters, {long} for 30"
    );
    // Held-out text read in chunks with the state carried scores exactly
    // as one window over the whole stretch: one stream, chunks of 7 (the
    // last shorter), against a single chunk of everything.
    let held_out = &corpus.held_out[..80];
    let chunked = lm::streamed_loss(&model, held_out, 7, 1, &device)?;
    let whole = lm::streamed_loss(&model, held_out, 79, 1, &device)?;
    assert!(
        (chunked - whole).abs() < 1e-4 * whole,
        "chunked {chunked}, whole {whole}"
    );
    // Four streams score the same characters but the first of each
    // stretch from a zero state.
    let streams = lm::streamed_loss(&model, held_out, 7, 4, &device)?;
    assert!(streams.is_finite() && (streams - whole).abs() < 0.5 * whole);
    assert!(lm::streamed_loss(&model, &held_out[..3], 7, 4, &device).is_err());
    // A prompt with a character the model never saw, or no temperature.
    assert!(lm::generate(&model, &vocab, "THE", 0.5, 5, 1).is_err());
    assert!(lm::generate(&model, &vocab, "the", 0.0, 5, 1).is_err());
    std::fs::remove_dir_all(&out).ok();
    Ok(())
}

/// The spoken-digit task on a few clips: the training loss falls with
/// augmentation on, the held-out voices are measured clean and in noise,
/// and a WAV file is classified through the saved model.
#[test]
fn spoken_digits_train_on_augmented_clips_and_classify_a_file() -> Result<()> {
    use cinder::data::SpokenDigits;
    use cinder::rnn::speech;
    let _serial = common::serial();
    let device = common::device();
    let clean = SpokenDigits::bundled()?;
    let (train_clips, held_out) = clean.split_by_voice(&SpokenDigits::HELD_OUT_VOICES)?;
    // Every 10th clip: all ten digits, every training voice.
    let train_clips: Vec<_> = train_clips.into_iter().step_by(10).collect();
    let held_out: Vec<_> = held_out.into_iter().step_by(10).collect();
    let noisy: Vec<_> = SpokenDigits::bundled_noisy()?
        .into_clips()
        .into_iter()
        .step_by(10)
        .collect();
    let spec = speech::spec(CellKind::Gru, 24);
    let out = scratch("speech");
    let options = TrainOptions {
        epochs: 3,
        batch_size: 28,
        lr: 1e-2,
        weight_decay: 0.0,
        schedule: Schedule::constant(),
        clip_grad_norm: Some(1.0),
        augment: true,
        label_smoothing: 0.0,
        seed: 1,
        data: "spoken-digits subset".into(),
        out_dir: out.clone(),
        start: Start::New,
    };
    device.manual_seed(2);
    let report = speech::train(
        &spec,
        train_clips,
        held_out,
        noisy,
        &options,
        &device,
        &mut Silent,
    )?;
    let loss: Vec<f64> = report
        .history
        .rows
        .iter()
        .map(|r| r.get("train_loss").unwrap_or(f64::NAN))
        .collect();
    assert!(loss[2] < loss[0], "training loss did not fall: {loss:?}");
    for metric in ["test_accuracy", "noisy_accuracy"] {
        let v = report.history.rows[2].get(metric).unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&v), "{metric}: {v}");
    }

    let model = load_model(&out.join("model.safetensors"), &device)?;
    let probs = speech::classify_file(
        &model,
        std::path::Path::new("data/spoken-digits/7_en-us_m4_s150_p40.wav"),
    )?;
    assert_eq!(probs.len(), 10);
    assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    assert!(speech::classify_file(&model, std::path::Path::new("/dev/zero")).is_err());
    std::fs::remove_dir_all(&out).ok();
    Ok(())
}
