//! The fleet bench's NATS servers: one JetStream server, or for a fleet past one process's
//! open-file limit (one connection per agent), the topology large fleets use anyway: a JetStream
//! hub, and K leaf-node servers without JetStream that the agents connect to, as the shipped
//! `deploy/nats/leaf-site.conf` sites do. Leaf nodes extend the hub's account (the bench uses
//! no auth: the global one), so subjects, queue groups and request/reply reach the agents; the
//! hub's JetStream API reaches them in its domain ([`HUB_DOMAIN`], the agents' `[nats] domain`:
//! without one nothing answers `$JS.API` through a leaf). The coordinator connects to the hub.
//! Each server is its own process with its own fd limit.

use std::time::Duration;

use anyhow::Context;
use flotilla_testkit::monitoring::get_json_within;

use crate::common::{self, Nats, Sync};
use crate::sim::PER_PROCESS;

/// Agents per leaf node when their number is chosen automatically: under the 20,000 open files
/// of this machine's hard limit, with room for the server's own files and the workers' clients.
pub const AGENTS_PER_LEAF: usize = 15_000;

/// The hub's JetStream domain when it has leaf nodes.
pub const HUB_DOMAIN: &str = "hub";

/// How long the leaf nodes may take to connect to the hub.
const LEAVES_WITHIN: Duration = Duration::from_secs(30);

/// Leaf nodes for `n` agents when none were asked for: none while one server's open-file limit
/// `fd_limit` holds them (as [`common::ensure_room_for`] counts), else one per
/// [`AGENTS_PER_LEAF`].
pub fn leaves_for(n: usize, fd_limit: u64) -> usize {
    if n as u64 + 1000 <= fd_limit {
        0
    } else {
        n.div_ceil(AGENTS_PER_LEAF)
    }
}

/// A nats-server and its PID.
pub struct Server {
    pub nats: Nats,
    pub pid: String,
}

impl Server {
    fn start(text: &str) -> anyhow::Result<Self> {
        let nats = Nats::start_config(text)?;
        let pid = nats.server.pid().to_string();
        Ok(Self { nats, pid })
    }

    fn cpu(&self) -> f64 {
        common::cpu_of(&self.pid).map_or(0.0, |c| c.own)
    }
}

/// The hub (JetStream) and its leaf nodes (none for a small fleet).
pub struct Servers {
    pub hub: Server,
    pub leaves: Vec<Server>,
}

impl Servers {
    /// Starts the hub, then `leaves` leaf nodes, and waits until the hub counts every leaf
    /// connection (`/leafz`).
    pub fn start(sync: Sync, leaves: usize) -> anyhow::Result<Self> {
        let domain = (leaves > 0).then_some(HUB_DOMAIN);
        let mut hub_config = Nats::jetstream_config(sync, domain);
        let leaf_port = flotilla_testkit::free_port();
        if leaves > 0 {
            hub_config.push_str(&format!(
                "leafnodes {{\n  listen: \"127.0.0.1:{leaf_port}\"\n}}\n"
            ));
        }
        let hub = Server::start(&hub_config)?;
        let leaf_config = format!(
            "leafnodes {{\n  remotes = [{{ url: \"nats-leaf://127.0.0.1:{leaf_port}\" }}]\n}}\n"
        );
        let leaves = (0..leaves)
            .map(|_| Server::start(&leaf_config))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let servers = Self { hub, leaves };
        if !servers.leaves.is_empty() {
            let port = servers.hub_monitoring_port()?;
            let want = servers.leaves.len() as u64;
            flotilla_testkit::wait_for(
                &format!("{want} leaf nodes connected to the hub"),
                LEAVES_WITHIN,
                || {
                    get_json_within(port, "/leafz", Duration::from_secs(2))
                        .and_then(|v| v["leafnodes"].as_u64())
                        == Some(want)
                },
            )?;
        }
        Ok(servers)
    }

    pub fn hub_url(&self) -> &str {
        self.hub.nats.url()
    }

    pub fn hub_monitoring_port(&self) -> anyhow::Result<u16> {
        self.hub
            .nats
            .server
            .monitoring_port()
            .context("the hub's monitoring port")
    }

    /// The URLs the agents connect to: the leaves', else the hub's.
    pub fn agent_urls(&self) -> Vec<String> {
        if self.leaves.is_empty() {
            vec![self.hub_url().to_owned()]
        } else {
            self.leaves
                .iter()
                .map(|l| l.nats.url().to_owned())
                .collect()
        }
    }

    /// The JetStream domain the agents name: the hub's when they connect to leaves.
    pub fn agent_domain(&self) -> Option<&'static str> {
        (!self.leaves.is_empty()).then_some(HUB_DOMAIN)
    }

    /// Fails at once unless every server can hold its share of `n` agents' connections (the
    /// simulator gives its workers of [`PER_PROCESS`] agents to the agent URLs in turn; each
    /// worker holds one more connection of its own).
    pub fn ensure_room_for(&self, n: usize) -> anyhow::Result<()> {
        if self.leaves.is_empty() {
            return common::ensure_room_for(&self.hub.pid, n);
        }
        common::ensure_room_for(&self.hub.pid, self.leaves.len())?;
        let k = self.leaves.len();
        let mut share = vec![0usize; k];
        for (j, first) in (0..n).step_by(PER_PROCESS).enumerate() {
            share[j % k] += PER_PROCESS.min(n - first) + 1;
        }
        for (leaf, &count) in self.leaves.iter().zip(&share) {
            common::ensure_room_for(&leaf.pid, count).context("a leaf node")?;
        }
        Ok(())
    }

    /// CPU seconds so far of the hub, and of the leaves together.
    pub fn cpu(&self) -> (f64, f64) {
        (
            self.hub.cpu(),
            self.leaves.iter().map(Server::cpu).sum::<f64>(),
        )
    }

    /// `one server` or `hub + K leaf nodes`.
    pub fn label(&self) -> String {
        label(self.leaves.len())
    }
}

/// `one server` or `hub + K leaf nodes`, for a fleet on `leaves` leaf nodes.
pub fn label(leaves: usize) -> String {
    match leaves {
        0 => "one server".into(),
        k => format!("hub + {k} leaf nodes"),
    }
}
