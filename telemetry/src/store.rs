//! The default store: OTLP protobuf published to a JetStream stream, so spans and logs of every
//! agent and of the coordinator are kept with nothing but NATS running.
//!
//! | what | name |
//! |---|---|
//! | stream | `<PREFIX>_TELEMETRY` (`FLOTILLA_TELEMETRY`), file storage, bounded by age and size |
//! | spans of one trace | `<prefix>.otel.traces.<trace_id_hex>`: an `ExportTraceServiceRequest` |
//! | logs of one trace | `<prefix>.otel.logs.<trace_id_hex>`: an `ExportLogsServiceRequest` |
//!
//! Each export batch gives one message per trace and signal (split further when it would exceed
//! [`MAX_MESSAGE_BYTES`]). Log records outside any span go under the all-zero trace ID.
//! Until a NATS client is attached, messages wait in a bounded buffer (oldest dropped first).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prost::Message as _;

use crate::TelemetryError;

/// How long the stream keeps telemetry.
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How much the stream keeps; the oldest messages go first.
pub const STREAM_MAX_BYTES: i64 = 512 * 1024 * 1024;
/// The largest message published; bigger batches are split. Half of nats-server's default
/// `max_payload` (1 MiB), leaving room for headers.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024;
/// How much waits in memory for NATS (not attached yet, or unreachable).
pub const MAX_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// Attempts to store one message before it is dropped.
const PUBLISH_ATTEMPTS: u32 = 3;
/// How long one attempt waits for the stream's acknowledgement.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The trace-ID token of log records emitted outside any span.
pub const NO_TRACE: &str = "00000000000000000000000000000000";

/// The telemetry stream's name: `<PREFIX>_TELEMETRY`.
pub fn stream_name(prefix: &str) -> String {
    format!(
        "{}_TELEMETRY",
        prefix.to_ascii_uppercase().replace('-', "_")
    )
}

/// Every subject of the telemetry stream.
pub fn all_subjects(prefix: &str) -> String {
    format!("{prefix}.otel.>")
}

/// Where the spans of one trace are published (`trace_id` in lower-case hex).
pub fn traces_subject(prefix: &str, trace_id: &str) -> String {
    format!("{prefix}.otel.traces.{trace_id}")
}

/// Where the log records of one trace are published (`trace_id` in lower-case hex).
pub fn logs_subject(prefix: &str, trace_id: &str) -> String {
    format!("{prefix}.otel.logs.{trace_id}")
}

/// The telemetry stream as Flotilla wants it.
pub fn stream_config(prefix: &str) -> stream::Config {
    stream::Config {
        name: stream_name(prefix),
        description: Some("Flotilla spans and logs (OTLP protobuf), one subject per trace".into()),
        subjects: vec![all_subjects(prefix)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_age: STREAM_MAX_AGE,
        max_bytes: STREAM_MAX_BYTES,
        ..Default::default()
    }
}

/// Creates or opens the telemetry stream.
pub async fn ensure_stream(
    js: &jetstream::Context,
    prefix: &str,
) -> Result<stream::Stream, TelemetryError> {
    let name = stream_name(prefix);
    js.get_or_create_stream(stream_config(prefix))
        .await
        .map_err(|source| TelemetryError::Stream { name, source })
}

/// Counters of the default store since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Messages produced by the exporters.
    pub enqueued: u64,
    /// Messages acknowledged by the stream.
    pub stored: u64,
    /// Messages dropped because the buffer was full.
    pub dropped: u64,
    /// Messages dropped after failed attempts.
    pub failed: u64,
}

impl StoreStats {
    /// Messages neither stored nor given up on yet.
    pub fn pending(&self) -> u64 {
        self.enqueued - self.stored - self.dropped - self.failed
    }
}

#[derive(Debug, Clone, Copy)]
enum Signal {
    Traces,
    Logs,
}

#[derive(Debug)]
struct Outgoing {
    signal: Signal,
    trace_id: String,
    payload: Bytes,
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

    fn enqueue(&self, item: Outgoing) {
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

async fn publish(js: &jetstream::Context, subject: String, payload: Bytes) -> bool {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/x-protobuf");
    for attempt in 1..=PUBLISH_ATTEMPTS {
        let result = async {
            let ack = js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(PUBLISH_ACK_TIMEOUT, ack)
                .await
                .map_err(|_| "no acknowledgement".to_owned())?
                .map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(_) => return true,
            Err(error) => {
                tracing::debug!(subject, attempt, error, "telemetry publish failed");
                if attempt < PUBLISH_ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                } else {
                    tracing::warn!(
                        subject,
                        error,
                        "telemetry dropped: the store did not take it"
                    );
                }
            }
        }
    }
    false
}

fn hex(id: &[u8]) -> String {
    if id.iter().all(|b| *b == 0) {
        return NO_TRACE.to_owned();
    }
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits resource spans by trace, one request per trace.
fn traces_by_trace(all: Vec<ResourceSpans>) -> BTreeMap<String, ExportTraceServiceRequest> {
    let mut out: BTreeMap<String, ExportTraceServiceRequest> = BTreeMap::new();
    for rs in all {
        for ss in rs.scope_spans {
            for span in ss.spans {
                let req = out.entry(hex(&span.trace_id)).or_default();
                let rs_out = match req
                    .resource_spans
                    .iter_mut()
                    .position(|r| r.resource == rs.resource && r.schema_url == rs.schema_url)
                {
                    Some(i) => &mut req.resource_spans[i],
                    None => {
                        req.resource_spans.push(ResourceSpans {
                            resource: rs.resource.clone(),
                            scope_spans: Vec::new(),
                            schema_url: rs.schema_url.clone(),
                        });
                        req.resource_spans.last_mut().expect("just pushed")
                    }
                };
                let ss_out = match rs_out
                    .scope_spans
                    .iter_mut()
                    .position(|s| s.scope == ss.scope && s.schema_url == ss.schema_url)
                {
                    Some(i) => &mut rs_out.scope_spans[i],
                    None => {
                        rs_out.scope_spans.push(ScopeSpans {
                            scope: ss.scope.clone(),
                            spans: Vec::new(),
                            schema_url: ss.schema_url.clone(),
                        });
                        rs_out.scope_spans.last_mut().expect("just pushed")
                    }
                };
                ss_out.spans.push(span);
            }
        }
    }
    out
}

/// Splits resource logs by trace, one request per trace.
fn logs_by_trace(all: Vec<ResourceLogs>) -> BTreeMap<String, ExportLogsServiceRequest> {
    let mut out: BTreeMap<String, ExportLogsServiceRequest> = BTreeMap::new();
    for rl in all {
        for sl in rl.scope_logs {
            for record in sl.log_records {
                let req = out.entry(hex(&record.trace_id)).or_default();
                let rl_out = match req
                    .resource_logs
                    .iter_mut()
                    .position(|r| r.resource == rl.resource && r.schema_url == rl.schema_url)
                {
                    Some(i) => &mut req.resource_logs[i],
                    None => {
                        req.resource_logs.push(ResourceLogs {
                            resource: rl.resource.clone(),
                            scope_logs: Vec::new(),
                            schema_url: rl.schema_url.clone(),
                        });
                        req.resource_logs.last_mut().expect("just pushed")
                    }
                };
                let sl_out = match rl_out
                    .scope_logs
                    .iter_mut()
                    .position(|s| s.scope == sl.scope && s.schema_url == sl.schema_url)
                {
                    Some(i) => &mut rl_out.scope_logs[i],
                    None => {
                        rl_out.scope_logs.push(ScopeLogs {
                            scope: sl.scope.clone(),
                            log_records: Vec::new(),
                            schema_url: sl.schema_url.clone(),
                        });
                        rl_out.scope_logs.last_mut().expect("just pushed")
                    }
                };
                sl_out.log_records.push(record);
            }
        }
    }
    out
}

/// Encodes `req`, halving it until each part fits in `max` bytes (a single record that does
/// not fit is sent alone and the server may refuse it).
fn encode_traces(req: ExportTraceServiceRequest, max: usize, out: &mut Vec<Bytes>) {
    let count: usize = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    if req.encoded_len() <= max || count <= 1 {
        out.push(req.encode_to_vec().into());
        return;
    }
    let (mut left, mut right) = (
        ExportTraceServiceRequest::default(),
        ExportTraceServiceRequest::default(),
    );
    let mut seen = 0;
    for rs in req.resource_spans {
        let empty = |rs: &ResourceSpans| ResourceSpans {
            resource: rs.resource.clone(),
            scope_spans: Vec::new(),
            schema_url: rs.schema_url.clone(),
        };
        let (mut l, mut r) = (empty(&rs), empty(&rs));
        for ss in rs.scope_spans {
            let empty = |ss: &ScopeSpans| ScopeSpans {
                scope: ss.scope.clone(),
                spans: Vec::new(),
                schema_url: ss.schema_url.clone(),
            };
            let (mut ls, mut rss) = (empty(&ss), empty(&ss));
            for span in ss.spans {
                if seen < count / 2 {
                    ls.spans.push(span)
                } else {
                    rss.spans.push(span)
                }
                seen += 1;
            }
            if !ls.spans.is_empty() {
                l.scope_spans.push(ls);
            }
            if !rss.spans.is_empty() {
                r.scope_spans.push(rss);
            }
        }
        if !l.scope_spans.is_empty() {
            left.resource_spans.push(l);
        }
        if !r.scope_spans.is_empty() {
            right.resource_spans.push(r);
        }
    }
    encode_traces(left, max, out);
    encode_traces(right, max, out);
}

/// [`encode_traces`] for logs.
fn encode_logs(req: ExportLogsServiceRequest, max: usize, out: &mut Vec<Bytes>) {
    let count: usize = req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    if req.encoded_len() <= max || count <= 1 {
        out.push(req.encode_to_vec().into());
        return;
    }
    let (mut left, mut right) = (
        ExportLogsServiceRequest::default(),
        ExportLogsServiceRequest::default(),
    );
    let mut seen = 0;
    for rl in req.resource_logs {
        let empty = |rl: &ResourceLogs| ResourceLogs {
            resource: rl.resource.clone(),
            scope_logs: Vec::new(),
            schema_url: rl.schema_url.clone(),
        };
        let (mut l, mut r) = (empty(&rl), empty(&rl));
        for sl in rl.scope_logs {
            let empty = |sl: &ScopeLogs| ScopeLogs {
                scope: sl.scope.clone(),
                log_records: Vec::new(),
                schema_url: sl.schema_url.clone(),
            };
            let (mut ls, mut rs) = (empty(&sl), empty(&sl));
            for record in sl.log_records {
                if seen < count / 2 {
                    ls.log_records.push(record)
                } else {
                    rs.log_records.push(record)
                }
                seen += 1;
            }
            if !ls.log_records.is_empty() {
                l.scope_logs.push(ls);
            }
            if !rs.log_records.is_empty() {
                r.scope_logs.push(rs);
            }
        }
        if !l.scope_logs.is_empty() {
            left.resource_logs.push(l);
        }
        if !r.scope_logs.is_empty() {
            right.resource_logs.push(r);
        }
    }
    encode_logs(left, max, out);
    encode_logs(right, max, out);
}

/// Span exporter into the default store. Export only encodes and queues, so it never blocks
/// on the network and needs no runtime.
#[derive(Debug)]
pub(crate) struct StoreSpanExporter {
    sink: Arc<Sink>,
    resource: ResourceAttributesWithSchema,
}

impl StoreSpanExporter {
    pub(crate) fn new(sink: &Arc<Sink>) -> Self {
        Self {
            sink: Arc::clone(sink),
            resource: ResourceAttributesWithSchema::default(),
        }
    }
}

impl SpanExporter for StoreSpanExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let grouped =
            opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(
                batch,
                &self.resource,
            );
        for (trace_id, req) in traces_by_trace(grouped) {
            let mut parts = Vec::new();
            encode_traces(req, MAX_MESSAGE_BYTES, &mut parts);
            for payload in parts {
                self.sink.enqueue(Outgoing {
                    signal: Signal::Traces,
                    trace_id: trace_id.clone(),
                    payload,
                });
            }
        }
        std::future::ready(Ok(()))
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = resource.into();
    }
}

/// Log exporter into the default store; see [`StoreSpanExporter`].
#[derive(Debug)]
pub(crate) struct StoreLogExporter {
    sink: Arc<Sink>,
    resource: ResourceAttributesWithSchema,
}

impl StoreLogExporter {
    pub(crate) fn new(sink: &Arc<Sink>) -> Self {
        Self {
            sink: Arc::clone(sink),
            resource: ResourceAttributesWithSchema::default(),
        }
    }
}

impl LogExporter for StoreLogExporter {
    fn export(&self, batch: LogBatch<'_>) -> impl Future<Output = OTelSdkResult> + Send {
        let grouped = opentelemetry_proto::transform::logs::tonic::group_logs_by_resource_and_scope(
            &batch,
            &self.resource,
        );
        for (trace_id, req) in logs_by_trace(grouped) {
            let mut parts = Vec::new();
            encode_logs(req, MAX_MESSAGE_BYTES, &mut parts);
            for payload in parts {
                self.sink.enqueue(Outgoing {
                    signal: Signal::Logs,
                    trace_id: trace_id.clone(),
                    payload,
                });
            }
        }
        std::future::ready(Ok(()))
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = resource.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn span(trace: u8, id: u8, name_len: usize) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            name: "x".repeat(name_len),
            ..Default::default()
        }
    }

    /// Spans of two traces in one batch become one request per trace.
    #[test]
    fn batch_is_split_per_trace() {
        let rs = ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span(1, 1, 1), span(2, 2, 1), span(1, 3, 1)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let by = traces_by_trace(vec![rs]);
        assert_eq!(by.len(), 2);
        let one = &by["01010101010101010101010101010101"];
        assert_eq!(one.resource_spans[0].scope_spans[0].spans.len(), 2);
    }

    /// A request bigger than the message limit is halved until each part fits.
    #[test]
    fn big_requests_are_split() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: (0..8).map(|i| span(1, i, 1000)).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mut parts = Vec::new();
        encode_traces(req, 2500, &mut parts);
        assert_eq!(parts.len(), 4);
        let total: usize = parts
            .iter()
            .map(|p| {
                let r = ExportTraceServiceRequest::decode(p.clone()).unwrap();
                assert!(p.len() <= 2500);
                r.resource_spans[0].scope_spans[0].spans.len()
            })
            .sum();
        assert_eq!(total, 8);
    }

    #[test]
    fn names() {
        assert_eq!(stream_name("flotilla"), "FLOTILLA_TELEMETRY");
        assert_eq!(traces_subject("flotilla", "ab"), "flotilla.otel.traces.ab");
        assert_eq!(logs_subject("flotilla", "ab"), "flotilla.otel.logs.ab");
        assert_eq!(hex(&[0; 16]), NO_TRACE);
    }
}
