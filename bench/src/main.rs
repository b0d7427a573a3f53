//! `flotilla-bench`: Flotilla's benchmarks (issue 8). Each subcommand prints a Markdown table
//! (medians with min and max) on stdout and its progress on stderr; `docs/performance.md` says
//! what each one measures and holds the latest figures.
//!
//! ```text
//! cargo build --release -p flotilla-bench -p flotilla-agent -p flotilla-coordinator
//! target/release/flotilla-bench roundtrip [--runs 1000]
//! target/release/flotilla-bench fleet --agents 5,50,1000,10000 [--runs 3] [--max-parallel 500] [--leaves K]
//! target/release/flotilla-bench reconnect [--agents 1000,10000] [--runs 3]
//! target/release/flotilla-bench idle [--agents 10000] [--minutes 10]
//! target/release/flotilla-bench peers [--agents 1,5,20,50] [--peer-results DIR]
//! target/release/flotilla-bench footprint [--seconds 60] [--migrations 100]
//! target/release/flotilla-bench backup [--files 10000] [--total-mb 200] [--runs 3] [--dir DIR]
//! target/release/flotilla-bench verify --services 1000
//! ```

mod agent;
mod backup;
mod common;
mod cost;
mod fleet;
mod footprint;
mod idle;
mod peers;
mod reconnect;
mod roundtrip;
mod servers;
mod sim;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "flotilla-bench", about = "Flotilla's benchmarks (issue 8)")]
struct Args {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// One signed command to one real agent process and its result back, with both sync modes.
    Roundtrip {
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        #[arg(long, default_value_t = 20)]
        warmup: usize,
    },
    /// `flotilla migrate` (no-op) over N simulated agents (real agent library each).
    Fleet {
        #[arg(long, value_delimiter = ',', default_value = "5,50,1000,10000")]
        agents: Vec<usize>,
        /// Migrations per N.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// nats-server with the default sync instead of `sync_interval: always`.
        #[arg(long)]
        default_sync: bool,
        /// After the timed runs, one more under strace, counting nats-server's fsyncs.
        #[arg(long)]
        fsyncs: bool,
        /// The plan's `max_parallel` for every N above it (smaller N: no cap). The simulator
        /// shares this machine's cores with every agent; 10,000 prechecks at once time out
        /// (1,000 at once passed at 10,000, the slowest precheck at 1.8 s of its 2 s; 500: 1.2 s).
        #[arg(long, default_value_t = 500)]
        max_parallel: usize,
        /// Leaf-node servers (no JetStream) for the agents to connect to, beside the JetStream
        /// hub the coordinator uses. Default: none while one server's open-file limit holds the
        /// fleet, else one per 15,000 agents.
        #[arg(long)]
        leaves: Option<usize>,
    },
    /// N idle simulated agents; nats-server killed (SIGKILL) and restarted on the same port and
    /// store: time until every connection is back and every agent answers presence.
    Reconnect {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        agents: Vec<usize>,
        /// Restarts per N.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        default_sync: bool,
    },
    /// N simulated agents idle for T minutes; nats-server's CPU, RSS and traffic each minute.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        #[arg(long)]
        default_sync: bool,
    },
    /// Flotilla beside Salt and Ansible (the peer scripts' results) at N = 1, 5, 20, 50.
    Peers {
        #[arg(long, value_delimiter = ',', default_value = "1,5,20,50")]
        agents: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Directory of the peer scripts' `results.tsv`.
        #[arg(long, default_value = "/work/shared/peers/results")]
        peer_results: PathBuf,
    },
    /// An idle agent's memory and CPU, memory after migrations, start-up time.
    Footprint {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        migrations: usize,
        /// Agent starts timed for the start-up figure.
        #[arg(long, default_value_t = 10)]
        starts: usize,
    },
    /// The agent's backup and restore of a file tree against `cp -a` + `sync -f`.
    Backup {
        /// Files in the generated tree.
        #[arg(long, default_value_t = 10_000)]
        files: u64,
        /// The tree's total size, in MB.
        #[arg(long, default_value_t = 200)]
        total_mb: u64,
        #[arg(long, default_value_t = 3)]
        runs: u64,
        /// Where the temporary tree goes (default `$TMPDIR`, else `/var/tmp`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Internal: one simulator process of the fleet simulator (runs agents until stdin closes).
    #[command(hide = true)]
    SimWorker {
        #[arg(long)]
        nats: String,
        #[arg(long)]
        service: String,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        trusted: String,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        allow: Vec<String>,
        /// The JetStream domain the agents reach through a leaf node.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Default-store fetch and correlation check of a synthetic run.
    Verify {
        #[arg(long, default_value_t = 1000)]
        services: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

fn sync_of(default_sync: bool) -> common::Sync {
    if default_sync {
        common::Sync::Default
    } else {
        common::Sync::Always
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // File-system work only: no runtime, no telemetry.
    if let Bench::Backup {
        files,
        total_mb,
        runs,
        dir,
    } = args.command
    {
        return backup::backup(&backup::Options {
            files,
            total_mb,
            runs,
            dir,
        });
    }
    // The simulated agents share this process's telemetry: spans are made (as in a real agent)
    // but not exported; warnings only on stderr.
    let telemetry = Arc::new(flotilla_telemetry::init_with(
        flotilla_telemetry::TelemetryConfig {
            default_filter: "warn".into(),
            default_store: false,
            ..flotilla_telemetry::TelemetryConfig::new("flotilla-bench")
        },
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match args.command {
            Bench::Roundtrip { runs, warmup } => roundtrip::roundtrip(runs, warmup).await,
            Bench::Fleet {
                agents,
                runs,
                default_sync,
                fsyncs,
                max_parallel,
                leaves,
            } => {
                let options = fleet::Options {
                    runs,
                    sync: sync_of(default_sync),
                    fsyncs,
                    max_parallel,
                    leaves,
                };
                fleet::fleet(&agents, options).await
            }
            Bench::Reconnect {
                agents,
                runs,
                default_sync,
            } => reconnect::reconnect(&agents, runs, sync_of(default_sync)).await,
            Bench::Idle {
                agents,
                minutes,
                default_sync,
            } => idle::idle(agents, minutes, sync_of(default_sync)).await,
            Bench::Peers {
                agents,
                runs,
                warmup,
                peer_results,
            } => peers::peers(&agents, runs, warmup, &peer_results).await,
            Bench::SimWorker {
                nats,
                service,
                first,
                count,
                trusted,
                dir,
                allow,
                domain,
            } => {
                sim::worker(
                    &nats,
                    &service,
                    first,
                    count,
                    &trusted,
                    &dir,
                    &allow,
                    domain.as_deref(),
                    telemetry,
                )
                .await
            }
            Bench::Footprint {
                seconds,
                migrations,
                starts,
            } => footprint::footprint(seconds, migrations, starts).await,
            Bench::Verify { services, runs } => verify::verify(services, runs).await,
            Bench::Backup { .. } => unreachable!("handled above"),
        }
    })
}
