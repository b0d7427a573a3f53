//! `roundtrip`: one signed command to one real `flotilla-agent` process and its result back,
//! over the wire protocol (the coordinator's publish path: JetStream, `Nats-Msg-Id`, Ed25519
//! signature), with the transport's own floor measured beside it.

use std::time::Instant;

use futures::StreamExt;

use crate::agent::{AgentProcess, Bus, Migrations, PHASES};
use crate::common::{self, Stats, Sync};

pub async fn roundtrip(runs: usize, warmup: usize) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for sync in [Sync::Default, Sync::Always] {
        rows.extend(measure(sync, runs, warmup).await?);
    }
    println!("## roundtrip: one signed command to one real agent process and its result back\n");
    println!(
        "{}; loopback; {warmup} warm-up run(s) not counted; milliseconds\n",
        common::machine()
    );
    common::table(
        &["nats-server", "what", "n", "p50", "p99", "max", "min"],
        &rows,
    );
    Ok(())
}

/// The floor and `runs` migrations (after `warmup`) on a nats-server with `sync`: the table's
/// rows for it.
async fn measure(sync: Sync, runs: usize, warmup: usize) -> anyhow::Result<Vec<Vec<String>>> {
    let bus = Bus::start(sync).await?;
    // The floor: what the transport alone costs on this machine.
    let floor = floor(&bus.client, &bus.js, runs).await?;

    let agent = AgentProcess::spawn(bus.nats.url(), "rt", &[]).await?;
    bus.wait_agent(std::time::Duration::from_millis(5)).await?;
    let mut migrations = Migrations::new(&bus, &agent, "rt").await?;
    let (mut migrate, mut finalize) = (Vec::new(), Vec::new());
    for i in 0..warmup + runs {
        let (m, f) = migrations.next().await?;
        if i >= warmup {
            migrate.push(common::ms(m));
            finalize.push(common::ms(f));
        }
    }
    eprintln!("roundtrip ({}): {} migrations done", sync.label(), runs);
    let mut rows = Vec::new();
    let row = |what: String, s: Stats, digits: usize| {
        vec![
            sync.label().to_owned(),
            what,
            s.count().to_string(),
            format!("{:.digits$}", s.median()),
            format!("{:.digits$}", s.quantile(0.99)),
            format!("{:.digits$}", s.max()),
            format!("{:.digits$}", s.min()),
        ]
    };
    for (what, values) in [
        ("core NATS request/reply (floor)", floor.0),
        ("JetStream publish + ack (floor)", floor.1),
        ("no-op migrate command → result", migrate),
        ("finalize command → result", finalize),
    ] {
        rows.push(row(what.to_owned(), Stats::new(values), 3));
    }
    if let Ok(mut phases) = PHASES.lock() {
        for (phase, values) in std::mem::take(&mut *phases) {
            let what = format!("agent phase `{phase}` (as reported, whole ms)");
            rows.push(row(what, Stats::new(values), 0));
        }
    }
    drop(migrations);
    drop(agent);
    drop(bus);
    Ok(rows)
}

/// Core request/reply to an in-process responder, and a JetStream publish awaiting its ack.
async fn floor(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    runs: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut echo = client.subscribe("bench.echo").await?;
    let responder = client.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    let mut rr = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        client.request("bench.echo", "ping".into()).await?;
        rr.push(common::ms(t.elapsed()));
    }
    task.abort();
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_FLOOR".into(),
        subjects: vec!["bench.floor".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let mut pa = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        js.publish("bench.floor", "x".repeat(600).into())
            .await?
            .await?;
        pa.push(common::ms(t.elapsed()));
    }
    Ok((rr, pa))
}
