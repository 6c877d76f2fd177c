//! Running a producer of batches on a background thread, a bounded number ahead of
//! the consumer, with a clean stop when the consumer goes away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use cinder_tensor::{Error, Result};

/// Something that yields items one by one (a batch maker). `stop` is raised when
/// the consumer leaves, so a producer in the middle of a slow item can give up
/// between its samples instead of holding up the drop.
pub(crate) trait Producer: Send + 'static {
    type Item: Send + 'static;
    fn produce(&mut self, stop: &AtomicBool) -> Option<Self::Item>;
}

/// A worker's panic, if it had one.
pub(crate) type Panic = Box<dyn std::any::Any + Send>;

pub(crate) enum Prefetch<P: Producer> {
    Background {
        receiver: Receiver<P::Item>,
        worker: JoinHandle<()>,
        stop: Arc<AtomicBool>,
    },
    Inline(P),
    Done,
}

/// Never raised: inline producers run only when asked.
static NEVER: AtomicBool = AtomicBool::new(false);

impl<P: Producer> Prefetch<P> {
    /// Runs `make()`'s producer on a thread, at most `ahead` items ahead of the
    /// consumer (the one it is building included), or on the caller's thread when
    /// `ahead` is 0.
    pub(crate) fn start(make: impl Fn() -> P, ahead: usize) -> Prefetch<P> {
        if ahead == 0 {
            return Prefetch::Inline(make());
        }
        // A rendezvous channel (capacity 0) already lets the worker build one item
        // while the consumer uses the last; each extra slot lets it run one further.
        let (sender, receiver) = mpsc::sync_channel(ahead - 1);
        let stop = Arc::new(AtomicBool::new(false));
        let worker_stop = Arc::clone(&stop);
        let mut producer = make();
        let spawned = std::thread::Builder::new()
            .name("cinder-data-loader".into())
            .spawn(move || {
                while let Some(item) = producer.produce(&worker_stop) {
                    // A send error means the consumer is gone: nobody wants more.
                    if sender.send(item).is_err() {
                        break;
                    }
                }
            });
        match spawned {
            Ok(worker) => Prefetch::Background {
                receiver,
                worker,
                stop,
            },
            // Out of threads (the producer went down with the closure): build the
            // items on the caller's thread instead, which only costs overlap.
            Err(_) => Prefetch::Inline(make()),
        }
    }

    /// The next item; `None` when the producer is done. `Err` carries the worker's
    /// panic when it stopped by panicking.
    pub(crate) fn next(&mut self) -> Result<Option<P::Item>, Panic> {
        let item = match self {
            Prefetch::Background { receiver, .. } => receiver.recv().ok(),
            Prefetch::Inline(producer) => producer.produce(&NEVER),
            Prefetch::Done => None,
        };
        match item {
            Some(item) => Ok(Some(item)),
            None => self.finish().map_or(Ok(None), Err),
        }
    }

    /// Stops the worker, if any, and waits for it. Returns its panic, if it had one.
    pub(crate) fn finish(&mut self) -> Option<Panic> {
        match std::mem::replace(self, Prefetch::Done) {
            Prefetch::Background {
                receiver,
                worker,
                stop,
            } => {
                stop.store(true, Ordering::Relaxed);
                // Dropping the receiver makes a blocked or upcoming send fail, so the
                // worker returns and the join cannot hang.
                drop(receiver);
                worker.join().err()
            }
            Prefetch::Inline(_) | Prefetch::Done => None,
        }
    }

    pub(crate) fn mode(&self) -> &'static str {
        match self {
            Prefetch::Background { .. } => "background",
            Prefetch::Inline(_) => "inline",
            Prefetch::Done => "done",
        }
    }
}

/// The message of a panic payload, for reporting it as an error.
impl<T: Send + 'static, P: Producer<Item = Result<T>>> Prefetch<P> {
    /// The next of an epoch's `remaining` items: a loader's one iteration step.
    /// An error (the producer's, or a panic of the worker) is the epoch's last
    /// item; `who` names the loader in the latter.
    pub(crate) fn pull(&mut self, remaining: &mut usize, who: &'static str) -> Option<Result<T>> {
        if *remaining == 0 {
            self.finish();
            return None;
        }
        let item = match self.next() {
            Ok(item) => item,
            // The producer catches user panics, so this is one of ours; still an
            // error for the consumer to handle rather than a crash of the run.
            Err(panic) => Some(Err(Error::invalid(
                who,
                format!("the loader thread stopped: {}", panic_message(&panic)),
            ))),
        };
        match item {
            Some(Ok(value)) => {
                *remaining -= 1;
                Some(Ok(value))
            }
            Some(Err(e)) => {
                *remaining = 0;
                self.finish();
                Some(Err(e))
            }
            None => {
                *remaining = 0;
                None
            }
        }
    }
}

pub(crate) fn panic_message(panic: &Panic) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}
