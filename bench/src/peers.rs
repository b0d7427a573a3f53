//! `peers`: Flotilla beside Salt and Ansible at N = 1, 5, 20, 50 on this machine.
//!
//! Flotilla's side is measured here: the real `flotilla migrate` over N simulated agents (see
//! [`crate::sim`]), a no-op migration and a small-copy migration whose one step runs the peers'
//! copy command (`cp -a` of 200 × 10 KiB files, then `rm -rf`, as `../shared/peers/common.sh`
//! defines it). The peers' side comes from the peer scripts' `results.tsv` (the latest row per
//! tool, N and operation): run `../shared/peers/run-all.sh` in the same sitting to refresh it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};

use crate::common::{self, Nats, Stats, Sync};
use crate::fleet::run_coordinator;
use crate::sim::SimFleet;

/// The latest peer figures: (tool, N, operation) → (median, min, max, timestamp).
type PeerRows = BTreeMap<(String, usize, String), (f64, f64, f64, String)>;

fn read_peers(dir: &Path) -> anyhow::Result<PeerRows> {
    let path = dir.join("results.tsv");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = PeerRows::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 7 {
            continue;
        }
        let (Ok(n), Ok(med), Ok(min), Ok(max)) = (
            f[2].parse::<usize>(),
            f[4].parse::<f64>(),
            f[5].parse::<f64>(),
            f[6].parse::<f64>(),
        ) else {
            continue;
        };
        // Later rows win: the file is an append-only log.
        rows.insert(
            (f[1].to_owned(), n, f[3].to_owned()),
            (med, min, max, f[0].to_owned()),
        );
    }
    Ok(rows)
}

/// The peers' 2 MB source tree: 200 files of 10 KiB in 4 directories.
fn make_source(dir: &Path) -> anyhow::Result<PathBuf> {
    let src = dir.join("src");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for d in 0..4 {
        let sub = src.join(format!("d{d}"));
        std::fs::create_dir_all(&sub)?;
        for f in 0..50 {
            let bytes: Vec<u8> = (0..10240)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            std::fs::write(sub.join(format!("f{f:02}.bin")), bytes)?;
        }
    }
    Ok(src)
}

/// Flotilla's figures: (N, operation) → wall time of `flotilla migrate`.
type OurRows = BTreeMap<(usize, &'static str), Stats>;

pub async fn peers(
    counts: &[usize],
    runs: usize,
    warmup: usize,
    peer_dir: &Path,
) -> anyhow::Result<()> {
    common::raise_fd_limit();
    let peer_rows = read_peers(peer_dir)?;
    let data = tempfile::Builder::new()
        .prefix("flotilla-bench-peers-")
        .tempdir_in("/var/tmp")?;
    let src = make_source(data.path())?;
    let copy = format!(
        "cp -a {src} {dst}/dst-$$ && rm -rf {dst}/dst-$$ && echo copy-ok",
        src = src.display(),
        dst = data.path().display()
    );
    let copy_step = format!(
        "[[step]]\naction = \"run_command\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", {copy:?}]\ntimeout_ms = 60000\n"
    );
    let mut ours = OurRows::new();
    for &n in counts {
        let nats = Nats::start(Sync::Always)?;
        let sim = SimFleet::start(nats.url(), "peer", n, &["/bin/sh"]).await?;
        for (op, step) in [
            ("noop", common::NOOP_STEP_TOML),
            ("copy", copy_step.as_str()),
        ] {
            let s = time_operation(nats.url(), &sim, n, op, step, warmup + runs).await?;
            let s = Stats::new(s.into_iter().skip(warmup).collect());
            eprintln!("peers: flotilla {op} N={n}: {} s", s.mmm(3));
            ours.insert((n, op), s);
        }
        sim.stop().await;
        drop(nats);
    }
    print_tables(counts, runs, warmup, peer_dir, &peer_rows, &ours);
    Ok(())
}

/// `flotilla migrate` of the plan running `step` over the N agents of `sim`, `times` times:
/// each run's wall time in seconds, once every agent succeeded.
async fn time_operation(
    nats_url: &str,
    sim: &SimFleet,
    n: usize,
    op: &str,
    step: &str,
    times: usize,
) -> anyhow::Result<Vec<f64>> {
    let plan = sim.dir.path().join(format!("plan-{op}.toml"));
    let text = common::bench_plan(&format!("bench-{op}"), "120s", step, "peer");
    std::fs::write(&plan, text.to_string())?;
    let mut wall = Vec::new();
    for i in 0..times {
        let log = sim.dir.path().join(format!("flotilla-{op}-{i}.log"));
        let extra = ["--discovery-window", "2s"];
        let r = run_coordinator(nats_url, &sim.key_path, &plan, &extra, &log).await?;
        ensure!(
            r.exit == 0 && r.succeeded == n,
            "{op} over N={n}: exit {}, {}/{n} succeeded: {}",
            r.exit,
            r.succeeded,
            crate::fleet::reasons(&r.json)
        );
        wall.push(r.wall.as_secs_f64());
    }
    Ok(wall)
}

fn print_tables(
    counts: &[usize],
    runs: usize,
    warmup: usize,
    peer_dir: &Path,
    peer_rows: &PeerRows,
    ours: &OurRows,
) {
    println!("## peers: Flotilla beside Salt 3008 and Ansible 2.19 (same machine)\n");
    println!(
        "{}. Flotilla: `flotilla migrate` (CLI process start to exit, including discovery), {runs} runs after {warmup} warm-up, median (min–max) s. Peers: latest rows of `{}` (5 runs after 1 warm-up, from the peer scripts). Ratio = peer median / Flotilla median (how many times faster Flotilla is).\n",
        common::machine(),
        peer_dir.join("results.tsv").display()
    );
    let peer = |tool: &str, n: usize, op: &str| peer_rows.get(&(tool.to_owned(), n, op.to_owned()));
    let cell = |ours: &Stats, p: Option<&(f64, f64, f64, String)>| match p {
        Some((med, min, max, _)) => {
            format!("{med:.3} ({min:.3}–{max:.3}) ×{:.1}", med / ours.median())
        }
        None => "–".into(),
    };
    let mut dates: Vec<&str> = peer_rows.values().map(|v| v.3.as_str()).collect();
    dates.sort_unstable();
    for (op, title, salt_cli, salt_api, ansible) in [
        (
            "noop",
            "no-op: Flotilla no-op migration vs `test.ping` / `ping`",
            "test.ping (CLI)",
            "test.ping (LocalClient)",
            "ping (-m ping)",
        ),
        (
            "copy",
            "small copy: Flotilla migration running the copy vs `cmd.run` / `shell`",
            "cmd.run cp-a+rm (CLI)",
            "cmd.run cp-a+rm (LocalClient)",
            "shell cp-a+rm",
        ),
    ] {
        println!("### {title}\n");
        let rows: Vec<Vec<String>> = counts
            .iter()
            .filter_map(|&n| {
                let s = ours.get(&(n, op))?;
                Some(vec![
                    n.to_string(),
                    s.mmm(3),
                    cell(s, peer("salt", n, salt_cli)),
                    cell(s, peer("salt", n, salt_api)),
                    cell(s, peer("ansible", n, ansible)),
                ])
            })
            .collect();
        common::table(
            &[
                "N",
                "Flotilla s",
                &format!("Salt {salt_cli} s, ratio"),
                &format!("Salt {salt_api} s, ratio"),
                &format!("Ansible {ansible} s, ratio"),
            ],
            &rows,
        );
    }
    if let (Some(first), Some(last)) = (dates.first(), dates.last()) {
        println!("Peer rows measured {first} … {last}.\n");
    }
}
