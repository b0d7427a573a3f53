//! The run record is part of the contract (another machine's `flotilla status` reads it from the
//! runs bucket), so its JSON Schema is committed next to the messages' in `schemas/json/`; this
//! test fails when it drifts from the Rust types. Regenerate with
//! `FLOTILLA_BLESS=1 cargo test -p flotilla-coordinator --lib run_schema`.

use crate::store::{RUN_SCHEMA, RunRecord};

#[test]
fn run_record_schema_matches_the_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/json")
        .join(format!("{RUN_SCHEMA}.schema.json"));
    let text = serde_json::to_string_pretty(&schemars::schema_for!(RunRecord)).unwrap() + "\n";
    if std::env::var_os("FLOTILLA_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} drifted from RunRecord; regenerate with FLOTILLA_BLESS=1",
        path.display()
    );
}
