//! Backups of the service root, kept in the agent's state directory until the run is finalized,
//! and restores that put the backup's own tree in place of the root with one atomic rename.
//!
//! A backup lives in `<backups>/<command_id>/`: `tree/` (the copy), `manifest.json` (its
//! digests) and `tree.id` (the inode number of `tree/`). A restore, when the backup and the root
//! share a file system, does not copy: it checks `tree/` against the manifest with `lstat` only,
//! then exchanges `tree/` and the root with one `renameat2(RENAME_EXCHANGE)` (a plain rename when
//! the root is missing). The backup is consumed: the tree that was the root is renamed
//! `discard/` (never taken for a backup) and removed after the answer, and a `restored` marker
//! says so. Every state a crash can leave is recognisable: the root *is* the backup's tree when
//! its inode number is the one in `tree.id`, so a restore cut short after its swap is finished,
//! never repeated. On another file system the backup is copied beside the root and swapped in
//! (the backup is kept).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use flotilla_schemas::CommandId;

use crate::crashpoint;
use crate::tree::{self, Manifest, TreeError};
use swap::{exchange, same_file_system};

mod swap;

pub use swap::restore_by_copy;

/// The copy inside a backup directory.
const TREE: &str = "tree";
/// The manifest of the copy.
const MANIFEST: &str = "manifest.json";
/// The inode number of `tree/`, so the backup's tree is recognised after it became the root.
const TREE_ID: &str = "tree.id";
/// Marks a backup whose tree was swapped in: consumed, only its manifest is left.
const RESTORED: &str = "restored";
/// The tree that was the root before a restore, on its way out.
const DISCARD: &str = "discard";

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
    #[error("the backup {path} does not match its manifest, not restored: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("the restored tree does not match the backup: {0}")]
    Mismatch(String),
}

/// Backups under `<state_dir>/backups/<command_id>/`: `tree/` holds the copy, `manifest.json`
/// its digests. A backup being written lives under `<command_id>.partial` and is renamed into
/// place only once durable, so a crash never leaves a half backup that looks whole.
#[derive(Debug, Clone)]
pub struct BackupStore {
    dir: PathBuf,
    max_bytes: Option<u64>,
    /// Where the test crash points drop their markers (the agent's state directory).
    crash_dir: Option<PathBuf>,
}

/// A complete, durable backup.
#[derive(Debug, Clone)]
pub struct Backup {
    pub tree: PathBuf,
    pub manifest: Manifest,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The backup's tree became the root (one rename): the backup is consumed. `swapped_out`
    /// is the tree that was the root, under a discard name, to remove once the answer is out
    /// ([`remove_swapped_out`]).
    Swapped { swapped_out: Option<PathBuf> },
    /// The backup is on another file system: it was copied in, and is kept.
    Copied,
    /// An earlier restore already swapped this backup in (it is consumed): nothing was done.
    /// Whether the root still equals it is the caller's question ([`BackupStore::load`] keeps
    /// the manifest).
    AlreadyRestored,
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
            crash_dir: None,
        }
    }

    /// Refuses backups larger than `max_bytes`.
    pub fn with_limit(self, max_bytes: Option<u64>) -> Self {
        Self { max_bytes, ..self }
    }

    /// Arms the restore's test crash points (see [`crashpoint`]), with markers in `state_dir`.
    pub fn with_crash_points(self, state_dir: &Path) -> Self {
        Self {
            crash_dir: Some(state_dir.to_owned()),
            ..self
        }
    }

    fn crash_point(&self, point: &str) {
        if let Some(dir) = &self.crash_dir {
            crashpoint::reached(dir, point);
        }
    }

    fn path(&self, id: CommandId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn partial_path(&self, id: CommandId) -> PathBuf {
        self.dir.join(format!("{id}.partial"))
    }

    /// Backs `root` up for command `id`, durably. On any error nothing is left behind.
    pub fn take(&self, root: &Path, id: CommandId) -> Result<Backup, BackupError> {
        let backup = self.take_unsynced(root, id)?;
        self.sync()?;
        Ok(backup)
    }

    /// [`BackupStore::take`] without making it durable: the caller makes it durable with
    /// [`BackupStore::sync`], together with whatever else it wrote on this file system (the
    /// journal's `applying` record: one barrier for both). Until then a power loss may leave
    /// it partly written, even renamed into place with its manifest missing or short; a crash
    /// of the process alone (kill -9) leaves it whole, for the page cache survives it.
    pub fn take_unsynced(&self, root: &Path, id: CommandId) -> Result<Backup, BackupError> {
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

    /// One barrier for everything written on the backups' file system: `syncfs` makes every
    /// backup (its files, manifest, `tree.id`, and its rename into place: directory entries are
    /// file system metadata, which `syncfs` commits too) durable, and anything else on that
    /// file system, such as a journal beside it.
    pub fn sync(&self) -> Result<(), BackupError> {
        tree::sync_filesystem(&self.dir)?;
        Ok(())
    }

    /// Whether `path` is on the backups' file system, so that [`BackupStore::sync`] makes it
    /// durable too.
    pub fn shares_file_system_with(&self, path: &Path) -> bool {
        match (fs::metadata(&self.dir), fs::metadata(path)) {
            (Ok(dir), Ok(other)) => dir.dev() == other.dev(),
            _ => false,
        }
    }

    /// Whether the backup of `id` is there whole enough to restore from: renamed into place
    /// with a readable manifest (a restore then checks the tree against it). A journal that
    /// says `applying` for a backup that is not means the barrier that makes both durable
    /// never returned, so nothing was applied.
    pub fn is_complete(&self, id: CommandId) -> bool {
        self.is_restored(id) || self.load(id).is_ok()
    }

    fn write(&self, root: &Path, partial: &Path, id: CommandId) -> Result<Backup, BackupError> {
        let copy = partial.join(TREE);
        let manifest = tree::copy_tree(root, &copy)?;
        let manifest_path = partial.join(MANIFEST);
        let text = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
        fs::write(&manifest_path, text).map_err(|source| io("write", &manifest_path, source))?;
        let ino = fs::symlink_metadata(&copy)
            .map_err(|source| io("stat", &copy, source))?
            .ino();
        let id_path = partial.join(TREE_ID);
        fs::write(&id_path, ino.to_string()).map_err(|source| io("write", &id_path, source))?;
        // Renamed before the one barrier (the caller's `sync`), not after a barrier of its own
        // with the directory fsynced after it: nothing relies on the rename being durable
        // before the backup's contents are, for the backup is only used once the journal says
        // `applying`, which the same barrier makes durable (see `is_complete`).
        let done = self.path(id);
        fs::rename(partial, &done).map_err(|source| io("rename", partial, source))?;
        Ok(Backup {
            tree: done.join(TREE),
            manifest,
        })
    }

    /// Checks that a backup of `root` fits (the agent's `max_backup_bytes`, then the free space
    /// of the backup directory, or of its nearest existing parent before the first backup);
    /// returns the bytes it would take. Reads only: a dry run calls it too.
    pub fn check_space(&self, root: &Path) -> Result<u64, BackupError> {
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
        let dir = self
            .dir
            .ancestors()
            .find(|d| d.is_dir())
            .unwrap_or(&self.dir);
        let stat = rustix::fs::statvfs(dir).map_err(|e| io("statvfs", dir, e.into()))?;
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
        Ok(needed)
    }

    /// The backup of command `id` (for a consumed one, `tree` no longer holds it; the manifest
    /// does not change).
    pub fn load(&self, id: CommandId) -> Result<Backup, BackupError> {
        let dir = self.path(id);
        let manifest_path = dir.join(MANIFEST);
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
            tree: dir.join(TREE),
            manifest,
        })
    }

    /// Whether anything of the backup of `id` is still kept (whole, or consumed by a restore
    /// and not yet finalized).
    pub fn exists(&self, id: CommandId) -> bool {
        self.path(id).exists()
    }

    /// Whether a restore already consumed the backup of `id`.
    pub fn is_restored(&self, id: CommandId) -> bool {
        self.path(id).join(RESTORED).exists()
    }

    /// Puts the backup of `id` back at `root`, and says how. Safe to call again after a crash
    /// at any point of an earlier call: a restore whose swap happened is finished, not redone.
    pub fn restore(&self, id: CommandId, root: &Path) -> Result<Restored, BackupError> {
        let dir = self.path(id);
        if dir.join(RESTORED).exists() {
            return Ok(Restored::AlreadyRestored);
        }
        let backup = self.load(id)?;
        let root_meta = fs::symlink_metadata(root).ok();
        let parent = root.parent().unwrap_or(Path::new("/"));
        if !same_file_system(&dir, root_meta.as_ref(), parent)? {
            restore_by_copy(&backup, root)?;
            return Ok(Restored::Copied);
        }
        if let Some(restored) = self.resume_by_inode(&dir, &backup, root, root_meta.as_ref())? {
            return Ok(restored);
        }
        let diff = tree::stat_differences(&backup.tree, &backup.manifest)?;
        if !diff.is_empty() {
            return Err(BackupError::Damaged {
                path: backup.tree.clone(),
                detail: summarize(&diff),
            });
        }
        self.crash_point("restore_verified");
        match exchange(&backup.tree, root, &dir) {
            Ok(()) => {}
            // Another file system after all (e.g. the root is a mount point): copy.
            Err(BackupError::Tree(TreeError::Io { source, .. }))
                if source.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) =>
            {
                restore_by_copy(&backup, root)?;
                return Ok(Restored::Copied);
            }
            Err(e) => return Err(e),
        }
        self.crash_point("restore_swapped");
        let restored = self.finish_swap(&dir)?;
        // One journal commit makes the swap, the rename and the marker durable (the backup's
        // directory was synced in `finish_swap`); the root's parent holds the other half.
        tree::sync_dir(parent)?;
        Ok(restored)
    }

    /// Tells, by inode number, where an earlier restore of the backup in `dir` got to. `Some`
    /// when the root already is the backup's tree (the swap is finished now); `None` when the
    /// backup's tree is still in place, to be swapped in.
    fn resume_by_inode(
        &self,
        dir: &Path,
        backup: &Backup,
        root: &Path,
        root_meta: Option<&fs::Metadata>,
    ) -> Result<Option<Restored>, BackupError> {
        let recorded = fs::read_to_string(dir.join(TREE_ID))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        let tree_ino = fs::symlink_metadata(&backup.tree).ok().map(|m| m.ino());
        let root_ino = root_meta.map(MetadataExt::ino);
        match recorded {
            // A restore cut short after its swap: the root is the backup's tree already.
            Some(ino) if root_ino == Some(ino) => {
                let restored = self.finish_swap(dir)?;
                tree::sync_dir(root.parent().unwrap_or(Path::new("/")))?;
                Ok(Some(restored))
            }
            Some(ino) if tree_ino == Some(ino) => Ok(None),
            // Written before `tree.id` existed: the tree is still in place (a restore never
            // ran), record it now, before the swap makes it the root.
            None if tree_ino.is_some() => {
                let id_path = dir.join(TREE_ID);
                fs::write(&id_path, tree_ino.unwrap_or_default().to_string())
                    .and_then(|()| fs::File::open(&id_path)?.sync_all())
                    .map_err(|source| io("write", &id_path, source))?;
                tree::sync_dir(dir)?;
                Ok(None)
            }
            // Neither tree is recognisable by its inode: only a full comparison can tell.
            _ => {
                if root_meta.is_some()
                    && tree::differences(&backup.manifest, &tree::scan(root)?).is_empty()
                {
                    return self.finish_swap(dir).map(Some);
                }
                Err(BackupError::Damaged {
                    path: backup.tree.clone(),
                    detail: "neither the backup's tree nor the root is the backup".into(),
                })
            }
        }
    }

    /// After the swap: the tree that was the root (now at `tree/`) is renamed `discard/`, and
    /// the backup is marked consumed.
    fn finish_swap(&self, dir: &Path) -> Result<Restored, BackupError> {
        let tree = dir.join(TREE);
        let discard = dir.join(DISCARD);
        if fs::symlink_metadata(&tree).is_ok() {
            if fs::symlink_metadata(&discard).is_ok() {
                remove_all(&discard)?;
            }
            fs::rename(&tree, &discard).map_err(|source| io("rename", &tree, source))?;
        }
        let marker = dir.join(RESTORED);
        fs::write(&marker, b"").map_err(|source| io("write", &marker, source))?;
        tree::sync_dir(dir)?;
        Ok(Restored::Swapped {
            swapped_out: fs::symlink_metadata(&discard).is_ok().then_some(discard),
        })
    }

    /// Removes what restores swapped out and left behind (a crash before their removal).
    pub fn sweep(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.path().join(DISCARD))
            .filter(|p| fs::symlink_metadata(p).is_ok())
            .collect()
    }

    /// Removes the backup of command `id` and any partial one.
    pub fn discard(&self, id: CommandId) -> Result<(), BackupError> {
        for path in [self.path(id), self.partial_path(id)] {
            remove_all(&path)?;
        }
        // Best effort: a discarded backup that reappears after a power cut is only wasted space.
        let _ = tree::sync_dir(&self.dir);
        Ok(())
    }
}

/// Removes a swapped-out tree (from [`Restored::Swapped`] or [`BackupStore::sweep`]).
pub fn remove_swapped_out(path: &Path) {
    if let Err(e) = remove_all(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a swapped-out tree");
    }
}

/// `remove_dir_all` that tolerates the tree vanishing under it (a concurrent removal of the
/// same backup, e.g. a finalize while the swapped-out tree is removed in the background).
fn remove_all(path: &Path) -> Result<(), BackupError> {
    let mut attempts = 0;
    loop {
        match fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !path.exists() => return Ok(()),
            Err(_) if attempts < 3 && path.exists() => attempts += 1,
            Err(source) => return Err(io("remove", path, source)),
        }
    }
}

fn summarize(diff: &[String]) -> String {
    let mut text = diff.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if diff.len() > 5 {
        text.push_str(&format!(" and {} more", diff.len() - 5));
    }
    text
}

/// A failed file-system call, reported like the tree module's.
fn io(op: &'static str, path: &Path, source: std::io::Error) -> BackupError {
    BackupError::Tree(TreeError::Io {
        op,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
