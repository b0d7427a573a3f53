//! The agent's write-ahead journal: one JSON record per line, fsynced before the agent acts on
//! it. It is the agent's memory of every command it accepted, so a command is never applied
//! twice (whatever the broker redelivers) and a migration cut short by a crash is finished or
//! undone on the next start.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use flotilla_schemas::{Command, CommandId, RunResult};
use serde::{Deserialize, Serialize};

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
    /// The backup is complete and durable.
    BackedUp { command_id: CommandId },
    /// The service root is about to change.
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
}

impl Journal {
    /// Opens (or creates) the journal in `state_dir` and folds its records.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join("journal.jsonl");
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
        };
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
            Record::Applying { .. } => entry.applying = true,
            Record::Finished { result } => entry.result = Some(result),
            Record::Published { .. } => entry.published = true,
        }
    }

    /// Appends `record` durably (write, then fsync), then folds it.
    pub fn append(&mut self, record: Record) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(&record).expect("journal records serialize");
        line.push(b'\n');
        let io = |op, source| JournalError::Io {
            op,
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&line).map_err(|e| io("append to", e))?;
        self.file.sync_data().map_err(|e| io("fsync", e))?;
        self.fold(record);
        Ok(())
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
}
