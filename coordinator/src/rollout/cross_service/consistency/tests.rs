//! Declared secret keys, leaks, and settings across services: named, never shown.

use flotilla_schemas::{ConfigShape, Inspection, SettingProbe, SettingReport};

use super::{config_problems, settings_problems};
use crate::plan::ServiceInspect;

fn shape(path: &str, keys: &[&str], secrets: &[&str]) -> ConfigShape {
    ConfigShape {
        path: path.into(),
        exists: true,
        format: "standard".into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        fingerprint: String::new(),
        literal_secrets: secrets.iter().map(|k| k.to_string()).collect(),
        secret_outside_keys: false,
    }
}

fn report(name: &str, file: &str, key: &str, digest: Option<&str>) -> SettingReport {
    SettingReport {
        name: name.into(),
        file: file.into(),
        key: key.into(),
        found: digest.is_some(),
        digest: digest.map(str::to_owned),
        detail: digest
            .is_none()
            .then(|| format!("the file has no key {key}")),
    }
}

/// `settings.env` is the service's standard configuration and holds `API_TOKEN`, its secret.
fn spec() -> ServiceInspect {
    ServiceInspect {
        config_files: vec!["settings.env".into(), "extra.toml".into()],
        has_standard: true,
        required_keys: vec!["DATABASE_URL".into()],
        secret_keys: vec![("settings.env".into(), "API_TOKEN".into())],
        settings: vec![SettingProbe {
            name: "database_url".into(),
            file: "settings.env".into(),
            key: "DATABASE_URL".into(),
        }],
    }
}

fn inspection(config: Vec<ConfigShape>, settings: Vec<SettingReport>) -> Inspection {
    Inspection {
        checks: Vec::new(),
        config,
        settings,
        gates: Vec::new(),
    }
}

#[test]
fn a_declared_secret_key_holding_its_secret_is_no_problem() {
    let found = inspection(
        vec![
            shape(
                "settings.env",
                &["API_TOKEN", "DATABASE_URL"],
                &["API_TOKEN"],
            ),
            shape("extra.toml", &["a"], &[]),
        ],
        vec![report(
            "database_url",
            "settings.env",
            "DATABASE_URL",
            Some("d1"),
        )],
    );
    assert_eq!(
        config_problems("p/a", &found, &spec()),
        Vec::<String>::new()
    );
}

#[test]
fn a_secret_under_another_key_or_file_or_outside_any_key_is_a_leak() {
    let mut extra = shape("extra.toml", &["log.tag"], &["log.tag"]);
    extra.secret_outside_keys = true;
    let found = inspection(
        vec![
            shape(
                "settings.env",
                &["API_TOKEN", "DATABASE_URL", "DEBUG_DUMP"],
                &["API_TOKEN", "DEBUG_DUMP"],
            ),
            extra,
        ],
        vec![report(
            "database_url",
            "settings.env",
            "DATABASE_URL",
            Some("d1"),
        )],
    );
    let problems = config_problems("p/a", &found, &spec());
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[0].starts_with("p/a: settings.env holds a literal secret in DEBUG_DUMP")
            && problems[0].contains("a leak"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("p/a: extra.toml holds a literal secret in log.tag"),
        "{problems:?}"
    );
    assert!(problems[2].contains("outside any key"), "{problems:?}");
    // The declared key is the same name in the other file: still a leak there.
    let elsewhere = inspection(
        vec![
            shape(
                "settings.env",
                &["API_TOKEN", "DATABASE_URL"],
                &["API_TOKEN"],
            ),
            shape("extra.toml", &["API_TOKEN"], &["API_TOKEN"]),
        ],
        vec![report(
            "database_url",
            "settings.env",
            "DATABASE_URL",
            Some("d1"),
        )],
    );
    let problems = config_problems("p/a", &elsewhere, &spec());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("extra.toml holds a literal secret in API_TOKEN"));
}

#[test]
fn a_declared_secret_key_missing_or_holding_no_secret_is_a_problem() {
    let missing = inspection(
        vec![
            shape("settings.env", &["DATABASE_URL"], &[]),
            shape("extra.toml", &[], &[]),
        ],
        vec![report(
            "database_url",
            "settings.env",
            "DATABASE_URL",
            Some("d1"),
        )],
    );
    assert_eq!(
        config_problems("p/a", &missing, &spec()),
        ["p/a: settings.env lacks secret key API_TOKEN"]
    );
    let literal = inspection(
        vec![
            shape("settings.env", &["API_TOKEN", "DATABASE_URL"], &[]),
            shape("extra.toml", &[], &[]),
        ],
        vec![report(
            "database_url",
            "settings.env",
            "DATABASE_URL",
            Some("d1"),
        )],
    );
    let problems = config_problems("p/a", &literal, &spec());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("API_TOKEN is declared to hold a resolved secret but holds none"));
}

#[test]
fn a_setting_not_found_or_not_reported_is_a_problem() {
    let shapes = || {
        vec![
            shape(
                "settings.env",
                &["API_TOKEN", "DATABASE_URL"],
                &["API_TOKEN"],
            ),
            shape("extra.toml", &[], &[]),
        ]
    };
    let unfound = inspection(
        shapes(),
        vec![report("database_url", "settings.env", "DATABASE_URL", None)],
    );
    assert_eq!(
        config_problems("p/a", &unfound, &spec()),
        [
            "p/a: setting database_url (DATABASE_URL in settings.env) not found: the file has no key DATABASE_URL"
        ]
    );
    let old_agent = inspection(shapes(), Vec::new());
    let problems = config_problems("p/a", &old_agent, &spec());
    assert!(
        problems.len() == 1 && problems[0].contains("setting database_url was not reported"),
        "{problems:?}"
    );
}

#[test]
fn settings_that_agree_pass_and_those_that_differ_name_the_services_not_the_values() {
    let agree = [
        (
            "ingest/a".to_owned(),
            vec![report(
                "database_url",
                "config/ingest.toml",
                "db.url",
                Some("d1"),
            )],
        ),
        (
            "preprocess/a".to_owned(),
            vec![report(
                "database_url",
                "settings.env",
                "DATABASE_URL",
                Some("d1"),
            )],
        ),
    ];
    assert!(settings_problems(&agree).is_empty());
    let mut differ = agree.to_vec();
    differ.push((
        "preprocess/b".to_owned(),
        vec![report(
            "database_url",
            "settings.env",
            "DATABASE_URL",
            Some("d2"),
        )],
    ));
    let problems = settings_problems(&differ);
    assert_eq!(
        problems,
        [
            "setting database_url differs across services (2 values; values are not shown): \
          value 1: ingest/a (db.url in config/ingest.toml), preprocess/a (DATABASE_URL in settings.env); \
          value 2: preprocess/b (DATABASE_URL in settings.env)"
        ]
    );
    assert!(!problems[0].contains("d1") && !problems[0].contains("d2"));
}
