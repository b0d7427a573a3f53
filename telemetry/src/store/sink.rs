//! The buffer between the exporters and JetStream, and the task that publishes from it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;

use flotilla_bus::outage::{OUTAGE_TOLERANCE, retry_until};

use super::{MAX_BUFFER_BYTES, PUBLISH_ACK_TIMEOUT, StoreStats, logs_subject, traces_subject};
use crate::TelemetryError;

/// Which subject a message goes under.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Signal {
    Traces,
    Logs,
}

/// One message waiting to be published.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) signal: Signal,
    pub(crate) trace_id: String,
    pub(crate) payload: Bytes,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outgoing>,
    queued_bytes: usize,
    stats: StoreStats,
}

/// The buffer between the exporters (on the SDK's threads) and the publisher task (on Tokio).
#[derive(Debug)]
pub(crate) struct Sink {
    state: Mutex<State>,
    /// Wakes the publisher when something is queued.
    wake: tokio::sync::Notify,
    /// Wakes waiters when a message is stored or given up on.
    progress: tokio::sync::Notify,
    /// Bumped on each attach; an older publisher stops.
    generation: AtomicU64,
    publisher_alive: AtomicBool,
}

impl Sink {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: tokio::sync::Notify::new(),
            progress: tokio::sync::Notify::new(),
            generation: AtomicU64::new(0),
            publisher_alive: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stats(&self) -> StoreStats {
        self.lock().stats
    }

    pub(crate) fn enqueue(&self, item: Outgoing) {
        let mut state = self.lock();
        state.queued_bytes += item.payload.len();
        state.queue.push_back(item);
        state.stats.enqueued += 1;
        while state.queued_bytes > MAX_BUFFER_BYTES {
            let Some(old) = state.queue.pop_front() else {
                break;
            };
            state.queued_bytes -= old.payload.len();
            state.stats.dropped += 1;
        }
        drop(state);
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<Outgoing> {
        let mut state = self.lock();
        let item = state.queue.pop_front()?;
        state.queued_bytes -= item.payload.len();
        Some(item)
    }

    fn finish(&self, stored: bool) {
        let mut state = self.lock();
        if stored {
            state.stats.stored += 1;
        } else {
            state.stats.failed += 1;
        }
        drop(state);
        self.progress.notify_waiters();
    }

    /// Starts a publisher over `js` on the current runtime, replacing any earlier one.
    pub(crate) fn attach(self: &Arc<Self>, js: jetstream::Context, prefix: String) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        // Wake an older publisher so it sees the new generation and stops.
        self.wake.notify_waiters();
        self.publisher_alive.store(true, Ordering::SeqCst);
        tokio::spawn(publish_loop(Arc::clone(self), js, prefix, generation));
    }

    /// Waits until everything enqueued so far is stored or given up on.
    pub(crate) async fn drain(&self, timeout: Duration) -> Result<(), TelemetryError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let target = self.stats().enqueued;
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let stats = self.stats();
            let done = stats.enqueued.min(target) <= stats.stored + stats.dropped + stats.failed;
            if done {
                return Ok(());
            }
            if !self.publisher_alive.load(Ordering::SeqCst) {
                return Err(TelemetryError::NotAttached {
                    pending: stats.pending(),
                });
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(TelemetryError::Timeout {
                    pending: self.stats().pending(),
                    timeout,
                });
            }
        }
    }

    /// [`drain`](Self::drain) for synchronous code, polling.
    pub(crate) fn drain_blocking(&self, timeout: Duration) -> Result<(), TelemetryError> {
        #[allow(
            clippy::disallowed_types,
            reason = "no runtime here, only wall-clock polling"
        )]
        let deadline = Instant::now() + timeout;
        let target = self.stats().enqueued;
        loop {
            let stats = self.stats();
            if target <= stats.stored + stats.dropped + stats.failed {
                return Ok(());
            }
            if !self.publisher_alive.load(Ordering::SeqCst) {
                return Err(TelemetryError::NotAttached {
                    pending: stats.pending(),
                });
            }
            if Instant::now() >= deadline {
                return Err(TelemetryError::Timeout {
                    pending: stats.pending(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Marks the publisher dead when its task ends or its runtime drops it.
struct Alive<'a> {
    sink: &'a Sink,
    generation: u64,
}

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        if self.sink.generation.load(Ordering::SeqCst) == self.generation {
            self.sink.publisher_alive.store(false, Ordering::SeqCst);
            self.sink.progress.notify_waiters();
        }
    }
}

async fn publish_loop(sink: Arc<Sink>, js: jetstream::Context, prefix: String, generation: u64) {
    let _alive = Alive {
        sink: &sink,
        generation,
    };
    loop {
        if sink.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        let notified = sink.wake.notified();
        let Some(item) = sink.pop() else {
            notified.await;
            continue;
        };
        let subject = match item.signal {
            Signal::Traces => traces_subject(&prefix, &item.trace_id),
            Signal::Logs => logs_subject(&prefix, &item.trace_id),
        };
        let stored = publish(&js, subject, item.payload).await;
        sink.finish(stored);
    }
}

/// Stores one message, riding out a broker that cannot take it now (a leader election, a node
/// restart) for [`OUTAGE_TOLERANCE`]: telemetry lost in an outage would fail the correlation
/// check of a healthy run. Given up on after that, with a warning: the buffer behind it must
/// not wait forever.
async fn publish(js: &jetstream::Context, subject: String, payload: Bytes) -> bool {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/x-protobuf");
    let attempt = || async {
        let ack = js
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(PUBLISH_ACK_TIMEOUT, ack)
            .await
            .map_err(|_| "no acknowledgement".to_owned())?
            .map_err(|e| e.to_string())
    };
    let deadline = tokio::time::Instant::now() + OUTAGE_TOLERANCE;
    match retry_until("storing telemetry", deadline, attempt, |_| true).await {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(
                subject,
                error,
                "telemetry dropped: the store did not take it"
            );
            false
        }
    }
}
