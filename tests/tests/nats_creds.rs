//! Operator/JWT mode: the `.creds` files of `[nats.auth] credentials_file` (agents) and
//! `--nats-creds` / `FLOTILLA_NATS__AUTH__CREDENTIALS_FILE` (coordinator), run for real. An operator, a system
//! account, a JetStream-enabled application account and user JWTs are minted at test time (nkeys
//! signatures, claims from the `nats-jwt-rs` port of nats-io/jwt v2); each user carries the
//! permissions `deploy/nats/nats-server.conf` gives the same identity, read from that file. The
//! server resolves accounts from memory (`resolver: MEMORY`, `resolver_preload`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{ConnectErrorKind, ConnectOptions};
use flotilla_schemas::subjects::Subjects;
use flotilla_tests::confinement::{agent_user, assert_agent_confined, connect};
use flotilla_tests::{NatsServer, repo_root, standard_config_step};
use nats_jwt_rs::account::{Account, JetStreamLimits};
use nats_jwt_rs::operator::Operator;
use nats_jwt_rs::types::{NO_LIMIT, ResponsePermission};
use nats_jwt_rs::user::User;
use nkeys::KeyPair;

/// The one service of the end-to-end test, and the agent identity the other tests use.
const ROLE: &str = "training";

// ---------------------------------------------------------------------------------------------
// The permissions of the shipped configuration, per identity.

/// What `deploy/nats/nats-server.conf` lets one user do.
#[derive(Debug)]
struct Permissions {
    publish: Vec<String>,
    subscribe: Vec<String>,
    /// `allow_responses: { max, expires }`.
    responses: Option<(i64, Duration)>,
}

/// The permission block of `user` in the shipped password configuration: the text from its
/// `user: "<user>"` to the next user, without comments.
fn shipped_permissions(user: &str) -> Permissions {
    let text = std::fs::read_to_string(repo_root().join("deploy/nats/nats-server.conf")).unwrap();
    let start = text
        .find(&format!("user: \"{user}\""))
        .unwrap_or_else(|| panic!("nats-server.conf declares no user {user}"));
    let rest = &text[start + 1..];
    let block: String = rest[..rest.find("user: ").unwrap_or(rest.len())]
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let list = |key: &str| -> Vec<String> {
        let at = block
            .find(key)
            .unwrap_or_else(|| panic!("{user}: no {key}"));
        let items = &block[at + key.len()..];
        items[..items.find(']').expect("a closed list")]
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let responses = block.find("allow_responses: {").map(|at| {
        let spec = &block[at..];
        let spec = &spec[..spec.find('}').expect("a closed block")];
        let value = |key: &str| {
            let v = &spec[spec.find(key).unwrap_or_else(|| panic!("no {key}")) + key.len()..];
            v[..v.find([',', ' ', '}']).unwrap_or(v.len())]
                .trim_matches('"')
                .to_owned()
        };
        (
            value("max: ").parse().expect("a number"),
            go_duration(&value("expires: ")),
        )
    });
    Permissions {
        publish: list("publish: { allow: ["),
        subscribe: list("subscribe: { allow: ["),
        responses,
    }
}

/// `30s`, `1m`, `2h`: the forms the shipped file uses.
fn go_duration(text: &str) -> Duration {
    let (number, unit) = text.split_at(text.len() - 1);
    let number: u64 = number.parse().unwrap_or_else(|_| panic!("duration {text}"));
    match unit {
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        _ => panic!("duration {text}"),
    }
}

#[test]
fn the_shipped_permissions_are_read_as_expected() {
    let coordinator = shipped_permissions("coordinator");
    assert!(
        coordinator
            .publish
            .iter()
            .any(|s| s == "flotilla.command.>")
    );
    assert_eq!(
        coordinator.subscribe,
        ["_INBOX_coordinator.>", "flotilla.live.>"]
    );
    assert!(coordinator.responses.is_none());
    let agent = shipped_permissions(&agent_user(ROLE));
    assert!(agent.publish.iter().all(|s| !s.starts_with("flotilla.cmd")));
    assert!(
        agent
            .subscribe
            .iter()
            .any(|s| s == "flotilla.delivery.training.a")
    );
    assert!(
        agent
            .publish
            .iter()
            .all(|s| !s.contains("CONSUMER.") || s.ends_with("OBJ_flotilla_files")),
        "an agent needs no consumer of its commands: {agent:?}"
    );
    assert!(
        agent
            .publish
            .iter()
            .any(|s| s == "flotilla.evt.*.training.a")
    );
    // Live progress, per agent too: its own subject only.
    let live: Vec<&String> = agent
        .publish
        .iter()
        .filter(|s| s.starts_with("flotilla.live"))
        .collect();
    assert_eq!(live, ["flotilla.live.*.training.a"]);
    assert!(
        agent.publish.iter().all(|s| !s.starts_with("$O.")),
        "an agent may not write the plan-files bucket: {agent:?}"
    );
    assert!(
        coordinator
            .publish
            .iter()
            .any(|s| s == "$O.flotilla_files.>")
    );
    // Its own registry entry, and no other.
    let registry: Vec<&String> = agent
        .publish
        .iter()
        .filter(|s| s.starts_with("$KV."))
        .collect();
    assert_eq!(registry, ["$KV.flotilla_agents.training.a"], "{agent:?}");
    assert_eq!(agent.publish.len(), 13, "{agent:?}");
    assert_eq!(agent.subscribe[0], "_INBOX_agent-training-a.>");
    assert_eq!(agent.responses, Some((1, Duration::from_secs(60))));
}

// ---------------------------------------------------------------------------------------------
// Operator, accounts, users, `.creds` files and the server configuration.

/// An operator with its system account and one application account (FLOTILLA, JetStream
/// unlimited), their JWTs and the server configuration that trusts them, in a temp dir.
struct Trust {
    dir: tempfile::TempDir,
    account: KeyPair,
    config: PathBuf,
}

impl Trust {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();

        let mut claims = Operator::new_claims("flotilla-test".into(), operator.public_key());
        claims.nats.system_account = Some(system.public_key());
        let operator_jwt = claims.encode(&operator).unwrap();

        let system_jwt = Account::new_claims("SYS".into(), system.public_key())
            .encode(&operator)
            .unwrap();

        let mut claims = Account::new_claims("FLOTILLA".into(), account.public_key());
        claims
            .nats
            .limits
            .as_mut()
            .expect("default limits")
            .jetstream = Some(JetStreamLimits {
            memory_storage: Some(NO_LIMIT),
            disk_storage: Some(NO_LIMIT),
            streams: Some(NO_LIMIT),
            consumer: Some(NO_LIMIT),
            ..Default::default()
        });
        let account_jwt = claims.encode(&operator).unwrap();

        let operator_file = dir.path().join("operator.jwt");
        std::fs::write(&operator_file, &operator_jwt).unwrap();
        let config = dir.path().join("nats-server-operator.conf");
        std::fs::write(
            &config,
            format!(
                "# Operator/JWT mode: accounts and users are signed JWTs, no user in this file.\n\
                 jetstream {{\n  sync_interval: always\n}}\n\
                 operator: \"{operator}\"\n\
                 system_account: {system}\n\
                 resolver: MEMORY\n\
                 resolver_preload: {{\n  {system}: \"{system_jwt}\"\n  {account}: \"{account_jwt}\"\n}}\n",
                operator = operator_file.display(),
                system = system.public_key(),
                account = account.public_key(),
            ),
        )
        .unwrap();
        Self {
            dir,
            account,
            config,
        }
    }

    fn start(&self) -> NatsServer {
        NatsServer::start_with_config(&self.config, &[]).unwrap()
    }

    /// A user key pair and its JWT, issued by `account` with `user`'s shipped permissions,
    /// written as `<file_stem>.creds` (mode 0600).
    fn creds_signed_by(&self, account: &KeyPair, user: &str, file_stem: &str) -> Issued {
        let key = KeyPair::new_user();
        let permissions = shipped_permissions(user);
        let mut claims = User::new_claims(user.into(), key.public_key());
        let granted = &mut claims.nats.permissions.permissions;
        granted.publish.allow = permissions.publish;
        granted.subscribe.allow = permissions.subscribe;
        granted.resp = permissions
            .responses
            .map(|(max_messages, ttl)| ResponsePermission { max_messages, ttl });
        let jwt = claims.encode(account).unwrap();
        let path = self.dir.path().join(format!("{file_stem}.creds"));
        write_secret(&path, &creds_file(&jwt, &key.seed().unwrap()));
        Issued { key, jwt, path }
    }

    /// `.creds` of the shipped identity `user`, issued by the application account.
    fn creds(&self, user: &str) -> Issued {
        self.creds_signed_by(&self.account, user, user)
    }
}

/// One user: its key pair, its JWT, and its `.creds` file.
struct Issued {
    key: KeyPair,
    jwt: String,
    path: PathBuf,
}

impl Issued {
    fn path(&self) -> String {
        self.path.display().to_string()
    }
}

/// The `.creds` format `nsc` writes (and async-nats and the Go client read).
fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// Connect options with the `.creds` file `creds`, if any.
async fn creds(creds: Option<&Path>) -> ConnectOptions {
    match creds {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .expect("a readable .creds file"),
        None => ConnectOptions::new(),
    }
}

fn assert_refused(result: Result<impl Sized, async_nats::ConnectError>, what: &str) {
    match result {
        Ok(_) => panic!("{what} was accepted"),
        Err(e) => assert_eq!(
            e.kind(),
            ConnectErrorKind::AuthorizationViolation,
            "{what}: unexpected refusal: {e}"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn creds_are_required_and_must_chain_to_the_operator() {
    let trust = Trust::new();
    let server = trust.start();
    let url = server.url();
    let coordinator = trust.creds("coordinator");

    // Control: the product's own connect (`credentials_file`) gets in and sees JetStream.
    let client = flotilla_bus::connect(&flotilla_bus::BusOptions {
        servers: url.parse().unwrap(),
        name: "creds-test".into(),
        connect_timeout: Duration::from_secs(5),
        allow_old_server: false,
        auth: flotilla_bus::Credentials {
            credentials_file: Some(coordinator.path.clone()),
            inbox_prefix: Some("_INBOX_coordinator".into()),
            ..Default::default()
        },
        domain: None,
    })
    .await
    .expect("the coordinator's .creds is accepted");
    let info = jetstream::new(client.clone())
        .query_account()
        .await
        .expect("JetStream is enabled for the account");
    assert_eq!(info.streams, 0);
    drop(client);

    // No credentials at all.
    assert_refused(
        connect(url, creds(None).await, "coordinator").await,
        "an anonymous client",
    );

    // A user JWT issued by an account the operator never signed.
    let rogue = trust.creds_signed_by(&KeyPair::new_account(), "coordinator", "rogue");
    assert_refused(
        connect(url, creds(Some(&rogue.path)).await, "coordinator").await,
        "a user of an unknown account",
    );

    // The coordinator's JWT without its seed: another key cannot answer the server's nonce.
    let stolen = trust.dir.path().join("stolen.creds");
    let thief = KeyPair::new_user();
    write_secret(
        &stolen,
        &creds_file(&coordinator.jwt, &thief.seed().unwrap()),
    );
    assert_refused(
        connect(url, creds(Some(&stolen)).await, "coordinator").await,
        "a JWT presented with another key's seed",
    );
}

/// As the coordinator: creates the streams and queues one command each for training and ingest.
/// As training's agent: connects with its `.creds`, reads its own last command and the next one
/// live; is refused ingest's command, any consumer of commands, reading `flotilla.command.>`,
/// publishing a command and forging ingest's result; its own event is stored, and the streams
/// hold nothing forged.
#[tokio::test]
async fn creds_agent_reads_and_writes_only_its_own_subjects() {
    let trust = Trust::new();
    let server = trust.start();
    let user = agent_user(ROLE);
    assert_agent_confined(
        server.url(),
        creds(Some(&trust.creds("coordinator").path)).await,
        creds(Some(&trust.creds(&user).path)).await,
    )
    .await;
}

/// The whole product in operator mode: the agent reads its `.creds` through
/// `[nats.auth] credentials_file` (as `FLOTILLA_NATS__AUTH__CREDENTIALS_FILE`), the coordinator
/// through `FLOTILLA_NATS__AUTH__CREDENTIALS_FILE`; `flotilla migrate` of a one-service plan succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_a_migration_runs_end_to_end() {
    let trust = Trust::new();
    let server = trust.start();
    let subjects = Subjects::default();
    let coordinator = trust.creds("coordinator");
    let user = agent_user(ROLE);
    let agent = trust.creds(&user);

    // The coordinator creates the streams (agents may not).
    let (client, _) = connect(
        server.url(),
        creds(Some(&coordinator.path)).await,
        "coordinator",
    )
    .await
    .unwrap();
    let admin = jetstream::new(client);
    flotilla_bus::commands_stream(&admin, &subjects)
        .await
        .unwrap();
    flotilla_bus::events_stream(&admin, &subjects)
        .await
        .unwrap();
    flotilla_telemetry::store::ensure_stream(&admin, subjects.prefix())
        .await
        .unwrap();

    let agent_env = |_: &str| {
        vec![
            (
                "FLOTILLA_NATS__AUTH__CREDENTIALS_FILE".to_owned(),
                agent.path(),
            ),
            (
                "FLOTILLA_NATS__AUTH__INBOX_PREFIX".to_owned(),
                format!("_INBOX_{user}"),
            ),
        ]
    };
    let cli_env = vec![
        (
            "FLOTILLA_NATS__AUTH__CREDENTIALS_FILE".to_owned(),
            coordinator.path(),
        ),
        (
            "FLOTILLA_NATS__AUTH__INBOX_PREFIX".to_owned(),
            "_INBOX_coordinator".to_owned(),
        ),
    ];
    let url = server.url().to_owned();
    let fleet = tokio::task::block_in_place(|| {
        flotilla_tests::Fleet::start_with(&url, &[ROLE], &agent_env, cli_env).unwrap()
    });

    // The agent is connected as its own user key, in the application account.
    let connected = server.connections();
    let connection = connected
        .iter()
        .find(|c| c["authorized_user"] == agent.key.public_key().as_str())
        .unwrap_or_else(|| panic!("the agent is not connected as its user key: {connected:#?}"));
    assert_eq!(
        connection["account"],
        trust.account.public_key().as_str(),
        "{connection:#}"
    );

    let plan = fleet.write_plan(
        "plan.toml",
        &format!(
            "name = \"creds\"\ncommand_timeout = \"60s\"\n[[service]]\nname = \"{ROLE}\"\n{}\
             [[service.step]]\naction = \"delete\"\npath = \"legacy.conf\"\n",
            standard_config_step(ROLE, "")
        ),
    );
    let out = tokio::task::block_in_place(|| {
        fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"])
    });
    let report = flotilla_tests::json_stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let services = report["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{report:#}");
    assert_eq!(services[0]["service"], ROLE, "{report:#}");
    assert_eq!(services[0]["status"], "succeeded", "{report:#}");
    let root = fleet.root(ROLE);
    assert!(root.join("config/service.toml").exists());
    assert!(!root.join("legacy.conf").exists());
    tokio::task::block_in_place(|| drop(fleet));
}
