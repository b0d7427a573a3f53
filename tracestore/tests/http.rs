//! `jaeger::fetch` and `tempo::fetch` against a fake backend on a loopback port: the path and
//! `Accept` header they send, and how they read the answer (fixtures), 404 and errors.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use flotilla_tracestore::{jaeger, tempo};
use prost::Message as _;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect("fixture")
}

/// Answers one request with `status`, `content_type` and `body`; sends back the request line and
/// its `Accept` header.
fn backend(
    status: u16,
    content_type: &str,
    body: Vec<u8>,
) -> (String, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    let content_type = content_type.to_owned();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut writer = stream.try_clone().expect("clone");
        let mut reader = BufReader::new(stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).expect("request line");
        let mut accept = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("accept")
            {
                accept = value.trim().to_owned();
            }
        }
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        writer.write_all(head.as_bytes()).expect("head");
        writer.write_all(&body).expect("body");
        let _ = tx.send((request_line.trim_end().to_owned(), accept));
    });
    (url, rx)
}

fn request(rx: &mpsc::Receiver<(String, String)>) -> (String, String) {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("request seen")
}

/// Jaeger: `GET /api/v3/traces/<32 hex>`, the fixture body parsed.
#[tokio::test]
async fn jaeger_fetch_gets_api_v3_trace() {
    let (url, rx) = backend(
        200,
        "application/json",
        fixture("jaeger-apiv3-get-trace.json"),
    );
    let trace = jaeger::fetch(&url, "1").await.expect("fetch");
    let (line, _) = request(&rx);
    assert_eq!(
        line,
        "GET /api/v3/traces/00000000000000000000000000000001 HTTP/1.1"
    );
    assert_eq!(trace.spans[0].name, "foobar");
}

/// Jaeger's 404 "No traces found" is an empty trace (not exported yet), not an error.
#[tokio::test]
async fn jaeger_404_is_an_empty_trace() {
    let body = br#"{"error":{"httpCode":404,"message":"No traces found"}}"#.to_vec();
    let (url, _rx) = backend(404, "text/plain; charset=utf-8", body);
    let trace = jaeger::fetch(&url, "0af7651916cd43dd8448eb211c80319c")
        .await
        .expect("fetch");
    assert!(trace.is_empty());
}

/// Jaeger's other errors are reported with their status and message.
#[tokio::test]
async fn jaeger_500_is_an_error() {
    let (url, _rx) = backend(500, "text/plain", b"boom".to_vec());
    let err = jaeger::fetch(&url, "ab").await.unwrap_err();
    assert!(
        err.to_string().contains("500") && err.to_string().contains("boom"),
        "{err}"
    );
}

/// Tempo: `GET /api/v2/traces/<32 hex>` with `Accept: application/protobuf`, protobuf decoded.
#[tokio::test]
async fn tempo_fetch_asks_for_protobuf() {
    let data = tempo::json_to_traces_data(&fixture("tempo-trace-jsonpb.json")).expect("json");
    let body = tempo::TraceByIdResponse {
        trace: Some(data),
        status: 0,
        message: String::new(),
    }
    .encode_to_vec();
    let (url, rx) = backend(200, "application/protobuf", body);
    let trace = tempo::fetch(&url, "3149195FFB0BEC05347B48EFE8ECC1B0")
        .await
        .expect("fetch");
    let (line, accept) = request(&rx);
    assert_eq!(
        line,
        "GET /api/v2/traces/3149195ffb0bec05347b48efe8ecc1b0 HTTP/1.1"
    );
    assert_eq!(accept, "application/protobuf");
    assert_eq!(trace.spans.len(), 6);
}

/// A Tempo that answers JSON anyway (its documented v2 body) is read too.
#[tokio::test]
async fn tempo_json_answer_is_read() {
    let (url, _rx) = backend(200, "application/json", fixture("tempo-api-v2-trace.json"));
    let trace = tempo::fetch(&url, "5b8efff798038103d269b633813fc700")
        .await
        .expect("fetch");
    assert_eq!(trace.spans[0].name, "I am a span!");
}
