//! `reconnect`: N idle simulated agents (see [`crate::sim`]); nats-server is killed with SIGKILL
//! and started again on the same port with the same store directory, and the bench times how
//! long the fleet takes to come back: until the server counts every connection again (`/varz`),
//! and until every agent answers a presence broadcast (its subscriptions restored). The agents
//! reconnect with `flotilla_bus::reconnect_delay` (doubling from 2 ms to 4 s, with jitter).

use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_schemas::subjects::Subjects;
use flotilla_testkit::monitoring::get_json_within;

use crate::common::{self, Nats, Stats, Sync};
use crate::sim::SimFleet;

/// How long the fleet may take to come back after a restart.
const COME_BACK_WITHIN: Duration = Duration::from_secs(600);

/// How often `/varz` is read while the agents reconnect (a sampling interval).
const POLL: Duration = Duration::from_millis(50);

/// How often presence is asked once every connection is back: the resolution of "all
/// answering" (every agent answers each broadcast, so asking more often loads the server being
/// measured).
const PRESENCE_EVERY: Duration = Duration::from_millis(500);

/// One restart's figures, from the SIGKILL on.
struct Restart {
    /// Until the new server took connections (its ports file written).
    server_up_s: f64,
    /// Until the server counted as many client connections as before the kill.
    all_connected_s: f64,
    /// Until every agent had answered one presence broadcast.
    all_answering_s: f64,
    /// The new server's CPU seconds from its start to every agent answering.
    nats_cpu_s: f64,
    nats_rss_mib: f64,
    /// Connections the new server accepted in all (`/varz` `total_connections`, when
    /// reported): above the fleet's, connections that failed or were dropped on the way.
    accepted: Option<u64>,
    /// Messages into and out of the new server until every agent answered, per agent.
    in_per_agent: f64,
    out_per_agent: f64,
    /// JetStream API calls until every agent answered, per agent. The agents' catch-up reads
    /// (a direct get of the last command on their subject) are not API calls: they count in
    /// messages in.
    api_per_agent: f64,
}

pub async fn reconnect(counts: &[usize], runs: usize, sync: Sync) -> anyhow::Result<()> {
    let limit = common::raise_fd_limit();
    eprintln!("open-file limit {limit}");
    let mut rows = Vec::new();
    for &n in counts {
        rows.push((n, measure(n, runs, sync).await?));
    }
    print_table(&rows, runs, sync);
    Ok(())
}

async fn measure(n: usize, runs: usize, sync: Sync) -> anyhow::Result<Vec<Restart>> {
    let mut nats = Nats::start(sync)?;
    let pid = nats_pid()?;
    common::ensure_room_for(&pid, n)?;
    eprintln!("reconnect N={n}: starting {n} simulated agents");
    let sim = SimFleet::start(nats.url(), "idle", n, &[]).await?;
    eprintln!(
        "reconnect N={n}: all agents ready after {:.1} s",
        sim.ready_after.as_secs_f64()
    );
    let subjects = Subjects::new(flotilla_schemas::subjects::DEFAULT_PREFIX)?;
    let mut restarts = Vec::new();
    for run in 0..runs {
        let port = nats.server.monitoring_port().context("monitoring port")?;
        let before = varz(port)?["connections"].as_u64().unwrap_or(0);
        let killed = Instant::now();
        tokio::task::block_in_place(|| nats.server.restart())?;
        let server_up_s = killed.elapsed().as_secs_f64();
        let pid = nats_pid()?;
        let port = nats.server.monitoring_port().context("monitoring port")?;
        let all_connected_s = wait_connections(port, before, killed).await?;
        let client = async_nats::connect(nats.url()).await?;
        common::wait_presence(
            &client,
            &subjects,
            n,
            PRESENCE_EVERY,
            COME_BACK_WITHIN.saturating_sub(killed.elapsed()),
        )
        .await
        .context("presence after the restart")?;
        let all_answering_s = killed.elapsed().as_secs_f64();
        let nats_cpu_s = common::cpu_of(&pid).map_or(0.0, |c| c.own);
        let nats_rss_mib = common::status_kib(&pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0;
        let v = varz(port)?;
        let jsz = get_json_within(port, "/jsz", Duration::from_secs(20)).context("/jsz")?;
        drop(client);
        let per = |x: u64| x as f64 / n as f64;
        let r = Restart {
            server_up_s,
            all_connected_s,
            all_answering_s,
            nats_cpu_s,
            nats_rss_mib,
            accepted: v["total_connections"].as_u64(),
            in_per_agent: per(v["in_msgs"].as_u64().unwrap_or(0)),
            out_per_agent: per(v["out_msgs"].as_u64().unwrap_or(0)),
            api_per_agent: per(jsz["api"]["total"].as_u64().unwrap_or(0)),
        };
        eprintln!(
            "reconnect N={n} run {}: server up {:.2} s, {before} connections back {:.2} s, all answering {:.2} s, nats-server {:.2} CPU-s",
            run + 1,
            r.server_up_s,
            r.all_connected_s,
            r.all_answering_s,
            r.nats_cpu_s
        );
        restarts.push(r);
    }
    sim.stop().await;
    drop(nats);
    Ok(restarts)
}

/// The PID of the bench's nats-server (its child).
fn nats_pid() -> anyhow::Result<String> {
    common::child_named("nats-server")
        .map(|p| p.to_string())
        .context("nats-server pid")
}

fn varz(port: u16) -> anyhow::Result<serde_json::Value> {
    tokio::task::block_in_place(|| get_json_within(port, "/varz", Duration::from_secs(20)))
        .context("reading /varz")
}

/// Reads `/varz` every [`POLL`] until the server counts `want` client connections; returns the
/// seconds since `since`.
async fn wait_connections(port: u16, want: u64, since: Instant) -> anyhow::Result<f64> {
    let mut tick = tokio::time::interval(POLL);
    let mut seen = 0;
    while since.elapsed() < COME_BACK_WITHIN {
        tick.tick().await;
        seen = varz(port).map_or(seen, |v| v["connections"].as_u64().unwrap_or(seen));
        if seen >= want {
            return Ok(since.elapsed().as_secs_f64());
        }
    }
    anyhow::bail!("only {seen} of {want} connections back within {COME_BACK_WITHIN:?}")
}

fn print_table(rows: &[(usize, Vec<Restart>)], runs: usize, sync: Sync) {
    println!(
        "## reconnect: N idle agents after nats-server is killed (SIGKILL) and started again on the same port and store\n"
    );
    println!(
        "{}; nats-server with {}; {runs} restart(s) per N; seconds from the kill; median (min–max)\n",
        common::machine(),
        sync.label()
    );
    let stats = |rs: &[Restart], f: fn(&Restart) -> f64| Stats::new(rs.iter().map(f).collect());
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(n, rs)| {
            let accepted = stats(rs, |r| r.accepted.map_or(f64::NAN, |a| a as f64));
            vec![
                n.to_string(),
                stats(rs, |r| r.server_up_s).mmm(2),
                stats(rs, |r| r.all_connected_s).mmm(2),
                stats(rs, |r| r.all_answering_s).mmm(2),
                stats(rs, |r| r.nats_cpu_s).mmm(2),
                stats(rs, |r| r.nats_rss_mib).mmm(0),
                if accepted.median().is_nan() {
                    "not reported".into()
                } else {
                    accepted.mmm(0)
                },
                stats(rs, |r| r.in_per_agent).mmm(1),
                stats(rs, |r| r.out_per_agent).mmm(1),
                stats(rs, |r| r.api_per_agent).mmm(2),
            ]
        })
        .collect();
    common::table(
        &[
            "N",
            "server up s",
            "all connected s",
            "all answering presence s",
            "nats-server CPU s (its start → all answering)",
            "nats-server RSS MiB",
            "connections accepted",
            "messages in per agent",
            "messages out per agent",
            "JetStream API calls per agent",
        ],
        &table_rows,
    );
    println!(
        "Connections accepted counts the successful ones (the fleet's, the simulator processes' own and the bench's); \
         attempts refused while the server was down never reach it, so they are not counted. \
         Messages and API calls run from the new server's start until every agent answered (presence asked every 0.5 s once all connections were back, which is the resolution of \"all answering\"; its answers included); \
         each agent's catch-up read of its last command is a direct get, counted in messages in (one each), not among the API calls.\n"
    );
}
