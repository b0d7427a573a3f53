//! The shipped password configuration (`deploy/nats/nats-server.conf`) with test passwords: the
//! server, and the identities the agents and the coordinator connect with.

use crate::{NatsServer, repo_root};

/// Test passwords for the variables the shipped configuration references.
pub const PASSWORDS: [(&str, &str); 7] = [
    ("FLOTILLA_COORDINATOR_PASSWORD", "coordinator-secret"),
    ("FLOTILLA_SYS_PASSWORD", "sys-secret"),
    ("FLOTILLA_AGENT_INFERENCE_A_PASSWORD", "inference-secret"),
    ("FLOTILLA_AGENT_TRAINING_A_PASSWORD", "training-secret"),
    ("FLOTILLA_AGENT_INGEST_A_PASSWORD", "ingest-secret"),
    ("FLOTILLA_AGENT_EXECUTION_A_PASSWORD", "execution-secret"),
    ("FLOTILLA_AGENT_PREPROCESS_A_PASSWORD", "preprocess-secret"),
];

/// A nats-server on the shipped configuration, with an empty JetStream store.
pub fn start_server() -> NatsServer {
    NatsServer::start_with_config(
        &repo_root().join("deploy/nats/nats-server.conf"),
        &PASSWORDS,
    )
    .expect("nats-server starts on the shipped configuration")
}

/// The environment of `role`'s agent: its own user, password and private inbox.
pub fn agent_identity(role: &str) -> Vec<(String, String)> {
    let user = format!("agent-{role}-a");
    vec![
        ("FLOTILLA_NATS__AUTH__USER".to_owned(), user.clone()),
        (
            "FLOTILLA_NATS__AUTH__PASSWORD".to_owned(),
            format!("{role}-secret"),
        ),
        (
            "FLOTILLA_NATS__AUTH__INBOX_PREFIX".to_owned(),
            format!("_INBOX_{user}"),
        ),
    ]
}

/// The environment of every `flotilla`: the coordinator's identity.
pub fn coordinator_env() -> Vec<(String, String)> {
    vec![
        (
            "FLOTILLA_NATS__AUTH__USER".to_owned(),
            "coordinator".to_owned(),
        ),
        (
            "FLOTILLA_NATS__AUTH__PASSWORD".to_owned(),
            "coordinator-secret".to_owned(),
        ),
    ]
}
