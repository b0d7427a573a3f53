//! `footprint`: a real idle `flotilla-agent` process: start-up time to ready, resident memory and
//! CPU while idle, memory after 100 migrations. Its service is simulated (`supervisor = "none"`),
//! so only the agent's own process is measured.

use std::time::Duration;

use anyhow::Context;

use crate::agent::{AgentProcess, Bus, Migrations};
use crate::common::{self, Stats, Sync};

/// The resident memory of `pid` now, in MiB (0 when unreadable).
fn rss_mib(pid: &str) -> f64 {
    common::status_kib(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0
}

pub async fn footprint(seconds: u64, migrations: usize, starts: usize) -> anyhow::Result<()> {
    let bus = Bus::start(Sync::Always).await?;
    let (ready, rss_at_ready) = startup(&bus, starts).await?;

    let agent = AgentProcess::spawn(bus.nats.url(), "fp", &[]).await?;
    let pid = agent.pid();
    bus.wait_agent(Duration::from_millis(5)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle_start = common::status_kib(&pid, "VmRSS:").context("agent RSS")?;
    let cpu0 = common::cpu_of(&pid).context("agent CPU")?.own;
    eprintln!("footprint: idle for {seconds} s");
    let mut rss_samples = Vec::new();
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_samples.push(rss_mib(&pid));
    }
    let idle_cpu = common::cpu_of(&pid).context("agent CPU")?.own - cpu0;
    let idle_pct = 100.0 * idle_cpu / t0.elapsed().as_secs_f64();
    let idle = Stats::new(rss_samples);

    eprintln!("footprint: {migrations} migrations");
    let mut run = Migrations::new(&bus, &agent, "fp").await?;
    let mut after = Vec::new();
    for i in 0..migrations {
        run.next().await?;
        if (i + 1) % 25 == 0 {
            after.push((i + 1, rss_mib(&pid)));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_end = rss_mib(&pid);
    let hwm = common::status_kib(&pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0;
    drop(run);
    drop(agent);

    let mut rows = vec![
        vec![
            format!("start-up to ready (first presence answer), {starts} starts"),
            format!("{} ms", Stats::new(ready).mmm(1)),
        ],
        vec![
            "RSS at ready".into(),
            format!("{} MiB", Stats::new(rss_at_ready).mmm(1)),
        ],
        vec![
            format!("idle RSS over {seconds} s (1 s samples)"),
            format!(
                "{} MiB (at start {:.1})",
                idle.mmm(1),
                rss_idle_start as f64 / 1024.0
            ),
        ],
        vec![
            format!("idle CPU over {seconds} s"),
            format!("{idle_cpu:.2} CPU-s = {idle_pct:.3} % of one core"),
        ],
    ];
    for (n, rss) in &after {
        rows.push(vec![
            format!("RSS after {n} migrations (+finalize)"),
            format!("{rss:.1} MiB"),
        ]);
    }
    rows.push(vec![
        "RSS 2 s after the last migration / peak (VmHWM)".into(),
        format!("{rss_end:.1} / {hwm:.1} MiB"),
    ]);
    println!("## footprint: one real flotilla-agent process (service simulated, not counted)\n");
    println!(
        "{}; nats-server with sync_interval: always\n",
        common::machine()
    );
    common::table(&["what", "median (min–max)"], &rows);
    Ok(())
}

/// Start-up: from spawn to the first presence answer (the agent has connected, opened its
/// journal, checked its service and subscribed), polled every 2 ms, `starts` times; with the
/// resident memory at that moment.
async fn startup(bus: &Bus, starts: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut ready = Vec::new();
    let mut rss_at_ready = Vec::new();
    for i in 0..starts {
        let service = format!("fp{i}");
        let agent = AgentProcess::spawn(bus.nats.url(), &service, &[]).await?;
        let spawned = agent.spawned;
        bus.wait_agent(Duration::from_millis(2)).await?;
        ready.push(common::ms(spawned.elapsed()));
        rss_at_ready.push(rss_mib(&agent.pid()));
        drop(agent);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((ready, rss_at_ready))
}
