//! The redaction boundary end to end: every check of a run fails with the service's secret in
//! its reason (a checker that prints it, as it is and base64-encoded), and neither the value nor
//! its encodings reach the bus (events, telemetry, run store), an agent's journal or log, the
//! coordinator's output, a report (Markdown, JUnit, HTML, JSON), a dry run's diff, or the
//! service's environment. A few fixed nasty secrets here; the agent's unit tests run random ones
//! against the redactor, the publisher and the journal.

use base64::Engine as _;
use flotilla_tests::tap::{BusTap, files_under};
use flotilla_tests::{Fleet, NatsServer};

/// One secret per service, each full of what breaks naive redaction.
const SECRETS: [(&str, &str); 3] = [
    ("training", "p@ss w0rd\"'\\<>&%+=?#{}"),
    ("ingest", "tök€n💥/;`$(id)`|^~ \t*"),
    ("inference", "%41%2B+plus&amp;\\u0041\u{1b}[31m"),
];

/// The shapes a leak of `secret` would take.
fn leaked_forms(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret).unwrap();
    let json = json[1..json.len() - 1].to_owned();
    let debug = format!("{secret:?}");
    let debug = debug[1..debug.len() - 1].to_owned();
    let base64 = base64::engine::general_purpose::STANDARD.encode(secret);
    vec![
        secret.to_owned(),
        json,
        debug,
        base64.trim_end_matches('=').to_owned(),
    ]
}

/// Every check prints the secret the step wrote (raw and base64, on the last line of stderr,
/// which the agent quotes in the failure reason) and fails, or posts it to a missing page.
fn plan(fleet: &Fleet) -> String {
    let mut plan = String::from(
        "name = \"redaction\"\n\
         [[step]]\naction = \"write_file\"\npath = \"secrets/API_KEY\"\nmode = 0o600\ncontent = \"${secret:API_KEY}\"\n",
    );
    for (role, _) in SECRETS {
        plan.push_str(&format!(
            "[[service]]\nname = \"{role}\"\n[[service.check]]\ntype = \"command\"\nprogram = \"sh\"\n\
             args = [\"-c\", \"printf 'key %s b64 %s\\\\n' \\\"$(cat secrets/API_KEY)\\\" \\\"$(base64 -w0 secrets/API_KEY)\\\" >&2; exit 3\"]\n\
             [[service.check]]\ntype = \"http\"\nurl = \"http://127.0.0.1:{}/no-such-page\"\nmethod = \"POST\"\nbody = \"token=${{secret:API_KEY}}\"\ntimeout_ms = 500\n",
            fleet.port(role)
        ));
    }
    plan
}

/// Every check fails quoting its service's secret; no stream, file, log, report or environment
/// holds the value in any of its common encodings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_checks_leak_no_secret_into_any_stream_file_log_or_report() {
    let nats = NatsServer::start().unwrap();
    let tap = BusTap::start(nats.url()).await.unwrap();

    let roles: Vec<&str> = SECRETS.iter().map(|(role, _)| *role).collect();
    let fleet = tokio::task::block_in_place(|| Fleet::start(nats.url(), &roles).unwrap());
    // Written after the agents started: each learns its new value when the command arrives.
    for (role, secret) in SECRETS {
        std::fs::write(
            fleet.dir().join("secrets").join(role).join("API_KEY"),
            secret,
        )
        .unwrap();
        // A file of the root that holds the value: a dry run's diff of it must not show it.
        std::fs::write(
            fleet.root(role).join("leaky.conf"),
            format!("key={secret}\n"),
        )
        .unwrap();
    }
    let plan = fleet.write_plan("redaction.toml", &plan(&fleet));
    let check =
        tokio::task::block_in_place(|| fleet.flotilla(&["plan", "check", plan.to_str().unwrap()]));
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let reports = fleet.dir().join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    let (md, junit, html) = (
        reports.join("run.md"),
        reports.join("run.xml"),
        reports.join("run.html"),
    );
    let run = tokio::task::block_in_place(|| {
        fleet.flotilla(&[
            "migrate",
            plan.to_str().unwrap(),
            "--output",
            "json",
            "--report-md",
            md.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
            "--report-html",
            html.to_str().unwrap(),
        ])
    });
    assert_eq!(
        run.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();

    let mut dry_plan = String::from(
        "name = \"dry\"\n[[step]]\naction = \"replace_text\"\npath = \"leaky.conf\"\nfind = \"key=\"\nreplace = \"api_key=\"\n",
    );
    for role in &roles {
        dry_plan.push_str(&format!("[[service]]\nname = \"{role}\"\n"));
    }
    let dry_plan = fleet.write_plan("dry.toml", &dry_plan);
    let dry = tokio::task::block_in_place(|| {
        fleet.flotilla(&[
            "migrate",
            dry_plan.to_str().unwrap(),
            "--dry-run",
            "--output",
            "json",
        ])
    });
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("api_key="),
        "the dry run shows its diff: {}\n{}",
        String::from_utf8_lossy(&dry.stdout),
        String::from_utf8_lossy(&dry.stderr)
    );

    // The services' environment, while they run.
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    for role in &roles {
        let pid = fleet.service_pid(role).expect("the service runs");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        places.push((format!("{role}'s service environment"), environ));
    }
    // Stopped agents have flushed all their telemetry: settling the tap then captures it all.
    let mut fleet = fleet;
    for role in &roles {
        tokio::task::block_in_place(|| fleet.stop_agent(role));
    }
    let bus = tap
        .settle(std::time::Duration::from_secs(20))
        .await
        .unwrap();
    let bus_text = String::from_utf8_lossy(&bus);
    for subject in ["flotilla.evt.", ".otel.logs.", ".otel.traces.", "$KV."] {
        assert!(bus_text.contains(subject), "the tap saw {subject}");
    }

    places.extend([
        ("bus traffic".into(), bus.clone()),
        ("coordinator stdout".into(), run.stdout.clone()),
        ("coordinator stderr".into(), run.stderr.clone()),
        ("dry run stdout".into(), dry.stdout.clone()),
        ("dry run stderr".into(), dry.stderr.clone()),
    ]);
    for path in files_under(fleet.dir()) {
        // The roots (and backup copies of them) and the secret sources hold it by design.
        let by_design = path
            .components()
            .any(|c| c.as_os_str() == "services" || c.as_os_str() == "tree")
            || path.starts_with(fleet.dir().join("secrets"));
        if !by_design {
            places.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    for path in [&md, &junit, &html] {
        assert!(path.exists(), "{} written", path.display());
    }
    for (place, bytes) in &places {
        let text = String::from_utf8_lossy(bytes);
        for (role, secret) in SECRETS {
            for form in leaked_forms(secret) {
                assert!(
                    !text.contains(&form),
                    "{role}'s secret leaked into {place} as {form:?}"
                );
            }
        }
    }
    // The checks did fail on what they printed, redacted.
    assert!(
        report.to_string().contains("[REDACTED]"),
        "the failure reasons quote the redacted secret: {report:#}"
    );
    tokio::task::block_in_place(|| drop(fleet));
}
