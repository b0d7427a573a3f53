//! The service's own routes: health, info and the work endpoints.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

/// The service's real work, for workload measurements: inference's `/predict`, ingest's
/// `/ingest` (any role answers both). A little CPU per request, plus `request_delay_ms`.
pub(super) async fn work(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut score = 0u64;
    for i in 0..20_000u64 {
        score = score.rotate_left(7) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    if !state.request_delay.is_zero() {
        tokio::time::sleep(state.request_delay).await;
    }
    Json(
        json!({ "service": state.role.as_str(), "layout": state.layout.as_str(), "score": score % 1000 }),
    )
}

pub(super) async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let (status, word) = if state.fail_health {
        (StatusCode::SERVICE_UNAVAILABLE, "failing")
    } else {
        (StatusCode::OK, "ok")
    };
    let body = json!({
        "status": word,
        "service": state.role.as_str(),
        "layout": state.layout.as_str(),
        "pid": std::process::id(),
    });
    (status, Json(body))
}

pub(super) async fn info(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "service": state.role.as_str(),
        "layout": state.layout.as_str(),
        "config_keys": state.config_keys,
        "started_at": state.started_at,
    }))
}
