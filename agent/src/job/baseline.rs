//! The job's recorded baseline: the last good run on the files the root holds now, kept in
//! `<state_dir>/job-baseline.json` across agent restarts. A migration's good run replaces it
//! (keeping the one it replaced); a rollback of that migration brings the replaced one back, as
//! it brings the files back.

use std::path::{Path, PathBuf};

use flotilla_schemas::{CommandId, JobRun};
use serde::{Deserialize, Serialize};

const FILE: &str = "job-baseline.json";

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// The last good run on the current files.
    pub run: Option<JobRun>,
    /// The migration whose run `run` is, when a migration made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<CommandId>,
    /// The baseline that migration replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<JobRun>,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The record, or an empty one (none yet, or unreadable: the precheck then measures anew).
pub fn load(state_dir: &Path) -> Recorded {
    std::fs::read(path(state_dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Writes the record (a temporary file renamed over: never half written).
pub fn save(state_dir: &Path, recorded: &Recorded) -> std::io::Result<()> {
    let final_path = path(state_dir);
    let temp = final_path.with_extension("json.tmp");
    std::fs::write(&temp, serde_json::to_vec_pretty(recorded)?)?;
    std::fs::rename(&temp, &final_path)
}

/// After a rollback of `migration`: the baseline it replaced is the current one again.
pub fn rolled_back(state_dir: &Path, migration: CommandId) -> std::io::Result<()> {
    let recorded = load(state_dir);
    if recorded.migration != Some(migration) {
        return Ok(());
    }
    save(
        state_dir,
        &Recorded {
            run: recorded.replaced,
            migration: None,
            replaced: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_brings_back_the_baseline_its_migration_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(load(tmp.path()), Recorded::default());
        let old = JobRun {
            duration_ms: 100,
            ..Default::default()
        };
        let new = JobRun {
            duration_ms: 200,
            ..Default::default()
        };
        let migration = CommandId::new();
        save(
            tmp.path(),
            &Recorded {
                run: Some(new),
                migration: Some(migration),
                replaced: Some(old.clone()),
            },
        )
        .unwrap();
        // Another migration's rollback leaves it alone.
        rolled_back(tmp.path(), CommandId::new()).unwrap();
        assert_eq!(load(tmp.path()).run.unwrap().duration_ms, 200);
        rolled_back(tmp.path(), migration).unwrap();
        assert_eq!(load(tmp.path()).run, Some(old));
    }
}
