//! The local demo: a NATS server, the five T006 sample services with their agents, and one
//! `flotilla migrate` of the demo plan, then clean-up. Exits with the migration's exit code.
//!
//! Run it through `scripts/demo.sh`, which installs nats-server and builds first.

use std::process::{Command, ExitCode};

use anyhow::Context;
use flotilla_tests::{Fleet, NatsServer, ROLES, binary, repo_root};

fn main() -> anyhow::Result<ExitCode> {
    let nats = NatsServer::start().context("starting nats-server")?;
    println!("==> nats-server with JetStream at {}", nats.url());
    let fleet = Fleet::start(nats.url(), &ROLES).context("starting the demo fleet")?;
    println!(
        "==> five legacy services, each with its flotilla-agent sidecar, in {}",
        fleet.dir().display()
    );
    flotilla(&fleet, nats.url(), &["agents"])?;

    let plan = repo_root().join("deploy/demo/plan.toml");
    println!("\n==> flotilla migrate {}", plan.display());
    let code = flotilla(
        &fleet,
        nats.url(),
        &["migrate", plan.to_str().context("plan path is UTF-8")?],
    )?;

    println!("\n==> the services now answer:");
    for role in ROLES {
        let health = fleet
            .health(role)
            .map(|(status, body)| format!("{status} {body}"))
            .unwrap_or_else(|| "no answer".into());
        println!("  {role:11} {health}");
    }
    println!("\n==> stopping the fleet and NATS");
    drop(fleet);
    Ok(ExitCode::from(code))
}

fn flotilla(fleet: &Fleet, nats_url: &str, args: &[&str]) -> anyhow::Result<u8> {
    let status = Command::new(binary("flotilla"))
        .args(args)
        .env("FLOTILLA_NATS_URL", nats_url)
        .current_dir(fleet.dir())
        .status()
        .context("running flotilla")?;
    Ok(status.code().unwrap_or(1) as u8)
}
