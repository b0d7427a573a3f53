//! The committed JSON Schemas and golden fixtures are the contract other implementations read:
//! these tests fail when they drift from the Rust types.
//!
//! After an intended change, regenerate with `FLOTILLA_BLESS=1 cargo test -p flotilla-schemas`,
//! and the run record's schema, which embeds commands and results, with
//! `FLOTILLA_BLESS=1 cargo test -p flotilla-coordinator --lib run_schema`.

use std::path::{Path, PathBuf};

use flotilla_schemas::{
    Command, DecodeError, Presence, Progress, Registration, RunResult, SchemaTag, WireMessage,
    decode, encode,
};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn blessing() -> bool {
    std::env::var_os("FLOTILLA_BLESS").is_some()
}

fn check_schema<T: WireMessage>() {
    let generated = schemars::schema_for!(T);
    let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
    let path = crate_dir()
        .join("json")
        .join(format!("{}.schema.json", T::SCHEMA));
    if blessing() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with FLOTILLA_BLESS=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        committed,
        text,
        "{} drifted from the Rust type; regenerate with FLOTILLA_BLESS=1",
        path.display()
    );
}

fn golden_paths<T: SchemaTag>() -> Vec<PathBuf> {
    let dir = crate_dir().join("fixtures");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| file_name(p).starts_with(T::SCHEMA))
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "no golden fixture for {} in {}",
        T::SCHEMA,
        dir.display()
    );
    paths
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn check_golden<T: WireMessage + std::fmt::Debug>() {
    for path in golden_paths::<T>() {
        let bytes = std::fs::read(&path).unwrap();
        let message: T = decode(&bytes).unwrap_or_else(|e| panic!("{}: {e:#?}", path.display()));
        let original: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let round_trip: serde_json::Value = serde_json::from_slice(&encode(&message)).unwrap();
        assert_eq!(
            original,
            round_trip,
            "{} does not round-trip",
            path.display()
        );
    }
}

#[test]
fn json_schemas_match_the_types() {
    check_schema::<Command>();
    check_schema::<Progress>();
    check_schema::<RunResult>();
    check_schema::<Presence>();
    check_schema::<Registration>();
}

#[test]
fn golden_fixtures_round_trip() {
    check_golden::<Command>();
    check_golden::<Progress>();
    check_golden::<RunResult>();
    check_golden::<Presence>();
    check_golden::<Registration>();
}

#[test]
fn unknown_fields_are_tolerated() {
    let path = &golden_paths::<Presence>()[0];
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    value["added_in_a_later_minor"] = serde_json::json!({"x": 1});
    decode::<Presence>(&serde_json::to_vec(&value).unwrap()).unwrap();
}

#[test]
fn other_versions_are_refused_by_name() {
    let path = &golden_paths::<Command>()[0];
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    // Both ways: an older coordinator's v1 (delivered through the work queue) and a later v3.
    for other in ["flotilla.command.v1", "flotilla.command.v3"] {
        value["schema"] = other.into();
        let err = decode::<Command>(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(
            matches!(err, DecodeError::UnsupportedSchema { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("unsupported schema \"{other}\": this build speaks \"flotilla.command.v2\"")
        );
    }
}

#[test]
fn malformed_and_oversized_input_is_refused() {
    assert!(matches!(
        decode::<Command>(b"not json"),
        Err(DecodeError::NoSchema(_))
    ));
    assert!(matches!(
        decode::<Command>(br#"{"schema":"flotilla.command.v2","command_id":"nope"}"#),
        Err(DecodeError::Malformed { .. })
    ));
    let huge = vec![b' '; flotilla_schemas::MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        decode::<Command>(&huge),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn path_like_identifiers_are_refused_in_messages() {
    let path = &golden_paths::<Command>()[0];
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    value["service"] = "../etc".into();
    let err = decode::<Command>(&serde_json::to_vec(&value).unwrap()).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
}

/// A memory source from a newer agent reads as `other`: the result is still understood.
#[test]
fn an_unknown_memory_source_is_read_as_other() {
    let path = golden_paths::<RunResult>()
        .into_iter()
        .find(|p| file_name(p).contains("memory-gate"))
        .expect("the memory-gate fixture");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    value["measurements"]["memory_source"] = "uss".into();
    let result = decode::<RunResult>(&serde_json::to_vec(&value).unwrap()).unwrap();
    assert_eq!(
        result.measurements.memory_source,
        Some(flotilla_schemas::MemorySource::Other)
    );
}
