//! File trees: copy with a manifest of digests, and verify a tree against a manifest.
//!
//! Symlinks are copied as symlinks and never followed; modes are kept; device nodes, FIFOs and
//! sockets are refused, since they cannot be restored faithfully.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
/// once, for the whole file system, with `syncfs` (one journal commit: with many agents on a
/// host, an fsync per file of a small backup measured slower than one `syncfs` each).
pub fn copy_tree(from: &Path, to: &Path) -> Result<Manifest, TreeError> {
    let mut manifest = Manifest::default();
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for item in walkdir::WalkDir::new(from)
        .follow_links(false)
        .sort_by_file_name()
    {
        let (item, relative, meta) = walked(from, item)?;
        let target = to.join(&relative);
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
            symlink_entry(item.path(), &link)?
        } else if file_type.is_file() {
            // Files are copied once the walk has made every directory, several at a time.
            files.push(FileCopy {
                relative,
                from: item.path().to_owned(),
                to: target,
                mode,
            });
            continue;
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
    for (file, (size, digest)) in files.iter().zip(copy_files(&files)?) {
        manifest.entries.insert(
            file.relative.clone(),
            Entry {
                kind: EntryKind::File {
                    size,
                    blake3: digest,
                },
                mode: file.mode,
            },
        );
    }
    for (dir, mode) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(io("chmod", &dir))?;
    }
    Ok(manifest)
}

/// One regular file to copy.
struct FileCopy {
    relative: String,
    from: PathBuf,
    to: PathBuf,
    mode: u32,
}

/// Copies `files` on one thread per core (reading, hashing and writing a file is CPU-bound on a
/// warm cache, and `cp -a` uses one); returns each file's size and digest, in order. Stops at
/// the first error.
fn copy_files(files: &[FileCopy]) -> Result<Vec<(u64, String)>, TreeError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_COPY_THREADS)
        .min(files.len().max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let copy = || {
        let mut buffer = vec![0u8; 256 * 1024];
        let mut done = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(file) = files.get(i) else { break };
            let copied = copy_file(&file.from, &file.to, file.mode, &mut buffer);
            if copied.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            done.push((i, copied));
        }
        done
    };
    let mut results: Vec<Option<(u64, String)>> = vec![None; files.len()];
    let batches: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..workers).map(|_| scope.spawn(copy)).collect();
        let mut batches = vec![copy()];
        batches.extend(
            handles
                .into_iter()
                .map(|h| h.join().expect("a copy thread panicked")),
        );
        batches
    });
    for (i, copied) in batches.into_iter().flatten() {
        results[i] = Some(copied?);
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every file was copied"))
        .collect())
}

/// At most this many threads copy files.
const MAX_COPY_THREADS: usize = 4;

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

/// The manifest entry of the symlink at `path` pointing to `link`, whose target must be UTF-8.
fn symlink_entry(path: &Path, link: &Path) -> Result<EntryKind, TreeError> {
    let target = link.to_str().ok_or_else(|| TreeError::NotUtf8 {
        path: path.to_owned(),
    })?;
    Ok(EntryKind::Symlink {
        target: target.to_owned(),
    })
}

/// An entry of the walk of `root`: the entry, its name relative to `root`, and its metadata
/// (of a symlink itself, not of what it points to).
fn walked(
    root: &Path,
    item: walkdir::Result<walkdir::DirEntry>,
) -> Result<(walkdir::DirEntry, String, fs::Metadata), TreeError> {
    let item = item.map_err(|source| TreeError::Walk {
        path: root.to_owned(),
        source,
    })?;
    let relative = relative_name(root, item.path())?;
    let meta = item
        .path()
        .symlink_metadata()
        .map_err(io("stat", item.path()))?;
    Ok((item, relative, meta))
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
        let (item, relative, meta) = walked(root, item)?;
        let mode = meta.permissions().mode() & 0o7777;
        let file_type = meta.file_type();
        let (kind, mode) = if file_type.is_dir() {
            (EntryKind::Dir, mode)
        } else if file_type.is_symlink() {
            let link = fs::read_link(item.path()).map_err(io("read link", item.path()))?;
            (symlink_entry(item.path(), &link)?, 0)
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

/// Compares the tree at `root` with `manifest` at the level of `lstat`: the same paths, kinds,
/// modes, file sizes and symlink targets, without reading any file (digests are not checked).
/// A cheap guard before a restore swaps a backup in; [`scan`] and [`differences`] are the full
/// check. Lists the differences, one line per path; empty when the tree matches. Walks with
/// directory descriptors (`openat`, `getdents`, `fstatat`), so no path is resolved twice.
pub fn stat_differences(root: &Path, manifest: &Manifest) -> Result<Vec<String>, TreeError> {
    let mut out = Vec::new();
    let mut known = 0usize;
    walk_at(root, &mut |relative, stat, link| {
        let Some(expected) = manifest.entries.get(relative) else {
            out.push(format!("{relative}: unexpected"));
            return;
        };
        known += 1;
        let file_type = rustix::fs::FileType::from_raw_mode(stat.st_mode);
        let mode = stat.st_mode & 0o7777;
        let same = match &expected.kind {
            EntryKind::Dir => file_type == rustix::fs::FileType::Directory && mode == expected.mode,
            EntryKind::File { size, .. } => {
                file_type == rustix::fs::FileType::RegularFile
                    && u64::try_from(stat.st_size).ok() == Some(*size)
                    && mode == expected.mode
            }
            EntryKind::Symlink { target } => link == Some(target.as_bytes()),
        };
        if !same {
            out.push(format!("{relative}: differs"));
        }
    })?;
    if known < manifest.entries.len() {
        let mut present = std::collections::HashSet::new();
        walk_at(root, &mut |relative, _, _| {
            present.insert(relative.to_owned());
        })?;
        for path in manifest.entries.keys().filter(|p| !present.contains(*p)) {
            out.push(format!("{path}: missing"));
        }
    }
    Ok(out)
}

/// What [`walk_at`] calls for each entry: relative name, `lstat`, symlink target.
type Visit<'a> = dyn FnMut(&str, &rustix::fs::Stat, Option<&[u8]>) + 'a;

/// Calls `visit` with the relative name, `lstat` and (for a symlink) target of every entry under
/// `root`, not following symlinks.
fn walk_at(root: &Path, visit: &mut Visit<'_>) -> Result<(), TreeError> {
    use rustix::fs::{CWD, Mode, openat};
    let fd = openat(CWD, root, dir_flags(), Mode::empty()).map_err(|e| TreeError::Io {
        op: "open",
        path: root.to_owned(),
        source: e.into(),
    })?;
    let mut prefix = String::new();
    walk_dir_at(root, fd, &mut prefix, visit)
}

fn dir_flags() -> rustix::fs::OFlags {
    use rustix::fs::OFlags;
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn walk_dir_at(
    root: &Path,
    fd: rustix::fd::OwnedFd,
    prefix: &mut String,
    visit: &mut Visit<'_>,
) -> Result<(), TreeError> {
    use rustix::fs::{AtFlags, Dir, FileType, Mode, openat, readlinkat, statat};
    let failed = |op: &'static str, relative: &str, e: rustix::io::Errno| TreeError::Io {
        op,
        path: root.join(relative),
        source: e.into(),
    };
    let mut dir = Dir::read_from(&fd).map_err(|e| failed("read directory", prefix, e))?;
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(|e| failed("read directory", prefix, e))?;
        let name = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let name_str = std::str::from_utf8(bytes).map_err(|_| TreeError::NotUtf8 {
            path: root
                .join(&*prefix)
                .join(String::from_utf8_lossy(bytes).as_ref()),
        })?;
        let parent_len = prefix.len();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(name_str);
        let stat =
            statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| failed("stat", prefix, e))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Symlink => {
                let link = readlinkat(&fd, name, Vec::new())
                    .map_err(|e| failed("read link", prefix, e))?;
                visit(prefix, &stat, Some(link.to_bytes()));
            }
            FileType::Directory => {
                visit(prefix, &stat, None);
                let child = openat(&fd, name, dir_flags(), Mode::empty())
                    .map_err(|e| failed("open", prefix, e))?;
                walk_dir_at(root, child, prefix, visit)?;
            }
            _ => visit(prefix, &stat, None),
        }
        prefix.truncate(parent_len);
    }
    Ok(())
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
mod tests;
