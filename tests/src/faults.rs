//! Fault injection helpers beyond the proxy: a shorter ack wait on the agents' consumers,
//! commands forged and replayed by the harness, small file systems that fill up, and a look at
//! an agent's memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use flotilla_bus::signing::{SIGNATURE_HEADER, SigningKey};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{InstanceId, ServiceName};
use futures::StreamExt;
use serde_json::{Value, json};

/// Connects to `urls`: one server, or a cluster's comma-separated, as the binaries take them.
pub async fn connect(urls: &str) -> anyhow::Result<async_nats::Client> {
    let servers = urls
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(async_nats::connect(servers).await?)
}

/// Runs `work` on its own thread with its own runtime, so sync tests (and tests already inside a
/// runtime) can talk to NATS.
pub fn block_on<T: Send + 'static>(
    work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the NATS helper panicked"))?
}

/// Creates the streams before the agents start, as `flotilla setup` does. (With v1's durable
/// consumers this also preset a short ack wait; per-agent delivery has no ack wait: a command
/// lost in a dead connection is caught up at the reconnect.)
pub fn create_streams(nats_url: &str) -> anyhow::Result<()> {
    let url = nats_url.to_owned();
    block_on(async move {
        let client = connect(&url).await?;
        let js = jetstream::new(client);
        let subjects = Subjects::default();
        flotilla_bus::commands_stream(&js, &subjects).await?;
        flotilla_bus::events_stream(&js, &subjects).await?;
        Ok(())
    })
}

/// The last command stored for `service`'s agent (instance `a`), as its catch-up read finds it.
pub fn last_command(nats_url: &str, service: &str) -> Option<Value> {
    let (url, service) = (nats_url.to_owned(), service.to_owned());
    block_on(async move {
        let client = connect(&url).await?;
        let js = jetstream::new(client);
        let subjects = Subjects::default();
        let stream = js.get_stream(subjects.commands_stream()).await?;
        let subject = subjects.command(&ServiceName::parse(&service)?, &InstanceId::parse("a")?);
        let message = stream.direct_get_last_for_subject(subject).await?;
        Ok(serde_json::from_slice(&message.payload)?)
    })
    .ok()
}

/// Sets the events stream's size limit (discard new): a full broker refuses further events.
pub fn limit_events_stream(nats_url: &str, max_bytes: i64) -> anyhow::Result<()> {
    let url = nats_url.to_owned();
    block_on(async move {
        let client = connect(&url).await?;
        let js = jetstream::new(client);
        let subjects = Subjects::default();
        let mut stream = flotilla_bus::events_stream(&js, &subjects).await?;
        let mut config = stream.info().await?.config.clone();
        config.max_bytes = max_bytes;
        config.discard = jetstream::stream::DiscardPolicy::New;
        js.update_stream(config).await?;
        Ok(())
    })
}

/// A command as the coordinator would send it, as JSON, so tests do not depend on the Rust
/// struct's fields: `action` is the `action` object (e.g. [`counting_action`]).
pub fn command_json(
    service: &str,
    run_id: &str,
    command_id: &str,
    issued_at: time::OffsetDateTime,
    expires_at: time::OffsetDateTime,
    action: Value,
) -> Value {
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .expect("formattable")
    };
    json!({
        "schema": flotilla_schemas::CommandSchema::VALUE,
        "command_id": command_id,
        "run_id": run_id,
        "service": service,
        "instance": "a",
        "issued_at": rfc3339(issued_at),
        "expires_at": rfc3339(expires_at),
        "action": action,
    })
}

/// A migrate action whose one step appends `tag` to `counter`.
pub fn counting_action(counter: &Path, tag: &str) -> Value {
    json!({
        "kind": "migrate",
        "steps": [{
            "action": "run_command",
            "program": "sh",
            "args": ["-c", format!("echo {tag} >> {}", counter.display())],
            "timeout_ms": 5000,
        }],
    })
}

/// A fresh UUIDv7 (the form of run and command IDs).
pub fn new_id() -> String {
    flotilla_schemas::CommandId::new().to_string()
}

/// Publishes raw `payload` on `service`'s command subject, signed with `key` when given, with
/// `msg_id` as `Nats-Msg-Id`; returns once the stream stored it.
pub fn publish_command(
    nats_url: &str,
    service: &str,
    payload: Vec<u8>,
    key: Option<&SigningKey>,
    msg_id: &str,
) -> anyhow::Result<()> {
    let signature = key.map(|k| k.sign(&payload));
    let (url, service, msg_id) = (nats_url.to_owned(), service.to_owned(), msg_id.to_owned());
    block_on(async move {
        let client = connect(&url).await?;
        let js = jetstream::new(client);
        let subjects = Subjects::default();
        let subject = subjects.command(&ServiceName::parse(&service)?, &InstanceId::parse("a")?);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        if let Some(signature) = signature {
            headers.insert(SIGNATURE_HEADER, signature.as_str());
        }
        js.publish_with_headers(subject, headers, payload.into())
            .await?
            .await?;
        Ok(())
    })
}

/// Publishes raw `payload` on a run's event subject for `service` (a late, duplicated or
/// forged event, as the coordinator would read it).
pub fn publish_event(
    nats_url: &str,
    run_id: &str,
    service: &str,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    let (url, run_id, service) = (nats_url.to_owned(), run_id.to_owned(), service.to_owned());
    block_on(async move {
        let client = connect(&url).await?;
        let js = jetstream::new(client);
        let subject = format!("{}.evt.{run_id}.{service}.a", Subjects::default().prefix());
        js.publish(subject, payload.into()).await?.await?;
        Ok(())
    })
}

/// Waits up to `timeout` for a result of `command_id` in the events stream under `run_id`;
/// returns every copy seen by then (replays included).
pub fn results_of(
    nats_url: &str,
    run_id: &str,
    command_id: &str,
    want: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Value>> {
    let (url, run_id, command_id) = (
        nats_url.to_owned(),
        run_id.to_owned(),
        command_id.to_owned(),
    );
    block_on(async move {
        let client = connect(&url).await?;
        let js = jetstream::new(client);
        let subjects = Subjects::default();
        let stream = js.get_stream(subjects.events_stream()).await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("{}.evt.{run_id}.>", subjects.prefix()),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let mut results = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while results.len() < want {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(message))) => {
                    let event: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
                    if event["schema"] == "flotilla.result.v1"
                        && event["command_id"] == command_id.as_str()
                    {
                        results.push(event);
                    }
                }
                Ok(Some(Err(_))) => continue,
                _ => break,
            }
        }
        Ok(results)
    })
}

/// A small tmpfs mounted on a fresh directory; unmounted on drop. CI runs as root.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"256k"`).
    pub fn mount(size: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "flotilla-fault",
            ])
            .arg(dir.path())
            .status()?;
        anyhow::ensure!(status.success(), "mounting a tmpfs needs root");
        Ok(Self { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system up with a file `name` until the next write fails with ENOSPC.
    pub fn fill(&self, name: &str) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        let path = self.path().join(name);
        let mut file = std::fs::File::create(&path)?;
        let block = vec![0u8; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // Byte by byte for the last partial page.
        while file.write(&[0u8]).is_ok_and(|n| n == 1) {}
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The resident set of process `pid` in bytes (`VmRSS`), if it runs.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sets the commands stream's size limit (discard new), and its message size limit to the same
/// (-1: none): a full broker refuses new commands. (The stream keeps one command per agent and a
/// new one replaces it, so the byte limit alone would not refuse a second command to an agent.)
pub fn limit_commands_stream(nats_url: &str, max_bytes: i64) -> anyhow::Result<()> {
    let url = nats_url.to_owned();
    block_on(async move {
        let client = connect(&url).await?;
        let js = jetstream::new(client);
        let subjects = Subjects::default();
        let mut stream = flotilla_bus::commands_stream(&js, &subjects).await?;
        let mut config = stream.info().await?.config.clone();
        config.max_bytes = max_bytes;
        config.max_message_size = i32::try_from(max_bytes).unwrap_or(-1);
        config.discard = jetstream::stream::DiscardPolicy::New;
        js.update_stream(config).await?;
        Ok(())
    })
}
