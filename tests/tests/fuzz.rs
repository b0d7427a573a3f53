//! Property-based fuzzing of every decoder that takes outside input: wire messages, plans,
//! agent configurations, journals, backup manifests and signature headers. Each must answer
//! arbitrary or mutated input with an error, never a panic. Bounded (a few thousand cases per
//! decoder) so it runs in CI; raise `PROPTEST_CASES` for a longer run.

use flotilla_schemas::{Command, Presence, Progress, RunResult, decode};
use proptest::prelude::*;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        flotilla_tests::repo_root()
            .join("schemas/fixtures")
            .join(name),
    )
    .unwrap()
}

/// Valid input with a few bytes overwritten, deleted or inserted: close enough to the real
/// thing to reach deep into the decoder.
fn mutated(base: String) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    proptest::collection::vec((0..len, any::<u8>(), 0..3u8), 1..8).prop_map(move |edits| {
        let mut bytes = base.clone().into_bytes();
        for (at, byte, kind) in edits {
            let at = at.min(bytes.len().saturating_sub(1));
            match kind {
                0 if !bytes.is_empty() => bytes[at] = byte,
                1 if !bytes.is_empty() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
        }
        bytes
    })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn wire_decoders_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Command>(&bytes);
        let _ = decode::<Progress>(&bytes);
        let _ = decode::<RunResult>(&bytes);
        let _ = decode::<Presence>(&bytes);
    }

    #[test]
    fn the_command_decoder_never_panics_on_mutated_commands(bytes in mutated(fixture("flotilla.command.v2.migrate.json"))) {
        let _ = decode::<Command>(&bytes);
    }

    #[test]
    fn the_result_decoder_never_panics_on_mutated_results(bytes in mutated(fixture("flotilla.result.v1.json"))) {
        let _ = decode::<RunResult>(&bytes);
    }

    #[test]
    fn the_plan_parser_never_panics(bytes in mutated(std::fs::read_to_string(flotilla_tests::repo_root().join("deploy/demo/plan.toml")).unwrap())) {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = flotilla_coordinator::plan::Plan::parse(text);
        }
    }

    #[test]
    fn signature_headers_never_panic(header in ".{0,200}", payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let key = flotilla_bus::signing::SigningKey::generate().unwrap();
        let trusted = [flotilla_bus::signing::TrustedKey::parse(&key.public_key_text()).unwrap()];
        prop_assert!(flotilla_bus::signing::verify(&trusted, &payload, Some(&header)).is_err());
    }
}

proptest! {
    // File-backed decoders: fewer cases, each touches the disk.
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_agent_config_loader_never_panics(bytes in mutated(std::fs::read_to_string(flotilla_tests::repo_root().join("deploy/config/agent.toml")).unwrap())) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, &bytes).unwrap();
        let _ = flotilla_agent::AgentConfig::load(&path);
    }

    #[test]
    fn the_journal_never_panics_on_a_damaged_file(lines in proptest::collection::vec(".{0,120}", 0..6)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("journal.jsonl"), lines.join("\n")).unwrap();
        let _ = flotilla_agent::journal::Journal::open(dir.path());
    }

    #[test]
    fn a_damaged_backup_manifest_is_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let dir = tempfile::tempdir().unwrap();
        let id = flotilla_schemas::CommandId::new();
        let backup = dir.path().join("backups").join(id.to_string());
        std::fs::create_dir_all(&backup).unwrap();
        std::fs::write(backup.join("manifest.json"), &bytes).unwrap();
        let loaded = flotilla_agent::backup::BackupStore::new(dir.path()).load(id);
        if serde_json::from_slice::<flotilla_agent::tree::Manifest>(&bytes).is_err() {
            prop_assert!(loaded.is_err());
        }
    }
}
