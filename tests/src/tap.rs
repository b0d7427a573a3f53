//! Everything that crosses the bus, for tests that prove something never does (a secret value):
//! a core subscription to `>` from before the fleet starts, subjects, payloads and headers kept.

use std::sync::{Arc, Mutex};

use futures::StreamExt;

/// A subscription to every subject, recording what it sees.
pub struct BusTap {
    client: async_nats::Client,
    captured: Arc<Mutex<Vec<u8>>>,
}

impl BusTap {
    /// Starts tapping the NATS server at `url`.
    pub async fn start(url: &str) -> anyhow::Result<Self> {
        let client = async_nats::connect(url).await?;
        let mut all = client.subscribe(">").await?;
        let captured = Arc::new(Mutex::new(Vec::new()));
        let sink = captured.clone();
        tokio::spawn(async move {
            while let Some(message) = all.next().await {
                let mut bytes = sink.lock().expect("tap lock");
                bytes.extend_from_slice(message.subject.as_bytes());
                bytes.push(b' ');
                bytes.extend_from_slice(&message.payload);
                if let Some(headers) = &message.headers {
                    bytes.extend_from_slice(format!("{headers:?}").as_bytes());
                }
                bytes.push(b'\n');
            }
        });
        Ok(Self { client, captured })
    }

    /// What the tap has seen so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.captured.lock().expect("tap lock").clone()
    }

    /// Waits (at most `timeout`) until the tap has seen everything published before this call,
    /// by publishing a marker and waiting for it to come back, then returns what it saw.
    pub async fn settle(&self, timeout: std::time::Duration) -> anyhow::Result<Vec<u8>> {
        let marker = format!("tap.marker.{}", std::process::id());
        self.client.publish(marker.clone(), "end".into()).await?;
        self.client.flush().await?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let bytes = self.bytes();
            if String::from_utf8_lossy(&bytes).contains(&marker) {
                return Ok(bytes);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the tap did not see its marker within {timeout:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}
