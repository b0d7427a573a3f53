//! Signed commands against a real agent: unsigned, forged, altered, expired, misaddressed and
//! replayed commands change nothing and are answered with the reason.

use std::time::Duration;

use flotilla_bus::signing::{SIGNATURE_HEADER, SigningKey};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{
    Action, Command, CommandId, InstanceId, Outcome, RunId, RunResult, ServiceName, Step, decode,
    encode,
};
use flotilla_tests::{Fleet, NatsServer, snapshot};
use futures::StreamExt;

struct Bus {
    js: async_nats::jetstream::Context,
    subjects: Subjects,
}

impl Bus {
    /// Publishes `command` (with `payload` when given, e.g. altered after signing) and returns
    /// the agent's result for it.
    async fn send(
        &self,
        command: &Command,
        signer: Option<&SigningKey>,
        altered: Option<Vec<u8>>,
    ) -> RunResult {
        let (service, instance) = (
            ServiceName::parse("training").unwrap(),
            InstanceId::parse("a").unwrap(),
        );
        let events = self
            .js
            .get_stream(self.subjects.events_stream())
            .await
            .unwrap();
        let consumer = events
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: self.subjects.event(&command.run_id, &service, &instance),
                // Only what answers this send: an earlier result of the same run is not it.
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let payload = encode(command);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", CommandId::new().to_string().as_str());
        if let Some(key) = signer {
            headers.insert(SIGNATURE_HEADER, key.sign(&payload).as_str());
        }
        let body = altered.unwrap_or(payload);
        let subject = self.subjects.command(&service, &instance);
        self.js
            .publish_with_headers(subject, headers, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let message = tokio::time::timeout_at(deadline, messages.next())
                .await
                .expect("a result")
                .unwrap()
                .unwrap();
            if let Ok(result) = decode::<RunResult>(&message.payload) {
                return result;
            }
        }
    }
}

fn command(service: &str, expires_in: time::Duration) -> Command {
    let now = time::OffsetDateTime::now_utc();
    Command {
        schema: Default::default(),
        command_id: CommandId::new(),
        run_id: RunId::new(),
        service: ServiceName::parse(service).unwrap(),
        instance: InstanceId::parse("a").unwrap(),
        issued_at: now,
        expires_at: now + expires_in,
        action: Action::Migrate {
            steps: vec![Step::RunCommand {
                program: "sh".into(),
                args: vec!["-c".into(), "echo applied >> counter.txt".into()],
                timeout_ms: 5000,
                env: Default::default(),
            }],
            health: Vec::new(),
            gates: Default::default(),
            preconditions: Vec::new(),
            checks: Vec::new(),
            workloads: Vec::new(),
        },
    }
}

fn refused_because(result: &RunResult, expected: &str) {
    assert_eq!(result.outcome, Outcome::Refused, "{result:?}");
    let reason = result.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains(expected),
        "{reason:?} should contain {expected:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_fresh_addressed_commands_signed_by_a_trusted_key_are_applied() {
    let nats = NatsServer::start().unwrap();
    let coordinator = SigningKey::generate().unwrap();
    let stranger = SigningKey::generate().unwrap();
    let trusted = coordinator.public_key_text();
    let mut fleet = tokio::task::block_in_place(|| {
        Fleet::start_with_env(
            nats.url(),
            &["training"],
            &[("FLOTILLA_SECURITY__TRUSTED_KEYS", trusted.as_str())],
        )
        .unwrap()
    });
    let client = async_nats::connect(fleet.nats_url()).await.unwrap();
    let bus = Bus {
        js: async_nats::jetstream::new(client),
        subjects: Subjects::default(),
    };
    let before = snapshot(&fleet.root("training"));
    let fresh = time::Duration::minutes(5);

    refused_because(
        &bus.send(&command("training", fresh), None, None).await,
        "not signed",
    );
    refused_because(
        &bus.send(&command("training", fresh), Some(&stranger), None)
            .await,
        "does not trust",
    );
    let original = command("training", fresh);
    let mut altered = original.clone();
    if let Action::Migrate { steps, .. } = &mut altered.action {
        steps[0] = Step::RunCommand {
            program: "sh".into(),
            args: vec!["-c".into(), "echo owned > owned.txt".into()],
            timeout_ms: 5000,
            env: Default::default(),
        };
    }
    // Signed as `original`, sent as `altered`.
    refused_because(
        &bus.send(&original, Some(&coordinator), Some(encode(&altered)))
            .await,
        "forged or altered",
    );
    refused_because(
        &bus.send(
            &command("training", time::Duration::minutes(-5)),
            Some(&coordinator),
            None,
        )
        .await,
        "expired",
    );
    let mut misaddressed = command("ingest", fresh);
    misaddressed.run_id = RunId::new();
    // Published on training's subject but naming ingest inside the signed bytes.
    refused_because(
        &bus.send(&misaddressed, Some(&coordinator), None).await,
        "addressed to ingest/a",
    );
    assert_eq!(
        snapshot(&fleet.root("training")),
        before,
        "a refused command changed the service"
    );

    let good = command("training", fresh);
    let first = bus.send(&good, Some(&coordinator), None).await;
    assert_eq!(first.outcome, Outcome::Succeeded, "{first:?}");

    // The same signed command, replayed after the agent restarted: answered from the journal,
    // not applied again.
    tokio::task::block_in_place(|| {
        fleet.stop_agent("training");
        fleet.start_agent("training").unwrap();
        fleet.wait_ready(Duration::from_secs(30)).unwrap();
    });
    let replay = bus.send(&good, Some(&coordinator), None).await;
    assert!(replay.replayed, "{replay:?}");
    assert_eq!(
        std::fs::read_to_string(fleet.root("training").join("counter.txt")).unwrap(),
        "applied\n"
    );
    assert!(!fleet.root("training").join("owned.txt").exists());
    tokio::task::block_in_place(|| drop(fleet));
}

#[test]
fn a_symlink_planted_in_the_root_leads_no_step_outside_it() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let canary = fleet.dir().join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("victim"), "untouched").unwrap();
    std::os::unix::fs::symlink(&canary, fleet.root("inference").join("escape")).unwrap();
    let before = snapshot(&fleet.root("inference"));
    let canary_before = snapshot(&canary);
    let attempts = [
        "action = \"write_file\"\npath = \"escape/owned\"\ncontent = \"owned\"",
        "action = \"replace_text\"\npath = \"escape/victim\"\nfind = \"untouched\"\nreplace = \"owned\"",
        "action = \"delete\"\npath = \"escape/victim\"",
    ];
    for step in attempts {
        let plan = fleet.write_plan(
            "escape.toml",
            &format!(
                "name = \"escape\"\n[[service]]\nname = \"inference\"\n[[service.step]]\n{step}\n"
            ),
        );
        let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
        let report = flotilla_tests::json_stdout(&out);
        // Refused at precheck (before a backup and a restart), no longer rolled back.
        assert_eq!(
            report["services"][0]["status"], "refused",
            "{step}: {report:#}"
        );
        assert_eq!(
            snapshot(&canary),
            canary_before,
            "{step} reached outside the root"
        );
        assert_eq!(snapshot(&fleet.root("inference")), before, "{step}");
    }
}
