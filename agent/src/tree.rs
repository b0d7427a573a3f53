//! File trees: copy with a manifest of digests, and verify a tree against a manifest.
//!
//! Symlinks are copied as symlinks and never followed; modes are kept; device nodes, FIFOs and
//! sockets are refused, since they cannot be restored faithfully.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a tree operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot walk {path}")]
    Walk {
        path: PathBuf,
        #[source]
        source: walkdir::Error,
    },
    #[error("{path} is a device, FIFO or socket, which cannot be backed up")]
    Special { path: PathBuf },
    #[error("{path} has a name that is not UTF-8")]
    NotUtf8 { path: PathBuf },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TreeError + 'a {
    move |source| TreeError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What kind of entry, and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryKind {
    Dir,
    File { size: u64, blake3: String },
    Symlink { target: String },
}

/// One entry of a tree, relative to its root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub kind: EntryKind,
    /// Permission bits (not meaningful for symlinks, recorded as 0).
    pub mode: u32,
}

/// A tree's entries by relative path. Digests only: never file contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: BTreeMap<String, Entry>,
}

impl Manifest {
    /// Number of regular files.
    pub fn files(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .count() as u64
    }

    /// Total size of regular files.
    pub fn bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match e.kind {
                EntryKind::File { size, .. } => size,
                _ => 0,
            })
            .sum()
    }
}

/// Copies the tree at `from` to `to` (which must not exist), hashing every file as it is read,
/// and returns the manifest of `from`. Nothing is fsynced here: callers make the result durable
/// once, for the whole file system, with `syncfs`.
pub fn copy_tree(from: &Path, to: &Path) -> Result<Manifest, TreeError> {
    let mut manifest = Manifest::default();
    let mut dirs = Vec::new();
    let mut buffer = vec![0u8; 256 * 1024];
    for item in walkdir::WalkDir::new(from)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.map_err(|source| TreeError::Walk {
            path: from.to_owned(),
            source,
        })?;
        let relative = relative_name(from, item.path())?;
        let target = to.join(&relative);
        let meta = item
            .path()
            .symlink_metadata()
            .map_err(io("stat", item.path()))?;
        let mode = meta.permissions().mode() & 0o7777;
        let file_type = meta.file_type();
        let kind = if file_type.is_dir() {
            // Owner-writable while we fill it; the real mode is set once it is full.
            fs::create_dir(&target).map_err(io("create directory", &target))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o700))
                .map_err(io("chmod", &target))?;
            dirs.push((target, mode));
            EntryKind::Dir
        } else if file_type.is_symlink() {
            let link = fs::read_link(item.path()).map_err(io("read link", item.path()))?;
            symlink(&link, &target).map_err(io("create symlink", &target))?;
            let target = link.to_str().ok_or_else(|| TreeError::NotUtf8 {
                path: item.path().to_owned(),
            })?;
            EntryKind::Symlink {
                target: target.to_owned(),
            }
        } else if file_type.is_file() {
            let (size, digest) = copy_file(item.path(), &target, mode, &mut buffer)?;
            EntryKind::File {
                size,
                blake3: digest,
            }
        } else {
            return Err(TreeError::Special {
                path: item.path().to_owned(),
            });
        };
        let mode = if matches!(kind, EntryKind::Symlink { .. }) {
            0
        } else {
            mode
        };
        if !relative.is_empty() {
            manifest.entries.insert(relative, Entry { kind, mode });
        }
    }
    for (dir, mode) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(io("chmod", &dir))?;
    }
    Ok(manifest)
}

fn copy_file(
    from: &Path,
    to: &Path,
    mode: u32,
    buffer: &mut [u8],
) -> Result<(u64, String), TreeError> {
    let mut source = File::open(from).map_err(io("open", from))?;
    let mut dest = File::create(to).map_err(io("create", to))?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    loop {
        let n = source.read(buffer).map_err(io("read", from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        dest.write_all(&buffer[..n]).map_err(io("write", to))?;
        size += n as u64;
    }
    dest.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("chmod", to))?;
    Ok((size, hasher.finalize().to_hex().to_string()))
}

fn relative_name(root: &Path, path: &Path) -> Result<String, TreeError> {
    let relative = path
        .strip_prefix(root)
        .expect("walkdir yields paths under its root");
    relative
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| TreeError::NotUtf8 {
            path: path.to_owned(),
        })
}

/// Reads the manifest of the tree at `root` without copying it.
pub fn scan(root: &Path) -> Result<Manifest, TreeError> {
    let mut manifest = Manifest::default();
    for item in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
        let item = item.map_err(|source| TreeError::Walk {
            path: root.to_owned(),
            source,
        })?;
        let relative = relative_name(root, item.path())?;
        let meta = item
            .path()
            .symlink_metadata()
            .map_err(io("stat", item.path()))?;
        let mode = meta.permissions().mode() & 0o7777;
        let file_type = meta.file_type();
        let (kind, mode) = if file_type.is_dir() {
            (EntryKind::Dir, mode)
        } else if file_type.is_symlink() {
            let link = fs::read_link(item.path()).map_err(io("read link", item.path()))?;
            let target = link.to_str().ok_or_else(|| TreeError::NotUtf8 {
                path: item.path().to_owned(),
            })?;
            (
                EntryKind::Symlink {
                    target: target.to_owned(),
                },
                0,
            )
        } else if file_type.is_file() {
            let mut hasher = blake3::Hasher::new();
            hasher
                .update_reader(File::open(item.path()).map_err(io("open", item.path()))?)
                .map_err(io("read", item.path()))?;
            (
                EntryKind::File {
                    size: meta.len(),
                    blake3: hasher.finalize().to_hex().to_string(),
                },
                mode,
            )
        } else {
            return Err(TreeError::Special {
                path: item.path().to_owned(),
            });
        };
        manifest.entries.insert(relative, Entry { kind, mode });
    }
    Ok(manifest)
}

/// Lists how `actual` differs from `expected`, one line per path; empty when they match.
pub fn differences(expected: &Manifest, actual: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    for (path, entry) in &expected.entries {
        match actual.entries.get(path) {
            None => out.push(format!("{path}: missing")),
            Some(found) if found != entry => out.push(format!("{path}: differs")),
            Some(_) => {}
        }
    }
    for path in actual
        .entries
        .keys()
        .filter(|p| !expected.entries.contains_key(*p))
    {
        out.push(format!("{path}: unexpected"));
    }
    out
}

/// Makes everything written on the file system holding `path` durable, in one call.
pub fn sync_filesystem(path: &Path) -> Result<(), TreeError> {
    let dir = File::open(path).map_err(io("open", path))?;
    rustix::fs::syncfs(&dir).map_err(|e| TreeError::Io {
        op: "syncfs",
        path: path.to_owned(),
        source: e.into(),
    })
}

/// fsyncs a directory, so that entries created or renamed in it are durable.
pub fn sync_dir(path: &Path) -> Result<(), TreeError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_tree(root: &Path) {
        fs::create_dir_all(root.join("config/empty")).unwrap();
        fs::write(root.join("config/service.toml"), "port = 1\n").unwrap();
        fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("config/service.toml", root.join("current.toml")).unwrap();
        symlink("/etc/passwd", root.join("outside")).unwrap();
    }

    #[test]
    fn copy_keeps_contents_modes_symlinks_and_empty_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let (from, to) = (tmp.path().join("from"), tmp.path().join("to"));
        fs::create_dir(&from).unwrap();
        sample_tree(&from);
        let manifest = copy_tree(&from, &to).unwrap();
        assert_eq!(manifest, scan(&from).unwrap());
        assert_eq!(
            differences(&manifest, &scan(&to).unwrap()),
            Vec::<String>::new()
        );
        assert_eq!(manifest.files(), 2);
        assert!(manifest.entries.contains_key("config/empty"));
        assert_eq!(
            fs::read_link(to.join("outside")).unwrap(),
            PathBuf::from("/etc/passwd")
        );
    }

    #[test]
    fn differences_name_every_changed_path() {
        let tmp = tempfile::tempdir().unwrap();
        sample_tree(tmp.path());
        let before = scan(tmp.path()).unwrap();
        fs::write(tmp.path().join("run.sh"), "changed").unwrap();
        fs::remove_file(tmp.path().join("current.toml")).unwrap();
        fs::write(tmp.path().join("new"), "").unwrap();
        let diff = differences(&before, &scan(tmp.path()).unwrap());
        assert_eq!(
            diff,
            vec![
                "current.toml: missing",
                "run.sh: differs",
                "new: unexpected"
            ]
        );
    }
}
