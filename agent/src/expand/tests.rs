use std::collections::BTreeMap;

use flotilla_schemas::{Check, HttpCheck, Precondition, Step, Workload};
use serde_json::json;

use super::*;
use crate::config::SecretSources;
use crate::run_vars::RunVars;

fn with_renderer<R>(f: impl FnOnce(&Renderer<'_>) -> R) -> R {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("API_KEY"), "long-enough-value").unwrap();
    let secrets = SecretSources {
        env_prefix: "FLOTILLA_TEST_EXPAND_NO_SUCH_PREFIX_".into(),
        dir: Some(dir.path().to_owned()),
    };
    let vars = BTreeMap::from([
        ("name".to_owned(), "ingest".to_owned()),
        ("up".to_owned(), "../outside".to_owned()),
    ]);
    let run = RunVars::example();
    f(&Renderer {
        vars: &vars,
        secrets: &secrets,
        run: &run,
        mask_secrets: false,
    })
}

fn step(value: serde_json::Value) -> Step {
    serde_json::from_value(value).unwrap()
}

#[test]
fn step_paths_and_texts_are_expanded_and_a_template_is_left_to_render_file() {
    with_renderer(|r| {
        let write = step(json!({
            "action": "write_file", "path": "config/${var:name}-${service:instance}.toml",
            "content": "name = \"${var:name}\""
        }));
        let Step::WriteFile { path, content, .. } = expand(r, Table::Step, &write).unwrap() else {
            unreachable!()
        };
        assert_eq!(path, "config/ingest-a.toml");
        assert_eq!(content, "name = \"${var:name}\"");
        let replace = step(json!({
            "action": "replace_text", "path": "${service:name}.conf",
            "find": "port=1", "replace": "name=${var:name} $${HOME}"
        }));
        assert_eq!(
            expand(r, Table::Step, &replace).unwrap(),
            step(json!({
                "action": "replace_text", "path": "ingest.conf",
                "find": "port=1", "replace": "name=ingest ${HOME}"
            }))
        );
        let condition: Precondition =
            serde_json::from_value(json!({"type": "file_exists", "path": "${var:name}.toml"}))
                .unwrap();
        assert_eq!(
            expand(r, Table::Precondition, &condition).unwrap(),
            Precondition::FileExists {
                path: "ingest.toml".into()
            }
        );
    });
}

#[test]
fn a_path_that_leaves_the_root_once_expanded_is_refused() {
    with_renderer(|r| {
        let delete = step(json!({"action": "delete", "path": "${var:up}/x"}));
        let err = expand(r, Table::Step, &delete).unwrap_err().to_string();
        assert_eq!(
            err,
            "path: once expanded, path \"../outside/x\" leaves the service root ('..')"
        );
        let text = expand_text(r, Takes::Path, "config_files[0]", "${var:up}.toml");
        assert!(matches!(text, Err(ExpandError::Path { .. })), "{text:?}");
        let secret = step(json!({"action": "delete", "path": "${secret:API_KEY}"}));
        let err = expand(r, Table::Step, &secret).unwrap_err().to_string();
        assert!(
            err.starts_with("${secret:API_KEY} is not allowed in path"),
            "{err}"
        );
    });
}

#[test]
fn a_field_that_takes_no_placeholder_refuses_one() {
    with_renderer(|r| {
        let run = step(
            json!({"action": "run_command", "program": "${var:name}", "args": ["${var:name}"]}),
        );
        let err = expand(r, Table::Step, &run).unwrap_err().to_string();
        assert!(
            err.starts_with("${var:name} is not allowed in program"),
            "{err}"
        );
        let job: Workload = serde_json::from_value(
            json!({"type": "job", "name": "j", "program": "true", "throughput_field": "${run:id}"}),
        )
        .unwrap();
        assert!(matches!(
            expand(r, Table::Workload, &job),
            Err(ExpandError::Field(_))
        ));
    });
}

#[test]
fn checks_take_secrets_only_in_a_body_and_headers() {
    with_renderer(|r| {
        let check: Check = serde_json::from_value(json!({
            "type": "http", "url": "http://127.0.0.1:9/${service:name}",
            "body_contains": "${var:name}",
            "headers": {"Authorization": "Bearer ${secret:API_KEY}", "X-Id": "${run:id}"}
        }))
        .unwrap();
        let Check::Http(http) = expand(r, Table::Check, &check).unwrap() else {
            unreachable!()
        };
        assert_eq!(http.url.as_deref(), Some("http://127.0.0.1:9/ingest"));
        assert_eq!(http.body_contains.as_deref(), Some("ingest"));
        assert_eq!(http.headers["Authorization"], "Bearer long-enough-value");
        let health = HttpCheck {
            url: Some("http://h/${secret:API_KEY}".into()),
            ..http
        };
        let err = expand(r, Table::Health, &health).unwrap_err().to_string();
        assert!(
            err.starts_with("${secret:API_KEY} is not allowed in url"),
            "{err}"
        );
        let unknown = step(json!({"action": "delete", "path": "${var:nope}"}));
        let err = expand(r, Table::Step, &unknown).unwrap_err().to_string();
        assert_eq!(
            err,
            "path: variable \"nope\" is not defined in the agent's [vars]"
        );
    });
}
