//! Benchmark: the agent's backup (`BackupStore::take`) and restore (`BackupStore::restore`)
//! against `cp -a` + `sync`.
//!
//! Generates a tree of files with deterministic pseudo-random content (about 100 directories,
//! sizes varying around the mean, some symlinks and empty directories), then, for each run, times
//! `cp -a` and `sync -f` (separately and together, since `take` ends with one `syncfs`),
//! `BackupStore::take`, and `BackupStore::restore` after a few files were changed: the restore
//! the agent answers with (same file system: `lstat` check, one `RENAME_EXCHANGE`, fsync of the
//! directories). Then, timed one by one: the removal of the swapped-out tree (which the agent does
//! after its answer, in the background), the restore's components (manifest load, the `lstat`
//! check) and the full re-hash that crash recovery adds, and the copying restore used when the
//! backups are on another file system than the root (`restore_by_copy`, which keeps the backup).
//! Prints the machine and a Markdown table; asserts only that every restore is exact.
//!
//! ```text
//! cargo run --release -p flotilla-tests --bin flotilla-bench-backup -- \
//!     [--files N (10000)] [--total-mb M (200)] [--runs R (3)] [--dir DIR]
//! ```
//!
//! Everything lives in one temporary directory created under `DIR` (default `$TMPDIR`, else
//! `/var/tmp`, which unlike `/tmp` is rarely a tmpfs), so the source, the copies and the backups
//! share one file system; it is removed at the end. The page cache cannot be dropped without
//! root, so the source tree is read once before the runs: reads are warm, writes are made
//! durable inside each timed step, and the file system is synced (untimed) between steps.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use flotilla_agent::backup::{BackupStore, Restored, restore_by_copy};
use flotilla_agent::tree;
use flotilla_schemas::CommandId;

const USAGE: &str =
    "usage: flotilla-bench-backup [--files N] [--total-mb M] [--runs R] [--dir DIR]";

struct Options {
    files: u64,
    total_mb: u64,
    runs: u64,
    dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    let work = tempfile::Builder::new()
        .prefix("flotilla-bench-backup-")
        .tempdir_in(&options.dir)
        .with_context(|| {
            format!(
                "creating a temporary directory in {}",
                options.dir.display()
            )
        })?;
    let src = work.path().join("src");
    let stats = generate(&src, options.files, options.total_mb * 1_000_000)?;
    settle(work.path())?;
    let warm_up = Instant::now();
    read_all(&src)?;
    let warm_up = warm_up.elapsed();

    let store = BackupStore::new(&work.path().join("state"));
    let mut samples = Samples::default();
    for run in 0..options.runs {
        eprintln!("run {}/{}", run + 1, options.runs);
        let copy = work.path().join("cp");
        settle(work.path())?;
        let (cp, _) = time(|| command(Command::new("cp").arg("-a").arg(&src).arg(&copy)))?;
        let (sync, _) = time(|| command(Command::new("sync").arg("-f").arg(&copy)))?;
        samples.record("`cp -a`", cp);
        samples.record("`sync -f` after `cp -a`", sync);
        samples.record("`cp -a` + `sync -f`", cp + sync);
        fs::remove_dir_all(&copy)?;

        let id = CommandId::new();
        settle(work.path())?;
        samples.record("`BackupStore::take`", time(|| Ok(store.take(&src, id)?))?.0);

        modify(&src, options.files, run)?;
        let manifest = store.load(id)?.manifest;
        settle(work.path())?;
        let (restore, restored) = time(|| Ok(store.restore(id, &src)?))?;
        samples.record("`BackupStore::restore` (same file system)", restore);
        let diff = tree::differences(&manifest, &tree::scan(&src)?);
        ensure!(diff.is_empty(), "restore left differences: {diff:?}");
        let Restored::Swapped {
            swapped_out: Some(swapped_out),
        } = restored
        else {
            bail!("the restore did not swap: {restored:?}");
        };
        settle(work.path())?;
        samples.record(
            "— then, after the answer: remove the swapped-out tree",
            time(|| Ok(fs::remove_dir_all(&swapped_out)?))?.0,
        );

        // The restore's components, replayed one by one on the restored tree.
        samples.record("— load manifest", time(|| Ok(store.load(id)?))?.0);
        let (check, diff) = time(|| Ok(tree::stat_differences(&src, &manifest)?))?;
        ensure!(diff.is_empty(), "lstat check: {diff:?}");
        samples.record("— `lstat` check against the manifest", check);
        let (rehash, diff) = time(|| Ok(tree::differences(&manifest, &tree::scan(&src)?)))?;
        ensure!(diff.is_empty(), "re-hash: {diff:?}");
        samples.record("— full re-hash (crash recovery only)", rehash);
        store.discard(id)?;

        // The copying restore, for backups on another file system (the backup is kept).
        let id = CommandId::new();
        store.take(&src, id)?;
        modify(&src, options.files, run + 1)?;
        let backup = store.load(id)?;
        settle(work.path())?;
        samples.record(
            "`restore_by_copy` (backups on another file system; incl. re-hash)",
            time(|| Ok(restore_by_copy(&backup, &src)?))?.0,
        );
        store.discard(id)?;
    }

    let fs_type = command(
        Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(work.path()),
    )?;
    // `stat -f` cannot tell ext4 from ext2/ext3 (one magic number); `df` reads the mount table.
    let mount_type = command(Command::new("df").arg("--output=fstype").arg(work.path()))?;
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("# flotilla-bench-backup\n");
    println!(
        "- machine: {} CPUs (`nproc`), kernel {} (`uname -r`), load average {} at the end",
        command(&mut Command::new("nproc"))?,
        command(Command::new("uname").arg("-r"))?,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    println!(
        "- file system: {fs_type} (`stat -f -c %T`), {} (`df`), at {}",
        mount_type.lines().last().unwrap_or("?"),
        work.path().display(),
    );
    println!(
        "- tree: {} files, {:.1} MB, {} directories ({} empty), {} symlinks",
        stats.files,
        stats.bytes as f64 / 1e6,
        stats.dirs,
        stats.empty_dirs,
        stats.symlinks,
    );
    println!(
        "- {} runs; page cache not dropped (needs root): one warm-up read of the tree first \
         ({:.0} ms), so reads are from cache; writes are made durable inside each timed step",
        options.runs,
        ms(warm_up),
    );
    println!("- files/s and MB/s: the whole tree over the median\n");
    samples.print(&stats);
    work.close().context("removing the temporary directory")?;
    Ok(())
}

fn parse_args() -> anyhow::Result<Options> {
    let dir = std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    let mut options = Options {
        files: 10_000,
        total_mb: 200,
        runs: 3,
        dir,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<u64>()
                .with_context(|| format!("{flag}: `{value}` is not a whole number"))
        };
        match flag.as_str() {
            "--files" => options.files = number()?,
            "--total-mb" => options.total_mb = number()?,
            "--runs" => options.runs = number()?,
            "--dir" => options.dir = PathBuf::from(&value),
            _ => bail!("unknown argument `{flag}`\n{USAGE}"),
        }
    }
    ensure!(
        options.files > 0 && options.runs > 0,
        "--files and --runs must be at least 1"
    );
    Ok(options)
}

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

struct TreeStats {
    files: u64,
    bytes: u64,
    dirs: u64,
    empty_dirs: u64,
    symlinks: u64,
}

/// Where file `i` lives: 10 × 10 directories, filled round-robin.
fn file_path(root: &Path, i: u64) -> PathBuf {
    let dir = i % 100;
    root.join(format!("d{}/s{}/f{i:06}.dat", dir / 10, dir % 10))
}

/// Writes `files` files totalling about `total_bytes` under `root`, with sizes uniform in
/// [mean/4, 7·mean/4], one relative symlink per 100 files, a dangling one and a link to a
/// directory, and 10 empty directories.
fn generate(root: &Path, files: u64, total_bytes: u64) -> anyhow::Result<TreeStats> {
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
fn read_all(root: &Path) -> anyhow::Result<()> {
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry?;
        if entry.file_type().is_file() {
            std::io::copy(&mut fs::File::open(entry.path())?, &mut std::io::sink())?;
        }
    }
    Ok(())
}

/// Changes a few files before a restore: three rewritten, one removed, one added.
fn modify(root: &Path, files: u64, run: u64) -> anyhow::Result<()> {
    for i in 0..3 {
        let path = file_path(root, (run + i * 17) % files);
        fs::write(path, format!("changed in run {run}\n"))?;
    }
    fs::remove_file(file_path(root, (run + 60) % files))?;
    fs::write(root.join(format!("new-in-run-{run}")), "new\n")?;
    Ok(())
}

/// Makes earlier writes durable (untimed), so that a step does not pay for the previous one's.
fn settle(dir: &Path) -> anyhow::Result<()> {
    Ok(tree::sync_filesystem(dir)?)
}

fn time<T>(step: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(Duration, T)> {
    let start = Instant::now();
    let value = step()?;
    Ok((start.elapsed(), value))
}

/// Runs a command to completion, returning its trimmed standard output.
fn command(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Durations per operation, in the order operations were first recorded.
#[derive(Default)]
struct Samples(Vec<(&'static str, Vec<Duration>)>);

impl Samples {
    fn record(&mut self, operation: &'static str, duration: Duration) {
        match self.0.iter_mut().find(|(name, _)| *name == operation) {
            Some((_, durations)) => durations.push(duration),
            None => self.0.push((operation, vec![duration])),
        }
    }

    fn print(&self, stats: &TreeStats) {
        println!("| operation | median ms | min ms | max ms | files/s | MB/s |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (operation, durations) in &self.0 {
            let mut sorted = durations.clone();
            sorted.sort();
            let n = sorted.len();
            let median = (sorted[(n - 1) / 2] + sorted[n / 2]) / 2;
            let secs = median.as_secs_f64().max(1e-9);
            println!(
                "| {operation} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} |",
                ms(median),
                ms(sorted[0]),
                ms(sorted[n - 1]),
                stats.files as f64 / secs,
                stats.bytes as f64 / 1e6 / secs,
            );
        }
    }
}
