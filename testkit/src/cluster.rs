//! A real JetStream cluster for one test: `n` nats-servers on loopback, routed to each other,
//! each with its own store directory in a temp dir; killed on drop.
//!
//! Routes need the peers' cluster ports before any node starts, so every port is chosen up
//! front (a port that was free a moment ago) and written into each node's configuration; a
//! restarted node reuses its ports and store directory and so rejoins as the same peer. The
//! leaders are read from each node's monitoring endpoint (`/jsz`), so the kit needs no NATS
//! client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Extra configuration for every node of a [`Cluster`].
#[derive(Clone, Default)]
pub struct ClusterOptions {
    /// Lines inside each node's `jetstream {}` block (e.g. `domain: hub`).
    pub jetstream: Vec<String>,
    /// Top-level configuration appended to each node's file (e.g. the accounts of the shipped
    /// secure configuration).
    pub extra: String,
    /// Whether each node listens for leaf nodes (on [`Cluster::leafnode_url`]).
    pub leafnodes: bool,
    /// Environment of every node (for the `$VARIABLE`s of `extra` and `include`).
    pub env: Vec<(String, String)>,
    /// A configuration file (e.g. a shipped one) each node's file includes first; the kit's
    /// own keys (name, ports, cluster) follow it and so win. Its `jetstream {}` block is kept
    /// (the store directory goes on the command line), so `jetstream` is then unused.
    pub include: Option<PathBuf>,
    /// A file included inside each node's `leafnodes {}` block (e.g. a shipped authorization).
    pub leafnode_include: Option<PathBuf>,
    /// How many of the last nodes are not started (the others form the cluster without them):
    /// a cluster still forming; [`Cluster::restart`] starts one.
    pub held_back: usize,
}

/// One node: its fixed ports, its configuration file and its process (none while killed).
struct Node {
    name: String,
    client_port: u16,
    http_port: u16,
    leaf_port: u16,
    config: PathBuf,
    store: PathBuf,
    child: Option<Child>,
}

/// A running JetStream cluster.
pub struct Cluster {
    name: String,
    nodes: Vec<Node>,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts an `n`-node cluster and waits until it has elected its JetStream meta leader.
    pub fn start(n: usize) -> anyhow::Result<Self> {
        Self::start_with(n, &ClusterOptions::default())
    }

    /// Like [`Cluster::start`], with `options` in every node's configuration.
    ///
    /// The ports are chosen before the nodes bind them, so a test running beside this one may
    /// take one in between; the cluster is then started again on fresh ports (a few times).
    pub fn start_with(n: usize, options: &ClusterOptions) -> anyhow::Result<Self> {
        let mut tries = 0;
        loop {
            match Self::start_on_fresh_ports(n, options) {
                Err(e)
                    if (e.downcast_ref::<ExitedAtOnce>().is_some()
                        || e.downcast_ref::<NeverFormed>().is_some())
                        && tries < 4 =>
                {
                    eprintln!("cluster harness: {e}; starting again on fresh ports");
                    tries += 1
                }
                started => return started,
            }
        }
    }

    fn start_on_fresh_ports(n: usize, options: &ClusterOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(n > 0, "a cluster has at least one node");
        let dir = tempfile::tempdir()?;
        // A name of its own: were a port chosen for this cluster taken by a node of another
        // cluster starting beside it, the two would refuse each other's routes rather than
        // merge into one cluster with two meta groups.
        static CLUSTERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let serial = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("flotilla-test-{}-{serial}", std::process::id());
        let route_ports: Vec<u16> = (0..n).map(|_| crate::free_port()).collect();
        let mut nodes = Vec::with_capacity(n);
        for (i, &route_port) in route_ports.iter().enumerate() {
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let node = Node {
                name: format!("n{i}"),
                client_port: crate::free_port(),
                http_port: crate::free_port(),
                leaf_port: crate::free_port(),
                config: node_dir.join("nats.conf"),
                store: node_dir.join("jetstream"),
                child: None,
            };
            let text = node_config(&name, &node, &node_dir, route_port, &route_ports, options);
            std::fs::write(&node.config, text)?;
            nodes.push(node);
        }
        let mut cluster = Self {
            name,
            nodes,
            env: options.env.clone(),
            _dir: dir,
        };
        for i in 0..n.saturating_sub(options.held_back) {
            cluster.spawn(i)?;
        }
        // Its nodes are killed on drop when it never formed (a route port taken by a node
        // starting beside it, say); the next try has fresh ports.
        cluster
            .wait_ready(Duration::from_secs(30))
            .map_err(|e| NeverFormed(e.to_string()))?;
        Ok(cluster)
    }

    /// The cluster's name (`cluster { name }` of every node).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many nodes the cluster has, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node (never: [`Cluster::start`] refuses zero).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, in node order (killed nodes included).
    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.node(i)).collect()
    }

    /// [`Cluster::urls`] comma-separated, as `FLOTILLA_NATS__URL` takes it.
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// The client URL of node `i`.
    pub fn node(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// The `server_name` of node `i` (`n<i>`).
    pub fn server_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The URL on which node `i` takes leaf node connections ([`ClusterOptions::leafnodes`]).
    pub fn leafnode_url(&self, i: usize) -> String {
        format!("nats-leaf://127.0.0.1:{}", self.nodes[i].leaf_port)
    }

    /// The monitoring (HTTP) port of node `i`.
    pub fn monitoring_port(&self, i: usize) -> u16 {
        self.nodes[i].http_port
    }

    /// Whether node `i`'s process is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        matches!(
            self.nodes[i].child.as_mut().map(|c| c.try_wait()),
            Some(Ok(None))
        )
    }

    /// Kills node `i` with SIGKILL (no clean shutdown, no flush) and waits for it to be gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again with the same ports and store directory (killing it first if it
    /// runs), so that it rejoins as the same peer; returns once it takes connections.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        // A port may be refused for a moment after a SIGKILL: retry the start briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn(i) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Waits until every running node knows the same JetStream meta leader, a running one (a
    /// node just killed is still the leader to its peers until they elect another), and that
    /// leader counts every other running node a current peer: until then an R3 stream is
    /// refused with "no suitable peers for placement".
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let running: Vec<usize> = (0..self.len()).filter(|&i| self.is_running(i)).collect();
        crate::wait_for("a meta leader with current peers", timeout, || {
            let leaders: Vec<Option<usize>> = running
                .iter()
                .map(|&i| {
                    let jsz = self.jsz(i, "")?;
                    self.index_of(jsz["meta_cluster"]["leader"].as_str()?)
                })
                .collect();
            let Some(leader) = leaders[0].filter(|l| running.contains(l)) else {
                return false;
            };
            leaders.iter().all(|l| *l == Some(leader)) && self.peers_current(leader, &running)
        })
    }

    /// Whether the meta leader `leader` reports every other node in `running` as a current
    /// replica of the meta group.
    fn peers_current(&self, leader: usize, running: &[usize]) -> bool {
        let Some(jsz) = self.jsz(leader, "") else {
            return false;
        };
        let replicas = jsz["meta_cluster"]["replicas"].as_array();
        let current: Vec<usize> = replicas
            .into_iter()
            .flatten()
            .filter(|r| r["current"].as_bool() == Some(true))
            .filter_map(|r| self.index_of(r["name"].as_str()?))
            .collect();
        running.iter().all(|i| *i == leader || current.contains(i))
    }

    /// The node that leads `stream` (a KV bucket `b` is the stream `KV_b`, an object store `o`
    /// is `OBJ_o`), as seen by the first running node that knows it; `None` when no running
    /// node knows a leader.
    pub fn stream_leader(&mut self, stream: &str) -> Option<usize> {
        let running: Vec<usize> = (0..self.len()).filter(|&i| self.is_running(i)).collect();
        running
            .into_iter()
            .find_map(|i| self.stream_cluster(i, stream))
            .and_then(|cluster| self.index_of(cluster["leader"].as_str()?))
    }

    /// The replica count of `stream` (leader and followers), as a running node reports it.
    pub fn stream_replicas(&mut self, stream: &str) -> Option<usize> {
        let running: Vec<usize> = (0..self.len()).filter(|&i| self.is_running(i)).collect();
        running
            .into_iter()
            .find_map(|i| self.stream_cluster(i, stream))
            .map(|cluster| 1 + cluster["replicas"].as_array().map_or(0, Vec::len))
    }

    /// Waits until `stream` has a leader that runs, and every running node agrees on it; returns
    /// its index.
    pub fn wait_for_leader(&mut self, stream: &str, timeout: Duration) -> anyhow::Result<usize> {
        let mut found = None;
        let what = format!("a running leader of stream {stream}");
        let running: Vec<usize> = (0..self.len()).filter(|&i| self.is_running(i)).collect();
        crate::wait_for(&what, timeout, || {
            let seen: Vec<Option<usize>> = running
                .iter()
                .map(|&i| {
                    let cluster = self.stream_cluster(i, stream)?;
                    self.index_of(cluster["leader"].as_str()?)
                })
                .collect();
            found = seen[0].filter(|leader| {
                running.contains(leader) && seen.iter().all(|s| *s == Some(*leader))
            });
            found.is_some()
        })?;
        Ok(found.expect("waited for it"))
    }

    /// `stream` as node `i` reports it in its `/jsz` (any account): `name`, `cluster` (`leader`,
    /// `replicas`), `state` (`messages`, `last_seq`, …); `None` when the node does not hold it
    /// or does not answer.
    pub fn stream_detail(&self, i: usize, stream: &str) -> Option<serde_json::Value> {
        let jsz = self.jsz(i, "?accounts=true&streams=true")?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .filter_map(|account| account["stream_detail"].as_array())
            .flatten()
            .find(|s| s["name"] == stream)
            .cloned()
    }

    /// The client connections of node `i` (its `/connz`), each with its `name`; empty when the
    /// node does not answer.
    pub fn connections(&self, i: usize) -> Vec<serde_json::Value> {
        crate::monitoring::get_json(self.nodes[i].http_port, "/connz?limit=1000")
            .and_then(|connz| connz["connections"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The running node a client named `name` is connected to.
    pub fn node_of_client(&mut self, name: &str) -> Option<usize> {
        (0..self.len())
            .find(|&i| self.is_running(i) && self.connections(i).iter().any(|c| c["name"] == name))
    }

    fn stream_cluster(&self, i: usize, stream: &str) -> Option<serde_json::Value> {
        self.stream_detail(i, stream).map(|s| s["cluster"].clone())
    }

    fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == server_name)
    }

    /// Node `i`'s `/jsz` monitoring answer.
    fn jsz(&self, i: usize, query: &str) -> Option<serde_json::Value> {
        crate::monitoring::get_json(self.nodes[i].http_port, &format!("/jsz{query}"))
    }

    /// Starts node `i`'s process and waits until it takes client connections.
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let binary = crate::nats::server_binary();
        let node = &mut self.nodes[i];
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&node.config)
            .args(["-a", "127.0.0.1", "-p"])
            .arg(node.client_port.to_string())
            .arg("-m")
            .arg(node.http_port.to_string())
            .arg("-sd")
            .arg(&node.store)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (run scripts/ensure-nats.sh)",
                    binary.display()
                )
            })?;
        node.child = Some(child);
        let port = node.client_port;
        let started = crate::wait_for(
            &format!("node {} to take connections", node.name),
            Duration::from_secs(10),
            || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    || !matches!(node.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
            },
        );
        match node.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => started,
            _ => {
                node.child = None;
                Err(ExitedAtOnce(node.name.clone()).into())
            }
        }
    }
}

/// A node that exited as soon as it started: one of its ports was taken.
#[derive(Debug)]
struct ExitedAtOnce(String);

impl std::fmt::Display for ExitedAtOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} exited at once (a port busy?)", self.0)
    }
}

impl std::error::Error for ExitedAtOnce {}

/// A cluster whose nodes all started but never elected a meta leader.
#[derive(Debug)]
struct NeverFormed(String);

impl std::fmt::Display for NeverFormed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the cluster never formed: {}", self.0)
    }
}

impl std::error::Error for NeverFormed {}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.kill(i);
        }
    }
}

/// Node `node`'s configuration file: its ports, its store directory, routes to every peer.
fn node_config(
    cluster: &str,
    node: &Node,
    dir: &Path,
    route_port: u16,
    route_ports: &[u16],
    options: &ClusterOptions,
) -> String {
    let routes: Vec<String> = route_ports
        .iter()
        .filter(|&&p| p != route_port)
        .map(|p| format!("    \"nats-route://127.0.0.1:{p}\""))
        .collect();
    let jetstream_extra: String = options
        .jetstream
        .iter()
        .map(|line| format!("  {line}\n"))
        .collect();
    let leafnodes = if options.leafnodes {
        let include = options
            .leafnode_include
            .as_ref()
            .map(|file| format!("  include \"{}\"\n", relative_to(dir, file)))
            .unwrap_or_default();
        format!(
            "leafnodes {{\n  listen: \"127.0.0.1:{}\"\n{include}}}\n",
            node.leaf_port
        )
    } else {
        String::new()
    };
    // A block replaces the included file's whole block: keep the included one.
    let jetstream = if options.include.is_some() {
        String::new()
    } else {
        format!("jetstream {{\n  sync_interval: always\n{jetstream_extra}}}\n")
    };
    let include = options
        .include
        .as_ref()
        .map(|file| format!("include \"{}\"\n", relative_to(dir, file)))
        .unwrap_or_default();
    // The host and ports go on the command line (see `spawn`): an included file's `port` or
    // `listen` would otherwise compete with them.
    format!(
        "{include}server_name: {name}\n{jetstream}\
         cluster {{\n  name: {cluster}\n  listen: \"127.0.0.1:{route_port}\"\n  routes: [\n{routes}\n  ]\n}}\n\
         {leafnodes}{extra}\n",
        name = node.name,
        routes = routes.join(",\n"),
        extra = options.extra,
    )
}

/// `file` as a path relative to `dir`: nats-server resolves an `include` against the including
/// file's directory, even an absolute one. Going up to the root first is always right.
fn relative_to(dir: &Path, file: &Path) -> String {
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    let up = dir.components().count().saturating_sub(1);
    let mut path = "../".repeat(up);
    path.push_str(file.to_string_lossy().trim_start_matches('/'));
    path
}
