//! W3C trace context (`traceparent`, `tracestate`) through NATS message headers.
//!
//! The producer calls [`inject`] on the headers it publishes; the consumer creates its span,
//! then calls [`set_parent`] with the message's headers *before* entering it.

use async_nats::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};

/// Writes OpenTelemetry fields into NATS headers.
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // Propagator keys are plain ASCII tokens, which `insert` accepts.
        self.0.insert(key, value.as_str());
    }
}

/// Reads OpenTelemetry fields from NATS headers. NATS header names are case-sensitive; a name
/// that differs only in case (a Go producer's `Traceparent`) is found too.
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str()).or_else(|| {
            self.0
                .iter()
                .find(|(k, _)| {
                    let k: &str = k.as_ref();
                    k.eq_ignore_ascii_case(key)
                })
                .and_then(|(_, v)| v.first())
                .map(|v| v.as_str())
        })
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current `tracing` span's trace context into `headers`.
pub fn inject(headers: &mut HeaderMap) {
    inject_context(&tracing::Span::current().context(), headers);
}

/// Writes `cx`'s trace context into `headers`.
pub fn inject_context(cx: &Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// The trace context carried by `headers` (an empty context when there is none).
pub fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes the trace context carried by `headers` the parent of `span`. Call it right after
/// creating the span, before it is entered or instrumented; without headers or a valid
/// `traceparent` the span stays a root.
pub fn set_parent(span: &tracing::Span, headers: Option<&HeaderMap>) -> Result<(), SetParentError> {
    match headers {
        Some(headers) => {
            let cx = extract(headers);
            use opentelemetry::trace::TraceContextExt;
            if cx.span().span_context().is_valid() {
                span.set_parent(cx)
            } else {
                Ok(())
            }
        }
        None => Ok(()),
    }
}

/// The current `tracing` span's trace context as HTTP header pairs (`traceparent`,
/// `tracestate`), for requests into services so that their own spans and logs join the trace.
pub fn http_headers() -> Vec<(String, String)> {
    let mut fields = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut fields);
    let mut pairs: Vec<(String, String)> = fields.into_iter().collect();
    pairs.sort();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    fn context() -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    /// What `inject_context` writes, `extract` reads back.
    #[test]
    fn context_round_trips_through_headers() {
        let mut headers = HeaderMap::new();
        inject_context(&context(), &mut headers);
        assert_eq!(
            headers.get("traceparent").unwrap().as_str(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let cx = extract(&headers);
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_remote() && sc.is_sampled());
    }

    /// A producer that capitalises header names (Go's `http.Header`) is understood.
    #[test]
    fn header_names_match_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        let cx = extract(&headers);
        assert!(cx.span().span_context().is_valid());
    }

    /// No headers, or garbage, give an empty context.
    #[test]
    fn missing_or_bad_headers_give_no_parent() {
        assert!(!extract(&HeaderMap::new()).span().span_context().is_valid());
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "garbage");
        assert!(!extract(&headers).span().span_context().is_valid());
    }
}
