use flotilla_schemas::RunResult;
use time::OffsetDateTime;

use super::timeline::page_data;
use super::*;
use crate::store::CommandRecord;

#[test]
fn markdown_subset_is_escaped_and_structured() {
    let html = markdown_to_html(
        "### inference/a\n\n- status: **succeeded**\n- steps:\n  1. write `<b>&x`\n  2. restart\n- problems: <script>\n",
    );
    assert!(html.contains("<h3>inference/a</h3>"), "{html}");
    assert!(html.contains("<strong>succeeded</strong>"), "{html}");
    assert!(
        html.contains("<ol>\n<li>write <code>&lt;b&gt;&amp;x</code></li>"),
        "{html}"
    );
    assert!(html.contains("problems: &lt;script&gt;"), "{html}");
    assert!(!html.contains("<script>"), "{html}");
    assert_eq!(html.matches("<ul>").count(), html.matches("</ul>").count());
    assert_eq!(html.matches("<li>").count(), html.matches("</li>").count());
}

fn command(run: &str, id: &str, service: &str) -> serde_json::Value {
    serde_json::json!({
        "schema": "flotilla.command.v2", "command_id": id, "run_id": run,
        "service": service, "instance": "a",
        "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z",
        "action": { "kind": "finalize", "migration": id },
    })
}

fn result(run: &str, id: &str, service: &str, at: &str, outcome: &str) -> RunResult {
    serde_json::from_value(serde_json::json!({
        "schema": "flotilla.result.v1", "run_id": run, "command_id": id,
        "service": service, "instance": "a", "at": at, "outcome": outcome,
        "phases": [
            { "phase": "precheck", "status": "succeeded", "duration_ms": 100 },
            { "phase": "apply", "status": "failed", "duration_ms": 200, "detail": "<boom>" },
        ],
        "gates": [{ "gate": "startup_ms", "before": 50, "after": 70, "limit": 150, "passed": true }],
    }))
    .unwrap()
}

/// The timeline takes phase times from the events, falls back to a result's phases for a
/// command without events, and marks the fleet rollback; the page escapes what it embeds.
#[test]
fn timeline_comes_from_events_and_falls_back_to_results() {
    let run = "01a21930-abcf-70cf-b8be-040f0f9d3362";
    let (m1, m2, r1) = (
        "01a21930-0000-7000-8000-000000000001",
        "01a21930-0000-7000-8000-000000000002",
        "01a21930-0000-7000-8000-000000000003",
    );
    let mut record: RunRecord = serde_json::from_value(serde_json::json!({
        "schema": "flotilla.run.v1", "run_id": run, "plan_name": "p</script>",
        "plan_path": "p.toml", "plan_text": "name = \"p\"\n", "status": "failed",
        "stage": "done", "started_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:05Z", "finished_at": "2026-01-01T00:00:05Z",
        "coordinator": "host:1",
        "waves": [{ "name": "one", "max_parallel": null, "targets": [0, 1], "status": "done" }],
        "targets": [
            { "service": "inference", "instance": "a", "wave": 0 },
            { "service": "ingest", "instance": "a", "wave": 0 },
        ],
    }))
    .unwrap();
    let sent = |at: &str, c: serde_json::Value, r: RunResult| CommandRecord {
        command: serde_json::from_value(c).unwrap(),
        sent_at: Some(
            OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap(),
        ),
        result: Some(r),
        timed_out: false,
        not_delivered: None,
        cause: Some("another service failed".into()),
        digest: None,
    };
    record.targets[0].migrate = Some(sent(
        "2026-01-01T00:00:01Z",
        command(run, m1, "inference"),
        result(run, m1, "inference", "2026-01-01T00:00:02Z", "succeeded"),
    ));
    record.targets[0].rollback = Some(sent(
        "2026-01-01T00:00:03Z",
        command(run, r1, "inference"),
        result(run, r1, "inference", "2026-01-01T00:00:04Z", "rolled_back"),
    ));
    record.targets[1].migrate = Some(sent(
        "2026-01-01T00:00:01Z",
        command(run, m2, "ingest"),
        result(run, m2, "ingest", "2026-01-01T00:00:03Z", "rolled_back"),
    ));
    let progress = |id: &str, at: &str, status: &str, phase: &str| {
        RunEvent::Progress(
            serde_json::from_value(serde_json::json!({
                "schema": "flotilla.progress.v1", "run_id": run, "command_id": id,
                "service": "inference", "instance": "a", "at": at, "phase": phase,
                "status": status,
            }))
            .unwrap(),
        )
    };
    let events = [
        progress(m1, "2026-01-01T00:00:01.100Z", "started", "precheck"),
        progress(m1, "2026-01-01T00:00:01.300Z", "succeeded", "precheck"),
        progress(r1, "2026-01-01T00:00:03.500Z", "started", "rollback"),
    ];
    let report = RunReport::from_record(&record);
    let data = page_data(&report, &record, &events);
    let inference = &data.rows[0].bars;
    assert_eq!(
        (inference[0].phase, inference[0].start, inference[0].end),
        ("precheck", 1100, 1300)
    );
    // Started, never ended, but the command has a result: it ends there.
    let rollback = inference.iter().find(|b| b.kind == "rollback").unwrap();
    assert_eq!(
        (rollback.start, rollback.end, rollback.status),
        (3500, 4000, "interrupted")
    );
    // No events for ingest: its result's phases, back to back, ending at the result.
    let ingest = &data.rows[1].bars;
    assert_eq!((ingest[0].start, ingest[0].end), (2700, 2800));
    assert_eq!(
        (ingest[1].start, ingest[1].end, ingest[1].status),
        (2800, 3000, "failed")
    );
    assert_eq!(data.waves[0].start, Some(1000));
    assert_eq!(data.marks[0].kind, "rollback");
    assert_eq!(data.marks[0].at, 3000);
    assert_eq!(data.charts[0].gates[0].name, "startup_ms");
    let text = &data.charts[0].gates[0].text;
    assert_eq!(
        (text.verdict, text.before.as_str(), text.limit.as_deref()),
        ("passed", "50 ms", Some("≤ 150 ms"))
    );
    let page = render(&report, &record, &events, None);
    assert!(!page.contains("p</script>"), "the plan name is not escaped");
    assert!(!page.contains("<boom>"), "a phase detail is not escaped");
    assert!(page.contains("&lt;boom&gt;") || page.contains("\\u003cboom>"));
}

/// A run of agents that stream progress live: no progress is stored, and the timeline comes
/// from the results' phases, each at its `started_at` (a gap between phases stays a gap); an
/// inspection, which the record does not hold, is placed from its stored result.
#[test]
fn timeline_of_live_progress_comes_from_the_results_phase_starts() {
    let run = "01a21930-abcf-70cf-b8be-040f0f9d3362";
    let (m1, i1) = (
        "01a21930-0000-7000-8000-000000000001",
        "01a21930-0000-7000-8000-000000000004",
    );
    let mut record: RunRecord = serde_json::from_value(serde_json::json!({
        "schema": "flotilla.run.v1", "run_id": run, "plan_name": "p",
        "plan_path": "p.toml", "plan_text": "name = \"p\"\n", "status": "succeeded",
        "stage": "done", "started_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:05Z", "finished_at": "2026-01-01T00:00:05Z",
        "coordinator": "host:1",
        "waves": [{ "name": "one", "max_parallel": null, "targets": [0], "status": "done" }],
        "targets": [{ "service": "inference", "instance": "a", "wave": 0 }],
    }))
    .unwrap();
    let phased = |id: &str, at: &str| -> RunResult {
        serde_json::from_value(serde_json::json!({
            "schema": "flotilla.result.v1", "run_id": run, "command_id": id,
            "service": "inference", "instance": "a", "at": at, "outcome": "succeeded",
            "phases": [
                { "phase": "precheck", "status": "succeeded", "duration_ms": 100,
                  "started_at": "2026-01-01T00:00:01.100Z" },
                { "phase": "apply", "status": "succeeded", "duration_ms": 200,
                  "started_at": "2026-01-01T00:00:01.500Z" },
            ],
        }))
        .unwrap()
    };
    record.targets[0].migrate = Some(CommandRecord {
        command: serde_json::from_value(command(run, m1, "inference")).unwrap(),
        sent_at: Some(
            OffsetDateTime::parse(
                "2026-01-01T00:00:01Z",
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap(),
        ),
        result: Some(phased(m1, "2026-01-01T00:00:02Z")),
        timed_out: false,
        not_delivered: None,
        cause: None,
        digest: None,
    });
    let events = [
        RunEvent::Result(Box::new(phased(m1, "2026-01-01T00:00:02Z"))),
        RunEvent::Result(Box::new(phased(i1, "2026-01-01T00:00:04Z"))),
    ];
    let report = RunReport::from_record(&record);
    let data = page_data(&report, &record, &events);
    let bars: Vec<_> = data.rows[0]
        .bars
        .iter()
        .map(|b| (b.kind, b.phase, b.start, b.end))
        .collect();
    assert_eq!(
        bars,
        [
            ("inspect", "precheck", 1100, 1200),
            ("migrate", "precheck", 1100, 1200),
            ("inspect", "apply", 1500, 1700),
            ("migrate", "apply", 1500, 1700),
        ]
    );
    assert!(data.marks.iter().any(|m| m.kind == "check"));
}

/// Text from the run is escaped everywhere the template writes it: notes, the cross-service
/// problems and checks, the correlation error.
#[test]
fn the_page_escapes_what_the_run_says() {
    let hostile = r#"<img src=x onerror="alert('x')">&"#;
    let mut record: RunRecord = serde_json::from_value(serde_json::json!({
        "schema": "flotilla.run.v1", "run_id": "01a21930-abcf-70cf-b8be-040f0f9d3362",
        "plan_name": "p", "plan_path": "p.toml", "plan_text": "name = \"p\"\n",
        "status": "failed", "stage": "done", "started_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:05Z", "coordinator": "host:1",
        "waves": [], "targets": [],
        "cross_service": { "ok": false, "problems": [hostile], "log_correlation": [],
            "services": [{ "service": "a", "instance": "1", "config": [],
                "checks": [{ "kind": "http", "passed": false, "detail": hostile }] }] },
        "correlation": { "ok": false, "error": hostile },
    }))
    .unwrap();
    record.notes.push(hostile.to_owned());
    let report = RunReport::from_record(&record);
    let page = render(&report, &record, &[], None);
    assert!(!page.contains("<img"), "{page}");
    assert!(!page.contains("onerror=\""), "{page}");
    assert_eq!(page.matches("img src=x onerror=").count(), 4, "{page}");
    assert!(page.contains("Cross-service checks: <strong>FAILED</strong>"));
    assert!(page.contains("Correlation: <strong>FAILED</strong>"));
}
