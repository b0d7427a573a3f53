//! Loading either layout, and what a bad file or secret reports.

use super::secrets::resolve_secret;
use super::*;
use crate::testutil::TempRoot;

const STANDARD: &str = r#"
[service]
name = "inference"
environment = "demo"

[server]
host = "127.0.0.1"
port = 18081

[logging]
format = "json"
level = "info"
file = "logs/service.log"

[secrets]
api_key = "${secret:API_KEY}"

[behaviour]
fail_health = true
startup_delay_ms = 250

[role]
model_path = "/models/v3.onnx"
batch_size = 32
limits = { max_rps = 100 }
"#;

const LEGACY: &str = "\
# inference service, hand edited
service=inference
listen_port = 18081

api_key=demo-inference-key-123
model_path=/models/v2.onnx
fail_health=yes
extra_memory_mb=16
";

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_err(root: &TempRoot, role: Role) -> String {
    let err = load_with_env(root.path(), role, &no_env).expect_err("load must fail");
    format!("{err:#}")
}

#[test]
fn standard_parses() {
    let root = TempRoot::new();
    root.write(STANDARD_FILE, STANDARD);
    root.write("secrets/API_KEY", "  s3cret\n");

    let config = load_with_env(root.path(), Role::Inference, &no_env).expect("load");

    assert_eq!(config.layout, Layout::Standard);
    assert_eq!(config.role, Role::Inference);
    assert_eq!(config.environment.as_deref(), Some("demo"));
    assert_eq!((config.host.as_str(), config.port), ("127.0.0.1", 18081));
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.log_level, Level::Info);
    assert_eq!(config.log_file, root.path().join("logs/service.log"));
    assert_eq!(config.secrets["api_key"].expose(), "s3cret");
    assert_eq!(
        config.behaviour,
        Behaviour {
            fail_health: true,
            startup_delay_ms: 250,
            extra_memory_mb: 0,
            request_delay_ms: 0,
        }
    );
    assert_eq!(
        config.config_keys,
        [
            "behaviour.fail_health",
            "behaviour.startup_delay_ms",
            "logging.file",
            "logging.format",
            "logging.level",
            "role.batch_size",
            "role.limits.max_rps",
            "role.model_path",
            "secrets.api_key",
            "server.host",
            "server.port",
            "service.environment",
            "service.name",
        ]
    );
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[test]
fn standard_unknown_key_is_named() {
    let root = TempRoot::new();
    root.write(
        STANDARD_FILE,
        &STANDARD.replace("port = 18081", "port = 18081\ncolour = \"red\""),
    );
    root.write("secrets/API_KEY", "s3cret");

    let err = load_err(&root, Role::Inference);

    assert!(err.contains("unknown field `colour`"), "{err}");
    assert!(err.contains("line 9"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn standard_unknown_section_is_named() {
    let root = TempRoot::new();
    root.write(STANDARD_FILE, &format!("{STANDARD}\n[extras]\nx = 1\n"));
    root.write("secrets/API_KEY", "s3cret");

    assert!(load_err(&root, Role::Inference).contains("unknown field `extras`"));
}

#[test]
fn standard_name_must_match_role() {
    let root = TempRoot::new();
    root.write(STANDARD_FILE, STANDARD);
    root.write("secrets/API_KEY", "s3cret");

    let err = load_err(&root, Role::Training);

    assert!(
        err.contains(r#"service.name is "inference" but --role is training"#),
        "{err}"
    );
}

#[test]
fn secret_from_env_when_no_file() {
    let root = TempRoot::new();
    root.write(STANDARD_FILE, STANDARD);
    let env = |name: &str| (name == "FLOTILLA_SECRET_API_KEY").then(|| "from-env".to_owned());

    let config = load_with_env(root.path(), Role::Inference, &env).expect("load");

    assert_eq!(config.secrets["api_key"].expose(), "from-env");
}

#[test]
fn secret_file_wins_over_env() {
    let root = TempRoot::new();
    root.write("secrets/API_KEY", "from-file\n");
    let env = |_: &str| Some("from-env".to_owned());

    let secret = resolve_secret(root.path(), "API_KEY", &env).expect("resolve");

    assert_eq!(secret.expose(), "from-file");
}

#[test]
fn unresolvable_secret_fails() {
    let root = TempRoot::new();
    root.write(STANDARD_FILE, STANDARD);

    let err = load_err(&root, Role::Inference);

    assert!(err.contains("secrets.api_key"), "{err}");
    assert!(err.contains("FLOTILLA_SECRET_API_KEY"), "{err}");
}

#[test]
fn empty_secret_fails() {
    let root = TempRoot::new();
    root.write("secrets/API_KEY", " \n");

    assert!(resolve_secret(root.path(), "API_KEY", &no_env).is_err());
}

#[test]
fn literal_secret_is_rejected_without_echoing_it() {
    let root = TempRoot::new();
    root.write(
        STANDARD_FILE,
        &STANDARD.replace("${secret:API_KEY}", "hunter2"),
    );

    let err = load_err(&root, Role::Inference);

    assert!(err.contains("placeholder"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn secret_name_cannot_escape_secrets_dir() {
    let root = TempRoot::new();
    root.write("passwd", "x");

    let err = resolve_secret(root.path(), "../passwd", &no_env).expect_err("must fail");

    assert!(format!("{err}").contains("invalid secret name"));
}

#[test]
fn legacy_parses() {
    let root = TempRoot::new();
    root.write(LEGACY_FILE, LEGACY);

    let config = load_with_env(root.path(), Role::Inference, &no_env).expect("load");

    assert_eq!(config.layout, Layout::Legacy);
    assert_eq!(config.environment, None);
    assert_eq!((config.host.as_str(), config.port), ("127.0.0.1", 18081));
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.log_file, root.path().join("service.log"));
    assert_eq!(config.secrets["api_key"].expose(), "demo-inference-key-123");
    assert_eq!(
        config.behaviour,
        Behaviour {
            fail_health: true,
            startup_delay_ms: 0,
            extra_memory_mb: 16,
            request_delay_ms: 0,
        }
    );
    assert_eq!(
        config.config_keys,
        [
            "api_key",
            "extra_memory_mb",
            "fail_health",
            "listen_port",
            "model_path",
            "service"
        ]
    );
}

#[test]
fn legacy_line_without_equals_names_line() {
    let root = TempRoot::new();
    root.write(
        LEGACY_FILE,
        "service=inference\n\n# note\nlisten_port 18081\n",
    );

    let err = load_err(&root, Role::Inference);

    assert!(err.contains("line 4: expected key=value"), "{err}");
    assert!(err.contains(LEGACY_FILE), "{err}");
}

#[test]
fn legacy_bad_value_names_line() {
    let root = TempRoot::new();
    root.write(LEGACY_FILE, "service=inference\nlisten_port=http\n");

    assert!(load_err(&root, Role::Inference).contains("line 2: listen_port"));
}

#[test]
fn legacy_service_must_match_role() {
    let root = TempRoot::new();
    root.write(LEGACY_FILE, LEGACY);

    let err = load_err(&root, Role::Ingest);

    assert!(
        err.contains(r#"line 2: service is "inference" but --role is ingest"#),
        "{err}"
    );
}

#[test]
fn standard_wins_over_legacy() {
    let root = TempRoot::new();
    root.write(LEGACY_FILE, &LEGACY.replace("18081", "28081"));
    root.write(STANDARD_FILE, STANDARD);
    root.write("secrets/API_KEY", "s3cret");

    let config = load_with_env(root.path(), Role::Inference, &no_env).expect("load");

    assert_eq!(config.layout, Layout::Standard);
    assert_eq!(config.port, 18081);
}

#[test]
fn missing_configuration_fails() {
    let root = TempRoot::new();

    assert!(load_err(&root, Role::Inference).contains("no configuration"));
}
