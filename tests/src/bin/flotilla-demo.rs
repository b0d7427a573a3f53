//! The local demo: a NATS server, the five T006 sample services with their agents, and one
//! `flotilla migrate` of the demo plan, then clean-up. Exits with the migration's exit code.
//!
//! Run it through `scripts/demo.sh`, which installs nats-server and builds first.

use std::process::ExitCode;

use anyhow::Context;
use flotilla_tests::{Fleet, NatsServer, ROLES, repo_root};

fn main() -> anyhow::Result<ExitCode> {
    let nats = NatsServer::start().context("starting nats-server")?;
    println!("==> nats-server with JetStream at {}", nats.url());
    let fleet = Fleet::start(nats.url(), &ROLES).context("starting the demo fleet")?;
    println!(
        "==> five legacy services, each with its flotilla-agent sidecar, in {}",
        fleet.dir().display()
    );
    flotilla(&fleet, &["agents"])?;

    let plan = repo_root().join("deploy/demo/plan.toml");
    println!("\n==> flotilla migrate {}", plan.display());
    let code = flotilla(
        &fleet,
        &["migrate", plan.to_str().context("plan path is UTF-8")?],
    )?;

    if code == 0 {
        println!("\n==> flotilla verify: the run's trace, read back from the default store");
        flotilla(&fleet, &["verify"])?;
    }

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

fn flotilla(fleet: &Fleet, args: &[&str]) -> anyhow::Result<u8> {
    // The fleet's command carries its NATS URL and the signing key its agents trust.
    let status = fleet
        .flotilla_command(args)
        .env_remove("NO_COLOR")
        .status()
        .context("running flotilla")?;
    Ok(status.code().unwrap_or(1) as u8)
}
