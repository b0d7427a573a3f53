//! The mutual-TLS and nkey variants of the shipped nats-server configuration
//! (`deploy/nats/nats-server-mtls.conf`, `deploy/nats/nats-server-nkeys.conf`), run for real with
//! certificates and keys made at test time: no way in without the right certificate or seed, an
//! agent identity confined to its own commands and events exactly as with passwords, and the real
//! binaries migrating the demo fleet through each variant.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{ConnectErrorKind, ConnectOptions};
use flotilla_schemas::subjects::Subjects;
use flotilla_tests::confinement::{
    agent_user, assert_agent_confined, assert_demo_migrates, connect,
};
use flotilla_tests::{NatsServer, repo_root};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Certificates made with rcgen (ECDSA P-256, ring), valid from an hour ago for a day.
mod certs {
    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    /// A certificate and its private key, as PEM files.
    pub struct Issued {
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    /// A certificate authority that writes what it issues into `dir`.
    pub struct Authority {
        issuer: Issuer<'static, KeyPair>,
        dir: PathBuf,
        /// Its own certificate (PEM), the file clients and the server trust.
        pub cert: PathBuf,
    }

    fn params(common_name: &str, names: Vec<String>) -> CertificateParams {
        let mut params = CertificateParams::new(names).expect("valid names");
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, common_name);
        params.distinguished_name = subject;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(1);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params
    }

    impl Authority {
        /// A new CA named `common_name`; it writes its files under `dir/<common_name>/`.
        pub fn new(dir: &Path, common_name: &str) -> Self {
            let mut params = params(common_name, Vec::new());
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.use_authority_key_identifier_extension = false;
            let key = KeyPair::generate().expect("CA key");
            let cert = params.self_signed(&key).expect("CA certificate");
            let dir = dir.join(common_name.replace(' ', "-"));
            std::fs::create_dir_all(&dir).expect("CA directory");
            let path = dir.join("ca.pem");
            std::fs::write(&path, cert.pem()).expect("CA written");
            Self {
                issuer: Issuer::new(params, key),
                dir,
                cert: path,
            }
        }

        fn issue(&self, file_stem: &str, params: CertificateParams) -> Issued {
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &self.issuer).expect("certificate");
            let issued = Issued {
                cert: self.dir.join(format!("{file_stem}.pem")),
                key: self.dir.join(format!("{file_stem}.key")),
            };
            std::fs::write(&issued.cert, cert.pem()).expect("certificate written");
            std::fs::write(&issued.key, key.serialize_pem()).expect("key written");
            issued
        }

        /// The server's certificate: what the clients dial (127.0.0.1, localhost), serverAuth.
        pub fn server(&self) -> Issued {
            let mut params = params(
                "flotilla-nats",
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            );
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            self.issue("server", params)
        }

        /// A client certificate whose subject is `CN=<common_name>` and nothing else (no SAN),
        /// clientAuth: the identity `verify_and_map` reads.
        pub fn client(&self, common_name: &str) -> Issued {
            let mut params = params(common_name, Vec::new());
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            self.issue(common_name, params)
        }
    }
}

use certs::{Authority, Issued};

// ---------------------------------------------------------------------------------------------
// Shared: a fleet through a variant (the confinement check is `flotilla_tests::confinement`).

/// A fleet of `roles` on `server`: the coordinator (`coordinator`) creates the streams (agents may
/// not), every agent gets `agent_env(role)`, `flotilla` runs with `cli_env`.
async fn fleet(
    server: &NatsServer,
    coordinator: ConnectOptions,
    roles: &[&str],
    agent_env: &dyn Fn(&str) -> Vec<(String, String)>,
    cli_env: Vec<(String, String)>,
) -> flotilla_tests::Fleet {
    let subjects = Subjects::default();
    let (coordinator, _) = connect(server.url(), coordinator, "coordinator")
        .await
        .unwrap();
    let admin = jetstream::new(coordinator);
    flotilla_bus::commands_stream(&admin, &subjects)
        .await
        .unwrap();
    flotilla_bus::events_stream(&admin, &subjects)
        .await
        .unwrap();
    flotilla_telemetry::store::ensure_stream(&admin, subjects.prefix())
        .await
        .unwrap();
    let url = server.url().to_owned();
    tokio::task::block_in_place(|| {
        flotilla_tests::Fleet::start_with(&url, roles, agent_env, cli_env).unwrap()
    })
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS: deploy/nats/nats-server-mtls.conf.

/// A CA, the server's certificate and a client certificate per identity, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: Authority,
    server: Issued,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::new(dir.path(), "Flotilla test CA");
        let server = ca.server();
        Self { dir, ca, server }
    }

    /// A second, unrelated CA in the same temp dir (for rogue certificates).
    fn rogue(&self) -> Authority {
        Authority::new(self.dir.path(), "Rogue CA")
    }

    /// Client options trusting this CA, with `client`'s certificate when given.
    fn options(&self, client: Option<&Issued>) -> ConnectOptions {
        let options = ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(self.ca.cert.clone());
        match client {
            Some(issued) => options.add_client_certificate(issued.cert.clone(), issued.key.clone()),
            None => options,
        }
    }

    /// Options for the identity `CN=<common_name>`, with a certificate issued now.
    fn identity(&self, common_name: &str) -> ConnectOptions {
        self.options(Some(&self.ca.client(common_name)))
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp paths")
}

fn start_mtls(pki: &Pki) -> NatsServer {
    NatsServer::start_with_config(
        &repo_root().join("deploy/nats/nats-server-mtls.conf"),
        &[
            ("FLOTILLA_NATS_SERVER_CERT", path(&pki.server.cert)),
            ("FLOTILLA_NATS_SERVER_KEY", path(&pki.server.key)),
            ("FLOTILLA_NATS_CLIENT_CA", path(&pki.ca.cert)),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_certificate_of_the_ca() {
    let pki = Pki::new();
    let server = start_mtls(&pki);
    let url = server.url();

    // Control: the coordinator's certificate gets in, over TLS.
    assert!(url.starts_with("tls://"), "{url}");
    let (coordinator, _) = connect(url, pki.identity("coordinator"), "coordinator")
        .await
        .expect("the coordinator's certificate is accepted");
    assert!(coordinator.server_info().tls_required);
    drop(coordinator);

    // No client certificate, even with the coordinator's name and a password: refused.
    let bare = pki
        .options(None)
        .user_and_password("CN=coordinator".into(), "coordinator-secret".into());
    match connect(url, bare, "coordinator").await {
        Ok(_) => panic!("a client without a certificate connected"),
        Err(e) => assert!(
            e.to_string().contains("CertificateRequired"),
            "unexpected refusal: {e}"
        ),
    }

    // A certificate with the coordinator's subject, from another CA: refused.
    let rogue = pki.rogue().client("coordinator");
    match connect(url, pki.options(Some(&rogue)), "coordinator").await {
        Ok(_) => panic!("a certificate from another CA was accepted"),
        Err(e) => assert!(
            e.to_string().contains("UnknownCA"),
            "unexpected refusal: {e}"
        ),
    }

    // A certificate from the right CA whose subject names no user: refused by authorization.
    match connect(url, pki.identity("stranger"), "stranger").await {
        Ok(_) => panic!("a certificate naming no user was accepted"),
        Err(e) => assert_eq!(
            e.kind(),
            ConnectErrorKind::AuthorizationViolation,
            "unexpected refusal: {e}"
        ),
    }

    // And no plaintext path: the server demands TLS before anything else.
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    let (read, mut write) = socket.split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    let info = lines.next_line().await.unwrap().unwrap();
    assert!(info.contains("\"tls_required\":true"), "{info}");
    write
        .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .await
        .unwrap();
    // The server drops the connection: no PONG, no error line, just the end of the stream.
    let mut answers = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            answers.push(line);
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept a plaintext client: {answers:?}"
    );
    assert!(
        !answers.iter().any(|l| l.starts_with("PONG")),
        "a plaintext client was answered: {answers:?}"
    );
}

#[tokio::test]
async fn mtls_agent_certificate_reads_and_writes_only_its_own_subjects() {
    let pki = Pki::new();
    let server = start_mtls(&pki);
    // The agent also claims to be the coordinator in CONNECT: the certificate decides.
    let agent = pki
        .identity(&agent_user("training"))
        .user_and_password("CN=coordinator".into(), String::new());
    assert_agent_confined(server.url(), pki.identity("coordinator"), agent).await;
}

/// The whole product over mutual TLS: every agent and the coordinator authenticated by its own
/// certificate (nothing else), signed commands, the demo plan over all five services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_the_demo_migration_runs_end_to_end() {
    let pki = Pki::new();
    let server = start_mtls(&pki);
    let ca = pki.ca.cert.display().to_string();
    let agent_env = |role: &str| {
        let user = agent_user(role);
        let issued = pki.ca.client(&user);
        vec![
            ("FLOTILLA_NATS__AUTH__TLS_CA_FILE".to_owned(), ca.clone()),
            (
                "FLOTILLA_NATS__AUTH__TLS_CERT_FILE".to_owned(),
                issued.cert.display().to_string(),
            ),
            (
                "FLOTILLA_NATS__AUTH__TLS_KEY_FILE".to_owned(),
                issued.key.display().to_string(),
            ),
            (
                "FLOTILLA_NATS__AUTH__INBOX_PREFIX".to_owned(),
                format!("_INBOX_{user}"),
            ),
        ]
    };
    let coordinator = pki.ca.client("coordinator");
    let cli_env = vec![
        ("FLOTILLA_NATS__AUTH__TLS_CA_FILE".to_owned(), ca.clone()),
        (
            "FLOTILLA_NATS__AUTH__TLS_CERT_FILE".to_owned(),
            coordinator.cert.display().to_string(),
        ),
        (
            "FLOTILLA_NATS__AUTH__TLS_KEY_FILE".to_owned(),
            coordinator.key.display().to_string(),
        ),
        // No FLOTILLA_NATS__AUTH__INBOX_PREFIX: with a certificate or nkey identity the coordinator
        // defaults to the shipped configurations' `_INBOX_coordinator`.
    ];
    let fleet = fleet(
        &server,
        pki.identity("coordinator"),
        &flotilla_tests::ROLES,
        &agent_env,
        cli_env,
    )
    .await;

    // Each agent is connected under the identity its certificate names, over TLS.
    let connected = server.connections();
    for role in flotilla_tests::ROLES {
        let user = format!("CN={}", agent_user(role));
        let connection = connected
            .iter()
            .find(|c| c["authorized_user"] == user.as_str())
            .unwrap_or_else(|| panic!("no connection as {user}: {connected:#?}"));
        assert!(
            connection["tls_version"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "{connection:#}"
        );
    }

    assert_demo_migrates(&fleet);
    tokio::task::block_in_place(|| drop(fleet));
}

// ---------------------------------------------------------------------------------------------
// Nkeys: deploy/nats/nats-server-nkeys.conf.

/// A user nkey per identity of the shipped configuration, seeds written to files (mode 0600).
struct Nkeys {
    dir: tempfile::TempDir,
    keys: Vec<(String, nkeys::KeyPair)>,
}

impl Nkeys {
    /// The identities, by the variable that carries their public key.
    const VARIABLES: [&'static str; 7] = [
        "FLOTILLA_COORDINATOR_NKEY",
        "FLOTILLA_SYS_NKEY",
        "FLOTILLA_AGENT_INFERENCE_A_NKEY",
        "FLOTILLA_AGENT_TRAINING_A_NKEY",
        "FLOTILLA_AGENT_INGEST_A_NKEY",
        "FLOTILLA_AGENT_EXECUTION_A_NKEY",
        "FLOTILLA_AGENT_PREPROCESS_A_NKEY",
    ];

    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = Self::VARIABLES
            .iter()
            .map(|variable| {
                let key = nkeys::KeyPair::new_user();
                let seed = dir.path().join(format!("{variable}.seed"));
                std::fs::write(&seed, format!("{}\n", key.seed().unwrap())).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).unwrap();
                ((*variable).to_owned(), key)
            })
            .collect();
        Self { dir, keys }
    }

    /// The server's environment: every public key.
    fn env(&self) -> Vec<(String, String)> {
        self.keys
            .iter()
            .map(|(variable, key)| (variable.clone(), key.public_key()))
            .collect()
    }

    fn variable(identity: &str) -> String {
        match identity {
            "coordinator" => "FLOTILLA_COORDINATOR_NKEY".to_owned(),
            role => format!("FLOTILLA_AGENT_{}_A_NKEY", role.to_uppercase()),
        }
    }

    /// The seed file of `identity` ("coordinator" or a role).
    fn seed_file(&self, identity: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.seed", Self::variable(identity)))
    }

    /// Client options signing with `identity`'s seed.
    fn options(&self, identity: &str) -> ConnectOptions {
        let seed = std::fs::read_to_string(self.seed_file(identity)).unwrap();
        ConnectOptions::new().nkey(seed.trim().to_owned())
    }
}

fn start_nkeys(keys: &Nkeys) -> NatsServer {
    let env = keys.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    NatsServer::start_with_config(
        &repo_root().join("deploy/nats/nats-server-nkeys.conf"),
        &env,
    )
    .unwrap()
}

#[tokio::test]
async fn nkeys_refuse_anonymous_and_unknown_keys() {
    let keys = Nkeys::new();
    let server = start_nkeys(&keys);
    let url = server.url();
    let (coordinator, _) = connect(url, keys.options("coordinator"), "coordinator")
        .await
        .expect("the coordinator's seed is accepted");
    drop(coordinator);
    let anonymous = async_nats::connect(url).await;
    assert!(anonymous.is_err(), "anonymous access must be refused");
    let rogue = nkeys::KeyPair::new_user().seed().unwrap();
    match connect(url, ConnectOptions::new().nkey(rogue), "coordinator").await {
        Ok(_) => panic!("an unknown nkey was accepted"),
        Err(e) => assert_eq!(
            e.kind(),
            ConnectErrorKind::AuthorizationViolation,
            "unexpected refusal: {e}"
        ),
    }
}

#[tokio::test]
async fn nkeys_agent_reads_and_writes_only_its_own_subjects() {
    let keys = Nkeys::new();
    let server = start_nkeys(&keys);
    assert_agent_confined(
        server.url(),
        keys.options("coordinator"),
        keys.options("training"),
    )
    .await;
}

/// The whole product with nkeys: the agents read their seeds through `nkey_seed_file`, the
/// coordinator through `--nats-nkey-file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkeys_the_demo_migration_runs_end_to_end() {
    let keys = Nkeys::new();
    let server = start_nkeys(&keys);
    let agent_env = |role: &str| {
        vec![
            (
                "FLOTILLA_NATS__AUTH__NKEY_SEED_FILE".to_owned(),
                keys.seed_file(role).display().to_string(),
            ),
            (
                "FLOTILLA_NATS__AUTH__INBOX_PREFIX".to_owned(),
                format!("_INBOX_{}", agent_user(role)),
            ),
        ]
    };
    let cli_env = vec![
        (
            "FLOTILLA_NATS__AUTH__NKEY_SEED_FILE".to_owned(),
            keys.seed_file("coordinator").display().to_string(),
        ),
        // No FLOTILLA_NATS__AUTH__INBOX_PREFIX: with a certificate or nkey identity the coordinator
        // defaults to the shipped configurations' `_INBOX_coordinator`.
    ];
    let fleet = fleet(
        &server,
        keys.options("coordinator"),
        &flotilla_tests::ROLES,
        &agent_env,
        cli_env,
    )
    .await;
    assert_demo_migrates(&fleet);
    tokio::task::block_in_place(|| drop(fleet));
}

// ---------------------------------------------------------------------------------------------
// The three variants stay the same rules.

/// `accounts { … }` of a shipped configuration without comments, and without what proves each
/// identity (`user: …`, `password: …`, `nkey: …`): what is left is the rules.
fn rules(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("deploy/nats").join(file)).unwrap();
    let start = text
        .find("\naccounts {")
        .unwrap_or_else(|| panic!("{file} has no accounts block"));
    text[start..]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(without_identity)
        .collect()
}

fn without_identity(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some((at, len)) = ["user: ", "password: ", "nkey: "]
        .iter()
        .filter_map(|key| rest.find(key).map(|at| (at, key.len())))
        .min()
    {
        out.push_str(&rest[..at]);
        let value = &rest[at + len..];
        let end = value.find([',', ' ', '}']).unwrap_or(value.len());
        rest = value[end..].trim_start_matches(',').trim_start();
    }
    out.push_str(rest);
    out
}

#[test]
fn the_variants_grant_exactly_the_same_permissions() {
    let passwords = rules("nats-server.conf");
    assert!(
        passwords
            .iter()
            .any(|l| l.contains("flotilla.delivery.inference.a"))
    );
    for variant in ["nats-server-mtls.conf", "nats-server-nkeys.conf"] {
        let other = rules(variant);
        for (i, (a, b)) in passwords.iter().zip(&other).enumerate() {
            assert_eq!(a, b, "{variant} differs from nats-server.conf at rule {i}");
        }
        assert_eq!(passwords.len(), other.len(), "{variant}: different length");
    }
}
