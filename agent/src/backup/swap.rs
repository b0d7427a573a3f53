//! Putting a tree in place of the root: one exchange of two names on one file system, or a
//! copy staged beside the root and swapped in from another.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags};

use super::{Backup, BackupError, DISCARD, io, remove_all};
use crate::tree;

/// Whether the backup directory `dir` and the root (or, when it is missing, its `parent`) are
/// on one file system, so that a rename can swap them.
pub(super) fn same_file_system(
    dir: &Path,
    root_meta: Option<&fs::Metadata>,
    parent: &Path,
) -> Result<bool, BackupError> {
    let dir_dev = fs::metadata(dir)
        .map_err(|source| io("stat", dir, source))?
        .dev();
    let root_dev = match root_meta {
        Some(meta) => meta.dev(),
        None => fs::metadata(parent)
            .map_err(|source| io("stat", parent, source))?
            .dev(),
    };
    Ok(root_dev == dir_dev)
}

/// Exchanges the backup's `tree` and `root` (the restore's commit point), or renames `tree`
/// to `root` when the root is missing. Where the file system cannot exchange, the root is
/// renamed into the backup's directory first (`discard/`), which leaves a short window without
/// a root; a crash in it is recovered like a missing root.
pub(super) fn exchange(tree: &Path, root: &Path, dir: &Path) -> Result<(), BackupError> {
    if fs::symlink_metadata(root).is_err() {
        // The root itself is gone (e.g. deleted by a bad step): a plain rename restores it.
        return fs::rename(tree, root).map_err(|source| io("rename", tree, source));
    }
    match rustix::fs::renameat_with(CWD, tree, CWD, root, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => {
            let aside = dir.join(DISCARD);
            if fs::symlink_metadata(&aside).is_ok() {
                remove_all(&aside)?;
            }
            fs::rename(root, &aside).map_err(|source| io("rename", root, source))?;
            fs::rename(tree, root).map_err(|source| io("rename", tree, source))
        }
        Err(e) => Err(io("exchange", root, e.into())),
    }
}

/// Puts a copy of `backup` at `root`, keeping the backup: the copy is staged beside the root,
/// made durable, then swapped in with one `renameat2(RENAME_EXCHANGE)`, so the service sees
/// either the old tree or the restored one, never a mix. Verifies the result against the
/// manifest. The restore for a backup on another file system than the root.
pub fn restore_by_copy(backup: &Backup, root: &Path) -> Result<(), BackupError> {
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
pub(super) fn sibling(root: &Path, purpose: &str) -> PathBuf {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    root.with_file_name(format!(".{name}.flotilla-{purpose}"))
}
