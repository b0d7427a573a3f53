//! `idle`: N simulated agents (see [`crate::sim`]) connected and doing nothing for T minutes,
//! with nats-server sampled once a minute: its CPU over the minute, its RSS, messages in and out
//! (`/varz`), client connections, and writes to the agent registry (the registry stream's last
//! sequence, `/jsz`). An idle fleet should cost the broker nothing that grows with time; the one
//! expected traffic is each agent rewriting its registry entry every `flotilla_bus::registry::
//! REFRESH` (10 minutes, give or take a tenth), i.e. N/10 writes a minute once the fleet's
//! first refreshes come due.

use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_bus::registry::REFRESH;
use flotilla_schemas::subjects::Subjects;
use flotilla_testkit::monitoring::get_json_within;

use crate::common::{self, Nats, Sync};
use crate::sim::SimFleet;

/// The sampling interval.
const MINUTE: Duration = Duration::from_secs(60);

/// The counters at one sample.
struct Sample {
    nats_cpu_s: f64,
    sim_cpu_s: f64,
    rss_kib: u64,
    in_msgs: u64,
    out_msgs: u64,
    connections: u64,
    registry_writes: u64,
}

pub async fn idle(n: usize, minutes: u64, sync: Sync) -> anyhow::Result<()> {
    let limit = common::raise_fd_limit();
    eprintln!("open-file limit {limit}");
    let nats = Nats::start(sync)?;
    let pid = common::child_named("nats-server")
        .map(|p| p.to_string())
        .context("nats-server pid")?;
    common::ensure_room_for(&pid, n)?;
    let port = nats
        .server
        .monitoring_port()
        .context("nats-server's monitoring port")?;
    eprintln!("idle N={n}: starting {n} simulated agents");
    let sim = SimFleet::start(nats.url(), "idle", n, &[]).await?;
    eprintln!(
        "idle N={n}: all agents ready after {:.1} s; sampling every minute for {minutes} min",
        sim.ready_after.as_secs_f64()
    );
    let subjects = Subjects::new(flotilla_schemas::subjects::DEFAULT_PREFIX)?;
    let registry_stream = format!("KV_{}", subjects.agents_bucket());
    let sample = || -> anyhow::Result<Sample> {
        let varz = tokio::task::block_in_place(|| get_json_within(port, "/varz", MINUTE / 3))
            .context("reading /varz")?;
        let jsz =
            tokio::task::block_in_place(|| get_json_within(port, "/jsz?streams=true", MINUTE / 3))
                .context("reading /jsz")?;
        let registry_writes = jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|s| s["name"] == registry_stream.as_str())
            .and_then(|s| s["state"]["last_seq"].as_u64())
            .unwrap_or(0);
        Ok(Sample {
            nats_cpu_s: common::cpu_of(&pid).map_or(0.0, |c| c.own),
            sim_cpu_s: sim.cpu(),
            rss_kib: common::status_kib(&pid, "VmRSS:").unwrap_or(0),
            in_msgs: varz["in_msgs"].as_u64().unwrap_or(0),
            out_msgs: varz["out_msgs"].as_u64().unwrap_or(0),
            connections: varz["connections"].as_u64().unwrap_or(0),
            registry_writes,
        })
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(MINUTE);
    tick.tick().await;
    let first = sample()?;
    let mut samples = vec![first];
    for minute in 1..=minutes {
        tick.tick().await;
        let s = sample()?;
        let last = samples.last().expect("the first sample");
        eprintln!(
            "idle N={n} minute {minute}: nats-server {:.0} ms CPU, {:.1} MiB, {} in, {} out, {} registry writes",
            (s.nats_cpu_s - last.nats_cpu_s) * 1000.0,
            s.rss_kib as f64 / 1024.0,
            s.in_msgs - last.in_msgs,
            s.out_msgs - last.out_msgs,
            s.registry_writes - last.registry_writes
        );
        samples.push(s);
    }
    let elapsed = started.elapsed();
    sim.stop().await;
    drop(nats);
    print_table(n, &samples, elapsed, sync);
    Ok(())
}

fn print_table(n: usize, samples: &[Sample], elapsed: Duration, sync: Sync) {
    println!(
        "## idle: {n} agents connected and idle, nats-server sampled each minute (after the fleet answered presence)\n"
    );
    println!("{}; nats-server with {}\n", common::machine(), sync.label());
    let rows: Vec<Vec<String>> = samples
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let (a, b) = (&w[0], &w[1]);
            vec![
                (i + 1).to_string(),
                format!("{:.0}", (b.nats_cpu_s - a.nats_cpu_s) * 1000.0),
                format!("{:.1}", b.rss_kib as f64 / 1024.0),
                (b.in_msgs - a.in_msgs).to_string(),
                (b.out_msgs - a.out_msgs).to_string(),
                (b.registry_writes - a.registry_writes).to_string(),
                b.connections.to_string(),
                format!("{:.0}", (b.sim_cpu_s - a.sim_cpu_s) * 1000.0),
            ]
        })
        .collect();
    common::table(
        &[
            "minute",
            "nats-server CPU ms",
            "nats-server RSS MiB",
            "messages in",
            "messages out",
            "registry writes",
            "connections",
            "simulator CPU ms",
        ],
        &rows,
    );
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let minutes = elapsed.as_secs_f64() / 60.0;
    let writes = last.registry_writes - first.registry_writes;
    let expected = n as f64 / (REFRESH.as_secs_f64() / 60.0);
    println!(
        "Over {minutes:.1} min: nats-server {:.0} ms CPU a minute on average ({:.4} ms per agent a minute), \
         RSS {:.1} → {:.1} MiB; registry writes {writes} ({:.1} a minute; steady state {expected:.0} a minute, \
         one per agent per {} min: the first refreshes fall 9–11 min after each agent's start).\n",
        (last.nats_cpu_s - first.nats_cpu_s) * 1000.0 / minutes,
        (last.nats_cpu_s - first.nats_cpu_s) * 1000.0 / minutes / n as f64,
        first.rss_kib as f64 / 1024.0,
        last.rss_kib as f64 / 1024.0,
        writes as f64 / minutes,
        REFRESH.as_secs() / 60,
    );
    println!(
        "Minute 1 may hold the tail of the fleet's first registry writes (stored, with their acknowledgements, after every agent answered presence). \
         Pings (nats-server's to each client every 2 min, and the clients') are not messages: they show only in CPU.\n"
    );
}
