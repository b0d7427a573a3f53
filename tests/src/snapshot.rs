//! Exact snapshots of a directory tree (contents, modes, symlinks, empty directories), to prove
//! a service ended byte-identical to where it started.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Path → description (`dir 755`, `file 644 <blake3>`, `link -> target`).
pub type Snapshot = BTreeMap<String, String>;

/// Snapshots the tree under `root`.
pub fn snapshot(root: &Path) -> Snapshot {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .map(|entry| {
            let entry = entry.expect("walkable tree");
            let meta = entry.path().symlink_metadata().expect("stat");
            let mode = meta.permissions().mode() & 0o7777;
            let relative = entry
                .path()
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let description = if meta.is_dir() {
                format!("dir {mode:o}")
            } else if meta.file_type().is_symlink() {
                format!(
                    "link -> {}",
                    std::fs::read_link(entry.path())
                        .expect("readlink")
                        .display()
                )
            } else {
                let digest = blake3::hash(&std::fs::read(entry.path()).expect("read"));
                format!("file {mode:o} {digest}")
            };
            (relative, description)
        })
        .collect()
}
