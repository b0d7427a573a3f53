//! The run store against a real nats-server: chunks split by size, one write per chunk a batch
//! touches, compare-and-set between two writers, a split that stopped half-way, a header whose
//! size does not grow with the fleet (50,000 targets at the default max_payload), a header
//! whose chunks are missing, and older records (a header listing every target beside chunks;
//! one key per target) read and written as before.

use async_nats::jetstream;
use flotilla_schemas::subjects::Subjects;
use flotilla_testkit::NatsServer;

use super::chunks::{CHUNK_BYTES, chunk_key};
use super::*;
use flotilla_schemas::{InstanceId, ServiceName};

/// How a record keeps its targets: the formats this coordinator reads.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// The header counts them; the chunks hold them whole (what a run is created with now).
    Counted,
    /// The header lists them without commands; the chunks hold them with their commands.
    Listed,
    /// Older than chunks: the header lists them; one key per target.
    PerKey,
}

/// A run of `n` targets, each with a migrate command carrying `padding` bytes (in its
/// result's reason) so that it weighs what a target with its commands and results does.
fn run(n: usize, padding: usize, layout: Layout) -> RunRecord {
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
    record.chunked_targets = layout != Layout::PerKey;
    record.target_count = (layout == Layout::Counted).then_some(n);
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
    let mut record = run(300, 4096, Layout::Counted);
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
    let mut record = run(40, 100, Layout::Counted);
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
    let mut record = run(20, 100, Layout::Listed);
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
    let mut record = run(3, 10, Layout::PerKey);
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
/// the limit named, instead of retried for the outage window; nothing is stored. Chunks are cut
/// to a quarter of a small `max_payload`, so a run whose header counts its targets still fits.
#[tokio::test]
async fn a_run_header_over_the_servers_max_payload_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(&config, "max_payload: 65536\njetstream {}\n").unwrap();
    let nats = NatsServer::start_with_config(&config, &[]).unwrap();
    let (store, mut stream) = open(&nats).await;
    // A header that names every target (a record from before they were counted): 5,000 of
    // them are well over 64 KiB.
    let record = run(5000, 0, Layout::Listed);
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

    // Counted, the same run fits: its header is small, its chunks a quarter of the limit.
    let record = fleet_run(5000, 2);
    let revisions = store.create(&record).await.unwrap();
    assert!(revisions.chunks.len() > 10, "{:?}", revisions.chunks.len());
    let (loaded, _) = store.load(&record.run_id).await.unwrap().unwrap();
    assert_eq!(loaded.targets.len(), 5000);
}

/// A migrate command for target `t` of `record`, with its result.
fn migrated(record: &RunRecord, t: usize) -> CommandRecord {
    let target = &record.targets[t];
    let id = flotilla_schemas::CommandId::new();
    serde_json::from_value(serde_json::json!({
        "command": {
            "schema": "flotilla.command.v2", "command_id": id, "run_id": record.run_id,
            "service": target.service, "instance": target.instance,
            "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z",
            "action": { "kind": "finalize", "migration": id },
        },
        "sent_at": "2026-01-01T00:00:00Z",
        "result": {
            "schema": "flotilla.result.v1", "run_id": record.run_id, "command_id": id,
            "service": target.service, "instance": target.instance,
            "at": "2026-01-01T00:00:01Z", "outcome": "finalized",
        },
    }))
    .unwrap()
}

/// A run of `n` agents of one service, created as `flotilla migrate` creates it: `waves`
/// placed waves of equal size.
fn fleet_run(n: usize, waves: usize) -> RunRecord {
    let service = ServiceName::parse("svc").unwrap();
    let agents: Vec<(ServiceName, InstanceId)> = (0..n)
        .map(|i| {
            (
                service.clone(),
                InstanceId::parse(format!("agent-{i:05}")).unwrap(),
            )
        })
        .collect();
    let plan_waves: Vec<crate::plan::Wave> = agents
        .chunks(n.div_ceil(waves))
        .enumerate()
        .map(|(w, agents)| crate::plan::Wave {
            name: format!("wave-{w}"),
            services: vec![service.clone()],
            selector: None,
            max_parallel: None,
            placed: Some(crate::plan::Placed {
                targets: agents.to_vec(),
                limit: None,
            }),
            pause: None,
        })
        .collect();
    let mut record = RunRecord::new(
        RunId::new(),
        "fleet",
        "fleet.toml",
        "name = \"fleet\"\n",
        &plan_waves,
        &agents,
        false,
    );
    // Each agent's result key, fixed at creation as a real run's are (an Ed25519 key).
    for target in &mut record.targets {
        target.agent_keys = vec!["A".repeat(43) + "="];
    }
    record
}

/// The size of the header as stored.
async fn header_bytes(store: &Store, run: &RunId) -> usize {
    store.kv.get(run.to_string()).await.unwrap().unwrap().len()
}

/// The most a header of the fleet runs below may weigh: a few KiB, whatever the fleet.
const HEADER_BOUND: usize = 4096;

/// A run of 50,000 agents over five waves, at the server's default max_payload (1 MiB): created,
/// a batch of results and a stage change saved, loaded whole and listed; the header stays a
/// few KiB from creation to the end (it named every target before: 1.15 MB at 10,000).
#[tokio::test]
async fn a_run_of_50_000_targets_keeps_a_header_of_a_few_kib_at_the_default_max_payload() {
    let nats = NatsServer::start().unwrap();
    let (store, _) = open(&nats).await;
    assert_eq!(store.max_payload, 1024 * 1024);
    let mut sizes = Vec::new();
    for n in [10_000, 50_000] {
        let mut record = fleet_run(n, 5);
        assert_eq!(record.target_count, Some(n));
        let mut revisions = store.create(&record).await.unwrap();
        let created = header_bytes(&store, &record.run_id).await;

        // A batch of results across two waves, then the first wave done and the next started.
        let batch: Vec<usize> = (n / 5 - 500..n / 5 + 500).collect();
        for &t in &batch {
            record.targets[t].migrate = Some(migrated(&record, t));
        }
        store
            .save_targets(&record, &batch, &mut revisions)
            .await
            .unwrap();
        record.waves[0].status = WaveStatus::Done;
        record.waves[1].status = WaveStatus::Running;
        record.notes.push("wave-0 done".into());
        store.save_header(&record, &mut revisions).await.unwrap();
        let saved = header_bytes(&store, &record.run_id).await;
        // The same header listing every target, as before they were counted.
        let listed = RunRecord {
            target_count: None,
            ..record.clone()
        };
        let listed = encode(&header_of(&listed)).len();
        assert!(listed > store.max_payload, "{listed}");
        sizes.push((n, created, saved, listed));
        assert!(
            created <= HEADER_BOUND && saved <= HEADER_BOUND,
            "{n} targets: header of {created} bytes created, {saved} saved"
        );

        let (loaded, reread) = store.load(&record.run_id).await.unwrap().unwrap();
        assert_eq!(loaded.targets.len(), n);
        assert_eq!(reread.chunks, revisions.chunks);
        for (a, b) in loaded.waves.iter().zip(&record.waves) {
            assert_eq!((&a.targets, a.status), (&b.targets, b.status));
        }
        let instances = |r: &RunRecord| -> Vec<String> {
            r.targets.iter().map(|t| t.instance.to_string()).collect()
        };
        assert_eq!(instances(&loaded), instances(&record));
        let results = |r: &RunRecord| r.commands().filter(|c| c.result.is_some()).count();
        assert_eq!(results(&loaded), batch.len());
        assert_eq!(loaded.notes, record.notes);
    }
    eprintln!("header bytes (targets, created, saved, had it listed them): {sizes:?}");
    let listed = store.list().await.unwrap();
    assert!(listed.unreadable.is_empty(), "{:?}", listed.unreadable);
    let totals: Vec<usize> = listed.runs.iter().map(RunRecord::target_total).collect();
    assert_eq!(totals, [10_000, 50_000]);
}

/// A header found without its chunks (removed, or damage) is an error naming what is missing,
/// never a run with fewer targets; chunks written by a creation that stopped before its header
/// are no run at all.
#[tokio::test]
async fn a_header_whose_chunks_are_missing_is_an_error_not_a_smaller_run() {
    let nats = NatsServer::start().unwrap();
    let (store, _) = open(&nats).await;
    // 3,000 targets: several chunks.
    let mut record = fleet_run(3000, 3);
    for t in 0..3000 {
        record.targets[t].migrate = Some(migrated(&record, t));
    }
    let revisions = store.create(&record).await.unwrap();
    let firsts: Vec<usize> = revisions.chunks.keys().copied().collect();
    assert!(firsts.len() >= 3, "{firsts:?}");

    store
        .kv
        .purge(chunk_key(&record.run_id, firsts[1]))
        .await
        .unwrap();
    let broken = store.load(&record.run_id).await;
    let Err(StoreError::Corrupt { key, reason }) = broken else {
        panic!("{broken:?}");
    };
    assert_eq!(key, chunk_key(&record.run_id, firsts[1]));
    assert!(reason.contains("missing"), "{reason}");

    store.kv.purge(chunk_key(&record.run_id, 0)).await.unwrap();
    let broken = store.load(&record.run_id).await;
    let Err(e @ StoreError::Corrupt { .. }) = broken else {
        panic!("{broken:?}");
    };
    let message = e.to_string();
    assert!(
        message.contains("3000 targets") && message.contains(&chunk_key(&record.run_id, 0)),
        "{message}"
    );
    // Still listed (its header reads), so that `status` of it can say what is wrong.
    assert_eq!(store.list().await.unwrap().runs.len(), 1);

    // A creation that wrote its chunks and stopped before the header.
    let orphan = fleet_run(100, 1);
    let mut chain = chunks::Chain::new();
    store.save_chunks(&orphan, &[0], &mut chain).await.unwrap();
    assert!(store.load(&orphan.run_id).await.unwrap().is_none());
    let listed = store.list().await.unwrap();
    assert_eq!(listed.runs.len(), 1);
    assert!(listed.unreadable.is_empty(), "{:?}", listed.unreadable);
}

/// A record from before headers counted their targets (the header lists them, the chunks hold
/// their commands) reads, before its first dispatch too (no chunk yet: the targets are the
/// header's), and is written on in its own format, so an older coordinator still reads it.
#[tokio::test]
async fn a_record_whose_header_lists_its_targets_is_read_and_written_as_it_was() {
    let nats = NatsServer::start().unwrap();
    let (store, _) = open(&nats).await;
    let mut record = run(30, 10, Layout::Listed);
    let mut revisions = store.create(&record).await.unwrap();
    assert!(
        store
            .kv
            .get(chunk_key(&record.run_id, 0))
            .await
            .unwrap()
            .is_none()
    );
    let (loaded, _) = store.load(&record.run_id).await.unwrap().unwrap();
    assert_eq!(loaded.targets.len(), 30);
    assert!(loaded.targets.iter().all(|t| t.migrate.is_none()));
    assert_eq!(loaded.waves[0].targets, (0..30).collect::<Vec<_>>());

    note(&mut record, 7, "seven");
    store
        .save_targets(&record, &[7], &mut revisions)
        .await
        .unwrap();
    record.stage = Stage::Finalizing;
    store.save_header(&record, &mut revisions).await.unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &store
            .kv
            .get(record.run_id.to_string())
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["targets"].as_array().map(Vec::len), Some(30));
    assert!(header.get("target_count").is_none(), "{header}");
    assert_eq!(
        header["waves"][0]["targets"].as_array().map(Vec::len),
        Some(30)
    );
    let (loaded, _) = store.load(&record.run_id).await.unwrap().unwrap();
    assert_eq!(failures(&loaded), failures(&record));
    assert_eq!(loaded.stage, Stage::Finalizing);
    assert_eq!(loaded.target_total(), 30);
}
