//! A real Prometheus for one test: Debian's `prometheus` (or `PROMETHEUS_BIN`) on a free
//! loopback port, its storage in a temp dir, scraping the targets it is given; killed on drop.
//! [`Prometheus::wait_for`] runs a PromQL query through the HTTP API until it returns series.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

/// How often the test Prometheus scrapes: its fastest useful rhythm.
const SCRAPE_INTERVAL: &str = "1s";

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping each `(job, "host:port")` target's `/metrics`; returns once its
    /// `/-/ready` answers.
    pub fn start(targets: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, scrape_config(targets))?;
        let port = crate::free_port();
        let binary = binary();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (apt-get install -y prometheus, or set PROMETHEUS_BIN)",
                    binary.display()
                )
            })?;
        let prometheus = Self { child, port, dir };
        crate::wait_for("Prometheus to be ready", Duration::from_secs(30), || {
            get(port, "/-/ready").is_some_and(|(status, _)| status == 200)
        })
        .with_context(|| format!("Prometheus's log: {}", prometheus.log()))?;
        Ok(prometheus)
    }

    /// The HTTP port of its API.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query?query=PROMQL`: the result vector (empty when no series matches).
    pub fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = get(self.port, &path).context("Prometheus does not answer")?;
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("Prometheus answered {status}: {body}"))?;
        anyhow::ensure!(answer["status"] == "success", "{promql}: {answer}");
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Queries `promql` until it returns at least one series, within `timeout`.
    pub fn wait_for(&self, promql: &str, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let mut result = Vec::new();
        crate::wait_for(&format!("Prometheus to return {promql}"), timeout, || {
            result = self.query(promql).unwrap_or_default();
            !result.is_empty()
        })
        .with_context(|| format!("targets: {}", self.targets()))?;
        Ok(result)
    }

    /// `/api/v1/targets`, as text: what each scrape found (for failure messages).
    pub fn targets(&self) -> String {
        get(self.port, "/api/v1/targets").map_or_else(String::new, |(_, body)| body)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scrape configuration with one job per target.
fn scrape_config(targets: &[(&str, &str)]) -> String {
    let mut text = format!(
        "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  evaluation_interval: {SCRAPE_INTERVAL}\nscrape_configs:\n"
    );
    for (job, target) in targets {
        text.push_str(&format!(
            "  - job_name: \"{job}\"\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ));
    }
    text
}

fn binary() -> PathBuf {
    std::env::var_os("PROMETHEUS_BIN").map_or_else(|| PathBuf::from("prometheus"), PathBuf::from)
}

/// GET over HTTP/1.0, so that the answer is never chunked.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_secs(1),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some((status, body.to_owned()))
}

/// A query-string value: every byte but the unreserved ones percent-encoded (RFC 3986).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
