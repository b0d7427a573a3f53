//! What every variant of the shipped nats-server configuration must do (passwords, mutual TLS,
//! nkeys, operator/JWT creds): confine an agent to its own subjects, and carry the demo
//! migration. One check each, whatever proves the identity.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::ConnectOptions;
use async_nats::jetstream::{self, consumer};
use flotilla_schemas::subjects::Subjects;
use futures::StreamExt;

/// The NATS user name of `role`'s agent (instance `a`) in the shipped configurations.
pub fn agent_user(role: &str) -> String {
    format!("agent-{role}-a")
}

/// Connects with `options` and the private inbox `_INBOX_<inbox>`; returns the client and the
/// server errors it sees (permission violations arrive asynchronously).
pub async fn connect(
    url: &str,
    options: ConnectOptions,
    inbox: &str,
) -> Result<(async_nats::Client, Arc<Mutex<Vec<String>>>), async_nats::ConnectError> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = options
        .custom_inbox_prefix(format!("_INBOX_{inbox}"))
        .request_timeout(Some(Duration::from_secs(2)))
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(url)
        .await?;
    Ok((client, errors))
}

/// Flushes until `expected` server errors arrived (or 5 s passed); returns them.
pub async fn violations_after_flush(
    client: &async_nats::Client,
    errors: &Mutex<Vec<String>>,
    expected: usize,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let _ = client.flush().await;
        let seen = errors.lock().unwrap().clone();
        if seen.len() >= expected || tokio::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// As the coordinator: creates the streams and queues one command each for training and ingest.
/// As training's agent: pulls and acks its own command; is refused ingest's consumer, reading
/// `flotilla.cmd.>`, publishing a command and forging ingest's result or progress; its own
/// result is stored, its own live progress reaches the coordinator unstored, and the streams
/// hold nothing forged.
pub async fn assert_agent_confined(url: &str, coordinator: ConnectOptions, agent: ConnectOptions) {
    let subjects = Subjects::default();
    let (coordinator, _) = connect(url, coordinator, "coordinator").await.unwrap();
    let admin = jetstream::new(coordinator);
    let mut commands = flotilla_bus::commands_stream(&admin, &subjects)
        .await
        .unwrap();
    let mut events = flotilla_bus::events_stream(&admin, &subjects)
        .await
        .unwrap();
    for target in ["training.a", "ingest.a"] {
        admin
            .publish(format!("flotilla.cmd.{target}"), "command".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let (agent, errors) = connect(url, agent, &agent_user("training")).await.unwrap();
    let js = jetstream::new(agent.clone());
    let stream = js.get_stream(subjects.commands_stream()).await.unwrap();
    // Its own durable consumer, on its own filter: allowed, and it gets its own command.
    let own = stream
        .get_or_create_consumer(
            "agent_training_a",
            consumer::pull::Config {
                durable_name: Some("agent_training_a".into()),
                filter_subject: "flotilla.cmd.training.a".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut batch = own
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let message = batch.next().await.unwrap().unwrap();
    assert_eq!(message.subject.as_str(), "flotilla.cmd.training.a");
    assert_eq!(&message.payload[..], b"command");
    message.double_ack().await.unwrap();

    // Another agent's consumer: refused.
    let theirs = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("agent_ingest_a".into()),
            filter_subject: "flotilla.cmd.ingest.a".into(),
            ..Default::default()
        })
        .await;
    assert!(theirs.is_err(), "an agent created another agent's consumer");

    // The coordinator hears live progress (core NATS, never stored).
    let mut live = admin.client().subscribe("flotilla.live.>").await.unwrap();
    admin.client().flush().await.unwrap();

    // Reading commands directly, publishing a command, forging another agent's result or
    // progress: refused.
    let _sub = agent.subscribe("flotilla.cmd.>").await.unwrap();
    agent
        .publish("flotilla.cmd.ingest.a", "forged command".into())
        .await
        .unwrap();
    agent
        .publish("flotilla.evt.run.ingest.a", "forged result".into())
        .await
        .unwrap();
    agent
        .publish("flotilla.live.run.ingest.a", "forged progress".into())
        .await
        .unwrap();
    let seen = violations_after_flush(&agent, &errors, 4).await;
    let violations: Vec<&String> = seen
        .iter()
        .filter(|e| e.to_lowercase().contains("permissions violation"))
        .collect();
    assert!(
        violations.len() >= 4,
        "expected four permission violations, saw {seen:?}"
    );
    for subject in [
        "flotilla.cmd.>",
        "flotilla.cmd.ingest.a",
        "flotilla.evt.run.ingest.a",
        "flotilla.live.run.ingest.a",
    ] {
        assert!(
            violations.iter().any(|v| v.contains(subject)),
            "no violation names {subject}: {violations:?}"
        );
    }

    // Refusals, not disconnections.
    assert_eq!(
        agent.connection_state(),
        async_nats::connection::State::Connected
    );

    // Its own progress: allowed, heard live, not stored.
    agent
        .publish("flotilla.live.run.training.a", "progress".into())
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .expect("the agent's own progress is heard")
        .unwrap();
    assert_eq!(heard.subject.as_str(), "flotilla.live.run.training.a");
    assert_eq!(
        &heard.payload[..],
        b"progress",
        "the forged progress came first"
    );

    // Its own event: allowed, stored.
    js.publish("flotilla.evt.run.training.a", "result".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        events.info().await.unwrap().state.messages,
        1,
        "only the agent's own result is stored (its progress is not)"
    );
    // Its own command was consumed (work queue); ingest's is untouched; nothing forged arrived.
    let info = commands.info().await.unwrap();
    assert_eq!(
        info.state.messages, 1,
        "the forged command reached the stream"
    );
    let left = commands.get_last_raw_message_by_subject("flotilla.cmd.ingest.a");
    assert_eq!(&left.await.unwrap().payload[..], b"command");
}

/// `flotilla migrate` of the demo plan over all five services succeeds through the variant:
/// exit 0, five services reported, each root migrated.
pub fn assert_demo_migrates(fleet: &crate::Fleet) {
    let plan = crate::repo_root().join("deploy/demo/plan.toml");
    let out = tokio::task::block_in_place(|| {
        fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"])
    });
    let report = crate::json_stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let services = report["services"].as_array().unwrap();
    assert_eq!(services.len(), 5, "{report:#}");
    for role in crate::ROLES {
        let migrated = fleet.root(role).join("config/service.toml");
        assert!(
            migrated.exists(),
            "{role} was not migrated: {}",
            migrated.display()
        );
    }
}

/// As the coordinator: creates the agent registry. As training's agent: writes its own entry
/// (stored, acknowledged) and is refused ingest's (a permissions violation, nothing stored).
pub async fn assert_registry_confined(
    url: &str,
    coordinator: ConnectOptions,
    agent: ConnectOptions,
) {
    let subjects = Subjects::default();
    let (coordinator, _) = connect(url, coordinator, "coordinator").await.unwrap();
    let admin = jetstream::new(coordinator);
    let registry = admin
        .create_key_value(flotilla_bus::registry::bucket_config(&subjects))
        .await
        .unwrap();
    let (agent, errors) = connect(url, agent, &agent_user("training")).await.unwrap();
    let js = jetstream::new(agent.clone());
    js.publish("$KV.flotilla_agents.training.a", "own entry".into())
        .await
        .unwrap()
        .await
        .unwrap();
    agent
        .publish("$KV.flotilla_agents.ingest.a", "forged entry".into())
        .await
        .unwrap();
    let seen = violations_after_flush(&agent, &errors, 1).await;
    assert!(
        seen.iter()
            .any(|e| e.to_lowercase().contains("permissions violation")),
        "writing another agent's entry was not refused: {seen:?}"
    );
    let own = registry.get("training.a").await.unwrap();
    assert_eq!(own.as_deref(), Some(&b"own entry"[..]));
    assert_eq!(registry.get("ingest.a").await.unwrap(), None);
}
