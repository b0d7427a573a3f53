//! The agent's write-ahead journal: one JSON record per line, durable before the agent acts on
//! it (fsynced, or committed by the barrier that precedes the act: see
//! [`Journal::append_lazily`]). It is the agent's memory of the commands it accepted, so a command is never applied
//! twice (whatever the broker redelivers) and a migration cut short by a crash is finished or
//! undone on the next start.
//!
//! It does not grow forever: [`Journal::compact`] rewrites it (a new file, fsynced, renamed over
//! the old one) with only what is still needed ([`Retention`]): unfinished commands, results
//! not yet published, succeeded migrations whose backup is still kept, and every command that
//! could still arrive and be accepted (not yet past `expires_at` + the clock skew, plus a
//! cushion) — an older one is refused as expired whether remembered or not.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use flotilla_schemas::{Action, Command, CommandId, Outcome, RunResult};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::redact::Redactor;

/// The journal's file name in the state directory.
const FILE: &str = "journal.jsonl";
/// Where a compaction writes the new journal before renaming it over the old one.
const COMPACTING: &str = "journal.jsonl.tmp";
/// Compaction is due past this many commands in memory...
const COMPACT_ENTRIES: usize = 1_000;
/// ...or past this many bytes on disk (or twice what the last compaction kept, if more).
const COMPACT_BYTES: u64 = 4 << 20;

/// Why the journal could not be read or written. Any write error is fatal for the agent: a
/// journal that may have lost a record cannot promise at-most-once.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{op} journal {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {path} is corrupt at line {line} (only a torn last line is tolerated)")]
    Corrupt { path: PathBuf, line: usize },
}

/// One journal record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// The command was accepted; nothing has changed yet.
    Accepted { command: Command },
    /// The backup is complete and durable. Written by agents before the one `Applying` record
    /// replaced the pair; still read from older journals.
    BackedUp { command_id: CommandId },
    /// The backup is complete and durable, and the service root is about to change (one record,
    /// one fsync: older journals have a `BackedUp` record before it).
    Applying { command_id: CommandId },
    /// The command ended; its result is final.
    Finished { result: RunResult },
    /// The result reached the events stream.
    Published { command_id: CommandId },
}

/// What the journal knows of one command.
#[derive(Debug, Clone)]
pub struct Entry {
    pub command: Option<Command>,
    pub backed_up: bool,
    pub applying: bool,
    pub result: Option<RunResult>,
    pub published: bool,
}

/// The journal file and its folded state.
pub struct Journal {
    path: PathBuf,
    file: File,
    entries: HashMap<CommandId, Entry>,
    order: Vec<CommandId>,
    /// The file's length.
    bytes: u64,
    /// What the last compaction kept, to compact again only once the journal doubled.
    kept_entries: usize,
    kept_bytes: u64,
    /// Scrubs secret values from results before they are written (and kept in memory).
    redactor: Redactor,
}

/// What a compaction keeps: every entry the agent may still need.
pub struct Retention<'a> {
    pub now: OffsetDateTime,
    /// How long after its `expires_at` a command is remembered. The agent accepts a command
    /// until `expires_at` + its clock skew; it remembers it twice as long, so that a replay
    /// arriving while it could still be accepted is answered from the journal, with a cushion
    /// for the wall clock stepping back.
    pub remember_after_expiry: time::Duration,
    /// Whether the backup of a migration is still kept (whole, or consumed by a restore and
    /// not yet finalized): a rollback or a finalize may still come for it.
    pub backup_kept: &'a dyn Fn(CommandId) -> bool,
}

impl Retention<'_> {
    /// Whether `entry` must survive a compaction, and why (for tests and logs).
    pub fn keeps(&self, entry: &Entry) -> Option<&'static str> {
        let Some(result) = &entry.result else {
            return entry.command.is_some().then_some("unfinished");
        };
        if !entry.published {
            return Some("result not yet published");
        }
        let Some(command) = &entry.command else {
            return None;
        };
        if matches!(command.action, Action::Migrate { .. })
            && result.outcome == Outcome::Succeeded
            && (self.backup_kept)(command.command_id)
        {
            return Some("succeeded migration whose backup is kept");
        }
        if command.expires_at + self.remember_after_expiry >= self.now {
            return Some("could still be replayed and accepted");
        }
        None
    }
}

impl Journal {
    /// Opens (or creates) the journal in `state_dir` and folds its records.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join(FILE);
        let io = |op, source| JournalError::Io {
            op,
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(|e| io("create directory for", e))?;
        let existed = path.exists();
        let mut journal = Self {
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&path)
                .map_err(|e| io("open", e))?,
            path: path.clone(),
            entries: HashMap::new(),
            order: Vec::new(),
            bytes: 0,
            kept_entries: 0,
            kept_bytes: 0,
            redactor: Redactor::default(),
        };
        // A compaction cut short before its rename: the old journal is whole, drop the new one.
        let _ = std::fs::remove_file(state_dir.join(COMPACTING));
        if !existed {
            File::open(state_dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("fsync directory of", e))?;
        }
        let text = std::fs::read(&path).map_err(|e| io("read", e))?;
        let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        // `split` yields an empty slice after the final newline of a clean journal.
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        // Only a line that ends with its newline was appended in full (append writes the line
        // and its newline, then fsyncs, before the agent acts on it).
        let clean_end = text.last().is_none_or(|b| *b == b'\n');
        let last = lines.len();
        let mut kept = 0u64;
        let mut torn = false;
        for (number, line) in lines.into_iter().enumerate() {
            let complete = number + 1 < last || clean_end;
            match serde_json::from_slice::<Record>(line) {
                Ok(record) if complete => {
                    journal.fold(record);
                    kept += line.len() as u64 + 1;
                }
                // A crash (or a full disk) mid-append leaves a torn last line: that record was
                // never acted on.
                _ if number + 1 == last => {
                    tracing::warn!(line = number + 1, "dropping torn last journal record");
                    torn = true;
                }
                _ => {
                    return Err(JournalError::Corrupt {
                        path,
                        line: number + 1,
                    });
                }
            }
        }
        if torn {
            // Cut the torn record off before anything is appended after it: glued to the next
            // record, it would make the journal unreadable from then on.
            journal
                .file
                .set_len(kept)
                .map_err(|e| io("truncate torn record of", e))?;
            journal.file.sync_all().map_err(|e| io("fsync", e))?;
        }
        journal.bytes = kept;
        Ok(journal)
    }

    fn fold(&mut self, record: Record) {
        let id = match &record {
            Record::Accepted { command } => command.command_id,
            Record::BackedUp { command_id }
            | Record::Applying { command_id }
            | Record::Published { command_id } => *command_id,
            Record::Finished { result } => result.command_id,
        };
        let entry = self.entries.entry(id).or_insert_with(|| {
            self.order.push(id);
            Entry {
                command: None,
                backed_up: false,
                applying: false,
                result: None,
                published: false,
            }
        });
        match record {
            Record::Accepted { command } => entry.command = Some(command),
            Record::BackedUp { .. } => entry.backed_up = true,
            Record::Applying { .. } => {
                entry.backed_up = true;
                entry.applying = true;
            }
            Record::Finished { result } => entry.result = Some(result),
            Record::Published { .. } => entry.published = true,
        }
    }

    /// Appends `record` durably (write, then fsync), then folds it.
    pub fn append(&mut self, record: Record) -> Result<(), JournalError> {
        self.append_all(vec![record])
    }

    /// Appends `records` durably with one write and one fsync, then folds them. A crash leaves
    /// a prefix of them (a torn last one is cut off on open), never a gap.
    pub fn append_all(&mut self, records: Vec<Record>) -> Result<(), JournalError> {
        self.write(records, true)
    }

    /// Appends `record` without waiting for it to be durable: for records whose loss only
    /// repeats harmless work (`Published`: a result sent again, which the coordinator files
    /// once by command ID), or that a barrier commits before anything acts on them (a
    /// service's migrate's `Accepted` and its `Applying`: see `Lifecycle::durable_later` and
    /// `make_durable`). The next durable append makes it durable too (one file, appended in
    /// order: its `fdatasync` commits every line before it).
    pub fn append_lazily(&mut self, record: Record) -> Result<(), JournalError> {
        self.write(vec![record], false)
    }

    /// Redacts secret values from every result written from now on (and from the results a
    /// compaction rewrites).
    pub fn redact_with(&mut self, redactor: Redactor) {
        self.redactor = redactor;
    }

    /// `record` with its result scrubbed: results carry the agent's own text (reasons, details),
    /// commands only what the coordinator sent (placeholders, never values).
    fn scrubbed(&self, record: Record) -> Record {
        match record {
            Record::Finished { result } => Record::Finished {
                result: self.redactor.scrub_result(&result),
            },
            other => other,
        }
    }

    fn write(&mut self, records: Vec<Record>, durable: bool) -> Result<(), JournalError> {
        let records: Vec<Record> = records.into_iter().map(|r| self.scrubbed(r)).collect();
        let mut lines = Vec::new();
        for record in &records {
            serde_json::to_writer(&mut lines, record).expect("journal records serialize");
            lines.push(b'\n');
        }
        let io = |op, source| JournalError::Io {
            op,
            path: self.path.clone(),
            source,
        };
        self.file
            .write_all(&lines)
            .map_err(|e| io("append to", e))?;
        if durable {
            self.file.sync_data().map_err(|e| io("fsync", e))?;
        }
        self.bytes += lines.len() as u64;
        for record in records {
            self.fold(record);
        }
        Ok(())
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the journal knows of command `id`.
    pub fn get(&self, id: CommandId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    /// Commands accepted but not finished: a crash interrupted them.
    pub fn unfinished(&self) -> Vec<Entry> {
        self.in_order()
            .filter(|e| e.command.is_some() && e.result.is_none())
            .cloned()
            .collect()
    }

    /// Results not yet confirmed on the events stream.
    pub fn unpublished(&self) -> Vec<RunResult> {
        self.in_order()
            .filter(|e| !e.published)
            .filter_map(|e| e.result.clone())
            .collect()
    }

    fn in_order(&self) -> impl Iterator<Item = &Entry> {
        self.order.iter().filter_map(|id| self.entries.get(id))
    }

    /// How many commands the journal holds in memory.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the journal holds no command.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The journal file's length in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the journal has grown enough since the last compaction to compact it: past
    /// 1,000 commands or 4 MiB, and past twice what the last compaction kept.
    pub fn compaction_due(&self) -> bool {
        self.entries.len() > COMPACT_ENTRIES.max(2 * self.kept_entries)
            || self.bytes > COMPACT_BYTES.max(2 * self.kept_bytes)
    }

    /// Rewrites the journal with only the entries `retention` keeps, in their order: the new
    /// file is written beside the old one, fsynced, renamed over it, and the directory fsynced,
    /// so a crash at any point leaves the old journal or the new one, both whole. Returns how
    /// many commands were dropped. A failure before the rename (e.g. a full disk) leaves the
    /// old journal in use and is only logged; one after it is an error.
    pub fn compact(&mut self, retention: &Retention<'_>) -> Result<usize, JournalError> {
        let dropped: Vec<CommandId> = self
            .order
            .iter()
            .filter(|id| {
                self.entries
                    .get(id)
                    .is_some_and(|e| retention.keeps(e).is_none())
            })
            .copied()
            .collect();
        if dropped.is_empty() {
            self.kept_entries = self.entries.len();
            self.kept_bytes = self.bytes;
            return Ok(0);
        }
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_owned();
        let tmp = dir.join(COMPACTING);
        let gone: std::collections::HashSet<CommandId> = dropped.iter().copied().collect();
        let mut text = Vec::new();
        for entry in self
            .order
            .iter()
            .filter(|id| !gone.contains(id))
            .filter_map(|id| self.entries.get(id))
        {
            for record in entry.records() {
                let record = self.scrubbed(record);
                serde_json::to_writer(&mut text, &record).expect("journal records serialize");
                text.push(b'\n');
            }
        }
        let written = File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(&text)?;
                f.sync_all()
            })
            .and_then(|()| {
                crate::crashpoint::reached(&dir, "compacting");
                std::fs::rename(&tmp, &self.path)
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(error = %e, "journal compaction failed; the journal is kept as it was");
            // Not again before it has grown further.
            self.kept_entries = self.entries.len();
            self.kept_bytes = self.bytes;
            return Ok(0);
        }
        let io = |op, source| JournalError::Io {
            op,
            path: self.path.clone(),
            source,
        };
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync directory of", e))?;
        self.file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&self.path)
            .map_err(|e| io("reopen", e))?;
        self.order.retain(|id| !gone.contains(id));
        self.order.shrink_to_fit();
        self.entries.retain(|id, _| !gone.contains(id));
        self.entries.shrink_to_fit();
        self.bytes = text.len() as u64;
        self.kept_entries = self.entries.len();
        self.kept_bytes = self.bytes;
        tracing::info!(
            dropped = dropped.len(),
            kept = self.entries.len(),
            bytes = self.bytes,
            "journal compacted"
        );
        Ok(dropped.len())
    }
}

impl Entry {
    /// The records that rebuild this entry.
    fn records(&self) -> Vec<Record> {
        let mut records = Vec::with_capacity(4);
        let id = self
            .command
            .as_ref()
            .map(|c| c.command_id)
            .or(self.result.as_ref().map(|r| r.command_id));
        if let Some(command) = &self.command {
            records.push(Record::Accepted {
                command: command.clone(),
            });
        }
        if let Some(command_id) = id {
            if self.applying {
                records.push(Record::Applying { command_id });
            } else if self.backed_up {
                records.push(Record::BackedUp { command_id });
            }
        }
        if let Some(result) = &self.result {
            records.push(Record::Finished {
                result: result.clone(),
            });
        }
        if self.published
            && let Some(command_id) = id
        {
            records.push(Record::Published { command_id });
        }
        records
    }
}

#[cfg(test)]
mod tests;
