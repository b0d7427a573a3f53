//! Run-once jobs (`kind = "job"`, `tests/fixtures/batch_job.py`): a migration runs the job
//! where a service would be restarted, records its duration, peak memory, exit code and
//! outputs, and rolls back a bad run with its files restored byte-identical; the job's own
//! `check_command` is the dry run's check.

use flotilla_tests::{Fleet, NatsServer, Snapshot, json_stdout, repo_root, snapshot};
use serde_json::Value;

const JOB: &str = "batch";

/// The job's configuration before any migration.
const CONF: &str = "rows=10\nexit_code=0\nwrite_output=yes\nballast_mb=0\nsleep_ms=0\n";

/// What every test's job must produce, and its own dry run.
const JOB_SECTION: &str = "timeout = \"60s\"\n\
     check_command = [\"python3\", \"batch_job.py\", \"--check\"]\n\
     max_peak_memory_bytes = 134217728\n\
     [[service.job.outputs]]\npath = \"out/result.json\"\ncontains = \"\\\"status\\\": \\\"done\\\"\"\n";

/// The batch job under an agent, with `extra` settings for its `[service.job]`.
fn start(nats: &NatsServer, extra: &str) -> Fleet {
    let script = repo_root().join("tests/fixtures/batch_job.py");
    let script = std::fs::read_to_string(script).unwrap();
    let section = format!("{extra}\n{JOB_SECTION}");
    Fleet::start_job(
        nats.url(),
        JOB,
        &["python3", "batch_job.py"],
        &section,
        &[("batch_job.py", &script), ("job.conf", CONF)],
    )
    .unwrap()
}

/// A plan that replaces `find` with `replace` in `job.conf`. The duration gate gets a second
/// of slack: a Python start on a busy shared machine varies by more than the default 5 ms.
fn plan(fleet: &Fleet, find: &str, replace: &str) -> String {
    let plan = format!(
        "name = \"batch-job\"\n[gates]\nlatency_slack_ms = 1500\n\
         [[service]]\nname = \"{JOB}\"\n[[service.step]]\n\
         action = \"replace_text\"\npath = \"job.conf\"\nfind = {find:?}\nreplace = {replace:?}\n"
    );
    let path = fleet.write_plan("job-plan.toml", &plan);
    path.to_str().unwrap().to_owned()
}

fn migrate(fleet: &Fleet, plan: &str) -> (Option<i32>, Value) {
    let out = fleet.flotilla(&["migrate", plan, "--output", "json"]);
    (out.status.code(), json_stdout(&out))
}

/// The one service of a run's report (`services`) or of a dry run's (`waves[].targets`).
fn only_service(report: &Value) -> &Value {
    let services: Vec<&Value> = match report.get("services") {
        Some(services) => services.as_array().unwrap().iter().collect(),
        None => report["waves"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|w| w["targets"].as_array().unwrap())
            .collect(),
    };
    assert_eq!(services.len(), 1, "{report:#}");
    services[0]
}

/// How many times the job ran: each run prints one line to the agent's service output log.
fn runs(fleet: &Fleet) -> usize {
    let log = fleet.job_state_dir(JOB).join("service-output.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("batch job run "))
        .count()
}

fn result_json(fleet: &Fleet) -> Value {
    let text = std::fs::read_to_string(fleet.root(JOB).join("out/result.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `flotilla report <run> --format <format>`, as text.
fn report_of(fleet: &Fleet, run_id: &str, format: &str) -> String {
    let out = fleet.flotilla(&["report", run_id, "--format", format]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A job's figures as a report carries them, checked to be those of a good run.
fn assert_good_run(run: &Value, service: &Value) {
    assert_eq!(run["exit_code"], 0, "{service:#}");
    assert!(run["duration_ms"].as_u64().is_some(), "{service:#}");
    let peak = run["peak_memory_bytes"].as_u64().unwrap_or(0);
    assert!(
        peak > 1 << 20,
        "a Python process holds more than 1 MiB: {service:#}"
    );
    let output = &run["outputs"][0];
    assert_eq!(output["path"], "out/result.json", "{service:#}");
    assert_eq!(output["passed"], true, "{service:#}");
    assert!(output["bytes"].as_u64().unwrap() > 0, "{service:#}");
}

/// A job migrates by being run: once for its baseline (none recorded yet), once on the new
/// files; both runs' figures are in the report, its gates are the job's, and no startup time
/// is made up.
#[test]
fn a_job_migrates_by_running_it_and_records_its_figures() {
    let nats = NatsServer::start().unwrap();
    let fleet = start(&nats, "");
    assert_eq!(runs(&fleet), 0, "the agent never runs a job on its own");

    let (code, report) = migrate(&fleet, &plan(&fleet, "rows=10", "rows=20"));
    assert_eq!(code, Some(0), "{report:#}");
    let service = only_service(&report);
    assert_eq!(service["status"], "succeeded", "{service:#}");
    assert_eq!(runs(&fleet), 2, "a baseline run and the migration's run");
    assert_eq!(result_json(&fleet)["rows"], 20);

    let m = &service["measurements"];
    assert_good_run(&m["job_before"], service);
    assert_good_run(&m["job_after"], service);
    assert!(m.get("startup_ms_after").is_none(), "{service:#}");
    let gates: Vec<&str> = service["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["gate"].as_str().unwrap())
        .collect();
    assert_eq!(
        gates,
        [
            "job_duration_ms",
            "job_peak_memory_bytes",
            "job_peak_memory_limit_bytes"
        ],
        "{service:#}"
    );

    // Every report shows the job's figures where a service shows its startup time.
    let run_id = report["run_id"].as_str().unwrap();
    let text = report_of(&fleet, run_id, "text");
    assert!(
        text.contains("STARTUP") && text.contains("  run "),
        "{text}"
    );
    let markdown = report_of(&fleet, run_id, "md");
    for wanted in [
        "| job run ",
        "ms, exit code 0 |",
        "- job baseline run: ",
        "- job run after the change: ",
        "exit code 0; out/result.json ok (",
        "| peak ",
        "- health endpoint: none: a run-once job",
        "- gate job_duration_ms ",
        "- gate job_peak_memory_limit_bytes ",
    ] {
        assert!(markdown.contains(wanted), "{wanted}:\n{markdown}");
    }
    assert!(!markdown.contains("figures: startup"), "{markdown}");
    let html = report_of(&fleet, run_id, "html");
    assert!(
        html.contains("<h3>Job runs</h3>") && html.contains("run after the change"),
        "{html}"
    );

    // The next migration compares with the run the last one recorded: no baseline run. Its
    // log check reads what the run wrote to its output log.
    let log = fleet.job_state_dir(JOB).join("service-output.log");
    let with_log_check = format!(
        "{}[[service.check]]\ntype = \"log\"\npath = {:?}\ncontains = \"batch job run rows=30\"\n",
        std::fs::read_to_string(plan(&fleet, "rows=20", "rows=30")).unwrap(),
        log.display().to_string(),
    );
    let path = fleet.write_plan("job-plan-log.toml", &with_log_check);
    let (code, report) = migrate(&fleet, path.to_str().unwrap());
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(runs(&fleet), 3);
    assert_eq!(result_json(&fleet)["rows"], 30);
}

/// A bad run after the change — a failing exit code, a missing output, too much memory, too
/// long — is rolled back: the job's files (its outputs with them) come back byte-identical and
/// the job is not run again.
#[test]
fn a_bad_run_is_rolled_back_with_its_files_restored_and_not_rerun() {
    let nats = NatsServer::start().unwrap();
    let fleet = start(&nats, "");
    // A good migration first: it records the baseline the bad ones are gated against.
    let (code, report) = migrate(&fleet, &plan(&fleet, "rows=10", "rows=11"));
    assert_eq!(code, Some(0), "{report:#}");
    let before: Snapshot = snapshot(&fleet.root(JOB));

    for (find, replace, wanted) in [
        (
            "rows=11\nexit_code=0",
            "rows=99\nexit_code=3",
            &["the job ended with exit code 3"][..],
        ),
        (
            "write_output=yes",
            "write_output=no",
            &["the job did not produce out/result.json (not written by this run"],
        ),
        (
            "rows=11\nexit_code=0\nwrite_output=yes\nballast_mb=0",
            "rows=98\nexit_code=0\nwrite_output=yes\nballast_mb=200",
            &[
                "job_peak_memory_bytes regression",
                "job_peak_memory_limit_bytes regression",
            ],
        ),
        (
            "rows=11\nexit_code=0\nwrite_output=yes\nballast_mb=0\nsleep_ms=0",
            "rows=97\nexit_code=0\nwrite_output=yes\nballast_mb=0\nsleep_ms=4000",
            &["job_duration_ms regression"],
        ),
    ] {
        let runs_before = runs(&fleet);
        let (code, report) = migrate(&fleet, &plan(&fleet, find, replace));
        assert_eq!(code, Some(1), "{wanted:?}: {report:#}");
        let service = only_service(&report);
        assert_eq!(service["status"], "rolled_back", "{service:#}");
        let reason = service["reason"].as_str().unwrap();
        for wanted in wanted {
            assert!(reason.contains(wanted), "{wanted}: {reason}");
        }
        assert!(
            service["measurements"]["job_after"].is_object(),
            "{service:#}"
        );
        assert_eq!(snapshot(&fleet.root(JOB)), before, "{wanted:?}");
        assert_eq!(
            runs(&fleet),
            runs_before + 1,
            "{wanted:?}: run once, not re-run"
        );
    }
    assert_eq!(result_json(&fleet)["rows"], 11);
}

/// With `rerun_on_rollback`, the job runs again on the restored files, and the outputs are
/// those of that run.
#[test]
fn rerun_on_rollback_runs_the_job_on_the_restored_files() {
    let nats = NatsServer::start().unwrap();
    let fleet = start(&nats, "rerun_on_rollback = true\nbaseline = \"none\"");
    let conf_before = std::fs::read(fleet.root(JOB).join("job.conf")).unwrap();

    let bad = plan(&fleet, "rows=10\nexit_code=0", "rows=99\nexit_code=3");
    let (code, report) = migrate(&fleet, &bad);
    assert_eq!(code, Some(1), "{report:#}");
    let service = only_service(&report);
    assert_eq!(service["status"], "rolled_back", "{service:#}");
    assert!(
        service["measurements"].get("job_before").is_none(),
        "{service:#}"
    );
    assert_eq!(runs(&fleet), 2, "the failed run and the re-run");
    assert_eq!(
        std::fs::read(fleet.root(JOB).join("job.conf")).unwrap(),
        conf_before
    );
    assert_eq!(result_json(&fleet)["rows"], 10, "written by the re-run");
}

/// The dry run asks the job's own `check_command` about the current files and never runs the
/// job; a migration to files the check refuses stops before the job runs, and rolls back.
#[test]
fn the_dry_run_uses_the_jobs_check_command() {
    let nats = NatsServer::start().unwrap();
    let fleet = start(&nats, "baseline = \"none\"");
    let good = plan(&fleet, "rows=10", "rows=12");
    let out = fleet.flotilla(&["migrate", &good, "--dry-run", "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(runs(&fleet), 0, "a dry run does not run the job");

    // Broken by hand: the dry run refuses with the check's own words, and changes nothing.
    let conf = fleet.root(JOB).join("job.conf");
    std::fs::write(&conf, CONF.replace("rows=10", "rows=ten")).unwrap();
    let untouched = snapshot(&fleet.root(JOB));
    let broken = plan(&fleet, "sleep_ms=0", "sleep_ms=1");
    let out = fleet.flotilla(&["migrate", &broken, "--dry-run", "--output", "json"]);
    let report = json_stdout(&out);
    assert_ne!(out.status.code(), Some(0), "{report:#}");
    let reason = only_service(&report)["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("check_command refuses the current files")
            && reason.contains("rows must be a whole number"),
        "{reason}"
    );
    assert_eq!(snapshot(&fleet.root(JOB)), untouched);
    std::fs::write(&conf, CONF).unwrap();

    // A restart step would run the job twice: refused before anything changes.
    let restart = format!(
        "{}[[service.step]]\naction = \"restart\"\n",
        std::fs::read_to_string(plan(&fleet, "rows=10", "rows=12")).unwrap()
    );
    let restart = fleet.write_plan("job-plan-restart.toml", &restart);
    let out = fleet.flotilla(&["migrate", restart.to_str().unwrap(), "--output", "json"]);
    let report = json_stdout(&out);
    let reason = only_service(&report)["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("step 2 (restart): batch is a job"),
        "{reason}"
    );
    assert_eq!(runs(&fleet), 0);

    // New files the check refuses: the job is not run, the files come back.
    let before = snapshot(&fleet.root(JOB));
    let (code, report) = migrate(&fleet, &plan(&fleet, "rows=10", "rows=ten"));
    assert_eq!(code, Some(1), "{report:#}");
    let service = only_service(&report);
    assert_eq!(service["status"], "rolled_back", "{service:#}");
    let reason = service["reason"].as_str().unwrap();
    assert!(
        reason.contains("check_command refuses the new files"),
        "{reason}"
    );
    assert_eq!(runs(&fleet), 0);
    assert_eq!(snapshot(&fleet.root(JOB)), before);
}

/// A job migration held for a finalize and rolled back later by the operator: its files come
/// back byte-identical, the job is not run, and the baseline is the one from before it (the
/// next migration is gated against that run, not the rolled-back one).
#[test]
fn an_operator_rollback_of_a_job_migration_restores_its_files_and_its_baseline() {
    let nats = NatsServer::start().unwrap();
    let fleet = start(&nats, "");
    let (code, report) = migrate(&fleet, &plan(&fleet, "rows=10", "rows=11"));
    assert_eq!(code, Some(0), "{report:#}");
    let before = snapshot(&fleet.root(JOB));
    let recorded_run = || {
        let text = std::fs::read_to_string(fleet.job_state_dir(JOB).join("job-baseline.json"));
        serde_json::from_str::<Value>(&text.unwrap()).unwrap()["run"].clone()
    };
    let baseline = recorded_run();
    assert!(baseline["duration_ms"].is_u64(), "{baseline:#}");

    let held = plan(&fleet, "rows=11", "rows=12");
    let out = fleet.flotilla(&["migrate", &held, "--no-finalize", "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(result_json(&fleet)["rows"], 12);
    let runs_before = runs(&fleet);

    let run_id = report["run_id"].as_str().unwrap();
    let out = fleet.flotilla(&["rollback", run_id, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(report["status"], "rolled_back", "{report:#}");
    assert_eq!(snapshot(&fleet.root(JOB)), before);
    assert_eq!(runs(&fleet), runs_before, "not re-run");
    assert_eq!(
        recorded_run(),
        baseline,
        "the baseline from before the rolled-back migration"
    );
}
