//! nats-server's monitoring endpoint (`http_port`), read without an HTTP client crate.

use std::time::Duration;

/// GET `path` on a monitoring port as JSON, allowing 2 s for the answer (a node that stopped
/// answering is found out quickly).
pub fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    get_json_within(port, path, Duration::from_secs(2))
}

/// GET `path` on a monitoring port as JSON, allowing `timeout` for the answer. HTTP/1.0, so
/// that a long answer is not chunked.
pub fn get_json_within(port: u16, path: &str, timeout: Duration) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_secs(1),
    )
    .ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| serde_json::from_str(body).ok())
        .flatten()
}
