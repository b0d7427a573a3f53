//! Durable runs: one record per run in a JetStream key-value bucket, written as the run
//! proceeds, so `flotilla status`, `runs`, `resume`, `rollback` and `cancel` work from any
//! machine and after the coordinator was killed.
//!
//! Keys: `<run_id>` holds the run's header, a [`RunRecord`] (JSON, schema `flotilla.run.v1`)
//! that names no target, only counts them (`target_count`), so that its size, rewritten at
//! every change of stage or wave, does not grow with the fleet; `<run_id>.c.<first>` holds a
//! chunk of targets, each whole, with its commands and results (`chunks.rs`), so that a batch
//! of dispatches or results costs one write per chunk it touches and a run is not capped by
//! the server's maximum message size. Older records are still read and written as they were:
//! a header listing every target without commands, beside the chunks; or, older still, one
//! target per key, `<run_id>.t.<index>`. `<run_id>.cancel` exists while a cancel is requested, and
//! `<run_id>.promote` while a promote of a bake is. The
//! cancel flag has its own key so that the engine, which rewrites the header, can never
//! overwrite a request it has not seen. Every write is a compare-and-set on the key's
//! revision, so two coordinators can never drive one run.

use std::collections::HashMap;

use async_nats::jetstream::{self, kv};
use backon::BackoffBuilder;
use flotilla_bus::outage::{OUTAGE_TOLERANCE, retry_until};
use flotilla_schemas::RunId;
use flotilla_schemas::subjects::Subjects;
use futures::StreamExt;
use serde::Serialize;

mod action_kind;
mod chunks;
mod record;
mod verdict;

pub use action_kind::ActionKind;

pub(crate) use record::coordinator_name;
pub use record::{
    AnalysisVerdict, CommandRecord, RUN_SCHEMA, RunRecord, RunStatus, Stage, StartedBy,
    TargetRecord, WaveRecord, WaveStatus, failed_verdict,
};
pub use verdict::{
    CorrelationVerdict, CrossServiceVerdict, LogCorrelationVerdict, ServiceInspection,
};

/// Suffix of the key that flags a cancel request.
const CANCEL_SUFFIX: &str = ".cancel";

/// Suffix of the key that asks the coordinator baking a run to end the pause now; it holds the
/// index of the wave whose pause it ends, so a request that came too late ends no later pause.
const PROMOTE_SUFFIX: &str = ".promote";

/// Why the run store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open or create the key-value bucket {bucket}")]
    Open {
        bucket: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot read run {key} from the run store")]
    Read {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot write run {key} to the run store")]
    Write {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "run {key} was changed by someone else (another coordinator resumed it?); stopping so that two coordinators never drive one run"
    )]
    Conflict { key: String },
    #[error(
        "run record {key} is {size} bytes, over the NATS server's max_payload of {limit}: a run's header holds its plan's text and notes (and, in runs recorded before headers only counted their targets, about 115 bytes per target), a chunk at least one target with its results; raise max_payload in nats-server.conf (up to 8 MB), or run a smaller plan or fleet (migrate -l)"
    )]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
    #[error("run record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A run-store entry this coordinator cannot read, which listings skip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub key: String,
    pub reason: String,
}

/// What [`Store::list`] read: the runs, and the entries it had to skip.
#[derive(Debug, Default)]
pub struct Listing {
    pub runs: Vec<RunRecord>,
    pub unreadable: Vec<Unreadable>,
}

/// What [`Store::find`] found (or why not), and the entries it had to skip on the way.
#[derive(Debug)]
pub struct Found {
    pub run: Result<RunId, String>,
    pub unreadable: Vec<Unreadable>,
}

/// The revisions of a run's keys, for compare-and-set writes.
#[derive(Debug, Clone, Default)]
pub struct Revisions {
    header: u64,
    /// Per target, for a record older than chunks.
    targets: HashMap<usize, u64>,
    chunks: chunks::Chain,
}

/// How a single compare-and-set write failed.
enum WriteOutcome {
    /// The key is not at the expected revision.
    Conflict,
    /// No answer, or an error: the write may or may not have been applied.
    Unknown(Box<dyn std::error::Error + Send + Sync>),
}

/// How many target writes are in flight at once in a batch.
const WRITE_CONCURRENCY: usize = 256;

/// The run store: a handle on the bucket.
#[derive(Clone)]
pub struct Store {
    kv: kv::Store,
    /// The server's largest message: a bigger write can never succeed, so it is refused at
    /// once instead of retried through an outage window.
    max_payload: usize,
}

// === impl Store ===

impl Store {
    /// The runs bucket as Flotilla wants it.
    pub fn bucket_config(subjects: &Subjects) -> kv::Config {
        kv::Config {
            bucket: subjects.runs_bucket(),
            description: "Flotilla run records: one key per run".into(),
            history: 5,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        }
    }

    /// Opens the runs bucket, creating it when it does not exist.
    pub async fn open(js: &jetstream::Context, subjects: &Subjects) -> Result<Self, StoreError> {
        let bucket = subjects.runs_bucket();
        let deadline = outage_deadline();
        let attempt = || async {
            if let Ok(kv) = js.get_key_value(&bucket).await {
                return Ok(kv);
            }
            js.create_key_value(Self::bucket_config(subjects)).await
        };
        let max_payload = js.client().server_info().max_payload;
        retry_until("opening the run store", deadline, attempt, |_| true)
            .await
            .map(|kv| Self { kv, max_payload })
            .map_err(|e| StoreError::Open {
                bucket,
                source: Box::new(e),
            })
    }

    /// Writes a new run; fails if the run already exists. A header that only counts its
    /// targets comes last, after the chunks that hold them: a coordinator killed in between
    /// leaves chunks that no header reaches (never listed, never loaded), not a header that
    /// counts targets no chunk holds.
    pub async fn create(&self, record: &RunRecord) -> Result<Revisions, StoreError> {
        let key = record.run_id.to_string();
        let mut chunks = chunks::Chain::new();
        if record.target_count.is_some() {
            let all: Vec<usize> = (0..record.targets.len()).collect();
            self.save_chunks(record, &all, &mut chunks).await?;
        }
        let header = self.cas(&key, encode(&header_of(record)), None).await?;
        Ok(Revisions {
            header,
            chunks,
            ..Revisions::default()
        })
    }

    /// Writes the run's header over the revision last seen.
    pub async fn save_header(
        &self,
        record: &RunRecord,
        revisions: &mut Revisions,
    ) -> Result<(), StoreError> {
        let key = record.run_id.to_string();
        revisions.header = self
            .cas(&key, encode(&header_of(record)), Some(revisions.header))
            .await?;
        Ok(())
    }

    /// Writes the targets in `indices`: the chunks that hold them, concurrently (a batch of
    /// dispatches or results costs one write per chunk it touches), or for a record older
    /// than chunks each target's key. Every write that succeeded is remembered even when
    /// another failed, so the engine's revisions stay true; the first failure is returned.
    pub async fn save_targets(
        &self,
        record: &RunRecord,
        indices: &[usize],
        revisions: &mut Revisions,
    ) -> Result<(), StoreError> {
        if record.chunked_targets {
            return self
                .save_chunks(record, indices, &mut revisions.chunks)
                .await;
        }
        let mut unique = indices.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let writes = unique.into_iter().map(|index| {
            let key = target_key(&record.run_id, index);
            let value = encode(&record.targets[index]);
            let revision = revisions.targets.get(&index).copied();
            async move { (index, self.cas(&key, value, revision).await) }
        });
        let done: Vec<_> = futures::stream::iter(writes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        let mut first_error = None;
        for (index, written) in done {
            match written {
                Ok(revision) => {
                    revisions.targets.insert(index, revision);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A compare-and-set write of `key` over `revision` (`None`: the key must not exist).
    ///
    /// When the write's answer is lost (a cut, a timeout, a leader election), the server may or
    /// may not have applied it: the key is read back, and if it holds `value` the write did
    /// happen; if it still holds the expected revision (or cannot be read yet) it did not, and
    /// is tried again, with backoff, for [`OUTAGE_TOLERANCE`]. Only a key that moved on to
    /// something else is a conflict. Without this, one lost reply, or an election of the
    /// bucket's leader, stopped the coordinator.
    async fn cas(
        &self,
        key: &str,
        value: bytes::Bytes,
        revision: Option<u64>,
    ) -> Result<u64, StoreError> {
        // A KV message carries the key in its subject; the payload is the value alone.
        if self.max_payload > 0 && value.len() > self.max_payload {
            return Err(StoreError::TooLarge {
                key: key.to_owned(),
                size: value.len(),
                limit: self.max_payload,
            });
        }
        let deadline = outage_deadline();
        let mut pauses = flotilla_bus::outage::backoff().build();
        loop {
            let error = match self.write_once(key, value.clone(), revision).await {
                Ok(written) => return Ok(written),
                Err(WriteOutcome::Conflict) => None,
                Err(WriteOutcome::Unknown(source)) => Some(source),
            };
            let current = self.kv.entry(key).await.ok().flatten();
            let current = current.filter(|e| e.operation == kv::Operation::Put);
            let conflict = || StoreError::Conflict {
                key: key.to_owned(),
            };
            match (&current, error) {
                (Some(entry), _) if entry.value == value && Some(entry.revision) != revision => {
                    return Ok(entry.revision);
                }
                (_, None) => return Err(conflict()),
                (Some(entry), Some(_)) if Some(entry.revision) != revision => {
                    return Err(conflict());
                }
                (_, Some(source)) => {
                    let pause = pauses.next().unwrap_or(std::time::Duration::from_secs(2));
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(StoreError::Write {
                            key: key.to_owned(),
                            source,
                        });
                    }
                    tracing::warn!(
                        key,
                        error = %source,
                        "run store write unconfirmed; retrying"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    async fn write_once(
        &self,
        key: &str,
        value: bytes::Bytes,
        revision: Option<u64>,
    ) -> Result<u64, WriteOutcome> {
        match revision {
            Some(revision) => self.kv.update(key, value, revision).await.map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    WriteOutcome::Conflict
                } else {
                    WriteOutcome::Unknown(Box::new(e))
                }
            }),
            None => self.kv.create(key, value).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    WriteOutcome::Conflict
                } else {
                    WriteOutcome::Unknown(Box::new(e))
                }
            }),
        }
    }

    /// The entry of `key`, read again through an outage for [`OUTAGE_TOLERANCE`]. Reads go to
    /// any replica of the bucket (direct get), so a leaderless bucket is still readable.
    async fn read(&self, key: &str) -> Result<Option<kv::Entry>, StoreError> {
        let deadline = outage_deadline();
        retry_until(
            "reading the run store",
            deadline,
            || self.kv.entry(key),
            |_| true,
        )
        .await
        .map_err(|e| StoreError::Read {
            key: key.to_owned(),
            source: Box::new(e),
        })
    }

    /// Every key of the bucket.
    async fn keys(&self) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
        let mut keys = self.kv.keys().await?;
        let mut all = Vec::new();
        while let Some(key) = keys.next().await {
            all.push(key?);
        }
        Ok(all)
    }

    /// The header of `run`: no targets (`target_count` says how many), or in an older record
    /// the targets without their commands.
    async fn load_header(&self, run: &RunId) -> Result<Option<(RunRecord, u64)>, StoreError> {
        let key = run.to_string();
        let entry = self.read(&key).await?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let record = decode(&key, &entry.value)?;
        Ok(Some((record, entry.revision)))
    }

    /// The whole record of `run` and the revisions of its keys.
    pub async fn load(&self, run: &RunId) -> Result<Option<(RunRecord, Revisions)>, StoreError> {
        let Some((mut record, header)) = self.load_header(run).await? else {
            return Ok(None);
        };
        let mut revisions = Revisions {
            header,
            ..Revisions::default()
        };
        if let Some(n) = record.target_count {
            let (targets, chain) = self.load_chunks(run, n).await?;
            revisions.chunks = chain;
            record.targets = targets;
            targets_into_waves(&mut record, n)?;
            return Ok(Some((record, revisions)));
        }
        if record.chunked_targets {
            let (targets, chain) = self.load_chunks(run, record.targets.len()).await?;
            revisions.chunks = chain;
            if !targets.is_empty() {
                record.targets = targets;
            }
            return Ok(Some((record, revisions)));
        }
        for index in 0..record.targets.len() {
            let key = target_key(run, index);
            let entry = self.read(&key).await?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                continue;
            };
            let target: TargetRecord =
                serde_json::from_slice(&entry.value).map_err(|e| StoreError::Corrupt {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            record.targets[index] = target;
            revisions.targets.insert(index, entry.revision);
        }
        Ok(Some((record, revisions)))
    }

    /// Every readable run's header, oldest first, and the entries skipped because they cannot
    /// be read (a newer coordinator's schema during a rolling upgrade, or damage): one bad
    /// entry never hides the others. A header names no targets (older ones: no commands);
    /// [`RunRecord::target_total`] counts them.
    pub async fn list(&self) -> Result<Listing, StoreError> {
        let read = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Read {
            key: "*".into(),
            source: e,
        };
        let deadline = outage_deadline();
        let keys = retry_until("listing the run store", deadline, || self.keys(), |_| true)
            .await
            .map_err(read)?;
        let mut listing = Listing::default();
        for key in keys {
            if key.ends_with(CANCEL_SUFFIX)
                || key.ends_with(PROMOTE_SUFFIX)
                || is_target_key(&key)
                || chunks::is_chunk_key(&key)
            {
                continue;
            }
            let Ok(run) = key.parse::<RunId>() else {
                listing.unreadable.push(Unreadable {
                    key,
                    reason: "the key is not a run ID".to_owned(),
                });
                continue;
            };
            match self.load_header(&run).await {
                Ok(Some((record, _))) => listing.runs.push(record),
                Ok(None) => {}
                Err(StoreError::Corrupt { key, reason }) => {
                    listing.unreadable.push(Unreadable { key, reason });
                }
                Err(e) => return Err(e),
            }
        }
        listing.runs.sort_by_key(|r| r.started_at);
        Ok(listing)
    }

    /// Finds a run by full ID or unique prefix; `None` means the latest readable run. A prefix
    /// may name an unreadable run: loading it then says why it cannot be read.
    pub async fn find(&self, run: Option<&str>) -> Result<Found, StoreError> {
        if let Some(Ok(id)) = run.map(str::parse::<RunId>) {
            return Ok(Found {
                run: Ok(id),
                unreadable: Vec::new(),
            });
        }
        let Listing { runs, unreadable } = self.list().await?;
        let run = match run {
            None => runs
                .last()
                .map(|r| r.run_id)
                .ok_or_else(|| "no runs recorded yet".to_owned()),
            Some(prefix) => {
                let unreadable_runs = unreadable.iter().filter_map(|u| u.key.parse().ok());
                let matching: Vec<RunId> = runs
                    .iter()
                    .map(|r| r.run_id)
                    .chain(unreadable_runs)
                    .filter(|id| id.to_string().starts_with(prefix))
                    .collect();
                match matching.as_slice() {
                    [one] => Ok(*one),
                    [] => Err(format!("no run matches {prefix:?}")),
                    _ => Err(format!(
                        "{prefix:?} matches {} runs; give more of the ID",
                        matching.len()
                    )),
                }
            }
        };
        Ok(Found { run, unreadable })
    }

    /// Asks whoever drives `run` to stop dispatching.
    pub async fn request_cancel(&self, run: &RunId) -> Result<(), StoreError> {
        let key = format!("{run}{CANCEL_SUFFIX}");
        let put = || self.kv.put(&key, "cancel".into());
        retry_until("requesting a cancel", outage_deadline(), put, |_| true)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Write {
                key: key.clone(),
                source: Box::new(e),
            })
    }

    /// True when a cancel of `run` was requested.
    pub async fn cancel_requested(&self, run: &RunId) -> Result<bool, StoreError> {
        let key = format!("{run}{CANCEL_SUFFIX}");
        let entry = self.read(&key).await?;
        Ok(entry.is_some_and(|e| e.operation == kv::Operation::Put))
    }

    /// Asks whoever bakes `run` after wave `wave` to end the pause now.
    pub async fn request_promote(&self, run: &RunId, wave: usize) -> Result<(), StoreError> {
        let key = format!("{run}{PROMOTE_SUFFIX}");
        let put = || self.kv.put(&key, wave.to_string().into());
        retry_until("requesting a promote", outage_deadline(), put, |_| true)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Write {
                key: key.clone(),
                source: Box::new(e),
            })
    }

    /// True when a promote of the pause after wave `wave` of `run` was requested.
    pub async fn promote_requested(&self, run: &RunId, wave: usize) -> Result<bool, StoreError> {
        let key = format!("{run}{PROMOTE_SUFFIX}");
        let entry = self.read(&key).await?;
        Ok(entry.is_some_and(|e| {
            e.operation == kv::Operation::Put && e.value.as_ref() == wave.to_string().as_bytes()
        }))
    }

    /// Forgets a promote request (once the pause it asked to end is over).
    pub async fn clear_promote(&self, run: &RunId) -> Result<(), StoreError> {
        let key = format!("{run}{PROMOTE_SUFFIX}");
        let purge = || self.kv.purge(&key);
        retry_until("clearing a promote", outage_deadline(), purge, |_| true)
            .await
            .map_err(|e| StoreError::Write {
                key: key.clone(),
                source: Box::new(e),
            })
    }

    /// Forgets a cancel request (on resume).
    pub async fn clear_cancel(&self, run: &RunId) -> Result<(), StoreError> {
        let key = format!("{run}{CANCEL_SUFFIX}");
        let purge = || self.kv.purge(&key);
        retry_until("clearing a cancel", outage_deadline(), purge, |_| true)
            .await
            .map_err(|e| StoreError::Write {
                key: key.clone(),
                source: Box::new(e),
            })
    }
}

/// When an operation on the store that started now stops riding out an outage.
fn outage_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + OUTAGE_TOLERANCE
}

fn target_key(run: &RunId, index: usize) -> String {
    format!("{run}.t.{index}")
}

/// True for a key of the form [`target_key`] writes.
fn is_target_key(key: &str) -> bool {
    key.split_once(".t.")
        .is_some_and(|(run, index)| run.parse::<RunId>().is_ok() && index.parse::<usize>().is_ok())
}

/// What the header key holds: the record without its targets when it counts them
/// (`target_count`), else (older records) with its targets but not their commands.
fn header_of(record: &RunRecord) -> RunRecord {
    // Every field named, so that a new one is a decision here, and the targets are not
    // cloned only to be dropped.
    let RunRecord {
        schema,
        run_id,
        plan_name,
        plan_path,
        plan_text,
        plan_digest,
        started_by,
        plan_files,
        rehearse,
        finalize,
        status,
        stage,
        started_at,
        updated_at,
        finished_at,
        coordinator,
        notes,
        waves,
        targets,
        trace_parent,
        correlation,
        cross_service,
        chunked_targets,
        target_count,
    } = record;
    let counted = target_count.is_some();
    let waves = waves
        .iter()
        .map(|w| {
            let mut wave = w.clone();
            if counted {
                wave.targets = Vec::new();
            }
            wave
        })
        .collect();
    let targets = if counted {
        Vec::new()
    } else {
        targets
            .iter()
            .map(|t| TargetRecord {
                migrate: None,
                rollback: None,
                finalize: None,
                ..t.clone()
            })
            .collect()
    };
    RunRecord {
        schema: schema.clone(),
        run_id: *run_id,
        plan_name: plan_name.clone(),
        plan_path: plan_path.clone(),
        plan_text: plan_text.clone(),
        plan_digest: plan_digest.clone(),
        started_by: started_by.clone(),
        plan_files: plan_files.clone(),
        rehearse: *rehearse,
        finalize: *finalize,
        status: *status,
        stage: *stage,
        started_at: *started_at,
        updated_at: *updated_at,
        finished_at: *finished_at,
        coordinator: coordinator.clone(),
        notes: notes.clone(),
        waves,
        targets,
        trace_parent: trace_parent.clone(),
        correlation: correlation.clone(),
        cross_service: cross_service.clone(),
        chunked_targets: *chunked_targets,
        target_count: counted.then_some(record.targets.len()),
    }
}

/// Gives each wave of a record read from chunks its targets again (those whose `wave` is its
/// index, in order), which its header leaves out; a target of no wave is damage.
fn targets_into_waves(record: &mut RunRecord, n: usize) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: record.run_id.to_string(),
        reason,
    };
    if !record.chunked_targets {
        return Err(corrupt(
            "counts its targets but does not keep them in chunks".into(),
        ));
    }
    if record.targets.len() != n {
        return Err(corrupt(format!(
            "counts {n} targets, but no chunk {} holds the first of them: the run was not fully written, or its chunks were removed",
            chunks::chunk_key(&record.run_id, 0)
        )));
    }
    let mut members = vec![Vec::new(); record.waves.len()];
    for (i, target) in record.targets.iter().enumerate() {
        let Some(wave) = members.get_mut(target.wave) else {
            return Err(corrupt(format!(
                "target {i} is in wave {}, of {}",
                target.wave,
                record.waves.len()
            )));
        };
        wave.push(i);
    }
    for (wave, targets) in record.waves.iter_mut().zip(members) {
        wave.targets = targets;
    }
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    serde_json::to_vec(value)
        .expect("run records always serialize")
        .into()
}

fn decode(key: &str, bytes: &[u8]) -> Result<RunRecord, StoreError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    if value.get("schema").and_then(|s| s.as_str()) != Some(RUN_SCHEMA) {
        return Err(StoreError::Corrupt {
            key: key.to_owned(),
            reason: format!(
                "schema is {}, this coordinator reads {RUN_SCHEMA}",
                value.get("schema").unwrap_or(&serde_json::Value::Null)
            ),
        });
    }
    serde_json::from_value(value).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod bus_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_keys_are_told_from_run_keys_and_strangers() {
        let run = RunId::new();
        assert!(is_target_key(&target_key(&run, 3)));
        assert!(!is_target_key(&run.to_string()));
        assert!(!is_target_key(&format!("{run}{CANCEL_SUFFIX}")));
        assert!(!is_target_key("junk.t.1"));
        assert!(!is_target_key(&format!("{run}.t.x")));
    }

    #[test]
    fn a_newer_schema_is_unreadable_and_says_which() {
        let e = decode("k", br#"{"schema":"flotilla.run.v2"}"#).unwrap_err();
        assert!(
            matches!(&e, StoreError::Corrupt { key, reason } if key == "k" && reason.contains("flotilla.run.v2")),
            "{e}"
        );
        assert!(matches!(
            decode("k", b"\x00garbage"),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
