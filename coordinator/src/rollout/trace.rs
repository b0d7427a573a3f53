//! The run's trace: its root span and the `traceparent` every later span hangs under.

use crate::store::RunRecord;

/// How long the coordinator waits for the run's root span to reach the store.
pub(super) const ROOT_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The name the coordinator's spans carry as `flotilla.service`.
pub const COORDINATOR_SERVICE: &str = "flotilla";

/// Opens and closes the run's root span at once (so that it is exported even if this
/// coordinator is killed) and returns its `traceparent`, under which every later span goes.
pub(super) fn root_span(record: &RunRecord) -> String {
    let span = tracing::info_span!(
        parent: None,
        "run",
        otel.name = format!("flotilla run {}", record.plan_name),
        flotilla.run_id = %record.run_id,
        flotilla.service = COORDINATOR_SERVICE,
        flotilla.instance = %record.coordinator,
        flotilla.plan = %record.plan_name,
    );
    let mut headers = std::collections::HashMap::new();
    span.in_scope(|| {
        tracing::info!(run_id = %record.run_id, plan = %record.plan_name, "run started");
        for (name, value) in flotilla_telemetry::http_headers() {
            headers.insert(name, value);
        }
    });
    headers.remove("traceparent").unwrap_or_default()
}

/// The context a stored `traceparent` names.
pub(super) fn parse_traceparent(traceparent: &str) -> opentelemetry::Context {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent);
    flotilla_telemetry::extract(&headers)
}
