//! `backup`: the agent's backup (`BackupStore::take`) and restore (`BackupStore::restore`)
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
//! Everything lives in one temporary directory created under `--dir` (default `$TMPDIR`, else
//! `/var/tmp`, which unlike `/tmp` is rarely a tmpfs), so the source, the copies and the backups
//! share one file system; it is removed at the end. The page cache cannot be dropped without
//! root, so the source tree is read once before the runs: reads are warm, writes are made
//! durable inside each timed step, and the file system is synced (untimed) between steps.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use flotilla_agent::backup::{BackupStore, Restored, restore_by_copy};
use flotilla_agent::tree as agent_tree;
use flotilla_schemas::CommandId;

use crate::common::ms;
use tree::TreeStats;

mod tree;

/// The benchmark's parameters (`flotilla-bench backup --files N --total-mb M --runs R --dir D`).
pub struct Options {
    pub files: u64,
    pub total_mb: u64,
    pub runs: u64,
    /// Where the temporary directory goes; `None`: `$TMPDIR`, else `/var/tmp`.
    pub dir: Option<PathBuf>,
}

/// The benchmark's working tree: the source under `work/src`, the backups under `work/state`.
struct Work {
    dir: tempfile::TempDir,
    src: PathBuf,
    files: u64,
    store: BackupStore,
}

pub fn backup(options: &Options) -> anyhow::Result<()> {
    ensure!(
        options.files > 0 && options.runs > 0,
        "--files and --runs must be at least 1"
    );
    let parent = options.dir.clone().unwrap_or_else(|| {
        std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from)
    });
    let dir = tempfile::Builder::new()
        .prefix("flotilla-bench-backup-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    let src = dir.path().join("src");
    let stats = tree::generate(&src, options.files, options.total_mb * 1_000_000)?;
    settle(dir.path())?;
    let warm_up = Instant::now();
    tree::read_all(&src)?;
    let warm_up = warm_up.elapsed();

    let store = BackupStore::new(&dir.path().join("state"));
    let work = Work {
        dir,
        src,
        files: options.files,
        store,
    };
    let mut samples = Samples::default();
    for run in 0..options.runs {
        eprintln!("run {}/{}", run + 1, options.runs);
        time_copy(&work, &mut samples)?;
        time_take_and_restore(&work, run, &mut samples)?;
        time_restore_by_copy(&work, run, &mut samples)?;
    }
    print_setting(work.dir.path(), &stats, options.runs, warm_up)?;
    samples.print(&stats);
    work.dir
        .close()
        .context("removing the temporary directory")?;
    Ok(())
}

/// `cp -a` of the source, then `sync -f` of the copy.
fn time_copy(work: &Work, samples: &mut Samples) -> anyhow::Result<()> {
    let copy = work.dir.path().join("cp");
    settle(work.dir.path())?;
    let (cp, _) = time(|| command(Command::new("cp").arg("-a").arg(&work.src).arg(&copy)))?;
    let (sync, _) = time(|| command(Command::new("sync").arg("-f").arg(&copy)))?;
    samples.record("`cp -a`", cp);
    samples.record("`sync -f` after `cp -a`", sync);
    samples.record("`cp -a` + `sync -f`", cp + sync);
    fs::remove_dir_all(&copy)?;
    Ok(())
}

/// `take`, a few changes, the swapping `restore` (checked exact), the removal of the swapped-out
/// tree, then the restore's components replayed one by one on the restored tree.
fn time_take_and_restore(work: &Work, run: u64, samples: &mut Samples) -> anyhow::Result<()> {
    let (store, src, dir) = (&work.store, &work.src, work.dir.path());
    let id = CommandId::new();
    settle(dir)?;
    samples.record("`BackupStore::take`", time(|| Ok(store.take(src, id)?))?.0);

    tree::modify(src, work.files, run)?;
    let manifest = store.load(id)?.manifest;
    settle(dir)?;
    let (restore, restored) = time(|| Ok(store.restore(id, src)?))?;
    samples.record("`BackupStore::restore` (same file system)", restore);
    let diff = agent_tree::differences(&manifest, &agent_tree::scan(src)?);
    ensure!(diff.is_empty(), "restore left differences: {diff:?}");
    let Restored::Swapped {
        swapped_out: Some(swapped_out),
    } = restored
    else {
        bail!("the restore did not swap: {restored:?}");
    };
    settle(dir)?;
    samples.record(
        "— then, after the answer: remove the swapped-out tree",
        time(|| Ok(fs::remove_dir_all(&swapped_out)?))?.0,
    );

    samples.record("— load manifest", time(|| Ok(store.load(id)?))?.0);
    let (check, diff) = time(|| Ok(agent_tree::stat_differences(src, &manifest)?))?;
    ensure!(diff.is_empty(), "lstat check: {diff:?}");
    samples.record("— `lstat` check against the manifest", check);
    let (rehash, diff) = time(|| Ok(agent_tree::differences(&manifest, &agent_tree::scan(src)?)))?;
    ensure!(diff.is_empty(), "re-hash: {diff:?}");
    samples.record("— full re-hash (crash recovery only)", rehash);
    store.discard(id)?;
    Ok(())
}

/// The copying restore, for backups on another file system (the backup is kept).
fn time_restore_by_copy(work: &Work, run: u64, samples: &mut Samples) -> anyhow::Result<()> {
    let id = CommandId::new();
    work.store.take(&work.src, id)?;
    tree::modify(&work.src, work.files, run + 1)?;
    let backup = work.store.load(id)?;
    settle(work.dir.path())?;
    samples.record(
        "`restore_by_copy` (backups on another file system; incl. re-hash)",
        time(|| Ok(restore_by_copy(&backup, &work.src)?))?.0,
    );
    work.store.discard(id)?;
    Ok(())
}

/// The machine, the file system and the tree, as a list above the table.
fn print_setting(
    dir: &Path,
    stats: &TreeStats,
    runs: u64,
    warm_up: Duration,
) -> anyhow::Result<()> {
    let fs_type = command(Command::new("stat").args(["-f", "-c", "%T"]).arg(dir))?;
    // `stat -f` cannot tell ext4 from ext2/ext3 (one magic number); `df` reads the mount table.
    let mount_type = command(Command::new("df").arg("--output=fstype").arg(dir))?;
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("# flotilla-bench backup\n");
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
        dir.display(),
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
        "- {runs} runs; page cache not dropped (needs root): one warm-up read of the tree first \
         ({:.0} ms), so reads are from cache; writes are made durable inside each timed step",
        ms(warm_up),
    );
    println!("- files/s and MB/s: the whole tree over the median\n");
    Ok(())
}

/// Makes earlier writes durable (untimed), so that a step does not pay for the previous one's.
fn settle(dir: &Path) -> anyhow::Result<()> {
    Ok(agent_tree::sync_filesystem(dir)?)
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
