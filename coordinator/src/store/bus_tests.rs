//! The run store against a real nats-server: chunks split by size, one write per chunk a batch
//! touches, compare-and-set between two writers, a split that stopped half-way, and records
//! older than chunks (one key per target) read and written as before.

use async_nats::jetstream;
use flotilla_schemas::subjects::Subjects;
use flotilla_testkit::NatsServer;

use super::chunks::{CHUNK_BYTES, chunk_key};
use super::*;

/// A run of `n` targets, each with a migrate command carrying `padding` bytes (in its
/// result's reason) so that it weighs what a target with its commands and results does.
fn run(n: usize, padding: usize, chunked: bool) -> RunRecord {
    let run_id = RunId::new();
    let targets: Vec<_> = (0..n)
        .map(|i| {
            let id = flotilla_schemas::CommandId::new();
            serde_json::json!({
                "service": "svc", "instance": format!("i{i}"), "wave": 0,
                "migrate": {
                    "command": {
                        "schema": "flotilla.command.v1", "command_id": id, "run_id": run_id,
                        "service": "svc", "instance": format!("i{i}"),
                        "issued_at": "2026-01-01T00:00:00Z",
                        "expires_at": "2026-01-01T01:00:00Z",
                        "action": { "kind": "finalize", "migration": id },
                    },
                    "result": {
                        "schema": "flotilla.result.v1", "run_id": run_id, "command_id": id,
                        "service": "svc", "instance": format!("i{i}"),
                        "at": "2026-01-01T00:00:01Z", "outcome": "finalized",
                        "reason": "x".repeat(padding),
                    },
                },
            })
        })
        .collect();
    let mut record: RunRecord = serde_json::from_value(serde_json::json!({
        "schema": RUN_SCHEMA, "run_id": run_id, "plan_name": "p",
        "plan_path": "p.toml", "plan_text": "", "status": "running", "stage": "migrating",
        "started_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "coordinator": "test", "waves": [{ "name": "w", "max_parallel": null,
            "targets": (0..n).collect::<Vec<_>>(), "status": "running" }],
        "targets": targets,
    }))
    .unwrap();
    record.chunked_targets = chunked;
    record
}

async fn open(nats: &NatsServer) -> (Store, jetstream::stream::Stream) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let subjects = Subjects::default();
    let store = Store::open(&js, &subjects).await.unwrap();
    let stream = js
        .get_stream(format!("KV_{}", subjects.runs_bucket()))
        .await
        .unwrap();
    (store, stream)
}

/// Messages the bucket stored so far (its stream's last sequence).
async fn writes(stream: &mut jetstream::stream::Stream) -> u64 {
    stream.info().await.unwrap().state.last_sequence
}

fn note(record: &mut RunRecord, t: usize, text: &str) {
    let migrate = record.targets[t].migrate.as_mut().unwrap();
    migrate.result.as_mut().unwrap().reason = Some(text.to_owned());
}

fn failures(record: &RunRecord) -> Vec<Option<String>> {
    record
        .targets
        .iter()
        .map(|t| t.migrate.as_ref()?.result.as_ref()?.reason.clone())
        .collect()
}

#[tokio::test]
async fn a_batch_costs_one_write_per_chunk_and_a_large_run_is_split_by_size() {
    let nats = NatsServer::start().unwrap();
    let (store, mut stream) = open(&nats).await;
    // 300 targets of 4 KiB: 1.2 MiB, more than the server takes in one message.
    let mut record = run(300, 4096, true);
    let mut revisions = store.create(&record).await.unwrap();
    let all: Vec<usize> = (0..300).collect();
    store
        .save_targets(&record, &all, &mut revisions)
        .await
        .unwrap();
    let chunks = revisions.chunks.clone();
    assert!(chunks.len() >= 5, "{chunks:?}");
    let kv = &store.kv;
    for (&first, span) in &chunks {
        let value = kv
            .get(chunk_key(&record.run_id, first))
            .await
            .unwrap()
            .unwrap();
        assert!(
            value.len() <= CHUNK_BYTES + 64,
            "chunk {first}: {} bytes",
            value.len()
        );
        assert!(span.len > 1);
    }

    // A batch within one chunk: one write. Across two chunks: two.
    let before = writes(&mut stream).await;
    for t in [0, 1, 2] {
        note(&mut record, t, "first");
    }
    store
        .save_targets(&record, &[0, 1, 2], &mut revisions)
        .await
        .unwrap();
    assert_eq!(writes(&mut stream).await - before, 1);
    let second = *chunks.keys().nth(1).unwrap();
    note(&mut record, second, "second");
    store
        .save_targets(&record, &[1, second], &mut revisions)
        .await
        .unwrap();
    assert_eq!(writes(&mut stream).await - before, 3);

    let (loaded, _) = store.load(&record.run_id).await.unwrap().unwrap();
    assert_eq!(failures(&loaded), failures(&record));
    let listed = store.list().await.unwrap();
    assert_eq!(listed.runs.len(), 1);
    assert!(listed.unreadable.is_empty(), "{:?}", listed.unreadable);
}

#[tokio::test]
async fn a_chunk_that_grows_is_split_and_a_second_writer_conflicts() {
    let nats = NatsServer::start().unwrap();
    let (store, _) = open(&nats).await;
    let mut record = run(40, 100, true);
    let mut revisions = store.create(&record).await.unwrap();
    let all: Vec<usize> = (0..40).collect();
    store
        .save_targets(&record, &all, &mut revisions)
        .await
        .unwrap();
    assert_eq!(revisions.chunks.len(), 1);
    let (_, mut stale) = store.load(&record.run_id).await.unwrap().unwrap();

    // Results make every target large: the one chunk becomes several.
    for t in 0..40 {
        note(&mut record, t, &"r".repeat(20_000));
    }
    store
        .save_targets(&record, &all, &mut revisions)
        .await
        .unwrap();
    assert!(revisions.chunks.len() >= 3, "{:?}", revisions.chunks);
    let (loaded, reread) = store.load(&record.run_id).await.unwrap().unwrap();
    assert_eq!(failures(&loaded), failures(&record));
    assert_eq!(reread.chunks, revisions.chunks);

    // A second coordinator holding the revisions from before loses, whatever it writes, and
    // the record stays the first one's.
    let mut other = loaded.clone();
    note(&mut other, 39, "someone else");
    let lost = store.save_targets(&other, &[0, 39], &mut stale).await;
    assert!(matches!(lost, Err(StoreError::Conflict { .. })), "{lost:?}");
    let (after, _) = store.load(&record.run_id).await.unwrap().unwrap();
    assert_eq!(failures(&after), failures(&record));
}

#[tokio::test]
async fn a_split_that_stopped_half_way_leaves_the_record_as_it_was() {
    let nats = NatsServer::start().unwrap();
    let (store, _) = open(&nats).await;
    let mut record = run(20, 100, true);
    let mut revisions = store.create(&record).await.unwrap();
    let all: Vec<usize> = (0..20).collect();
    store
        .save_targets(&record, &all, &mut revisions)
        .await
        .unwrap();
    // A coordinator wrote the new pieces of a split and died before the chunk itself: the
    // pieces lie where the chain does not reach.
    for start in [3, 9, 15] {
        store
            .kv
            .put(chunk_key(&record.run_id, start), "left over".into())
            .await
            .unwrap();
    }
    let (loaded, mut resumed) = store.load(&record.run_id).await.unwrap().unwrap();
    assert_eq!(failures(&loaded), failures(&record));
    // The next coordinator splits over them (three targets to a chunk: pieces at 3, 6, 9…).
    for t in 0..20 {
        note(&mut record, t, &"r".repeat(CHUNK_BYTES / 4));
    }
    store
        .save_targets(&record, &all, &mut resumed)
        .await
        .unwrap();
    assert!(resumed.chunks.contains_key(&9), "{:?}", resumed.chunks);
    let (loaded, _) = store.load(&record.run_id).await.unwrap().unwrap();
    assert_eq!(failures(&loaded), failures(&record));
}

#[tokio::test]
async fn a_record_older_than_chunks_is_read_and_written_per_target() {
    let nats = NatsServer::start().unwrap();
    let (store, mut stream) = open(&nats).await;
    let mut record = run(3, 10, false);
    let mut revisions = store.create(&record).await.unwrap();
    note(&mut record, 1, "one");
    store
        .save_targets(&record, &[0, 1, 2], &mut revisions)
        .await
        .unwrap();
    assert!(
        store
            .kv
            .get(target_key(&record.run_id, 1))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .kv
            .get(chunk_key(&record.run_id, 0))
            .await
            .unwrap()
            .is_none()
    );
    let (mut loaded, mut again) = store.load(&record.run_id).await.unwrap().unwrap();
    assert!(!loaded.chunked_targets);
    assert_eq!(failures(&loaded), failures(&record));
    let before = writes(&mut stream).await;
    note(&mut loaded, 2, "two");
    store.save_targets(&loaded, &[2], &mut again).await.unwrap();
    assert_eq!(writes(&mut stream).await - before, 1);
    let (reloaded, _) = store.load(&record.run_id).await.unwrap().unwrap();
    assert_eq!(failures(&reloaded), failures(&loaded));
    assert_eq!(store.list().await.unwrap().runs.len(), 1);
}

/// A header over the server's `max_payload` can never be written: it is refused at once, with
/// the limit named, instead of retried for the outage window; nothing is stored.
#[tokio::test]
async fn a_run_header_over_the_servers_max_payload_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(&config, "max_payload: 65536\njetstream {}\n").unwrap();
    let nats = NatsServer::start_with_config(&config, &[]).unwrap();
    let (store, mut stream) = open(&nats).await;
    // The header names every target: 5,000 of them are well over 64 KiB.
    let record = run(5000, 0, true);
    let started = std::time::Instant::now();
    let refused = store.create(&record).await;
    assert!(
        matches!(refused, Err(StoreError::TooLarge { limit: 65536, .. })),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "retried: {:?}",
        started.elapsed()
    );
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("max_payload"), "{message}");
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
}
