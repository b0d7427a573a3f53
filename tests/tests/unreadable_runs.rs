//! One run-store entry this coordinator cannot read (a newer coordinator's schema during a
//! rolling upgrade, or garbage) is reported and skipped: every other run stays listable and
//! findable by prefix, and `status` of that entry says why it cannot be read.

use async_nats::jetstream;
use flotilla_schemas::subjects::Subjects;
use flotilla_tests::faults::{block_on, new_id};
use flotilla_tests::{Fleet, NatsServer, json_stdout};
use serde_json::Value;

/// Puts `value` under `key` in the run-store bucket, as another writer would.
fn put_run_entry(nats_url: &str, key: &str, value: &'static [u8]) {
    let (url, key) = (nats_url.to_owned(), key.to_owned());
    block_on(async move {
        let js = jetstream::new(async_nats::connect(&url).await?);
        let kv = js.get_key_value(Subjects::default().runs_bucket()).await?;
        kv.put(key, value.into()).await?;
        Ok(())
    })
    .unwrap();
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts `out` warned about both unreadable keys.
fn warns_of(out: &std::process::Output, keys: &[&str]) {
    let stderr = stderr(out);
    for key in keys {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("warning:") && l.contains(key) && l.contains("unreadable")),
            "no warning about {key}:\n{stderr}"
        );
    }
}

#[test]
fn unreadable_run_records_are_reported_and_skipped_not_fatal() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let plan = fleet.write_plan(
        "noop.toml",
        "name = \"noop\"\ncommand_timeout = \"60s\"\n[[service]]\nname = \"inference\"\n[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"true\"]\n",
    );
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let good = json_stdout(&out)["run_id"].as_str().unwrap().to_owned();

    let (newer, garbage) = (new_id(), new_id());
    put_run_entry(nats.url(), &newer, br#"{"schema":"flotilla.run.v2"}"#);
    put_run_entry(nats.url(), &garbage, b"\x00not json{");
    let bad = [newer.as_str(), garbage.as_str()];

    let out = fleet.flotilla(&["runs"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&good));
    warns_of(&out, &bad);

    let out = fleet.flotilla(&["runs", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = json_stdout(&out);
    let rows = rows.as_array().unwrap();
    assert!(
        rows.iter().any(|r| r["run_id"] == good.as_str()),
        "{rows:#?}"
    );
    let unreadable: Vec<&Value> = rows
        .iter()
        .filter(|r| r["unreadable"].is_string())
        .collect();
    assert_eq!(unreadable.len(), 2, "{rows:#?}");
    let newer_row = unreadable
        .iter()
        .find(|r| r["key"] == newer.as_str())
        .unwrap();
    assert!(
        newer_row["unreadable"]
            .as_str()
            .unwrap()
            .contains("flotilla.run.v2"),
        "{newer_row:#}"
    );
    assert!(unreadable.iter().any(|r| r["key"] == garbage.as_str()));

    // The latest readable run, and a good run by prefix (long enough: UUIDv7s made in the
    // same second share their first characters).
    for args in [vec!["status"], vec!["status", &good[..30]]] {
        let out = fleet.flotilla(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&good),
            "{args:?}"
        );
        warns_of(&out, &bad);
    }

    // The unreadable run itself, by full ID and by prefix: bad input (2), and why.
    for args in [vec!["status", newer.as_str()], vec!["status", &newer[..30]]] {
        let out = fleet.flotilla(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let stderr = stderr(&out);
        assert!(
            stderr.contains(&format!("run record {newer} is unreadable"))
                && stderr.contains("flotilla.run.v2"),
            "{args:?}: {stderr}"
        );
    }
    let out = fleet.flotilla(&["status", &garbage]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unreadable"), "{}", stderr(&out));
}
