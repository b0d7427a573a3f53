//! `verify`: reading back and verifying the trace of a synthetic run of N services from the
//! default store, as `flotilla verify` does (`default_store::fetch`, then
//! `flotilla_tracestore::verify`).
//!
//! The run is shaped like a real one: the coordinator's root span and one producer span per
//! service; per service, what one agent exports after a migrate and a finalize command (a
//! consumer span, five phase spans, a dozen log records), published the way the agent's
//! exporter does (one OTLP message of spans and one of logs per flush, on the trace's subjects).

use std::time::Instant;

use anyhow::ensure;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;

use crate::common::{self, Nats, Stats, Sync};

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

struct Ids(u64);

impl Ids {
    fn span(&mut self) -> Vec<u8> {
        self.0 += 1;
        self.0.to_be_bytes().to_vec()
    }
}

fn span(
    trace: &[u8],
    id: Vec<u8>,
    parent: Vec<u8>,
    name: &str,
    kind: i32,
    attrs: Vec<KeyValue>,
) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: id,
        parent_span_id: parent,
        name: name.to_owned(),
        kind,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_100_000_000,
        attributes: attrs,
        ..Default::default()
    }
}

fn resource(service: &str, instance: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            kv("service.name", service),
            kv("service.instance.id", instance),
        ],
        ..Default::default()
    })
}

fn log_record(trace: &[u8], span_id: Vec<u8>, message: &str, attrs: Vec<KeyValue>) -> LogRecord {
    LogRecord {
        trace_id: trace.to_vec(),
        span_id,
        time_unix_nano: 1_700_000_000_050_000_000,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(message.into())),
        }),
        attributes: attrs,
        ..Default::default()
    }
}

fn spans_request(resource: Option<Resource>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource,
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn logs_request(resource: Option<Resource>, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource,
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The synthetic run's identity: its trace, its root span, and the span IDs handed out so far.
struct Run<'a> {
    trace: &'a [u8],
    run_id: &'a str,
    root: Vec<u8>,
    ids: Ids,
}

impl Run<'_> {
    fn ident(&self, service: &str, instance: &str) -> Vec<KeyValue> {
        vec![
            kv(flotilla_telemetry::RUN_ID_ATTR, self.run_id),
            kv(flotilla_telemetry::SERVICE_ATTR, service),
            kv(flotilla_telemetry::INSTANCE_ATTR, instance),
        ]
    }

    /// What one agent exports for `command` (its consumer span, its phase spans, their log
    /// records), and the coordinator's producer span for it.
    fn agent_export(
        &mut self,
        service: &str,
        instance: &str,
        command: &str,
    ) -> (Span, Vec<Span>, Vec<LogRecord>) {
        let trace = self.trace;
        let producer = span(
            trace,
            self.ids.span(),
            self.root.clone(),
            &format!("flotilla.cmd.{service}.{instance} publish"),
            4,
            self.ident("flotilla", "bench"),
        );
        let process = self.ids.span();
        let mut spans = vec![span(
            trace,
            process.clone(),
            self.root.clone(),
            &format!("flotilla.cmd.{service}.{instance} process ({command})"),
            5,
            self.ident(service, instance),
        )];
        let phases: &[&str] = if command == "migrate" {
            &["precheck", "backup", "apply", "restart", "validate"]
        } else {
            &["finalize"]
        };
        let mut records = Vec::new();
        for phase in phases {
            let id = self.ids.span();
            let attrs = self.ident(service, instance);
            spans.push(span(trace, id.clone(), process.clone(), phase, 1, attrs));
            records.push(log_record(
                trace,
                id,
                "phase ended",
                self.ident(service, instance),
            ));
        }
        for message in ["command received", "result published"] {
            let attrs = self.ident(service, instance);
            records.push(log_record(trace, process.clone(), message, attrs));
        }
        (producer, spans, records)
    }
}

/// Publishes the synthetic run; returns the number of spans and log records.
async fn publish_run(
    js: &async_nats::jetstream::Context,
    trace_hex: &str,
    trace: &[u8],
    run_id: &str,
    services: usize,
) -> anyhow::Result<(usize, usize)> {
    let prefix = flotilla_schemas::subjects::DEFAULT_PREFIX;
    let traces = flotilla_telemetry::store::traces_subject(prefix, trace_hex);
    let logs = flotilla_telemetry::store::logs_subject(prefix, trace_hex);
    let mut ids = Ids(0);
    let root = ids.span();
    let mut run = Run {
        trace,
        run_id,
        root: root.clone(),
        ids,
    };
    let mut coordinator = vec![span(
        trace,
        root,
        Vec::new(),
        "flotilla run bench",
        1,
        run.ident("flotilla", "bench"),
    )];
    let (mut n_spans, mut n_logs) = (1, 0);
    let mut acks = Vec::new();
    for s in 0..services {
        let (service, instance) = (format!("svc{s:05}"), "a".to_owned());
        for command in ["migrate", "finalize"] {
            let (producer, spans, records) = run.agent_export(&service, &instance, command);
            coordinator.push(producer);
            n_spans += spans.len();
            n_logs += records.len();
            let agent = || resource("flotilla-agent", &format!("{service}/{instance}"));
            let spans = spans_request(agent(), spans);
            let records = logs_request(agent(), records);
            acks.push(
                js.publish(traces.clone(), spans.encode_to_vec().into())
                    .await?,
            );
            acks.push(
                js.publish(logs.clone(), records.encode_to_vec().into())
                    .await?,
            );
        }
        if acks.len() >= 512 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    n_spans += coordinator.len() - 1;
    let spans = spans_request(resource("flotilla", "bench"), coordinator);
    acks.push(js.publish(traces, spans.encode_to_vec().into()).await?);
    for ack in acks {
        ack.await?;
    }
    Ok((n_spans, n_logs))
}

pub async fn verify(services: usize, runs: usize) -> anyhow::Result<()> {
    let nats = Nats::start(Sync::Always)?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let prefix = flotilla_schemas::subjects::DEFAULT_PREFIX;
    flotilla_telemetry::store::ensure_stream(&js, prefix).await?;
    let trace: Vec<u8> = (0u8..16)
        .map(|b| b.wrapping_mul(17).wrapping_add(1))
        .collect();
    let trace_hex: String = trace.iter().map(|b| format!("{b:02x}")).collect();
    let run_id = flotilla_schemas::RunId::new().to_string();
    let (spans, logs) = publish_run(&js, &trace_hex, &trace, &run_id, services).await?;
    let expected: Vec<(String, String)> = (0..services)
        .map(|s| (format!("svc{s:05}"), "a".to_owned()))
        .collect();

    let (mut fetch, mut check, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let read = flotilla_tracestore::default_store::fetch(&client, prefix, &trace_hex).await?;
        let fetched = t.elapsed();
        let t2 = Instant::now();
        let report = flotilla_tracestore::verify(&read, &run_id, &expected);
        let checked = t2.elapsed();
        ensure!(
            report.ok && report.services.len() == services,
            "the synthetic run did not verify: {:?}",
            report.problems
        );
        fetch.push(fetched.as_secs_f64());
        check.push(checked.as_secs_f64());
        total.push((fetched + checked).as_secs_f64());
    }
    println!(
        "## verify: default-store fetch + correlation check of a run of {services} services\n"
    );
    println!(
        "{}; {spans} spans and {logs} log records in {} stored messages; {runs} run(s); seconds, median (min–max)\n",
        common::machine(),
        services * 4 + 1
    );
    common::table(
        &["step", "seconds"],
        &[
            vec![
                "`default_store::fetch` (ordered consumer, decode OTLP)".into(),
                Stats::new(fetch).mmm(3),
            ],
            vec![
                "`flotilla_tracestore::verify`".into(),
                Stats::new(check).mmm(3),
            ],
            vec!["total".into(), Stats::new(total).mmm(3)],
        ],
    );
    Ok(())
}
