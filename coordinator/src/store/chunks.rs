//! The targets kept in chunks: `<run>.c.<first>` holds the targets `first..first + n` (a
//! [`RunRecord`]'s `chunked_targets`), each whole: who it is, its commands and results. A batch
//! of dispatches or results costs one compare-and-set write per chunk it touches, not one per
//! target, and a chunk is split by size, so a run is not capped by the server's maximum message
//! size. A run created with `target_count` has its chunks written before its header, so a
//! header never counts targets that no chunk holds; a header found without them is an error.
//!
//! The chunks form a chain: the one at 0, then the one where it ends, and so on. A chunk that
//! grows past [`CHUNK_BYTES`] is split: its new pieces are written first (new keys, which the
//! chain does not reach yet), then the chunk itself, shorter, over the revision last seen. A
//! coordinator killed in between leaves the chain as it was (the pieces are unreachable), and
//! a second coordinator loses the race on the chunk itself, as on any key.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use flotilla_schemas::RunId;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{RunRecord, Store, StoreError, TargetRecord, WRITE_CONCURRENCY};

/// The most a chunk holds, in bytes of JSON: a quarter of the server's default maximum message
/// size (1 MiB), so that it fits with room to spare (a quarter of a smaller `max_payload` on a
/// server that sets one). A target alone larger than this is a chunk of its own, as it was a
/// key of its own before chunks.
pub(super) const CHUNK_BYTES: usize = 256 * 1024;

/// Where one chunk ends, and its revision: the chain is keyed by each chunk's first target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) len: usize,
    pub(super) revision: u64,
}

/// The chunks of a run as last read or written.
pub(super) type Chain = BTreeMap<usize, Span>;

#[derive(Serialize)]
struct ChunkOut<'a> {
    first: usize,
    targets: &'a [TargetRecord],
}

#[derive(Deserialize)]
struct ChunkIn {
    first: usize,
    targets: Vec<TargetRecord>,
}

/// The key of the chunk whose first target is `first`.
pub(super) fn chunk_key(run: &RunId, first: usize) -> String {
    format!("{run}.c.{first}")
}

/// True for a key of the form [`chunk_key`] writes.
pub(super) fn is_chunk_key(key: &str) -> bool {
    key.split_once(".c.")
        .is_some_and(|(run, first)| run.parse::<RunId>().is_ok() && first.parse::<usize>().is_ok())
}

/// `targets` (the first being number `first`) cut into runs of at most `limit` bytes each:
/// `(first, len)` of every piece, in order; never an empty one.
pub(super) fn pieces(targets: &[TargetRecord], first: usize, limit: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (first, 0);
    for (i, target) in targets.iter().enumerate() {
        let size = serde_json::to_vec(target).map_or(0, |v| v.len()) + 1;
        let at = first + i;
        if at > start && bytes + size > limit {
            out.push((start, at - start));
            (start, bytes) = (at, 0);
        }
        bytes += size;
    }
    if first + targets.len() > start {
        out.push((start, first + targets.len() - start));
    }
    out
}

fn encode(first: usize, targets: &[TargetRecord]) -> bytes::Bytes {
    serde_json::to_vec(&ChunkOut { first, targets })
        .expect("run records always serialize")
        .into()
}

// === impl Store ===

impl Store {
    /// The most a chunk holds on this server: [`CHUNK_BYTES`], or a quarter of a smaller
    /// `max_payload`.
    pub(super) fn chunk_bytes(&self) -> usize {
        match self.max_payload {
            0 => CHUNK_BYTES,
            max => CHUNK_BYTES.min(max / 4),
        }
    }

    /// Writes the chunks that hold the targets `indices`, one write per chunk (more when one
    /// is split), concurrently; `chain` follows every chunk written whole.
    pub(super) async fn save_chunks(
        &self,
        record: &RunRecord,
        indices: &[usize],
        chain: &mut Chain,
    ) -> Result<(), StoreError> {
        let n = record.targets.len();
        let mut touched: BTreeMap<usize, (usize, Option<u64>)> = BTreeMap::new();
        for &i in indices.iter().filter(|&&i| i < n) {
            if chain.is_empty() {
                // Nothing written yet: the whole run is one chunk, to be created.
                touched.insert(0, (n, None));
                continue;
            }
            match chain.range(..=i).next_back() {
                Some((&first, span)) if i < first + span.len => {
                    touched.insert(first, (span.len, Some(span.revision)));
                }
                _ => {
                    return Err(StoreError::Corrupt {
                        key: chunk_key(&record.run_id, i),
                        reason: format!("no chunk holds target {i}"),
                    });
                }
            }
        }
        let writes = touched
            .into_iter()
            .map(|(first, (len, revision))| self.write_chunk(record, first, len, revision));
        let done: Vec<_> = futures::stream::iter(writes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        let mut first_error = None;
        for written in done {
            match written {
                Ok(spans) => chain.extend(spans),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Writes the chunk at `first` (`len` targets, at `revision`; `None`: not written yet),
    /// split when it grew too large; returns the spans written.
    async fn write_chunk(
        &self,
        record: &RunRecord,
        first: usize,
        len: usize,
        revision: Option<u64>,
    ) -> Result<Vec<(usize, Span)>, StoreError> {
        let run = &record.run_id;
        let split = pieces(
            &record.targets[first..first + len],
            first,
            self.chunk_bytes(),
        );
        // The new pieces first: the chain reaches them only once the chunk is rewritten.
        let new_pieces = split[1..].iter().map(|&(start, len)| async move {
            let value = encode(start, &record.targets[start..start + len]);
            let written = self.write_piece(run, first, revision, start, value).await?;
            Ok::<_, StoreError>((
                start,
                Span {
                    len,
                    revision: written,
                },
            ))
        });
        let mut spans = Vec::new();
        for piece in futures::future::join_all(new_pieces).await {
            spans.push(piece?);
        }
        let (_, len) = split[0];
        let value = encode(first, &record.targets[first..first + len]);
        let written = self.cas(&chunk_key(run, first), value, revision).await?;
        spans.push((
            first,
            Span {
                len,
                revision: written,
            },
        ));
        Ok(spans)
    }

    /// Writes a new piece at `start`, split from the chunk at `first` (last seen at `parent`):
    /// created; or, over a piece left there by a split that stopped before its chunk was
    /// rewritten, written over that one, but only while the chunk is still at `parent` (else
    /// someone else moved the run on: a conflict).
    async fn write_piece(
        &self,
        run: &RunId,
        first: usize,
        parent: Option<u64>,
        start: usize,
        value: bytes::Bytes,
    ) -> Result<u64, StoreError> {
        let key = chunk_key(run, start);
        match self.cas(&key, value.clone(), None).await {
            Err(StoreError::Conflict { .. }) => {}
            other => return other,
        }
        let parent_key = chunk_key(run, first);
        let current = self.read(&parent_key).await?;
        let current = current
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| e.revision);
        if current != parent {
            return Err(StoreError::Conflict { key: parent_key });
        }
        let left = self.read(&key).await?.map(|e| e.revision);
        self.cas(&key, value, left).await
    }

    /// Reads the chain of the chunks of `run`, whose header counts `n` targets: the targets in
    /// order and the chain; no targets when there is no chunk at 0 (the caller decides whether
    /// that may be). A chain that breaks before `n` is an error, never fewer targets.
    pub(super) async fn load_chunks(
        &self,
        run: &RunId,
        n: usize,
    ) -> Result<(Vec<TargetRecord>, Chain), StoreError> {
        let mut targets = Vec::with_capacity(n);
        let mut chain = Chain::new();
        while targets.len() < n {
            let at = targets.len();
            let key = chunk_key(run, at);
            let entry = self.read(&key).await?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                if at == 0 {
                    break;
                }
                return Err(StoreError::Corrupt {
                    key,
                    reason: format!(
                        "the chain of chunks breaks here: targets {at} to {} of {n} are missing",
                        n - 1
                    ),
                });
            };
            let corrupt = |reason: String| StoreError::Corrupt {
                key: key.clone(),
                reason,
            };
            let chunk: ChunkIn =
                serde_json::from_slice(&entry.value).map_err(|e| corrupt(e.to_string()))?;
            let len = chunk.targets.len();
            if chunk.first != at || len == 0 || at + len > n {
                return Err(corrupt(format!(
                    "holds {len} target(s) from {}, where the chain expects some from {at} of {n}",
                    chunk.first
                )));
            }
            targets.extend(chunk.targets);
            chain.insert(
                at,
                Span {
                    len,
                    revision: entry.revision,
                },
            );
        }
        Ok((targets, chain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(padding: usize) -> TargetRecord {
        serde_json::from_value(serde_json::json!({
            "service": "svc", "instance": "a".repeat(padding.clamp(1, 60)), "wave": 0,
            "bake_failure": "x".repeat(padding),
        }))
        .unwrap()
    }

    #[test]
    fn pieces_are_cut_by_size_and_cover_every_target() {
        let small: Vec<TargetRecord> = (0..10).map(|_| target(10)).collect();
        assert_eq!(pieces(&small, 0, CHUNK_BYTES), [(0, 10)]);
        assert_eq!(pieces(&small, 7, CHUNK_BYTES), [(7, 10)]);
        // Each about a third of a chunk: three to a chunk at most.
        let big: Vec<TargetRecord> = (0..7).map(|_| target(CHUNK_BYTES / 3 - 200)).collect();
        let cut = pieces(&big, 5, CHUNK_BYTES);
        assert!(cut.len() >= 3, "{cut:?}");
        let mut next = 5;
        for &(start, len) in &cut {
            assert_eq!(start, next);
            assert!(len >= 1);
            let bytes: usize = big[start - 5..start - 5 + len]
                .iter()
                .map(|t| serde_json::to_vec(t).unwrap().len() + 1)
                .sum();
            assert!(bytes <= CHUNK_BYTES || len == 1, "{bytes}");
            next = start + len;
        }
        assert_eq!(next, 12);
        // A target larger than a chunk is one of its own.
        let huge = vec![target(10), target(CHUNK_BYTES * 2), target(10)];
        assert_eq!(pieces(&huge, 0, CHUNK_BYTES), [(0, 1), (1, 1), (2, 1)]);
    }

    #[test]
    fn chunk_keys_are_told_from_run_keys_and_strangers() {
        let run = RunId::new();
        assert!(is_chunk_key(&chunk_key(&run, 40)));
        assert!(!is_chunk_key(&run.to_string()));
        assert!(!is_chunk_key("junk.c.1"));
        assert!(!is_chunk_key(&format!("{run}.c.x")));
    }
}
