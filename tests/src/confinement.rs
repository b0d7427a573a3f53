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

/// As the coordinator: creates the streams and stores one command each for training and ingest.
/// As training's agent: reads the last command on its own subject (the catch-up direct get) and
/// receives the next one live through its subscription; is refused ingest's last command, the
/// batch direct get, any consumer on the commands stream, subscribing to ingest's or every
/// command subject, publishing a command and forging ingest's result or progress; its own
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
            .publish(format!("flotilla.command.{target}"), "command".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let (agent, errors) = connect(url, agent, &agent_user("training")).await.unwrap();
    let js = jetstream::new(agent.clone());
    let stream = js.get_stream(subjects.commands_stream()).await.unwrap();
    // Its own last command, by direct get on its own subject: allowed.
    let own = stream
        .direct_get_last_for_subject("flotilla.command.training.a")
        .await
        .unwrap();
    assert_eq!(&own.payload[..], b"command");
    // Its own delivery subject, live, in the agents' queue group: allowed, and it gets the next
    // command, as the stream republishes it once stored.
    let mut live = agent
        .queue_subscribe(
            "flotilla.delivery.training.a",
            flotilla_schemas::subjects::COMMAND_QUEUE.to_owned(),
        )
        .await
        .unwrap();
    agent.flush().await.unwrap();
    admin
        .publish("flotilla.command.training.a", "next command".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .expect("the agent's own command arrives live")
        .unwrap();
    assert_eq!(&next.payload[..], b"next command");

    // Another agent's last command, the batch form of direct get, any consumer: refused (the
    // requests go unanswered; the server reports the violations).
    assert!(
        stream
            .direct_get_last_for_subject("flotilla.command.ingest.a")
            .await
            .is_err(),
        "an agent read another agent's command"
    );
    assert!(
        stream.direct_get(1).await.is_err(),
        "an agent read a command by sequence"
    );
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("agent_ingest_a".into()),
            filter_subject: "flotilla.command.ingest.a".into(),
            ..Default::default()
        })
        .await;
    assert!(consumer.is_err(), "an agent created a consumer of commands");

    // The coordinator hears live progress (core NATS, never stored).
    let mut progress = admin.client().subscribe("flotilla.live.>").await.unwrap();
    admin.client().flush().await.unwrap();

    // Reading others' commands (as published, or as delivered), its own as published (before
    // the stream took it), publishing a command, forging another agent's result or progress:
    // refused.
    let _every = agent.subscribe("flotilla.command.>").await.unwrap();
    let _theirs = agent.subscribe("flotilla.delivery.ingest.a").await.unwrap();
    let _unstored = agent
        .subscribe("flotilla.command.training.a")
        .await
        .unwrap();
    agent
        .publish("flotilla.command.ingest.a", "forged command".into())
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
    let expected = [
        "$JS.API.DIRECT.GET.FLOTILLA_COMMANDS_V2.flotilla.command.ingest.a",
        "$JS.API.DIRECT.GET.FLOTILLA_COMMANDS_V2\"",
        "$JS.API.CONSUMER.CREATE.FLOTILLA_COMMANDS_V2",
        "\"flotilla.command.>\"",
        "\"flotilla.delivery.ingest.a\"",
        "\"flotilla.command.training.a\"",
        "\"flotilla.command.ingest.a\"",
        "flotilla.evt.run.ingest.a",
        "flotilla.live.run.ingest.a",
    ];
    let seen = violations_after_flush(&agent, &errors, expected.len() + 1).await;
    let violations: Vec<&String> = seen
        .iter()
        .filter(|e| e.to_lowercase().contains("permissions violation"))
        .collect();
    for subject in expected {
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
    let heard = tokio::time::timeout(Duration::from_secs(5), progress.next())
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
    // The last command of each agent (training's newer one replaced its first); nothing forged.
    let info = commands.info().await.unwrap();
    assert_eq!(info.state.messages, 2, "{info:?}");
    let left = commands.get_last_raw_message_by_subject("flotilla.command.ingest.a");
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
