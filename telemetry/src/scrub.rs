//! Scrubbing of everything the telemetry pipeline writes: stderr log lines and the spans and log
//! records handed to each exporter (the default store and OTLP). The binary supplies what to
//! remove (a [`Scrub`], e.g. the agent's secret redactor); this module only applies it at the
//! last step before bytes leave the process, so no field, message or attribute escapes it.

use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry::trace::Status;
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, SdkLogRecord, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tracing_subscriber::fmt::MakeWriter;

/// Removes what must not leave the process from a text.
pub trait Scrub: Send + Sync + 'static {
    /// `text` with everything to hide replaced; borrowed when there was nothing to hide.
    fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str>;
}

/// A shared [`Scrub`], as [`crate::TelemetryConfig`] holds it.
#[derive(Clone)]
pub struct Scrubber(pub Arc<dyn Scrub>);

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrubber")
    }
}

impl Scrubber {
    fn text(&self, text: &str) -> Option<String> {
        match self.0.scrub(text) {
            Cow::Borrowed(_) => None,
            Cow::Owned(scrubbed) => Some(scrubbed),
        }
    }

    fn cow(&self, text: Cow<'static, str>) -> Cow<'static, str> {
        self.text(&text).map(Cow::Owned).unwrap_or(text)
    }

    fn string(&self, value: StringValue) -> StringValue {
        self.text(value.as_str()).map(Into::into).unwrap_or(value)
    }

    fn value(&self, value: Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.string(s)),
            Value::Array(Array::String(items)) => Value::Array(Array::String(
                items.into_iter().map(|s| self.string(s)).collect(),
            )),
            other => other,
        }
    }

    fn key_values(&self, attributes: Vec<KeyValue>) -> Vec<KeyValue> {
        attributes
            .into_iter()
            .map(|kv| KeyValue::new(kv.key, self.value(kv.value)))
            .collect()
    }

    fn any(&self, value: &AnyValue) -> AnyValue {
        match value {
            AnyValue::String(s) => AnyValue::String(self.string(s.clone())),
            AnyValue::ListAny(items) => {
                AnyValue::ListAny(Box::new(items.iter().map(|v| self.any(v)).collect()))
            }
            AnyValue::Map(map) => AnyValue::Map(Box::new(
                map.iter().map(|(k, v)| (k.clone(), self.any(v))).collect(),
            )),
            other => other.clone(),
        }
    }

    fn span(&self, mut span: SpanData) -> SpanData {
        span.name = self.cow(span.name);
        span.attributes = self.key_values(span.attributes);
        for event in &mut span.events.events {
            event.name = self.cow(std::mem::take(&mut event.name));
            event.attributes = self.key_values(std::mem::take(&mut event.attributes));
        }
        for link in &mut span.links.links {
            link.attributes = self.key_values(std::mem::take(&mut link.attributes));
        }
        if let Status::Error { description } = span.status {
            span.status = Status::Error {
                description: self.cow(description),
            };
        }
        span
    }

    /// A copy of `record` with its body and attributes scrubbed (the SDK's records cannot be
    /// changed in place, so it is rebuilt field by field).
    fn record(&self, logger: &SdkLogger, record: &SdkLogRecord) -> SdkLogRecord {
        let mut copy = logger.create_log_record();
        if let Some(name) = record.event_name() {
            copy.set_event_name(name);
        }
        if let Some(target) = record.target() {
            copy.set_target(target.clone());
        }
        if let Some(at) = record.timestamp() {
            copy.set_timestamp(at);
        }
        if let Some(at) = record.observed_timestamp() {
            copy.set_observed_timestamp(at);
        }
        if let Some(cx) = record.trace_context() {
            copy.set_trace_context(cx.trace_id, cx.span_id, cx.trace_flags);
        }
        if let Some(text) = record.severity_text() {
            copy.set_severity_text(text);
        }
        if let Some(number) = record.severity_number() {
            copy.set_severity_number(number);
        }
        if let Some(body) = record.body() {
            copy.set_body(self.any(body));
        }
        copy.add_attributes(
            record
                .attributes_iter()
                .map(|(k, v)| (k.clone(), self.any(v))),
        );
        copy
    }
}

/// A span exporter that scrubs each span before `inner` sees it (without a scrubber, passes
/// them on as they are).
#[derive(Debug)]
pub struct ScrubSpans<E> {
    inner: E,
    scrubber: Option<Scrubber>,
}

impl<E> ScrubSpans<E> {
    /// Wraps `inner`.
    pub fn new(inner: E, scrubber: Option<Scrubber>) -> Self {
        Self { inner, scrubber }
    }
}

impl<E: SpanExporter> SpanExporter for ScrubSpans<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let batch = match &self.scrubber {
            Some(scrubber) => batch.into_iter().map(|s| scrubber.span(s)).collect(),
            None => batch,
        };
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A log exporter that scrubs each record before `inner` sees it (without a scrubber, passes
/// them on as they are).
#[derive(Debug)]
pub struct ScrubLogs<E> {
    inner: E,
    scrubber: Option<Scrubber>,
    /// Makes the scrubbed copies: a provider without processors, used for nothing else.
    logger: SdkLogger,
}

impl<E> ScrubLogs<E> {
    /// Wraps `inner`.
    pub fn new(inner: E, scrubber: Option<Scrubber>) -> Self {
        let logger = SdkLoggerProvider::builder()
            .build()
            .logger("flotilla-scrub");
        Self {
            inner,
            scrubber,
            logger,
        }
    }
}

impl<E: LogExporter> LogExporter for ScrubLogs<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let Some(scrubber) = &self.scrubber else {
            return self.inner.export(batch).await;
        };
        let copies: Vec<(SdkLogRecord, _)> = batch
            .iter()
            .map(|(record, scope)| (scrubber.record(&self.logger, record), scope))
            .collect();
        let refs: Vec<_> = copies.iter().map(|(r, s)| (r, *s)).collect();
        self.inner.export(LogBatch::new(&refs)).await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Stderr for the `fmt` layer, each event scrubbed as a whole line before it is written.
pub struct ScrubbedStderr(pub Option<Scrubber>);

impl<'a> MakeWriter<'a> for ScrubbedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            scrubber: self.0.clone(),
            line: Vec::new(),
        }
    }
}

/// Collects one event's output and writes it, scrubbed, when dropped (the `fmt` layer makes one
/// writer per event), so that a value split across writes is still found.
pub struct LineWriter {
    scrubber: Option<Scrubber>,
    line: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let mut stderr = std::io::stderr().lock();
        let _ = match &self.scrubber {
            Some(s) => stderr.write_all(s.0.scrub(&String::from_utf8_lossy(&self.line)).as_bytes()),
            None => stderr.write_all(&self.line),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

    const SECRET: &str = "hunter22";

    struct Hide;

    impl Scrub for Hide {
        fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
            match text.contains(SECRET) {
                true => Cow::Owned(text.replace(SECRET, "***")),
                false => Cow::Borrowed(text),
            }
        }
    }

    #[derive(Debug, Default, Clone)]
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl SpanExporter for Capture {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let mut seen = self.0.lock().unwrap();
            seen.extend(batch.iter().map(|s| format!("{s:?}")));
            Ok(())
        }
    }

    impl LogExporter for Capture {
        async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
            let mut seen = self.0.lock().unwrap();
            seen.extend(batch.iter().map(|(r, _)| format!("{r:?}")));
            Ok(())
        }
    }

    fn scrubber() -> Option<Scrubber> {
        Some(Scrubber(Arc::new(Hide)))
    }

    /// Span names, attributes, events and status reach the exporter scrubbed.
    #[tokio::test]
    async fn spans_are_scrubbed_before_the_exporter() {
        let capture = Capture::default();
        let exporter = ScrubSpans::new(capture.clone(), scrubber());
        let mut events = SpanEvents::default();
        events.events.push(opentelemetry::trace::Event::new(
            format!("event {SECRET}"),
            std::time::SystemTime::now(),
            vec![KeyValue::new("why", format!("token={SECRET}"))],
            0,
        ));
        let span = SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: format!("GET /?token={SECRET}").into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: vec![
                KeyValue::new("reason", format!("failed: {SECRET}")),
                KeyValue::new(
                    "list",
                    Value::Array(Array::String(vec![format!("{SECRET}!").into()])),
                ),
            ],
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: Status::error(format!("error {SECRET}")),
            instrumentation_scope: InstrumentationScope::builder("t").build(),
        };
        exporter.export(vec![span]).await.unwrap();
        let seen = capture.0.lock().unwrap().join("\n");
        assert!(seen.contains("***") && !seen.contains(SECRET), "{seen}");
    }

    /// Log bodies and attributes reach the exporter scrubbed, the rest of the record kept.
    #[tokio::test]
    async fn log_records_are_scrubbed_before_the_exporter() {
        let capture = Capture::default();
        let exporter = ScrubLogs::new(capture.clone(), scrubber());
        let provider = SdkLoggerProvider::builder().build();
        let mut record = provider.logger("t").create_log_record();
        record.set_body(format!("result published: {SECRET}").into());
        record.set_severity_text("WARN");
        record.add_attribute(
            "error",
            AnyValue::ListAny(Box::new(vec![format!("{SECRET} refused").into()])),
        );
        let scope = InstrumentationScope::builder("t").build();
        let batch = [(&record, &scope)];
        exporter.export(LogBatch::new(&batch)).await.unwrap();
        let seen = capture.0.lock().unwrap().join("\n");
        assert!(
            seen.contains("***") && seen.contains("WARN") && !seen.contains(SECRET),
            "{seen}"
        );
    }
}
