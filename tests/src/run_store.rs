//! The run store's target records read straight from the bucket, as the invariants and the
//! soak check them: the chain of chunks (`<run>.c.<first>`, each `{first, targets}`), or, for
//! a record older than chunks, one key per target (`<run>.t.<index>`).

use async_nats::jetstream::kv;
use serde_json::Value;

/// Every target record of `run` written so far, in order.
pub async fn target_records(kv: &kv::Store, run: &str) -> anyhow::Result<Vec<Value>> {
    let mut targets = Vec::new();
    while let Some(bytes) = kv.get(format!("{run}.c.{}", targets.len())).await? {
        let chunk: Value = serde_json::from_slice(&bytes)?;
        let more = chunk["targets"].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(
            !more.is_empty(),
            "chunk {} of {run} is empty",
            targets.len()
        );
        targets.extend(more);
    }
    if !targets.is_empty() {
        return Ok(targets);
    }
    for index in 0.. {
        match kv.get(format!("{run}.t.{index}")).await? {
            Some(bytes) => targets.push(serde_json::from_slice(&bytes)?),
            None => break,
        }
    }
    Ok(targets)
}
