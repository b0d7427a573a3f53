//! `verify` on hand-built traces: each test names the one thing that is wrong, if any.

use std::collections::BTreeMap;

use flotilla_tracestore::{LogRecord, LogSource, SpanEvent, SpanRecord, Trace, verify};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const RUN: &str = "01JRUN";

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn span(id: &str, parent: Option<&str>, service: &str, instance: &str) -> SpanRecord {
    SpanRecord {
        service_name: "flotilla-agent".into(),
        trace_id: TRACE.into(),
        span_id: id.into(),
        parent_span_id: parent.map(str::to_owned),
        name: format!("span {id}"),
        attributes: attrs(&[
            ("flotilla.run_id", RUN),
            ("flotilla.service", service),
            ("flotilla.instance", instance),
        ]),
        ..SpanRecord::default()
    }
}

fn log(span_id: &str, service: &str, instance: &str) -> LogRecord {
    LogRecord {
        service_name: "flotilla-agent".into(),
        trace_id: Some(TRACE.into()),
        span_id: Some(span_id.into()),
        body: "phase finished".into(),
        attributes: attrs(&[
            ("flotilla.run_id", RUN),
            ("flotilla.service", service),
            ("flotilla.instance", instance),
        ]),
        ..LogRecord::default()
    }
}

/// A coordinator root, and under it one producer span and one agent span per service.
fn good_trace() -> Trace {
    let mut spans = vec![span("1000000000000001", None, "coordinator", "")];
    let mut logs = vec![log("1000000000000001", "coordinator", "")];
    for (i, svc) in ["inference", "execution"].iter().enumerate() {
        let id = format!("20000000000000{i:02}");
        spans.push(span(&id, Some("1000000000000001"), svc, "a1"));
        logs.push(log(&id, svc, "a1"));
    }
    Trace {
        spans,
        logs,
        log_source: LogSource::Records,
    }
}

const EXPECTED: [(&str, &str); 2] = [("inference", "a1"), ("execution", "a1")];

/// Every service has spans and logs carrying the run: ok, with one root and no orphan.
#[test]
fn a_correlated_trace_passes() {
    let report = verify(&good_trace(), RUN, &EXPECTED);
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.trace_id, TRACE);
    assert_eq!(report.roots.len(), 1);
    assert_eq!(report.roots[0].service, "coordinator");
    assert!(report.orphans.is_empty());
    for s in &report.services {
        assert!(s.correlated && s.problems.is_empty(), "{s:?}");
        assert_eq!((s.spans, s.logs), (1, 1));
    }
    assert_eq!(report.others.len(), 1);
    assert_eq!(report.others[0].service, "coordinator");

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["run_id"], RUN);
    assert_eq!(json["ok"], true);
    assert_eq!(json["services"][0]["service"], "inference");
    assert_eq!(json["services"][0]["instance"], "a1");
    assert_eq!(json["services"][0]["spans"], 1);
    assert_eq!(json["services"][0]["logs"], 1);
    assert_eq!(json["services"][0]["correlated"], true);
    assert!(
        json["services"][0]["problems"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(json["orphans"].as_array().unwrap().is_empty());
    assert_eq!(json["roots"].as_array().unwrap().len(), 1);
}

/// A service that sent nothing fails the report, and is named.
#[test]
fn a_missing_service_fails() {
    let report = verify(
        &good_trace(),
        RUN,
        &[("inference", "a1"), ("execution", "a1"), ("risk", "a1")],
    );
    assert!(!report.ok);
    assert!(
        report.inconclusive,
        "nothing arrived from risk: no proof either way"
    );
    let risk = report
        .services
        .iter()
        .find(|s| s.service == "risk")
        .unwrap();
    assert!(!risk.correlated);
    assert_eq!((risk.spans, risk.logs), (0, 0));
    assert_eq!(risk.problems, ["no spans", "no log records"]);
    assert!(
        report
            .services
            .iter()
            .filter(|s| s.service != "risk")
            .all(|s| s.correlated)
    );
}

/// A service whose log records lack the run ID is not correlated.
#[test]
fn logs_without_the_run_id_fail() {
    let mut trace = good_trace();
    let mut extra = log("2000000000000001", "execution", "a1");
    extra.attributes.remove("flotilla.run_id");
    trace.logs.push(extra);
    let mut wrong = log("2000000000000001", "execution", "a1");
    wrong
        .attributes
        .insert("flotilla.run_id".into(), "OTHER".into());
    trace.logs.push(wrong);

    let report = verify(&trace, RUN, &EXPECTED);
    assert!(!report.ok);
    assert!(
        !report.inconclusive,
        "records without the run ID contradict it"
    );
    let execution = &report.services[1];
    assert_eq!(execution.service, "execution");
    assert!(!execution.correlated);
    assert_eq!(execution.logs, 3);
    assert_eq!(
        execution.problems,
        ["2 of 3 log records lack flotilla.run_id=01JRUN"]
    );
    assert!(report.services[0].correlated);
}

/// Log records with no trace ID (logged outside any span) or another trace are flagged.
#[test]
fn logs_outside_the_trace_fail() {
    let mut trace = good_trace();
    let mut loose = log("2000000000000000", "inference", "a1");
    loose.trace_id = None;
    trace.logs.push(loose);
    let report = verify(&trace, RUN, &EXPECTED);
    assert!(!report.ok);
    assert!(!report.inconclusive);
    assert_eq!(
        report.services[0].problems,
        ["1 of 2 log records carry no trace id"]
    );
}

/// A span whose parent is not in the trace is an orphan and fails the report.
#[test]
fn an_orphan_fails() {
    let mut trace = good_trace();
    trace.spans.push(span(
        "3000000000000000",
        Some("dead00000000beef"),
        "inference",
        "a1",
    ));
    let report = verify(&trace, RUN, &EXPECTED);
    assert!(!report.ok);
    assert!(report.inconclusive, "a lost parent is missing telemetry");
    assert_eq!(report.orphans.len(), 1);
    assert_eq!(report.orphans[0].span_id, "3000000000000000");
    assert_eq!(report.orphans[0].parent_span_id, "dead00000000beef");
    assert_eq!(report.orphans[0].service, "inference");
    assert_eq!(
        report.problems,
        ["1 spans have a parent missing from the trace"]
    );
    // The service itself is still correlated: the orphan is a trace-level problem.
    assert!(report.services.iter().all(|s| s.correlated));
}

/// Two roots (an agent that did not continue the trace) fail the report.
#[test]
fn a_second_root_fails() {
    let mut trace = good_trace();
    trace.spans[2].parent_span_id = None;
    let report = verify(&trace, RUN, &EXPECTED);
    assert!(!report.ok);
    assert!(
        !report.inconclusive,
        "a second root is a broken propagation"
    );
    assert_eq!(report.roots.len(), 2);
    assert_eq!(report.problems, ["expected one root span, found 2"]);
}

/// Without `flotilla.service`, records fall back to the resource's service name and instance.
#[test]
fn identity_falls_back_to_the_resource() {
    let mut trace = good_trace();
    for s in &mut trace.spans {
        s.attributes.remove("flotilla.service");
        s.attributes.remove("flotilla.instance");
        s.resource = attrs(&[("service.name", "inference"), ("service.instance.id", "a1")]);
    }
    for l in &mut trace.logs {
        l.attributes.remove("flotilla.service");
        l.attributes.remove("flotilla.instance");
        l.resource = attrs(&[("service.name", "inference"), ("service.instance.id", "a1")]);
    }
    let report = verify(&trace, RUN, &[("inference", "a1")]);
    assert!(report.ok, "{report:#?}");
    assert_eq!((report.services[0].spans, report.services[0].logs), (3, 3));
}

/// For Jaeger and Tempo (no logs), span events count as logs, covered by their span's run ID.
#[test]
fn span_events_stand_in_for_logs() {
    let mut trace = good_trace();
    trace.logs.clear();
    trace.log_source = LogSource::SpanEvents;
    let report = verify(&trace, RUN, &EXPECTED);
    assert!(!report.ok);
    assert_eq!(
        report.services[0].problems,
        ["no span events (this backend keeps no logs)"]
    );
    for s in &mut trace.spans {
        s.events.push(SpanEvent {
            name: "phase finished".into(),
            attributes: BTreeMap::new(),
        });
    }
    let report = verify(&trace, RUN, &EXPECTED);
    assert!(report.ok, "{report:#?}");
}

/// An empty trace (nothing exported yet) is not ok.
#[test]
fn an_empty_trace_fails() {
    let report = verify(&Trace::default(), RUN, &EXPECTED);
    assert!(!report.ok);
    assert_eq!(report.trace_id, "");
    assert_eq!(report.problems, ["no spans or logs found for this trace"]);
}

/// A service's own span (`flotilla.component = service`) under its agent's span, and its log.
fn with_service_span(run_id: Option<&str>) -> Trace {
    let mut trace = good_trace();
    let mut own = span(
        "3000000000000001",
        Some("2000000000000001"),
        "execution",
        "a1",
    );
    own.service_name = "flotilla-sample".into();
    own.attributes
        .insert("flotilla.component".into(), "service".into());
    let mut own_log = log("3000000000000001", "execution", "a1");
    own_log.service_name = "flotilla-sample".into();
    match run_id {
        Some(run_id) => {
            own.attributes
                .insert("flotilla.run_id".into(), run_id.into());
            own_log
                .attributes
                .insert("flotilla.run_id".into(), run_id.into());
        }
        None => {
            own.attributes.remove("flotilla.run_id");
            own_log.attributes.remove("flotilla.run_id");
        }
    }
    trace.spans.push(own);
    trace.logs.push(own_log);
    trace
}

/// The service's own spans count with its agent's: carrying the run ID, they pass.
#[test]
fn a_service_s_own_correlated_spans_pass() {
    let report = verify(&with_service_span(Some(RUN)), RUN, &EXPECTED);
    assert!(report.ok, "{report:#?}");
    assert_eq!((report.services[1].spans, report.services[1].logs), (2, 2));
}

/// A service that drops the correlation header (its own spans and logs lack the run ID) is
/// named as not correlated, even though its agent's spans are fine.
#[test]
fn a_service_that_drops_the_run_id_fails() {
    let report = verify(&with_service_span(None), RUN, &EXPECTED);
    assert!(!report.ok);
    assert!(report.services[0].correlated);
    let execution = &report.services[1];
    assert_eq!(execution.service, "execution");
    assert!(!execution.correlated);
    assert_eq!(
        execution.problems,
        [
            "1 of 1 of the service's own spans lack flotilla.run_id=01JRUN: the service dropped \
             the correlation header",
            "1 of 2 log records lack flotilla.run_id=01JRUN",
        ]
    );
}
