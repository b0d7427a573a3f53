//! Functional performance: small measured workloads run before the change (the baseline) and
//! after it — N HTTP requests at concurrency C (latency percentiles, errors), or one job run
//! (duration, and the throughput the job prints) — and the gates that compare the two.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_schemas::{GateReport, Gates, Inconclusive, Workload, WorkloadFigures};

use crate::run_context::RunContext;
use crate::{health, steps};

/// Runs `workload` once and returns its figures. Failures are counted, not raised: a workload
/// that cannot run at all has zero samples, which the gate judges inconclusive.
pub async fn measure(cx: &RunContext<'_>, workload: &Workload) -> WorkloadFigures {
    let RunContext {
        http,
        root,
        run_id,
        launcher,
        ..
    } = *cx;
    match workload {
        Workload::Http {
            url,
            method,
            body,
            headers,
            requests,
            concurrency,
            ..
        } => {
            let method = method
                .as_deref()
                .and_then(|m| reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                .unwrap_or(reqwest::Method::GET);
            http_load(
                http,
                url,
                method,
                body.clone(),
                health::request_headers(Some(run_id), headers).ok(),
                *requests,
                *concurrency,
            )
            .await
        }
        Workload::Job {
            program,
            args,
            timeout_ms,
            throughput_field,
            ..
        } => {
            let (run, took) = steps::run_timed(root, program, args, *timeout_ms, launcher).await;
            let duration_ms = took.as_millis() as u64;
            match run {
                Ok(output) if output.status.success() => WorkloadFigures {
                    samples: 1,
                    duration_ms: Some(duration_ms),
                    throughput: throughput_field
                        .as_deref()
                        .and_then(|field| reported(&output.stdout, field)),
                    ..Default::default()
                },
                _ => WorkloadFigures {
                    errors: 1,
                    duration_ms: Some(duration_ms),
                    ..Default::default()
                },
            }
        }
    }
}

/// The number `field` holds in the JSON object on the last non-empty line of `stdout`.
fn reported(stdout: &[u8], field: &str) -> Option<f64> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    serde_json::from_str::<serde_json::Value>(line)
        .ok()?
        .get(field)?
        .as_f64()
}

async fn http_load(
    http: &reqwest::Client,
    url: &str,
    method: reqwest::Method,
    body: Option<String>,
    headers: Option<reqwest::header::HeaderMap>,
    requests: u32,
    concurrency: u32,
) -> WorkloadFigures {
    // Headers that cannot be sent fail every request: no samples, an inconclusive gate.
    let Some(headers) = headers else {
        return WorkloadFigures {
            errors: requests,
            ..Default::default()
        };
    };
    let concurrency = concurrency.clamp(1, requests.max(1));
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, url, method, body, headers, next) = (
            http.clone(),
            url.to_owned(),
            method.clone(),
            body.clone(),
            headers.clone(),
            next.clone(),
        );
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u32;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                let mut request = http
                    .request(method.clone(), &url)
                    .timeout(Duration::from_secs(10))
                    .headers(headers.clone());
                if let Some(body) = &body {
                    request = request.body(body.clone());
                }
                let started = Instant::now();
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::with_capacity(requests as usize);
    let mut errors = 0;
    while let Some(Ok((mut l, e))) = workers.join_next().await {
        latencies.append(&mut l);
        errors += e;
    }
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| -> Option<f64> {
        if latencies.is_empty() {
            return None;
        }
        // Nearest rank.
        let rank = ((p / 100.0) * latencies.len() as f64).ceil().max(1.0) as usize;
        Some((latencies[rank - 1] * 1000.0).round() / 1000.0)
    };
    WorkloadFigures {
        samples: latencies.len() as u32,
        errors,
        p50_ms: percentile(50.0),
        p95_ms: percentile(95.0),
        p99_ms: percentile(99.0),
        ..Default::default()
    }
}

/// The gates of one workload: errors, then latency (p95, in microseconds) or duration, then
/// throughput. Too few samples on either side makes the gate inconclusive, and the plan's
/// `inconclusive` policy decides whether that passes.
pub fn gates(
    name: &str,
    before: &WorkloadFigures,
    after: &WorkloadFigures,
    gates: &Gates,
) -> Vec<GateReport> {
    let mut out = Vec::new();
    let ceiling = |before: u64, slack: u64| {
        ((before as f64 * (1.0 + gates.latency_p95_max_increase_pct / 100.0)) as u64)
            .max(before + slack)
    };
    let min = gates.min_samples.max(1);
    let enough = |f: &WorkloadFigures, needed: u32| f.samples >= needed;
    let needed = if before.duration_ms.is_some() { 1 } else { min };
    if !enough(before, needed) || !enough(after, needed) {
        out.push(GateReport {
            gate: format!("{name}.samples"),
            before: u64::from(before.samples),
            after: u64::from(after.samples),
            limit: u64::from(needed),
            passed: gates.inconclusive == Inconclusive::Warn,
            higher_is_better: true,
            inconclusive: true,
        });
        return out;
    }
    // A gate the after figure passes by staying at or under `limit`.
    let at_most = |gate: &str, before: u64, after: u64, limit: u64| {
        GateReport::at_most(format!("{name}.{gate}"), before, after, limit)
    };
    out.push(at_most(
        "errors",
        u64::from(before.errors),
        u64::from(after.errors),
        u64::from(before.errors),
    ));
    let micros = |ms: f64| (ms * 1000.0).round() as u64;
    if let (Some(b), Some(a)) = (before.p95_ms, after.p95_ms) {
        let (b, a) = (micros(b), micros(a));
        let limit = ceiling(b, gates.latency_slack_ms * 1000);
        out.push(at_most("p95_us", b, a, limit));
    }
    if let (Some(b), Some(a)) = (before.duration_ms, after.duration_ms) {
        let limit = ceiling(b, gates.latency_slack_ms);
        out.push(at_most("duration_ms", b, a, limit));
    }
    if let (Some(b), Some(a)) = (before.throughput, after.throughput) {
        let limit = (b * (1.0 - gates.throughput_max_decrease_pct / 100.0)).floor();
        // A job that ran within the latency slack of its baseline is too short to read a
        // throughput drop from: a preempted 2 ms job "loses" half its throughput.
        let within_slack = match (before.duration_ms, after.duration_ms) {
            (Some(bd), Some(ad)) => ad <= bd + gates.latency_slack_ms,
            _ => false,
        };
        out.push(GateReport {
            gate: format!("{name}.throughput"),
            before: b.round() as u64,
            after: a.round() as u64,
            limit: limit as u64,
            passed: a >= limit || within_slack,
            higher_is_better: true,
            inconclusive: false,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(samples: u32, p95: f64) -> WorkloadFigures {
        WorkloadFigures {
            samples,
            p95_ms: Some(p95),
            ..Default::default()
        }
    }

    #[test]
    fn twice_the_latency_trips_the_p95_gate_and_jitter_does_not() {
        let gates = Gates::default();
        let tripped = gates_of(&http(50, 20.0), &http(50, 40.0), &gates);
        assert!(
            tripped.iter().any(|g| g.gate == "w.p95_us" && !g.passed),
            "{tripped:?}"
        );
        let fine = gates_of(&http(50, 2.0), &http(50, 4.0), &gates);
        assert!(
            fine.iter().all(|g| g.passed),
            "2 ms more is within the 5 ms slack: {fine:?}"
        );
    }

    #[test]
    fn too_few_samples_is_inconclusive_and_follows_the_policy() {
        let mut gates = Gates::default();
        let report = gates_of(&http(50, 2.0), &http(3, 2.0), &gates);
        assert!(report[0].inconclusive && !report[0].passed);
        gates.inconclusive = Inconclusive::Warn;
        assert!(gates_of(&http(50, 2.0), &http(3, 2.0), &gates)[0].passed);
    }

    #[test]
    fn a_throughput_drop_beyond_the_limit_trips() {
        let gates = Gates::default();
        let job = |t: f64, ms: u64| WorkloadFigures {
            samples: 1,
            duration_ms: Some(ms),
            throughput: Some(t),
            ..Default::default()
        };
        let report = gates_of(&job(1000.0, 100), &job(800.0, 125), &gates);
        let throughput = report.iter().find(|g| g.gate == "w.throughput").unwrap();
        assert!(!throughput.passed && throughput.higher_is_better && throughput.limit == 850);
        assert!(
            gates_of(&job(1000.0, 100), &job(900.0, 111), &gates)
                .iter()
                .all(|g| g.passed)
        );
        // Within the latency slack of a very short job, a throughput drop is noise.
        assert!(
            gates_of(&job(1000.0, 2), &job(500.0, 4), &gates)
                .iter()
                .all(|g| g.passed)
        );
    }

    #[test]
    fn job_throughput_is_read_from_its_last_json_line() {
        assert_eq!(
            reported(
                b"starting\n{\"records_per_second\": 1234.5}\n",
                "records_per_second"
            ),
            Some(1234.5)
        );
        assert_eq!(reported(b"not json", "records_per_second"), None);
    }

    fn gates_of(
        before: &WorkloadFigures,
        after: &WorkloadFigures,
        gates: &Gates,
    ) -> Vec<GateReport> {
        super::gates("w", before, after, gates)
    }
}
