//! Secrets stay at the agent: a run whose plan writes a secret leaves its value in the target
//! file only — not on the bus (commands, events, telemetry, API traffic), not in the agent's,
//! the service's or the coordinator's output, the journal, the backup manifest or the report.

use flotilla_tests::tap::{BusTap, files_under};
use flotilla_tests::{Fleet, NatsServer, json_stdout, standard_config_step};

const SECRET: &str = "s3cr3t-6f1d9c-never-leaks";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_written_by_a_plan_appears_only_in_its_target_file() {
    let nats = NatsServer::start().unwrap();
    // Everything that crosses the bus, from before the fleet starts.
    let tap = BusTap::start(nats.url()).await.unwrap();

    let fleet =
        tokio::task::block_in_place(|| Fleet::start(nats.url(), &["training", "ingest"]).unwrap());
    for role in ["training", "ingest"] {
        std::fs::write(
            fleet.dir().join("secrets").join(role).join("DB_PASSWORD"),
            SECRET,
        )
        .unwrap();
    }
    // training takes the secret and succeeds; ingest fails validation, so the run rolls training
    // back too and both backups (and their manifests) stay for inspection.
    let plan = format!(
        "name = \"secrets\"\n[[step]]\naction = \"write_file\"\npath = \"secrets/DB_PASSWORD\"\nmode = 0o600\ncontent = \"${{secret:DB_PASSWORD}}\"\n\
         [[service]]\nname = \"training\"\n[[service]]\nname = \"ingest\"\n[[service.step]]\naction = \"write_file\"\npath = \"secrets/DB_PASSWORD\"\nmode = 0o600\ncontent = \"${{secret:DB_PASSWORD}}\"\n{}[[service.step]]\naction = \"delete\"\npath = \"legacy.conf\"\n[[service.health]]\ntimeout_ms = 1000\n",
        standard_config_step("ingest", "fail_health = true")
    );
    let plan = fleet.write_plan("secrets.toml", &plan);
    let out = tokio::task::block_in_place(|| {
        fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"])
    });
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    // Let the agents' last telemetry batch reach the tap.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("bus traffic".into(), tap.bytes()),
        ("coordinator stdout (report)".into(), out.stdout.clone()),
        ("coordinator stderr".into(), out.stderr.clone()),
    ];
    assert!(places[0].1.len() > 1000, "the tap saw the run");
    let manifests = files_under(&fleet.dir().join("state"))
        .into_iter()
        .filter(|p| p.ends_with("manifest.json"))
        .count();
    assert!(
        manifests >= 1,
        "the failed run keeps its backups' manifests"
    );
    for path in files_under(fleet.dir()) {
        // The services' roots (and the backup copies of them) may hold the secret: that is where
        // it was meant to go.
        let inside_a_tree = path
            .components()
            .any(|c| c.as_os_str() == "services" || c.as_os_str() == "tree");
        let secret_source = path.components().any(|c| c.as_os_str() == "secrets")
            && path.starts_with(fleet.dir().join("secrets"));
        if !inside_a_tree && !secret_source {
            places.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    for (place, bytes) in &places {
        assert!(
            !String::from_utf8_lossy(bytes).contains(SECRET),
            "the secret leaked into {place}"
        );
    }
    // Where it was meant to go, it is.
    let written = fleet.root("training").join("secrets/DB_PASSWORD");
    assert!(
        !written.exists(),
        "training was rolled back, so its secret file is gone too"
    );
    tokio::task::block_in_place(|| drop(fleet));
}
