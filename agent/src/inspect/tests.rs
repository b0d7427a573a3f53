//! Shapes and settings: keys and digests, never values.

use flotilla_schemas::{RunId, SettingProbe};

use super::*;

fn root_with(files: &[(&str, &str)]) -> (tempfile::TempDir, RootDir) {
    let tmp = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = tmp.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let root = RootDir::open(tmp.path()).unwrap();
    (tmp, root)
}

fn forms(secret: &str) -> Vec<Vec<String>> {
    vec![crate::template::written_forms(secret)]
}

fn probe(name: &str, file: &str, key: &str) -> SettingProbe {
    SettingProbe {
        name: name.into(),
        file: file.into(),
        key: key.into(),
    }
}

#[test]
fn shapes_name_keys_and_literal_secrets_never_values() {
    let (_tmp, root) = root_with(&[
        ("legacy.conf", "service=x\napi_key=hunter2-secret\n# c\n"),
        (
            "config/service.toml",
            "[service]\nname = \"x\"\n[secrets]\napi_key = \"${secret:API_KEY}\"\n",
        ),
    ]);
    let secrets = forms("hunter2-secret");
    let legacy = config_shape(&root, "legacy.conf", &secrets);
    assert_eq!(legacy.keys, ["api_key", "service"]);
    assert_eq!(legacy.literal_secrets, ["api_key"]);
    assert!(!legacy.secret_outside_keys);
    let standard = config_shape(&root, "config/service.toml", &secrets);
    assert_eq!(
        (standard.format.as_str(), standard.keys.clone()),
        (
            "standard",
            vec!["secrets.api_key".to_owned(), "service.name".to_owned()]
        )
    );
    assert!(standard.literal_secrets.is_empty());
    assert!(!format!("{legacy:?}{standard:?}").contains("hunter2"));
    let missing = config_shape(&root, "nope.toml", &secrets);
    assert!(!missing.exists);
    assert_eq!(missing.format, "missing");
}

#[test]
fn a_secret_is_found_as_a_written_file_escapes_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("S"), "hunter\"2\n").unwrap();
    let sources = SecretSources {
        env_prefix: "FLOTILLA_TEST_INSPECT_NO_SUCH_PREFIX_".into(),
        dir: Some(tmp.path().to_owned()),
    };
    let secrets = known_secret_forms(&sources);
    std::fs::write(tmp.path().join("app.conf"), "api_key=\"hunter\\\"2\"\n").unwrap();
    std::fs::write(
        tmp.path().join("app.toml"),
        "[a]\nb = \"x hunter\\\"2 y\"\n",
    )
    .unwrap();
    let root = RootDir::open(tmp.path()).unwrap();
    assert_eq!(
        config_shape(&root, "app.conf", &secrets).literal_secrets,
        ["api_key"]
    );
    let toml = config_shape(&root, "app.toml", &secrets);
    assert_eq!(toml.literal_secrets, ["a.b"]);
    assert!(!toml.secret_outside_keys, "{toml:?}");
}

#[test]
fn every_known_format_is_read_with_its_parser() {
    let (_tmp, root) = root_with(&[
        ("a.json", r#"{"db": {"url": "pg://x"}, "port": 8080}"#),
        ("a.yaml", "db:\n  url: pg://x\nport: 8080\n"),
        (
            "settings.env",
            "export DATABASE_URL=\"pg://x\"\nPORT=8080 # c\n",
        ),
    ]);
    let json = config_shape(&root, "a.json", &[]);
    assert_eq!(
        (json.format.as_str(), json.keys.clone()),
        ("json", vec!["db.url".into(), "port".into()])
    );
    let yaml = config_shape(&root, "a.yaml", &[]);
    assert_eq!(yaml.keys, json.keys);
    assert_eq!(yaml.fingerprint, json.fingerprint);
    let env = config_shape(&root, "settings.env", &[]);
    assert_eq!(
        (env.format.as_str(), env.keys.clone()),
        ("env", vec!["DATABASE_URL".into(), "PORT".into()])
    );
    let (_tmp2, broken) = root_with(&[("b.json", "{nope")]);
    let shape = config_shape(&broken, "b.json", &[]);
    assert!(shape.exists && shape.format == "unreadable", "{shape:?}");
}

#[test]
fn a_secret_in_a_comment_or_a_key_name_is_outside_any_key() {
    let (_tmp, root) = root_with(&[
        (
            "a.toml",
            "# old: hunter2-secret\n[s]\nk = \"hunter2-secret\"\n",
        ),
        ("b.toml", "hunter2-secret = 1\n"),
        ("d.json", "{\"k\": \"hunter2-secret\""),
        (
            "c.toml",
            "[s]\nk = \"hunter2-secret\"\nj = \"also hunter2-secret\"\n",
        ),
    ]);
    let secrets = forms("hunter2-secret");
    let a = config_shape(&root, "a.toml", &secrets);
    assert_eq!(a.literal_secrets, ["s.k"]);
    assert!(a.secret_outside_keys);
    let b = config_shape(&root, "b.toml", &secrets);
    assert!(
        b.literal_secrets.is_empty() && b.secret_outside_keys,
        "{b:?}"
    );
    let c = config_shape(&root, "c.toml", &secrets);
    assert_eq!(c.literal_secrets, ["s.j", "s.k"]);
    assert!(!c.secret_outside_keys);
    let d = config_shape(&root, "d.json", &secrets);
    assert!(d.format == "unreadable" && d.secret_outside_keys, "{d:?}");
    assert!(!format!("{a:?}{b:?}{c:?}{d:?}").contains("hunter2"));
}

#[test]
fn the_same_setting_in_two_formats_has_one_digest_per_run() {
    let (_tmp, root) = root_with(&[
        (
            "config/ingest.toml",
            "[db]\nurl = \"postgres://db:5432/app\"\nport = 5432\n",
        ),
        (
            "settings.env",
            "DATABASE_URL='postgres://db:5432/app'\nDB_PORT=5432\n",
        ),
        ("other.yaml", "db:\n  url: postgres://db:5432/other\n"),
    ]);
    let run = RunId::new();
    let found = settings(
        &root,
        &[
            probe("database_url", "config/ingest.toml", "db.url"),
            probe("database_url", "settings.env", "DATABASE_URL"),
            probe("database_url", "other.yaml", "db.url"),
            probe("port", "config/ingest.toml", "db.port"),
            probe("port", "settings.env", "DB_PORT"),
            probe("port", "settings.env", "NOPE"),
            probe("port", "gone.toml", "db.port"),
        ],
        run,
    );
    let digests: Vec<Option<&str>> = found.iter().map(|s| s.digest.as_deref()).collect();
    assert!(digests[..5].iter().all(Option::is_some), "{found:?}");
    assert_eq!(digests[0], digests[1]);
    assert_ne!(digests[0], digests[2]);
    assert_eq!(digests[3], digests[4]);
    assert_eq!(found[5].detail.as_deref(), Some("the file has no key NOPE"));
    assert_eq!(found[6].detail.as_deref(), Some("the file does not exist"));
    assert!(!found[6].found);
    // Another run, another digest of the same value.
    let again = settings(
        &root,
        &[probe("database_url", "settings.env", "DATABASE_URL")],
        RunId::new(),
    );
    assert_ne!(again[0].digest.as_deref(), digests[1]);
    assert!(!format!("{found:?}").contains("postgres"));
}
