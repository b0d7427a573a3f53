//! `costs`: what one no-op `flotilla migrate` asks the broker to store, counted rather than
//! timed: the messages each stream stored during the run (its `last_sequence` before and
//! after: run-store writes are the `KV_flotilla_runs` stream's, each a fsynced
//! compare-and-set), and the live progress messages, which no stream stores. Per agent and in
//! all, for each N; the cost model of `docs/performance.md` comes from it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream;
use futures::StreamExt;

use crate::common::{self, Nats, Sync};
use crate::fleet::run_coordinator;
use crate::sim::SimFleet;

/// Every stream's last sequence: how many messages it stored since it was made.
async fn sequences(js: &jetstream::Context) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let mut streams = js.streams();
    while let Some(info) = streams.next().await {
        let info = info?;
        out.insert(info.config.name.clone(), info.state.last_sequence);
    }
    Ok(out)
}

pub async fn costs(counts: &[usize]) -> anyhow::Result<()> {
    common::raise_fd_limit();
    let mut rows = Vec::new();
    for &n in counts {
        let nats = Nats::start(Sync::Always)?;
        let sim = SimFleet::start(nats.url(), "noop", n, &[]).await?;
        let plan = sim.dir.path().join("plan.toml");
        let text = common::bench_plan("bench-noop", "600s", common::NOOP_STEP_TOML, "noop");
        std::fs::write(&plan, text.to_string())?;
        let client = async_nats::connect(nats.url()).await?;
        let js = jetstream::new(client.clone());
        // Live progress (core NATS): heard, never stored.
        let live = Arc::new(AtomicU64::new(0));
        let mut sub = client.subscribe("flotilla.live.>").await?;
        client.flush().await?;
        let heard = live.clone();
        let counter = tokio::spawn(async move {
            while sub.next().await.is_some() {
                heard.fetch_add(1, Ordering::Relaxed);
            }
        });
        let before = sequences(&js).await?;
        let log = sim.dir.path().join("flotilla-costs.log");
        let r = run_coordinator(nats.url(), &sim.key_path, &plan, &[], &log).await?;
        anyhow::ensure!(
            r.exit == 0 && r.succeeded == n,
            "the no-op run over N={n} did not succeed: {}",
            crate::fleet::reasons(&r.json)
        );
        client.flush().await?;
        let after = sequences(&js).await?;
        counter.abort();
        let stored = |name: &str| {
            after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
        };
        let total: u64 = after.keys().map(|name| stored(name)).sum();
        rows.push((
            n,
            stored("KV_flotilla_runs"),
            stored("FLOTILLA_EVENTS"),
            stored("FLOTILLA_COMMANDS"),
            total,
            live.load(Ordering::Relaxed),
        ));
        sim.stop().await;
        drop(nats);
    }
    let mut table = Vec::new();
    for (n, kv, events, commands, total, live) in rows {
        let per = |v: u64| format!("{v} ({:.2})", v as f64 / n as f64);
        table.push(vec![
            n.to_string(),
            per(kv),
            per(events),
            per(commands),
            per(total),
            per(live),
        ]);
    }
    println!(
        "## costs: what one no-op migration stores, in all (per agent)\n\n{}\n",
        common::machine()
    );
    common::table(
        &[
            "N",
            "run-store writes (KV_flotilla_runs)",
            "events stored (FLOTILLA_EVENTS)",
            "commands stored",
            "all stored messages",
            "live progress (not stored)",
        ],
        &table,
    );
    Ok(())
}
