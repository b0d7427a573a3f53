//! The benchmark's file tree: generated with deterministic pseudo-random content, read once to
//! warm the page cache, and changed a little before each restore.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A xorshift64 generator: deterministic content without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What [`generate`] made.
pub struct TreeStats {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub empty_dirs: u64,
    pub symlinks: u64,
}

/// Where file `i` lives: 10 × 10 directories, filled round-robin.
fn file_path(root: &Path, i: u64) -> PathBuf {
    let dir = i % 100;
    root.join(format!("d{}/s{}/f{i:06}.dat", dir / 10, dir % 10))
}

/// Writes `files` files totalling about `total_bytes` under `root`, with sizes uniform in
/// [mean/4, 7·mean/4], one relative symlink per 100 files, a dangling one and a link to a
/// directory, and 10 empty directories.
pub fn generate(root: &Path, files: u64, total_bytes: u64) -> anyhow::Result<TreeStats> {
    let mut stats = TreeStats {
        files,
        bytes: 0,
        dirs: 0,
        empty_dirs: 10,
        symlinks: 2,
    };
    for i in 0..100 {
        fs::create_dir_all(file_path(root, i).parent().unwrap())?;
    }
    for i in 0..stats.empty_dirs {
        fs::create_dir_all(root.join(format!("empty/e{i}")))?;
    }
    symlink("d0/s0", root.join("current"))?;
    symlink("does-not-exist", root.join("dangling"))?;

    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mean = total_bytes / files;
    let mut content = Vec::new();
    for i in 0..files {
        let size = mean / 4 + rng.next() % (mean * 3 / 2 + 1);
        content.resize(size as usize, 0);
        for chunk in content.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
        }
        let path = file_path(root, i);
        fs::write(&path, &content).with_context(|| format!("writing {}", path.display()))?;
        stats.bytes += size;
        if i % 100 == 7 {
            let name = path.file_name().unwrap();
            symlink(name, path.with_file_name(format!("link{i:06}")))?;
            stats.symlinks += 1;
        }
    }
    stats.dirs = walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .count() as u64;
    Ok(stats)
}

/// Reads every file once, to warm the page cache.
pub fn read_all(root: &Path) -> anyhow::Result<()> {
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry?;
        if entry.file_type().is_file() {
            std::io::copy(&mut fs::File::open(entry.path())?, &mut std::io::sink())?;
        }
    }
    Ok(())
}

/// Changes a few files before a restore: three rewritten, one removed, one added.
pub fn modify(root: &Path, files: u64, run: u64) -> anyhow::Result<()> {
    for i in 0..3 {
        let path = file_path(root, (run + i * 17) % files);
        fs::write(path, format!("changed in run {run}\n"))?;
    }
    fs::remove_file(file_path(root, (run + 60) % files))?;
    fs::write(root.join(format!("new-in-run-{run}")), "new\n")?;
    Ok(())
}
