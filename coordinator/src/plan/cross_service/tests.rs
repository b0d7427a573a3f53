//! `[cross_service]` and `[service.cross_service]`: defaults, overrides, and what `plan check`
//! refuses (with the line).

use flotilla_schemas::{ServiceName, SettingProbe};

use crate::plan::Plan;

/// Two services of another team: `ingest` keeps the database URL in TOML, `preprocess` in a
/// `.env` under another name, each with its own secret key. `extra` goes at the end.
fn plan(extra: &str) -> String {
    format!(
        r#"name = "foreign"
[[step]]
action = "restart"

[cross_service]
config_files = ["config/service.toml"]
required_keys = ["db.url"]
secret_keys = ["secrets.api_key"]
[cross_service.settings]
database_url = "db.url"
region = {{ file = "region.txt", key = "region" }}

[[service]]
name = "ingest"
[service.cross_service]
config_files = ["config/ingest.toml"]

[[service]]
name = "preprocess"
[service.cross_service]
config_files = ["settings.env"]
required_keys = []
secret_keys = [{{ key = "API_TOKEN" }}]
settings = {{ database_url = "DATABASE_URL" }}

[[service]]
name = "plain"
{extra}"#
    )
}

fn inspect_of(plan: &Plan, name: &str) -> crate::plan::ServiceInspect {
    let service = plan.service(&ServiceName::parse(name).unwrap()).unwrap();
    plan.cross_service
        .as_ref()
        .unwrap()
        .for_service(service.cross_service.as_ref())
        .unwrap()
}

fn probe(name: &str, file: &str, key: &str) -> SettingProbe {
    SettingProbe {
        name: name.into(),
        file: file.into(),
        key: key.into(),
    }
}

fn refusal(text: &str) -> String {
    Plan::parse(text).unwrap_err().to_string()
}

#[test]
fn each_service_gets_its_own_files_keys_and_settings_over_the_fleet_defaults() {
    let plan = Plan::parse(&plan("")).unwrap();
    let ingest = inspect_of(&plan, "ingest");
    assert_eq!(ingest.config_files, ["config/ingest.toml", "region.txt"]);
    assert!(ingest.has_standard);
    assert_eq!(ingest.required_keys, ["db.url"]);
    assert_eq!(
        ingest.secret_keys,
        [(
            "config/ingest.toml".to_owned(),
            "secrets.api_key".to_owned()
        )]
    );
    assert_eq!(
        ingest.settings,
        [
            probe("database_url", "config/ingest.toml", "db.url"),
            probe("region", "region.txt", "region"),
        ]
    );
    let preprocess = inspect_of(&plan, "preprocess");
    assert_eq!(preprocess.config_files, ["settings.env", "region.txt"]);
    assert!(preprocess.required_keys.is_empty());
    assert_eq!(
        preprocess.secret_keys,
        [("settings.env".to_owned(), "API_TOKEN".to_owned())]
    );
    assert_eq!(
        preprocess.settings[0],
        probe("database_url", "settings.env", "DATABASE_URL")
    );
    // No [service.cross_service]: the fleet's keys as they are.
    let plain = inspect_of(&plan, "plain");
    assert_eq!(plain.config_files, ["config/service.toml", "region.txt"]);
    assert_eq!(
        plain.settings[0],
        probe("database_url", "config/service.toml", "db.url")
    );
}

#[test]
fn a_plan_without_the_new_keys_reads_as_before() {
    let text = "name = \"old\"\n[[step]]\naction = \"restart\"\n[[service]]\nname = \"a\"\n\
                [cross_service]\ncommunication = true\nconfig_files = [\"config/service.toml\", \"legacy.conf\"]\n\
                required_keys = [\"service.name\"]\n";
    let plan = Plan::parse(text).unwrap();
    let a = inspect_of(&plan, "a");
    assert_eq!(a.config_files, ["config/service.toml", "legacy.conf"]);
    assert!(a.secret_keys.is_empty() && a.settings.is_empty());
    assert_eq!(a.required_keys, ["service.name"]);
}

#[test]
fn a_service_placing_a_setting_the_fleet_does_not_declare_is_refused_at_its_line() {
    let text = plan("[service.cross_service]\nsettings = { databse_url = \"DB\" }\n");
    let err = refusal(&text);
    assert!(
        err.contains("line 29, key service[2].cross_service.settings.databse_url: ")
            && err.contains("does not declare"),
        "{err}"
    );
}

#[test]
fn service_keys_without_a_cross_service_table_are_refused() {
    let text = "name = \"p\"\n[[step]]\naction = \"restart\"\n[[service]]\nname = \"a\"\n\
                [service.cross_service]\nconfig_files = [\"x.toml\"]\n";
    let err = refusal(text);
    assert!(
        err.contains("key service[0].cross_service: ") && err.contains("no [cross_service]"),
        "{err}"
    );
}

#[test]
fn a_bare_key_in_a_service_with_no_config_files_is_refused() {
    let text = plan("[service.cross_service]\nconfig_files = []\n");
    let err = refusal(&text);
    assert!(
        err.contains("line 8, key cross_service.secret_keys[0]: for service plain: ")
            && err.contains("names no file"),
        "{err}"
    );
}

#[test]
fn files_outside_the_root_empty_keys_and_secrets_in_file_names_are_refused() {
    for (extra, at) in [
        (
            "[service.cross_service]\nconfig_files = [\"../up.env\"]\n",
            "line 29, key service[2].cross_service.config_files[0]: ",
        ),
        (
            "[service.cross_service]\nsecret_keys = [{ file = \"/etc/x\", key = \"k\" }]\n",
            "line 29, key service[2].cross_service.secret_keys[0].file: ",
        ),
        (
            "[service.cross_service]\nsecret_keys = [\"\"]\n",
            "line 29, key service[2].cross_service.secret_keys[0]: the key is empty",
        ),
        (
            "[service.cross_service]\nsettings = { region = { file = \"${secret:X}.env\", key = \"R\" } }\n",
            "key service[2].cross_service.settings.region.file: ${secret:X} is not allowed",
        ),
        (
            "[service.cross_service]\nsettings = { region = { fil = \"a\", key = \"R\" } }\n",
            "a key (\"db.url\"), a table",
        ),
    ] {
        let err = refusal(&plan(extra));
        assert!(err.contains(at), "{extra}: {err}");
    }
}

#[test]
fn the_reference_examples_are_valid() {
    let doc = include_str!("../../../../docs/plan-reference.md");
    let block = |heading: &str| {
        let start = doc
            .find(heading)
            .and_then(|i| doc[i..].find("```toml\n").map(|j| i + j + 8))
            .expect("the section has an example");
        let end = start + doc[start..].find("\n```").expect("the example ends");
        format!(
            "name = \"doc\"\n[[step]]\naction = \"restart\"\n{}",
            &doc[start..end]
        )
    };
    let fleet = block("## Cross-service checks (`[cross_service]`)");
    let fleet = Plan::parse(&format!("{fleet}\n[[service]]\nname = \"a\"\n")).unwrap();
    let a = inspect_of(&fleet, "a");
    assert_eq!(
        a.config_files,
        ["config/service.toml", "legacy.conf", "region.conf"]
    );
    let per_service = Plan::parse(&block("### Per-service files and keys")).unwrap();
    let preprocess = inspect_of(&per_service, "preprocess");
    assert_eq!(
        preprocess.settings,
        [probe("database_url", "settings.env", "DATABASE_URL")]
    );
    assert!(inspect_of(&per_service, "training").settings.is_empty());
    assert_eq!(
        inspect_of(&per_service, "ingest").secret_keys,
        [(
            "config/ingest.toml".to_owned(),
            "secrets.api_key".to_owned()
        )]
    );
}

#[test]
fn false_leaves_a_setting_out_for_one_service_or_for_all_that_do_not_place_it() {
    let opted = Plan::parse(&plan(
        "[service.cross_service]\nsettings = { database_url = false }\n",
    ))
    .unwrap();
    let plain = inspect_of(&opted, "plain");
    let names: Vec<&str> = plain.settings.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["region"]);
    assert_eq!(inspect_of(&opted, "ingest").settings.len(), 2);
    // Fleet-wide `false`: only the services that place it hold it.
    let text = plan("").replace("database_url = \"db.url\"", "database_url = false");
    let placed = Plan::parse(&text).unwrap();
    assert_eq!(inspect_of(&placed, "ingest").settings.len(), 1);
    assert_eq!(
        inspect_of(&placed, "preprocess").settings[0],
        probe("database_url", "settings.env", "DATABASE_URL")
    );
    for (extra, reason) in [
        ("settings = { database_url = true }", "true is not a place"),
        (
            "secret_keys = [false]",
            "a secret key is a key or { file, key }",
        ),
    ] {
        let err = refusal(&plan(&format!("[service.cross_service]\n{extra}\n")));
        assert!(err.contains(reason), "{err}");
    }
}
