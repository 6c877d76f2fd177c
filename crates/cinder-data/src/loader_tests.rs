//! Tests of [`Loader`] over datasets of several fields, and of [`DataLoader`]'s
//! transforms.

use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::dataset::{from_fn, FromFn};
use crate::sample::Field;
use crate::transform::{RandomAffine, RandomCrop, RandomHorizontalFlip};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Sample i: "x" = [i, i + 0.5] (f32) and "i" = i (u32), so a batch tells which
/// samples it holds.
fn numbered(n: usize) -> Arc<Vec<Sample>> {
    let samples = (0..n)
        .map(|i| {
            let x = Field::new(vec![i as f32, i as f32 + 0.5], &[2]).expect("fits"); // ok: fixture
            Sample::new()
                .with("x", x)
                .with("i", Field::scalar(i as u32))
        })
        .collect();
    Arc::new(samples)
}

/// The sample indices of each batch, checking them against the batch's fields.
fn indices(batches: impl Iterator<Item = Result<SampleBatch>>) -> Result<Vec<Vec<usize>>> {
    batches
        .map(|b| {
            let b = b?;
            let i = b.field("i")?.values().values::<u32>("test")?;
            let from_fields: Vec<usize> = i.iter().map(|&i| i as usize).collect();
            assert_eq!(from_fields, b.indices());
            let x = b.field("x")?.values();
            assert_eq!(x.shape(), [b.len(), 2]);
            Ok(from_fields)
        })
        .collect()
}

/// Runs `f` on another thread and fails (instead of hanging the test run) if it
/// takes more than 20 seconds.
fn within_seconds(f: impl FnOnce() + Send + 'static) {
    let (done, wait) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    match wait.recv_timeout(Duration::from_secs(20)) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("not finished after 20 s"),
    }
}

#[test]
fn order_is_dataloaders_and_covers_every_sample_once() -> TestResult {
    let loader = Loader::new(numbered(103), 10, true, 42)?;
    let classic = DataLoader::new(
        Arc::new(InMemoryDataset::new(
            vec![0.0; 103],
            vec![1],
            vec![0; 103],
            1,
        )?),
        10,
        true,
        42,
    )?;
    assert_eq!(loader.len(), 11);
    for epoch in 0..3 {
        let batches = indices(loader.epoch(epoch))?;
        assert_eq!(batches.len(), 11);
        assert!(batches[..10].iter().all(|b| b.len() == 10));
        let mut all = batches.concat();
        assert_eq!(all, loader.permutation(epoch));
        assert_eq!(
            all,
            classic.permutation(epoch),
            "the same order as DataLoader"
        );
        all.sort_unstable();
        assert_eq!(all, (0..103).collect::<Vec<_>>(), "epoch {epoch}");
    }
    // The pinned reference order of DataLoader's tests.
    let pinned = Loader::new(numbered(10), 3, true, 42)?;
    assert_eq!(pinned.permutation(0), [2, 9, 8, 1, 5, 3, 6, 4, 7, 0]);
    assert_eq!(pinned.permutation(1), [6, 9, 2, 7, 0, 8, 5, 1, 4, 3]);

    let plain = Loader::new(numbered(10), 4, false, 42)?;
    assert_eq!(
        indices(plain.epoch(3))?,
        [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
    );
    let dropping = plain.drop_last(true);
    assert_eq!(dropping.len(), 2);
    assert_eq!(
        indices(dropping.epoch(0))?,
        [vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
    );
    Ok(())
}

/// Adds a uniform draw to every value of "x": what each sample got shows which
/// generator it used.
fn jitter(s: &mut Sample, rng: &mut Rng) -> Result<()> {
    let x = s.field_mut("x", "jitter")?;
    let noisy: Vec<f32> = x
        .values::<f32>("jitter")?
        .iter()
        .map(|v| v + rng.uniform() as f32)
        .collect();
    *x = Field::new(noisy, x.shape())?;
    Ok(())
}

/// Sample index -> its "x" values, over a whole epoch.
fn augmented(batches: Batches) -> Result<Vec<(usize, Vec<f32>)>> {
    let mut all = Vec::new();
    for b in batches {
        let b = b?;
        let x = b.field("x")?.values().values::<f32>("test")?;
        for (k, &i) in b.indices().iter().enumerate() {
            all.push((i, x[2 * k..2 * k + 2].to_vec()));
        }
    }
    all.sort_by_key(|&(i, _)| i);
    Ok(all)
}

#[test]
fn augmentations_depend_on_seed_epoch_and_sample_only() -> TestResult {
    let loader = Loader::new(numbered(30), 4, true, 5)?.transform(jitter);
    let e0 = augmented(loader.epoch(0))?;
    assert_eq!(e0.len(), 30);
    assert!(e0.iter().all(|(i, x)| x[0] != *i as f32), "jitter applied");
    assert_eq!(e0, augmented(loader.epoch(0))?, "an epoch replays exactly");
    // Another batch size or no shuffle puts the samples in other batches; each
    // still gets the same augmentation.
    let other = Loader::new(numbered(30), 7, false, 5)?
        .transform(jitter)
        .prefetch(0);
    assert_eq!(e0, augmented(other.epoch(0))?);
    let e1 = augmented(loader.epoch(1))?;
    assert!(
        e0.iter().zip(&e1).all(|(a, b)| a.1 != b.1),
        "each epoch draws anew"
    );
    let reseeded = Loader::new(numbered(30), 4, true, 6)?.transform(jitter);
    assert_ne!(e0, augmented(reseeded.epoch(0))?);
    Ok(())
}

#[test]
fn an_epoch_can_start_at_a_later_batch() -> TestResult {
    let loader = Loader::new(numbered(23), 5, true, 9)?.transform(jitter);
    assert_eq!(loader.len(), 5);
    let full: Vec<SampleBatch> = loader.epoch(2).collect::<Result<_>>()?;
    for first in 0..=5 {
        let tail: Vec<SampleBatch> = loader.epoch_from(2, first).collect::<Result<_>>()?;
        assert_eq!(tail, full[first..], "from batch {first}");
    }
    assert_eq!(loader.epoch_from(2, 99).count(), 0);
    Ok(())
}

#[test]
fn inline_and_background_agree() -> TestResult {
    let loader = Loader::new(numbered(37), 5, true, 11)?.transform(jitter);
    let background: Vec<SampleBatch> = loader.epoch(2).collect::<Result<_>>()?;
    for prefetch in [0, 1, 4] {
        let other = loader.clone().prefetch(prefetch);
        let batches: Vec<SampleBatch> = other.epoch(2).collect::<Result<_>>()?;
        assert_eq!(batches, background, "prefetch {prefetch}");
    }
    Ok(())
}

#[test]
fn empty_dataset_and_bad_batch_size() -> TestResult {
    let loader = Loader::new(numbered(0), 4, true, 0)?;
    assert!(loader.is_empty());
    assert_eq!(loader.epoch(0).count(), 0);
    let err = Loader::new(numbered(3), 0, true, 0).unwrap_err();
    assert!(
        err.to_string().contains("batch_size must be at least 1"),
        "{err}"
    );
    Ok(())
}

/// The indices a dataset has been asked for, and a signal on each request.
#[derive(Default)]
struct Requests {
    seen: Mutex<Vec<usize>>,
    changed: Condvar,
}

impl Requests {
    fn record(&self, i: usize) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.push(i);
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for index `i` to be requested.
    fn wait_for(&self, i: usize, timeout: Duration) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, _) = self
            .changed
            .wait_timeout_while(seen, timeout, |s| !s.contains(&i))
            .unwrap_or_else(|p| p.into_inner());
        seen.contains(&i)
    }
}

fn watched(
    n: usize,
    requests: &Arc<Requests>,
) -> FromFn<impl Fn(usize) -> Result<Sample> + Send + Sync> {
    let samples = numbered(n);
    let requests = Arc::clone(requests);
    from_fn(n, move |i| {
        requests.record(i);
        samples.get(i)
    })
}

#[test]
fn the_next_batch_is_read_while_the_consumer_holds_the_current_one() -> TestResult {
    within_seconds(|| {
        let run = || -> Result<()> {
            // Batches [0, 1], [2, 3], [4, 5], ...
            let requests = Arc::new(Requests::default());
            let loader = Loader::new(Arc::new(watched(8, &requests)), 2, false, 0)?.prefetch(1);
            let mut epoch = loader.epoch(0);
            let first = epoch.next().transpose()?;
            assert_eq!(first.map(|b| b.indices().to_vec()), Some(vec![0, 1]));
            // While the consumer still works on batch 0, batch 1 is being read...
            assert!(
                requests.wait_for(2, Duration::from_secs(10)),
                "batch 1 was not prefetched"
            );
            // ...but no further than the prefetch allows.
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                !requests.wait_for(4, Duration::ZERO),
                "read past the prefetch limit"
            );
            assert_eq!(epoch.count(), 3);

            // Without prefetch, nothing is read before it is asked for.
            let requests = Arc::new(Requests::default());
            let loader = Loader::new(Arc::new(watched(8, &requests)), 2, false, 0)?.prefetch(0);
            let mut epoch = loader.epoch(0);
            epoch.next().transpose()?;
            assert!(!requests.wait_for(2, Duration::from_millis(100)));
            Ok(())
        };
        if let Err(e) = run() {
            panic!("{e}");
        }
    });
    Ok(())
}

#[test]
fn errors_reach_the_consumer_and_end_the_epoch() -> TestResult {
    within_seconds(|| {
        let run = || -> Result<()> {
            let samples = numbered(20);
            let failing = from_fn(20, move |i| {
                if i == 13 {
                    return Err(Error::bad_file("shard-3.bin", "truncated record 13"));
                }
                samples.get(i)
            });
            let failing = Arc::new(failing);
            for prefetch in [0, 2] {
                let loader = Loader::new(Arc::clone(&failing), 4, false, 0)?.prefetch(prefetch);
                let items: Vec<Result<SampleBatch>> = loader.epoch(0).collect();
                assert_eq!(
                    items.len(),
                    4,
                    "3 good batches, then the error, then the end"
                );
                assert!(items[..3].iter().all(Result::is_ok));
                let err = items[3]
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                assert!(err.contains("shard-3.bin: truncated record 13"), "{err}");
            }

            let panicking = from_fn(20, |i| {
                if i == 5 {
                    panic!("sample {i} is cursed");
                }
                Ok(Sample::new().with("i", Field::scalar(i as u32)))
            });
            let loader = Loader::new(Arc::new(panicking), 4, false, 0)?;
            let items: Vec<Result<SampleBatch>> = loader.epoch(0).collect();
            assert_eq!(items.len(), 2);
            let err = items[1]
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(err.contains("sample 5 is cursed"), "{err}");

            let bad_transform = Loader::new(numbered(8), 4, true, 0)?
                .transform(|_: &mut Sample, _: &mut Rng| Err(Error::invalid("my transform", "no")));
            let err = bad_transform.epoch(0).find_map(Result::err);
            assert!(err.is_some_and(|e| e.to_string() == "my transform: no"));

            // Samples that cannot be collated: one sample's "x" has another dtype.
            let mixed = from_fn(8, |i| {
                let x = if i == 6 {
                    Field::scalar(1i32)
                } else {
                    Field::scalar(1.0f32)
                };
                Ok(Sample::new().with("x", x))
            });
            let loader = Loader::new(Arc::new(mixed), 4, false, 0)?;
            let err = loader.epoch(0).find_map(Result::err).map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("is i32 in sample 6")),
                "{err:?}"
            );
            Ok(())
        };
        if let Err(e) = run() {
            panic!("{e}");
        }
    });
    Ok(())
}

#[test]
fn dropping_mid_epoch_stops_the_thread_between_samples() -> TestResult {
    within_seconds(|| {
        let samples = numbered(1000);
        // Slow enough that finishing a whole batch of 20 (2 s) would show.
        let slow = Arc::new(from_fn(1000, move |i| {
            std::thread::sleep(Duration::from_millis(100));
            samples.get(i)
        }));
        let loader = match Loader::new(Arc::clone(&slow), 20, true, 1) {
            Ok(loader) => loader.prefetch(1),
            Err(e) => panic!("{e}"),
        };
        // Never polled: the worker is reading batch 0's samples.
        let epoch = loader.epoch(0);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(Arc::strong_count(&slow), 3, "the worker holds the dataset");
        let started = Instant::now();
        drop(epoch);
        let took = started.elapsed();
        assert!(took < Duration::from_millis(1000), "drop waited {took:?}");
        assert_eq!(Arc::strong_count(&slow), 2, "the worker is gone");
    });
    Ok(())
}

/// `n` images `[1, 4, 4]` whose pixels are all distinct and nonzero; the class of
/// image `i` is `i`, so a batch's targets tell which samples it holds.
fn images(n: usize) -> Arc<InMemoryDataset> {
    let features = (0..n * 16).map(|v| v as f32 + 1.0).collect();
    let labels = (0..n).map(|i| i as i32).collect();
    let ds = InMemoryDataset::new(features, vec![1, 4, 4], labels, n.max(1));
    Arc::new(ds.expect("consistent")) // ok: fixture
}

fn augment() -> (RandomAffine, RandomHorizontalFlip) {
    (
        RandomAffine::new(InMemoryDataset::INPUT)
            .degrees(15.0)
            .translate_pixels(1.0, 1.0),
        RandomHorizontalFlip::new(InMemoryDataset::INPUT, 0.5),
    )
}

/// Sample index -> its (augmented) pixels, over a whole epoch.
fn by_sample(batches: impl Iterator<Item = Batch>) -> Vec<(i32, Vec<f32>)> {
    let mut all: Vec<(i32, Vec<f32>)> = batches
        .flat_map(|b| {
            let per = b.inputs.len() / b.len().max(1);
            b.targets
                .iter()
                .zip(b.inputs.chunks(per))
                .map(|(&t, x)| (t, x.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    all.sort_by_key(|(t, _)| *t);
    all
}

#[test]
fn data_loader_transforms_are_seeded_per_sample() -> TestResult {
    let data = images(23);
    let (affine, flip) = augment();
    let loader = DataLoader::new(Arc::clone(&data), 5, true, 8)?
        .with_transform(affine.clone())?
        .with_transform(flip.clone())?;
    assert!(loader.has_transforms());
    assert_eq!(loader.len(), 5);
    let e0: Vec<Batch> = loader.epoch(0).collect();
    assert_eq!(e0.len(), 5);
    assert!(e0.iter().all(|b| b.input_shape[1..] == [1, 4, 4]));
    let order: Vec<usize> = e0
        .iter()
        .flat_map(|b| b.targets.iter().map(|&t| t as usize))
        .collect();
    assert_eq!(order, loader.permutation(0), "the order is untouched");
    let originals = by_sample(DataLoader::new(Arc::clone(&data), 5, true, 8)?.epoch(0));
    let augmented = by_sample(e0.iter().cloned());
    let changed = originals
        .iter()
        .zip(&augmented)
        .filter(|(a, b)| a.1 != b.1)
        .count();
    assert!(changed > 15, "{changed} of 23 samples changed");

    // The same seed replays the epoch exactly, on another loader too, inline or not.
    assert_eq!(loader.epoch(0).collect::<Vec<_>>(), e0);
    let again = DataLoader::new(Arc::clone(&data), 5, true, 8)?
        .with_transform(affine.clone())?
        .with_transform(flip.clone())?;
    assert_eq!(again.start_epoch(0, 0).collect::<Vec<_>>(), e0);
    // Another epoch draws anew; another seed too.
    let e1 = by_sample(loader.epoch(1));
    assert_ne!(e1, augmented);
    let reseeded = DataLoader::new(Arc::clone(&data), 5, true, 9)?
        .with_transform(affine.clone())?
        .with_transform(flip.clone())?;
    assert_ne!(by_sample(reseeded.epoch(0)), augmented);

    // A sample's augmentation depends on (seed, epoch, index) only: in dataset
    // order and other batches it is the same...
    let unshuffled = DataLoader::new(Arc::clone(&data), 7, false, 8)?
        .with_transform(affine.clone())?
        .with_transform(flip.clone())?;
    assert_eq!(by_sample(unshuffled.epoch(0)), augmented);
    // ...and the same as Loader's with the same transforms.
    let generic = Loader::new(Arc::clone(&data), 5, true, 8)?
        .transform(affine)
        .transform(flip);
    for (new, old) in generic.epoch(0).zip(&e0) {
        let new = new?;
        let x = new.field(InMemoryDataset::INPUT)?.values();
        assert_eq!(x.shape(), old.input_shape);
        assert_eq!(x.values::<f32>("test")?, old.inputs);
        let y = new.field(InMemoryDataset::TARGET)?.values();
        assert_eq!(y.values::<i32>("test")?, old.targets);
    }
    Ok(())
}

#[test]
fn data_loader_transforms_that_do_not_fit_fail_up_front() -> TestResult {
    let data = images(6);
    let loader = || DataLoader::new(Arc::clone(&data), 2, true, 0);
    let message = |r: Result<DataLoader>| r.err().map(|e| e.to_string()).unwrap_or_default();

    let err = message(loader()?.with_transform(RandomHorizontalFlip::new("image", 0.5)));
    assert!(err.contains(r#"no field "image""#), "{err}");
    let err = message(loader()?.with_transform(RandomCrop::new(InMemoryDataset::INPUT, [3, 3], 0)));
    assert!(err.contains("[1, 4, 4] into shape [1, 3, 3]"), "{err}");
    let to_u32 = |s: &mut Sample, _: &mut Rng| {
        let n = s.field(InMemoryDataset::INPUT, "to_u32")?.len();
        s.insert(
            InMemoryDataset::INPUT,
            Field::new(vec![0u32; n], &[1, 4, 4])?,
        );
        Ok(())
    };
    let err = message(loader()?.with_transform(to_u32));
    assert!(err.contains("expected dtype f32, got u32"), "{err}");
    let unlabel = |s: &mut Sample, _: &mut Rng| {
        s.insert(InMemoryDataset::TARGET, Field::scalar(1.0f32));
        Ok(())
    };
    let err = message(loader()?.with_transform(unlabel));
    assert!(err.contains("it must stay an i32 of shape []"), "{err}");
    let panics = |_: &mut Sample, _: &mut Rng| -> Result<()> { panic!("augmentation bug") };
    let err = message(loader()?.with_transform(panics));
    assert!(err.contains("panicked: augmentation bug"), "{err}");

    // Nothing to try on an empty dataset.
    let empty = DataLoader::new(images(0), 2, true, 0)?.with_transform(panics)?;
    assert_eq!(empty.epoch(0).count(), 0);
    Ok(())
}

#[test]
fn data_loader_transform_errors_end_the_epoch() -> TestResult {
    within_seconds(|| {
        let run = || -> Result<()> {
            // Fails (or panics) on sample 13 only, so the up-front try passes.
            let fails_on_13 = |s: &mut Sample, _: &mut Rng| {
                let class = s.field(InMemoryDataset::TARGET, "test")?;
                if class.as_slice::<i32>() == Some(&[13]) {
                    return Err(Error::bad_file("augment.cfg", "sample 13 is cursed"));
                }
                Ok(())
            };
            let panics_on_13 = |s: &mut Sample, _: &mut Rng| {
                let class = s.field(InMemoryDataset::TARGET, "test")?;
                assert_ne!(class.as_slice::<i32>(), Some(&[13][..]), "thirteen");
                Ok(())
            };
            // Unshuffled batches of 4: sample 13 is in batch 3.
            let failing = DataLoader::new(images(20), 4, false, 0)?.with_transform(fails_on_13)?;
            let mut epoch = failing.epoch(0);
            assert_eq!(epoch.len(), 5);
            assert_eq!(epoch.by_ref().count(), 3, "3 good batches, then the end");
            let err = epoch
                .take_error()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("augment.cfg: sample 13 is cursed"), "{err}");

            let items: Vec<Result<Batch>> = failing.try_epoch(0).collect();
            assert_eq!(items.len(), 4);
            assert!(items[..3].iter().all(Result::is_ok));
            assert!(items[3].is_err());

            let panicking =
                DataLoader::new(images(20), 4, false, 0)?.with_transform(panics_on_13)?;
            let items: Vec<Result<Batch>> = panicking.try_epoch(0).collect();
            assert_eq!(items.len(), 4);
            let err = items[3]
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                err.contains("samples [13] panicked") && err.contains("thirteen"),
                "{err}"
            );

            // Without transforms the Result view just wraps every batch.
            let plain = DataLoader::new(images(20), 4, false, 0)?;
            assert!(plain.try_epoch(0).all(|b| b.is_ok()));
            assert!(plain.epoch(0).error().is_none());
            Ok(())
        };
        if let Err(e) = run() {
            panic!("{e}");
        }
    });
    Ok(())
}
