//! Template files shipped with the plan (`source = "templates/…"`), through the shipped secured
//! NATS configuration: the coordinator uploads each file once to the plan-files bucket, every
//! agent fetches it, checks its digest and renders it like inline content (a secret full of
//! special characters lands exactly in the TOML file). A megabytes-large file works; an object
//! altered in the bucket, or gone from it, refuses the migration at precheck with nothing
//! changed; a resumed run ships the files the run started with, whatever the disk holds now.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use flotilla_tests::confinement::connect;
use flotilla_tests::invariants::wait_for_run;
use flotilla_tests::{Fleet, json_stdout, secure, snapshot};
use serde_json::Value;

/// Quotes, backslashes, a tab, a line break, `\u0041` as text, `$`, `#`, unicode, spaces.
const SECRET: &str = " pa\"ss'wo\\rd\t\\u0041 \\n $HOME #=: é🚀\nline2 ";

const ROLES: [&str; 3] = ["inference", "training", "ingest"];

const TEMPLATE_PATH: &str = "templates/service.toml.tmpl";

/// The object store's chunk size (async-nats's default).
const CHUNK: usize = 128 * 1024;

/// One template for every service: the sample service's standard configuration, with the
/// secret in the free-form `[role]` table, then `padding` bytes of comments.
fn template(padding: usize) -> String {
    let mut text = String::from(
        "# ${service:name}'s configuration, shipped with the plan\n\
         [service]\nname = \"${service:name}\"\nenvironment = \"demo\"\n\
         [server]\nhost = \"127.0.0.1\"\nport = ${var:port}\n\
         [logging]\nformat = \"json\"\nlevel = \"info\"\nfile = \"${var:log_file}\"\n\
         [role]\ndb_password = \"${secret:DB_PASSWORD}\"\n",
    );
    let mut line = 0;
    while text.len() < padding {
        line += 1;
        text.push_str(&format!(
            "# padding line {line:07}: a large template still ships and renders\n"
        ));
    }
    text
}

/// A plan whose one step (for every service) writes the standard configuration from the
/// template; `slow` adds a canary wave whose step takes two seconds (a coordinator can be killed
/// mid-run).
fn plan(fleet: &Fleet, name: &str, slow: bool) -> std::path::PathBuf {
    // A service that parses megabytes of configuration starts slower and grows: that is the
    // file's cost, not a regression these tests look for.
    let mut text = format!(
        "name = \"{name}\"\ncommand_timeout = \"60s\"\n[gates]\nstartup_slack_ms = 20000\nmemory_slack_bytes = 1073741824\n"
    );
    if slow {
        text.push_str(
            "[[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n[[wave]]\nname = \"rest\"\n",
        );
    }
    text.push_str(&format!(
        "[[step]]\naction = \"write_file\"\npath = \"config/service.toml\"\nsource = \"{TEMPLATE_PATH}\"\n"
    ));
    for role in ROLES {
        text.push_str(&format!("[[service]]\nname = \"{role}\"\n"));
        if slow && role == "inference" {
            text.push_str(&format!(
                "[[service.step]]\naction = \"write_file\"\npath = \"config/service.toml\"\nsource = \"{TEMPLATE_PATH}\"\n\
                 [[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"sleep 2\"]\n"
            ));
        }
    }
    fleet.write_plan(&format!("{name}.toml"), &text)
}

fn write_template(fleet: &Fleet, text: &str) {
    let path = fleet.dir().join(TEMPLATE_PATH);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Three agents on the shipped secured configuration, each with the secret.
fn start() -> (flotilla_tests::NatsServer, Fleet) {
    let server = secure::start_server();
    let fleet = tokio::task::block_in_place(|| {
        Fleet::start_with(
            server.url(),
            &ROLES,
            &secure::agent_identity,
            secure::coordinator_env(),
        )
    })
    .unwrap();
    for role in ROLES {
        std::fs::write(
            fleet.dir().join(format!("secrets/{role}/DB_PASSWORD")),
            format!("{SECRET}\n"),
        )
        .unwrap();
    }
    (server, fleet)
}

fn flotilla(fleet: &Fleet, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = tokio::task::block_in_place(|| fleet.flotilla(args));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), json_stdout(&out), stderr)
}

fn migrate(fleet: &Fleet, plan: &Path, dry: bool) -> (Option<i32>, Value, String) {
    let mut args = vec!["migrate", plan.to_str().unwrap(), "--output", "json"];
    if dry {
        args.push("--dry-run");
    }
    flotilla(fleet, &args)
}

/// The test's own connection, as the coordinator's identity (it may write the bucket).
async fn as_coordinator(url: &str) -> jetstream::Context {
    let (client, _) = connect(
        url,
        async_nats::ConnectOptions::new()
            .user_and_password("coordinator".into(), "coordinator-secret".into()),
        "coordinator",
    )
    .await
    .unwrap();
    jetstream::new(client)
}

/// The bucket's stream: how many objects it holds and the last sequence written (a second
/// upload of the same file would write every chunk again).
async fn bucket_state(js: &jetstream::Context) -> (u64, u64) {
    let mut stream = js.get_stream("OBJ_flotilla_files").await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let store = js.get_object_store("flotilla_files").await.unwrap();
    let mut objects = 0;
    let mut list = store.list().await.unwrap();
    while let Some(object) = futures::StreamExt::next(&mut list).await {
        if !object.unwrap().deleted {
            objects += 1;
        }
    }
    (objects, state.last_sequence)
}

fn digest_of(text: &str) -> String {
    flotilla_bus::plan_files::digest_of(text.as_bytes())
}

fn assert_rendered(fleet: &Fleet, role: &str, template_len: usize) {
    let written = std::fs::read_to_string(fleet.root(role).join("config/service.toml")).unwrap();
    assert!(
        written.len() >= template_len - 64,
        "{role}: {} bytes",
        written.len()
    );
    let toml: toml::Table = written.parse().unwrap();
    assert_eq!(toml["service"]["name"].as_str(), Some(role));
    assert_eq!(
        toml["role"]["db_password"].as_str(),
        Some(SECRET),
        "{role}: the secret did not land exactly"
    );
    assert!(!written.contains("${"), "{role}: a placeholder is left");
    let (status, body) = fleet.health(role).expect("the service answers");
    assert_eq!(status, 200, "{role}: {body}");
    assert!(body.contains("\"layout\":\"standard\""), "{role}: {body}");
}

/// A 3 MiB template: the dry run previews it from the bucket (uploaded once for three agents);
/// the migration that follows uploads nothing again, and every service gets it rendered, the
/// secret exact. Agents may read the bucket, never write it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_template_is_uploaded_once_and_lands_rendered_on_every_agent() {
    let (server, fleet) = start();
    let text = template(3 * 1024 * 1024);
    write_template(&fleet, &text);
    let plan = plan(&fleet, "shipped", false);

    let (code, check, stderr) = flotilla(
        &fleet,
        &["plan", "check", plan.to_str().unwrap(), "--output", "json"],
    );
    assert_eq!(code, Some(0), "{check:#}\n{stderr}");

    let (code, dry, stderr) = migrate(&fleet, &plan, true);
    assert_eq!(code, Some(0), "{dry:#}\n{stderr}");
    let targets = dry["waves"][0]["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 3, "{dry:#}");
    for target in targets {
        let diff = target["steps"][0]["diff"].as_str().unwrap();
        assert!(
            diff.contains("+db_password = \"********\"")
                && diff.contains("more line(s) of diff not shown"),
            "{diff:.2000}"
        );
    }
    assert!(!dry.to_string().contains("ss'wo"), "the secret leaked");

    let admin = as_coordinator(server.url()).await;
    let chunks = text.len().div_ceil(CHUNK) as u64;
    let (objects, last) = bucket_state(&admin).await;
    assert_eq!(objects, 1, "one object for one file");
    assert_eq!(
        last,
        chunks + 1,
        "uploaded once: its chunks and one metadata message"
    );
    let store = admin.get_object_store("flotilla_files").await.unwrap();
    let info = store.info(digest_of(&text)).await.unwrap();
    assert_eq!(info.size, text.len());

    let (code, report, stderr) = migrate(&fleet, &plan, false);
    assert_eq!(code, Some(0), "{report:#}\n{stderr}");
    for role in ROLES {
        assert_rendered(&fleet, role, text.len());
    }
    assert_eq!(
        bucket_state(&admin).await,
        (1, last),
        "the file already in the bucket was uploaded again"
    );

    // An agent reads the bucket but cannot write it.
    let (agent, _) = connect(
        server.url(),
        async_nats::ConnectOptions::new()
            .user_and_password("agent-inference-a".into(), "inference-secret".into()),
        "agent-inference-a",
    )
    .await
    .unwrap();
    let agent_store = jetstream::new(agent)
        .get_object_store("flotilla_files")
        .await
        .unwrap();
    let forged = agent_store
        .put(digest_of(&text).as_str(), &mut &b"forged"[..])
        .await;
    assert!(forged.is_err(), "an agent wrote the plan-files bucket");
    assert_eq!(bucket_state(&admin).await, (1, last));
}

/// An object altered in the bucket (same size, other bytes, under the same digest) is refused by
/// every agent at precheck: nothing changes, and the reason names the file and the digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_object_is_refused_at_precheck_with_nothing_changed() {
    let (server, fleet) = start();
    let text = template(0);
    write_template(&fleet, &text);
    let plan = plan(&fleet, "tampered", false);
    let admin = as_coordinator(server.url()).await;
    let store = flotilla_bus::plan_files::create_or_open(
        &admin,
        &flotilla_schemas::subjects::Subjects::default(),
    )
    .await
    .unwrap();
    let forged = text.replace("environment = \"demo\"", "environment = \"evil\"");
    assert_eq!(forged.len(), text.len());
    store
        .put(digest_of(&text).as_str(), &mut forged.as_bytes())
        .await
        .unwrap();
    let before: Vec<_> = ROLES.iter().map(|r| snapshot(&fleet.root(r))).collect();

    for dry in [true, false] {
        let (code, report, stderr) = migrate(&fleet, &plan, dry);
        assert_eq!(code, Some(1), "{report:#}\n{stderr}");
        let reasons: Vec<&str> = if dry {
            report["waves"][0]["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["reason"].as_str().unwrap())
                .collect()
        } else {
            report["services"]
                .as_array()
                .unwrap()
                .iter()
                .inspect(|s| assert_eq!(s["status"], "refused", "{report:#}"))
                .map(|s| s["reason"].as_str().unwrap())
                .collect()
        };
        assert_eq!(reasons.len(), 3, "{report:#}");
        for reason in reasons {
            assert!(
                reason.contains("precheck")
                    && reason.contains(TEMPLATE_PATH)
                    && reason.contains(&digest_of(&text))
                    && reason.contains("refused"),
                "{reason}"
            );
            assert!(!reason.contains("evil"), "content in the reason: {reason}");
        }
    }
    for (role, before) in ROLES.iter().zip(&before) {
        assert_eq!(&snapshot(&fleet.root(role)), before, "{role} changed");
    }
}

/// Kills the coordinator right after the run is recorded (the canary busy for two seconds), then
/// `gone` runs, then `flotilla resume`: its exit code and report.
async fn kill_then_resume(
    fleet: &Fleet,
    plan: &Path,
    gone: impl AsyncFnOnce(),
) -> (Option<i32>, Value, String) {
    let mut coordinator = fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap()]);
    let run = tokio::task::block_in_place(|| wait_for_run(fleet, Duration::from_secs(30))).unwrap();
    coordinator.kill().unwrap(); // SIGKILL
    coordinator.wait().unwrap();
    gone().await;
    flotilla(fleet, &["resume", &run, "--output", "json"])
}

/// A resumed run ships the files it started with: the template deleted from the disk after the
/// crash, the resume still migrates every service with it, from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_ships_the_recorded_files_whatever_the_disk_holds() {
    let (_server, fleet) = start();
    let text = template(200 * 1024);
    write_template(&fleet, &text);
    let plan = plan(&fleet, "resumed", true);
    let (code, report, stderr) = kill_then_resume(&fleet, &plan, async || {
        std::fs::remove_file(fleet.dir().join(TEMPLATE_PATH)).unwrap();
    })
    .await;
    assert_eq!(code, Some(0), "{report:#}\n{stderr}");
    assert_eq!(report["status"], "succeeded", "{report:#}");
    for role in ROLES {
        assert_rendered(&fleet, role, text.len());
    }
}

/// The object gone from the bucket when a run resumes: an agent that had not yet migrated refuses
/// at precheck, naming the missing file; the run fails, rolls back what migrated, and every
/// service is as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_object_is_refused_at_precheck_with_nothing_changed() {
    let (server, fleet) = start();
    let text = template(0);
    write_template(&fleet, &text);
    let plan = plan(&fleet, "missing", true);
    let before: Vec<_> = ROLES.iter().map(|r| snapshot(&fleet.root(r))).collect();
    let admin = as_coordinator(server.url()).await;
    let (code, report, stderr) = kill_then_resume(&fleet, &plan, async || {
        let store = admin.get_object_store("flotilla_files").await.unwrap();
        store.delete(digest_of(&text)).await.unwrap();
    })
    .await;
    assert_eq!(code, Some(1), "{report:#}\n{stderr}");
    // Whichever service the resume dispatched first (the canary, when the kill came before its
    // command went out) is refused; the budget (0) then stops the run before the others.
    let services = report["services"].as_array().unwrap();
    let refused: Vec<&Value> = services
        .iter()
        .filter(|s| s["status"] == "refused")
        .collect();
    assert!(!refused.is_empty(), "{report:#}");
    for service in refused {
        let reason = service["reason"].as_str().unwrap();
        assert!(
            reason.contains("precheck")
                && reason.contains(TEMPLATE_PATH)
                && reason.contains("is not in the plan-files bucket"),
            "{reason}"
        );
    }
    for (role, before) in ROLES.iter().zip(&before) {
        assert_eq!(
            &snapshot(&fleet.root(role)),
            before,
            "{role} is not as before"
        );
    }
}

/// `plan check` reads the shipped files: a missing one, or one with a malformed placeholder, is
/// refused naming the step and the file.
#[test]
fn plan_check_refuses_a_missing_or_malformed_source() {
    let fleet = Fleet::empty("nats://127.0.0.1:1", Vec::new()).unwrap();
    let plan = plan(&fleet, "checked", false);
    let check = || {
        let out = fleet.flotilla(&["plan", "check", plan.to_str().unwrap()]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr
            .contains("service inference step 1: source templates/service.toml.tmpl: cannot read"),
        "{stderr}"
    );
    write_template(&fleet, "port = ${var:port\n");
    let (code, stderr) = check();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("source templates/service.toml.tmpl:"),
        "{stderr}"
    );
    let text = template(0);
    write_template(&fleet, &text);
    let (code, stderr) = check();
    assert_eq!(code, Some(0), "{stderr}");
    let out = fleet.flotilla(&["plan", "check", plan.to_str().unwrap(), "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(
        report["files"],
        serde_json::json!([{
            "path": TEMPLATE_PATH,
            "digest": digest_of(&text),
            "size": text.len(),
        }]),
        "{report:#}"
    );
}
