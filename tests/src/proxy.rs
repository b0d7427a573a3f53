//! A userspace TCP proxy for network faults (the CI kernel has no netem): clients connect to
//! the proxy, the proxy connects to the real server, and a test can cut, slow or reset the path
//! at any moment. It runs on its own thread with its own runtime, so sync tests can drive it.
//!
//! - [`Proxy::blackhole`]: bytes stop flowing both ways and new connections hang, as in a
//!   partition; what was sent meanwhile is held (like TCP retransmits) and flows once healed.
//! - [`Proxy::delay`]: every chunk is held for a fixed latency before it is forwarded.
//! - [`Proxy::reset`]: every open connection is closed at once (RST), as by a middlebox.
//! - [`Proxy::heal`]: back to a clean pass-through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward everything at once.
    Pass,
    /// Forward nothing (held until healed); new connections are accepted but hang.
    Blackhole,
    /// Forward every chunk after this latency.
    Delay(Duration),
}

/// A running proxy in front of one upstream address; stopped on drop.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    resets: watch::Sender<u64>,
    connections: Arc<AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy on an ephemeral loopback port in front of `upstream` (`host:port`, or a
    /// `nats://host:port` URL).
    pub fn start(upstream: &str) -> anyhow::Result<Self> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("nats://")
            .trim_end_matches('/')
            .parse()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(ProxyMode::Pass);
        let (resets, resets_rx) = watch::channel(0u64);
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let connections = Arc::new(AtomicU64::new(0));
        let counted = connections.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("a tokio listener");
                tokio::select! {
                    _ = shutdown_rx => {}
                    _ = accept_loop(listener, upstream, mode_rx, resets_rx, counted) => {}
                }
            });
            runtime.shutdown_background();
        });
        Ok(Self {
            addr,
            mode,
            resets,
            connections,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The URL clients use instead of the server's.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Stops forwarding in both directions until [`Proxy::heal`].
    pub fn blackhole(&self) {
        let _ = self.mode.send(ProxyMode::Blackhole);
    }

    /// Holds every chunk for `latency` before forwarding it.
    pub fn delay(&self, latency: Duration) {
        let _ = self.mode.send(ProxyMode::Delay(latency));
    }

    /// Closes every open connection with a reset; new connections are accepted as usual.
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Forwards everything again, including what was held.
    pub fn heal(&self) {
        let _ = self.mode.send(ProxyMode::Pass);
    }

    /// A cut of `length`: blackhole, wait, heal (the connections survive, as after a short
    /// partition).
    pub fn cut_for(&self, length: Duration) {
        self.blackhole();
        std::thread::sleep(length);
        self.heal();
    }

    /// How many client connections the proxy has accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<ProxyMode>,
    resets: watch::Receiver<u64>,
    connections: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        connections.fetch_add(1, Ordering::Relaxed);
        let (mode, mut resets) = (mode.clone(), resets.clone());
        tokio::spawn(async move {
            let generation = *resets.borrow_and_update();
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up = pump(client_read, server_write, mode.clone());
            let down = pump(server_read, client_write, mode);
            tokio::select! {
                _ = async { tokio::join!(up, down) } => {}
                _ = resets.wait_for(|n| *n != generation) => {
                    // Dropping both halves closes the sockets; SO_LINGER 0 is not reachable on
                    // split halves, so the peer sees FIN or RST depending on unread data.
                }
            }
        });
    }
}

/// Copies `from` to `to`, obeying the mode for every chunk. Delay keeps the latency, not the
/// throughput: chunks are stamped on arrival and released by a writer task in order.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<ProxyMode>,
) {
    let (queue, mut released) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let mut writer_mode = mode.clone();
    let writer = async move {
        while let Some((due, chunk)) = released.recv().await {
            tokio::time::sleep_until(due).await;
            // Held while blackholed: released in order once healed.
            if writer_mode
                .wait_for(|m| *m != ProxyMode::Blackhole)
                .await
                .is_err()
            {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            // Not reading while blackholed: the sender's window fills, as in a partition.
            if mode.wait_for(|m| *m != ProxyMode::Blackhole).await.is_err() {
                return;
            }
            let read = tokio::select! {
                read = from.read(&mut buffer) => read,
                _ = mode.changed() => continue,
            };
            let n = match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let latency = match *mode.borrow() {
                ProxyMode::Delay(latency) => latency,
                _ => Duration::ZERO,
            };
            if queue
                .send((tokio::time::Instant::now() + latency, buffer[..n].to_vec()))
                .is_err()
            {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}
