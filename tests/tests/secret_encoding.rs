//! A secret full of special characters reaches a service's TOML, JSON, YAML and `.env` files
//! exactly, through a real agent; a place in a file that cannot hold it safely is refused at
//! precheck with nothing changed, the reason naming the file and the placeholder, never the value.

use flotilla_tests::{Fleet, NatsServer, json_stdout, snapshot};
use serde_json::Value;

/// Quotes of both kinds, backslashes, a tab, a line break, `\u0041` as literal text (a TOML or
/// JSON parser would turn it into `A` if written raw), `$`, `#`, `=`, unicode, and spaces at both
/// ends (a secret file loses only trailing line breaks).
const SECRET: &str = " pa\"ss'wo\\rd\t\\u0041 \\n $HOME ${X} #=: é🚀\nline2 ";

/// The plan's `[[service.step]]` writing `content` to `path` (a literal string: the plan itself
/// adds no escapes).
fn write_step(path: &str, content: &str) -> String {
    format!(
        "[[service.step]]\naction = \"write_file\"\npath = \"{path}\"\ncontent = '''\n{content}'''\n"
    )
}

/// Runs (or with `dry`, dry-runs) a plan of `steps` for training; its exit code and JSON report.
fn run(fleet: &Fleet, steps: &str, dry: bool) -> (Option<i32>, Value) {
    let plan = fleet.write_plan(
        "encoding.toml",
        &format!("name = \"encoding\"\n[[service]]\nname = \"training\"\n{steps}"),
    );
    let mut args = vec!["migrate", plan.to_str().unwrap(), "--output", "json"];
    if dry {
        args.push("--dry-run");
    }
    let out = fleet.flotilla(&args);
    (out.status.code(), json_stdout(&out))
}

fn migrate(fleet: &Fleet, steps: &str) -> (Option<i32>, Value) {
    run(fleet, steps, false)
}

fn dry_run(fleet: &Fleet, steps: &str) -> (Option<i32>, Value) {
    run(fleet, steps, true)
}

/// The diff of a dry run's first step.
fn first_diff(report: &Value) -> &str {
    report["waves"][0]["targets"][0]["steps"][0]["diff"]
        .as_str()
        .unwrap_or_else(|| panic!("no diff in {report:#}"))
}

fn start() -> (NatsServer, Fleet) {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["training"]).unwrap();
    std::fs::write(
        fleet.dir().join("secrets/training/DB_PASSWORD"),
        format!("{SECRET}\n"),
    )
    .unwrap();
    (nats, fleet)
}

/// What the TOML, JSON, YAML and `.env` files the plan wrote read back as, with each format's
/// own parser, is exactly the secret, inside a string and as a whole value.
#[test]
fn a_secret_with_quotes_backslashes_and_escapes_lands_exactly_in_every_format() {
    let (_nats, fleet) = start();
    let steps = [
        write_step(
            "config/db.toml",
            "[db]\nurl = \"postgres://app:${secret:DB_PASSWORD}@db/app\"\npassword = ${secret:DB_PASSWORD}\n",
        ),
        write_step(
            "config/db.json",
            "{\"db\": {\"password\": \"${secret:DB_PASSWORD}\", \"list\": [${secret:DB_PASSWORD}]}}\n",
        ),
        write_step(
            "config/db.yaml",
            "db:\n  password: ${secret:DB_PASSWORD}\n  quoted: \"${secret:DB_PASSWORD}\"\n",
        ),
        write_step(".env", "DB_PASSWORD=${secret:DB_PASSWORD}\n"),
    ]
    .concat();
    let (code, report) = migrate(&fleet, &steps);
    assert_eq!(code, Some(0), "{report:#}");
    let read = |path: &str| std::fs::read_to_string(fleet.root("training").join(path)).unwrap();

    let toml: toml::Table = read("config/db.toml").parse().unwrap();
    assert_eq!(
        toml["db"]["url"].as_str(),
        Some(format!("postgres://app:{SECRET}@db/app").as_str())
    );
    assert_eq!(toml["db"]["password"].as_str(), Some(SECRET));

    let json: Value = serde_json::from_str(&read("config/db.json")).unwrap();
    assert_eq!(json["db"]["password"].as_str(), Some(SECRET));
    assert_eq!(json["db"]["list"][0].as_str(), Some(SECRET));

    let yaml = &yaml_rust2::YamlLoader::load_from_str(&read("config/db.yaml")).unwrap()[0];
    assert_eq!(yaml["db"]["password"].as_str(), Some(SECRET));
    assert_eq!(yaml["db"]["quoted"].as_str(), Some(SECRET));

    let env: Vec<(String, String)> = dotenvy::from_read_iter(read(".env").as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(env, [("DB_PASSWORD".to_owned(), SECRET.to_owned())]);
}

/// Where no escaping can make the secret safe (a bare TOML key, a TOML literal string, a plain
/// YAML scalar), the migration is refused at precheck: the tree is unchanged and the reason names
/// the file and the placeholder, not the value.
#[test]
fn a_place_that_cannot_hold_the_secret_is_refused_at_precheck_with_nothing_changed() {
    let (_nats, fleet) = start();
    let before = snapshot(&fleet.root("training"));
    let cases = [
        ("config/db.toml", "[db]\n${secret:DB_PASSWORD} = true\n"),
        (
            "config/db.toml",
            "[db]\npassword = '${secret:DB_PASSWORD}'\n",
        ),
        (
            "config/db.yaml",
            "db:\n  url: postgres://app:${secret:DB_PASSWORD}@db\n",
        ),
    ];
    for (path, content) in cases {
        // A good file first: the refusal must come before anything is written.
        let steps = write_step("config/first.json", "{}\n") + &write_step(path, content);
        let (code, report) = migrate(&fleet, &steps);
        assert_eq!(code, Some(1), "{report:#}");
        let training = &report["services"][0];
        assert_eq!(training["status"], "refused", "{report:#}");
        let reason = training["reason"].as_str().unwrap();
        assert!(
            reason.contains("precheck")
                && reason.contains(path)
                && reason.contains("${secret:DB_PASSWORD}"),
            "{reason}"
        );
        assert!(!reason.contains("pa\"ss"), "the value leaked: {reason}");
        assert_eq!(
            snapshot(&fleet.root("training")),
            before,
            "{content:?} changed the tree"
        );
    }
}

/// A dry run renders as the real run does: the diff shows the secret's place, escaped and
/// masked, in the new content and (after a real run wrote it escaped) in the old; and it refuses
/// an unsafe place with the real run's reason.
#[test]
fn a_dry_run_shows_the_escaped_secret_masked_and_refuses_what_the_run_refuses() {
    let (_nats, fleet) = start();
    let content = "[db]\nurl = \"postgres://app:${secret:DB_PASSWORD}@db/app\"\npassword = ${secret:DB_PASSWORD}\n";
    let (code, report) = dry_run(&fleet, &write_step("config/db.toml", content));
    assert_eq!(code, Some(0), "{report:#}");
    let diff = first_diff(&report);
    assert!(
        diff.contains("+url = \"postgres://app:********@db/app\"\n+password = \"********\"\n"),
        "{diff}"
    );
    let (code, report) = migrate(&fleet, &write_step("config/db.toml", content));
    assert_eq!(code, Some(0), "{report:#}");

    // The file now holds the secret escaped; the next dry run masks that form too.
    let (code, report) = dry_run(
        &fleet,
        &write_step("config/db.toml", &format!("{content}pool = 4\n")),
    );
    assert_eq!(code, Some(0), "{report:#}");
    let diff = first_diff(&report);
    assert!(
        diff.contains(" password = \"********\"\n+pool = 4"),
        "{diff}"
    );
    assert!(
        !report.to_string().contains("ss'wo"),
        "the secret leaked: {report:#}"
    );

    let unsafe_step = write_step("config/db.toml", "[db]\n${secret:DB_PASSWORD} = true\n");
    let (dry_code, dry) = dry_run(&fleet, &unsafe_step);
    let (real_code, real) = migrate(&fleet, &unsafe_step);
    assert_eq!(
        (dry_code, real_code),
        (Some(1), Some(1)),
        "{dry:#}\n{real:#}"
    );
    let dry_reason = dry["waves"][0]["targets"][0]["reason"].as_str().unwrap();
    let real_reason = real["services"][0]["reason"].as_str().unwrap();
    assert!(
        dry_reason.contains("config/db.toml: ${secret:DB_PASSWORD} cannot be written safely"),
        "{dry_reason}"
    );
    assert_eq!(dry_reason, real_reason);
}
