//! Backups of the service root, kept in the agent's state directory until the run is finalized,
//! and restores that swap the whole tree back in one atomic rename.

use std::fs;
use std::path::{Path, PathBuf};

use flotilla_schemas::CommandId;
use rustix::fs::{CWD, RenameFlags};

use crate::tree::{self, Manifest, TreeError};

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(
        "not enough space for the backup: {needed} bytes needed, {available} available in {dir}"
    )]
    NoSpace {
        needed: u64,
        available: u64,
        dir: PathBuf,
    },
    #[error("the backup would take {needed} bytes, over the agent's max_backup_bytes of {limit}")]
    OverLimit { needed: u64, limit: u64 },
    #[error("no backup for command {0}")]
    Missing(CommandId),
    #[error("backup manifest {path} is unreadable")]
    Manifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the restored tree does not match the backup: {0}")]
    Mismatch(String),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Backups under `<state_dir>/backups/<command_id>/`: `tree/` holds the copy, `manifest.json`
/// its digests. A backup being written lives under `<command_id>.partial` and is renamed into
/// place only once durable, so a crash never leaves a half backup that looks whole.
#[derive(Debug, Clone)]
pub struct BackupStore {
    dir: PathBuf,
    max_bytes: Option<u64>,
}

/// A complete, durable backup.
#[derive(Debug, Clone)]
pub struct Backup {
    pub tree: PathBuf,
    pub manifest: Manifest,
}

impl BackupStore {
    /// The store under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self::in_dir(&state_dir.join("backups"))
    }

    /// The store in `dir` itself.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            max_bytes: None,
        }
    }

    /// Refuses backups larger than `max_bytes`.
    pub fn with_limit(self, max_bytes: Option<u64>) -> Self {
        Self { max_bytes, ..self }
    }

    fn path(&self, id: CommandId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn partial_path(&self, id: CommandId) -> PathBuf {
        self.dir.join(format!("{id}.partial"))
    }

    /// Backs `root` up for command `id`, durably. On any error nothing is left behind.
    pub fn take(&self, root: &Path, id: CommandId) -> Result<Backup, BackupError> {
        fs::create_dir_all(&self.dir).map_err(|source| io("create", &self.dir, source))?;
        self.check_space(root)?;
        let partial = self.partial_path(id);
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir(&partial).map_err(|source| io("create", &partial, source))?;
        let result = self.write(root, &partial, id);
        if result.is_err() {
            let _ = fs::remove_dir_all(&partial);
        }
        result
    }

    fn write(&self, root: &Path, partial: &Path, id: CommandId) -> Result<Backup, BackupError> {
        let manifest = tree::copy_tree(root, &partial.join("tree"))?;
        let manifest_path = partial.join("manifest.json");
        let text = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
        fs::write(&manifest_path, text).map_err(|source| io("write", &manifest_path, source))?;
        tree::sync_filesystem(partial)?;
        let done = self.path(id);
        fs::rename(partial, &done).map_err(|source| io("rename", partial, source))?;
        tree::sync_dir(&self.dir)?;
        Ok(Backup {
            tree: done.join("tree"),
            manifest,
        })
    }

    fn check_space(&self, root: &Path) -> Result<(), BackupError> {
        let needed: u64 = walkdir::WalkDir::new(root)
            .follow_links(false)
            .into_iter()
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len().div_ceil(4096) * 4096 + 4096)
            .sum();
        if let Some(limit) = self.max_bytes
            && needed > limit
        {
            return Err(BackupError::OverLimit { needed, limit });
        }
        let stat =
            rustix::fs::statvfs(&self.dir).map_err(|e| io("statvfs", &self.dir, e.into()))?;
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        // 10% and 1 MiB of head-room for the manifest and the file system's own needs.
        let needed_with_margin = needed + needed / 10 + (1 << 20);
        if needed_with_margin > available {
            return Err(BackupError::NoSpace {
                needed: needed_with_margin,
                available,
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// The complete backup of command `id`.
    pub fn load(&self, id: CommandId) -> Result<Backup, BackupError> {
        let dir = self.path(id);
        let manifest_path = dir.join("manifest.json");
        let text = match fs::read(&manifest_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackupError::Missing(id));
            }
            Err(source) => {
                return Err(BackupError::Manifest {
                    path: manifest_path,
                    source,
                });
            }
        };
        let manifest = serde_json::from_slice(&text).map_err(|e| BackupError::Manifest {
            path: manifest_path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        Ok(Backup {
            tree: dir.join("tree"),
            manifest,
        })
    }

    /// Removes the backup of command `id` and any partial one.
    pub fn discard(&self, id: CommandId) -> Result<(), BackupError> {
        for path in [self.path(id), self.partial_path(id)] {
            match fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(io("remove", &path, source)),
            }
        }
        // Best effort: a discarded backup that reappears after a power cut is only wasted space.
        let _ = tree::sync_dir(&self.dir);
        Ok(())
    }
}

/// Puts `backup` back at `root`: the copy is staged beside the root, made durable, then swapped
/// in with one `renameat2(RENAME_EXCHANGE)`, so the service sees either the old tree or the
/// restored one, never a mix. Verifies the result against the manifest.
pub fn restore(backup: &Backup, root: &Path) -> Result<(), BackupError> {
    let staging = sibling(root, "restore");
    let _ = fs::remove_dir_all(&staging);
    tree::copy_tree(&backup.tree, &staging)?;
    tree::sync_filesystem(&staging)?;
    swap_in(&staging, root)?;
    let _ = fs::remove_dir_all(&staging);
    let found = tree::scan(root)?;
    let diff = tree::differences(&backup.manifest, &found);
    if !diff.is_empty() {
        return Err(BackupError::Mismatch(diff.join(", ")));
    }
    Ok(())
}

/// Exchanges `staging` and `root`; where the file system cannot exchange, falls back to two
/// renames (root aside, staging in), which leaves a short window without a root.
fn swap_in(staging: &Path, root: &Path) -> Result<(), BackupError> {
    let parent = root.parent().unwrap_or(Path::new("/"));
    match rustix::fs::renameat_with(CWD, staging, CWD, root, RenameFlags::EXCHANGE) {
        Ok(()) => {}
        Err(rustix::io::Errno::NOENT) => {
            // The root itself is gone (e.g. deleted by a bad step): a plain rename restores it.
            fs::rename(staging, root).map_err(|source| io("rename", staging, source))?;
        }
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => {
            let aside = sibling(root, "aside");
            fs::rename(root, &aside).map_err(|source| io("rename", root, source))?;
            fs::rename(staging, root).map_err(|source| io("rename", staging, source))?;
            fs::rename(&aside, staging).map_err(|source| io("rename", &aside, source))?;
        }
        Err(e) => return Err(io("exchange", root, e.into())),
    }
    tree::sync_dir(parent)?;
    Ok(())
}

/// A hidden name beside `root`, on the same file system, for staging.
fn sibling(root: &Path, purpose: &str) -> PathBuf {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    root.with_file_name(format!(".{name}.flotilla-{purpose}"))
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> BackupError {
    BackupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_then_restore_brings_back_every_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("svc");
        fs::create_dir_all(root.join("config")).unwrap();
        fs::write(root.join("config/a.toml"), "a = 1\n").unwrap();
        fs::write(root.join("legacy.conf"), "x=1\n").unwrap();
        let before = tree::scan(&root).unwrap();
        let store = BackupStore::new(&tmp.path().join("state"));
        let id = CommandId::new();
        let backup = store.take(&root, id).unwrap();
        assert_eq!(backup.manifest, before);

        fs::write(root.join("config/a.toml"), "changed").unwrap();
        fs::remove_file(root.join("legacy.conf")).unwrap();
        fs::write(root.join("new.toml"), "").unwrap();
        restore(&store.load(id).unwrap(), &root).unwrap();
        assert!(tree::differences(&before, &tree::scan(&root).unwrap()).is_empty());
        assert!(!sibling(&root, "restore").exists());

        store.discard(id).unwrap();
        assert!(matches!(store.load(id), Err(BackupError::Missing(_))));
    }

    #[test]
    fn restore_recreates_a_deleted_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("svc");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("f"), "1").unwrap();
        let store = BackupStore::new(&tmp.path().join("state"));
        let id = CommandId::new();
        store.take(&root, id).unwrap();
        fs::remove_dir_all(&root).unwrap();
        restore(&store.load(id).unwrap(), &root).unwrap();
        assert_eq!(fs::read_to_string(root.join("f")).unwrap(), "1");
    }
}
