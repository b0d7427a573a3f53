//! Correlation check: every expected service has spans and logs in the run's trace, all carrying
//! the trace ID and the run's correlation ID, under a single root with no orphans.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_telemetry::{INSTANCE_ATTR, RUN_ID_ATTR, SERVICE_ATTR};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{LogSource, Trace};

/// Span attribute naming which part of a service emitted the span.
pub const COMPONENT_ATTR: &str = "flotilla.component";
/// [`COMPONENT_ATTR`] of the spans a service emits itself (its agent's spans carry none).
pub const SERVICE_COMPONENT: &str = "service";

/// The verdict on one run's trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VerifyReport {
    /// The run's correlation ID.
    pub run_id: String,
    /// The trace checked (empty when nothing was found).
    pub trace_id: String,
    /// True when every expected service is correlated and the trace has one root and no orphans.
    pub ok: bool,
    /// Not `ok` only for want of telemetry (a service with no spans or no logs at all, a lost
    /// root, orphans whose parent was lost), with nothing present that contradicts the
    /// correlation: what an outage that dropped telemetry leaves. The plan decides what it means.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inconclusive: bool,
    /// One entry per expected service, in the order given.
    pub services: Vec<ServiceReport>,
    /// Spans whose parent is not in the trace.
    pub orphans: Vec<OrphanSpan>,
    /// Spans without a parent; exactly one is expected.
    pub roots: Vec<RootSpan>,
    /// Problems with the trace as a whole.
    pub problems: Vec<String>,
    /// Services found in the trace that were not expected (the coordinator, called services),
    /// for information: they do not affect `ok`.
    pub others: Vec<ServiceReport>,
}

/// What one service contributed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceReport {
    /// The service (`flotilla.service`, else the resource's `service.name`).
    pub service: String,
    /// The instance (`flotilla.instance`, else `service.instance.id`); empty when unknown.
    pub instance: String,
    /// Spans found.
    pub spans: usize,
    /// Log records found (span events for backends that keep no logs).
    pub logs: usize,
    /// At least one span and one log, all carrying the trace and run IDs.
    pub correlated: bool,
    /// What is wrong, in words.
    pub problems: Vec<String>,
}

impl ServiceReport {
    /// True when something present says the service is not correlated (a span or log without
    /// the run ID, or of another trace), beyond telemetry that is missing altogether.
    pub fn contradicts(&self) -> bool {
        let absences = usize::from(self.spans == 0) + usize::from(self.logs == 0);
        self.problems.len() > absences
    }
}

/// A span whose parent is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrphanSpan {
    /// The span.
    pub span_id: String,
    /// The parent that is not in the trace.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// Its service.
    pub service: String,
    /// Its instance.
    pub instance: String,
}

/// A span without a parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RootSpan {
    /// The span.
    pub span_id: String,
    /// The span's name.
    pub name: String,
    /// Its service.
    pub service: String,
    /// Its instance.
    pub instance: String,
}

/// Who emitted a record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Identity {
    service: String,
    instance: String,
}

fn identity(attrs: &BTreeMap<String, String>, resource: &BTreeMap<String, String>) -> Identity {
    let pick = |attr: &str, fallback: &str| {
        attrs
            .get(attr)
            .or_else(|| resource.get(fallback))
            .cloned()
            .unwrap_or_default()
    };
    Identity {
        service: pick(SERVICE_ATTR, "service.name"),
        instance: pick(INSTANCE_ATTR, "service.instance.id"),
    }
}

impl Identity {
    /// An expected `(service, instance)` matches a record of that service with that instance,
    /// or with no instance; an empty expected instance matches any.
    fn matches(&self, service: &str, instance: &str) -> bool {
        self.service == service
            && (instance.is_empty() || self.instance.is_empty() || self.instance == instance)
    }
}

/// What was counted for one identity.
#[derive(Debug, Default)]
struct Tally {
    spans: usize,
    spans_without_run: usize,
    own_spans: usize,
    own_spans_without_run: usize,
    spans_other_trace: usize,
    logs: usize,
    logs_without_run: usize,
    logs_without_trace: usize,
    logs_other_trace: usize,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.spans += other.spans;
        self.spans_without_run += other.spans_without_run;
        self.own_spans += other.own_spans;
        self.own_spans_without_run += other.own_spans_without_run;
        self.spans_other_trace += other.spans_other_trace;
        self.logs += other.logs;
        self.logs_without_run += other.logs_without_run;
        self.logs_without_trace += other.logs_without_trace;
        self.logs_other_trace += other.logs_other_trace;
    }

    fn report(
        &self,
        service: &str,
        instance: &str,
        run_id: &str,
        source: LogSource,
    ) -> ServiceReport {
        let logs_word = match source {
            LogSource::Records => "log records",
            LogSource::SpanEvents => "span events",
        };
        let mut problems = Vec::new();
        if self.spans == 0 {
            problems.push("no spans".to_owned());
        }
        if self.logs == 0 {
            problems.push(match source {
                LogSource::Records => "no log records".to_owned(),
                LogSource::SpanEvents => "no span events (this backend keeps no logs)".to_owned(),
            });
        }
        let mut count = |n: usize, of: usize, what: &str, why: String| {
            if n > 0 {
                problems.push(format!("{n} of {of} {what} {why}"));
            }
        };
        count(
            self.spans_without_run,
            self.spans - self.own_spans,
            "spans",
            format!("lack {RUN_ID_ATTR}={run_id}"),
        );
        count(
            self.own_spans_without_run,
            self.own_spans,
            "of the service's own spans",
            format!("lack {RUN_ID_ATTR}={run_id}: the service dropped the correlation header"),
        );
        count(
            self.spans_other_trace,
            self.spans,
            "spans",
            "belong to another trace".into(),
        );
        count(
            self.logs_without_run,
            self.logs,
            logs_word,
            format!("lack {RUN_ID_ATTR}={run_id}"),
        );
        count(
            self.logs_without_trace,
            self.logs,
            logs_word,
            "carry no trace id".into(),
        );
        count(
            self.logs_other_trace,
            self.logs,
            logs_word,
            "belong to another trace".into(),
        );
        ServiceReport {
            service: service.to_owned(),
            instance: instance.to_owned(),
            spans: self.spans,
            logs: self.logs,
            correlated: problems.is_empty(),
            problems,
        }
    }
}

/// Checks `trace` for the run `run_id` against the services `expected`, as
/// `(service, instance)` pairs (an empty instance matches any).
///
/// A service is correlated when it has at least one span and one log record (span events when
/// the trace comes from Jaeger or Tempo, which keep no logs), all carrying the trace's ID and
/// `flotilla.run_id = run_id`. Records are attributed by their `flotilla.service` and
/// `flotilla.instance` attributes, falling back to the resource's `service.name` and
/// `service.instance.id`. The report is `ok` when every expected service is correlated and the
/// trace has exactly one root and no orphan.
///
/// A service's own spans (those it emits itself, marked `flotilla.component = service`) count
/// with its agent's: they are not required (a service that exports nothing can still be
/// correlated by its agent), but every one present must carry the run ID like any other span,
/// and its log records too. A service that drops the correlation header on the way in thus makes
/// itself uncorrelated, and the report says so.
pub fn verify<S: AsRef<str>, I: AsRef<str>>(
    trace: &Trace,
    run_id: &str,
    expected: &[(S, I)],
) -> VerifyReport {
    let trace_id = trace.trace_id().unwrap_or_default();
    let tallies = tally(trace, run_id, &trace_id);
    let (services, others) = service_reports(&tallies, expected, run_id, trace.log_source);
    let (roots, orphans) = roots_and_orphans(trace);
    let problems = trace_problems(trace, &roots, &orphans);
    let ok = problems.is_empty() && services.iter().all(|s| s.correlated);
    let contradicted = roots.len() > 1 || services.iter().any(ServiceReport::contradicts);
    VerifyReport {
        run_id: run_id.to_owned(),
        trace_id,
        ok,
        inconclusive: !ok && !contradicted,
        services,
        orphans,
        roots,
        problems,
        others,
    }
}

/// Counts, per identity, the spans and logs of `trace` and those lacking the run ID or the
/// trace `trace_id`.
fn tally(trace: &Trace, run_id: &str, trace_id: &str) -> BTreeMap<Identity, Tally> {
    let mut tallies: BTreeMap<Identity, Tally> = BTreeMap::new();
    let has_run = |attrs: &BTreeMap<String, String>| {
        attrs.get(RUN_ID_ATTR).map(String::as_str) == Some(run_id)
    };

    for span in &trace.spans {
        let who = identity(&span.attributes, &span.resource);
        let tally = tallies.entry(who).or_default();
        tally.spans += 1;
        let own =
            span.attributes.get(COMPONENT_ATTR).map(String::as_str) == Some(SERVICE_COMPONENT);
        let without_run = usize::from(!has_run(&span.attributes));
        if own {
            tally.own_spans += 1;
            tally.own_spans_without_run += without_run;
        } else {
            tally.spans_without_run += without_run;
        }
        tally.spans_other_trace += usize::from(span.trace_id != trace_id);
        if trace.log_source == LogSource::SpanEvents {
            for event in &span.events {
                tally.logs += 1;
                // An event belongs to its span: the span's run ID and trace cover it.
                let run = has_run(&event.attributes) || has_run(&span.attributes);
                tally.logs_without_run += usize::from(!run);
                tally.logs_other_trace += usize::from(span.trace_id != trace_id);
            }
        }
    }
    if trace.log_source == LogSource::Records {
        for log in &trace.logs {
            let tally = tallies
                .entry(identity(&log.attributes, &log.resource))
                .or_default();
            tally.logs += 1;
            tally.logs_without_run += usize::from(!has_run(&log.attributes));
            match &log.trace_id {
                None => tally.logs_without_trace += 1,
                Some(id) if *id != trace_id => tally.logs_other_trace += 1,
                Some(_) => {}
            }
        }
    }
    tallies
}

/// One report per expected service (its identities' tallies summed), and one per identity no
/// expected service claimed.
fn service_reports<S: AsRef<str>, I: AsRef<str>>(
    tallies: &BTreeMap<Identity, Tally>,
    expected: &[(S, I)],
    run_id: &str,
    source: LogSource,
) -> (Vec<ServiceReport>, Vec<ServiceReport>) {
    let mut claimed = BTreeSet::new();
    let services: Vec<ServiceReport> = expected
        .iter()
        .map(|(service, instance)| {
            let (service, instance) = (service.as_ref(), instance.as_ref());
            let mut sum = Tally::default();
            for (who, tally) in tallies {
                if who.matches(service, instance) {
                    sum.add(tally);
                    claimed.insert(who.clone());
                }
            }
            sum.report(service, instance, run_id, source)
        })
        .collect();
    let others = tallies
        .iter()
        .filter(|(who, _)| !claimed.contains(*who))
        .map(|(who, tally)| tally.report(&who.service, &who.instance, run_id, source))
        .collect();
    (services, others)
}

/// The spans without a parent, and those whose parent is not in the trace.
fn roots_and_orphans(trace: &Trace) -> (Vec<RootSpan>, Vec<OrphanSpan>) {
    let span_ids: BTreeSet<&str> = trace.spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut orphans = Vec::new();
    let mut roots = Vec::new();
    for span in &trace.spans {
        let who = identity(&span.attributes, &span.resource);
        match &span.parent_span_id {
            None => roots.push(RootSpan {
                span_id: span.span_id.clone(),
                name: span.name.clone(),
                service: who.service,
                instance: who.instance,
            }),
            Some(parent) if !span_ids.contains(parent.as_str()) => orphans.push(OrphanSpan {
                span_id: span.span_id.clone(),
                parent_span_id: parent.clone(),
                name: span.name.clone(),
                service: who.service,
                instance: who.instance,
            }),
            Some(_) => {}
        }
    }
    (roots, orphans)
}

/// What is wrong with the trace as a whole: empty, not one root, orphans.
fn trace_problems(trace: &Trace, roots: &[RootSpan], orphans: &[OrphanSpan]) -> Vec<String> {
    let mut problems = Vec::new();
    if trace.is_empty() {
        problems.push("no spans or logs found for this trace".to_owned());
    }
    if roots.len() != 1 && !trace.spans.is_empty() {
        problems.push(format!("expected one root span, found {}", roots.len()));
    }
    if !orphans.is_empty() {
        problems.push(format!(
            "{} spans have a parent missing from the trace",
            orphans.len()
        ));
    }
    problems
}
