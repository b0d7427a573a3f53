use super::verify::{Node, parse};
use super::*;
use crate::run_vars::RunVars;
use proptest::prelude::*;

fn sources(dir: &std::path::Path) -> SecretSources {
    SecretSources {
        env_prefix: "FLOTILLA_TEST_TEMPLATE_NO_SUCH_PREFIX_".into(),
        dir: Some(dir.to_owned()),
    }
}

/// Renders `template` for `path`, with `${var:S}` standing for a secret whose value is `value`
/// (a secret from a file loses trailing line breaks; this keeps every value reachable).
fn render_secret(path: &str, template: &str, value: &str) -> Result<String, TemplateError> {
    let tmp = tempfile::tempdir().unwrap();
    let vars = BTreeMap::from([("S".to_owned(), value.to_owned())]);
    let secrets = sources(tmp.path());
    let run = RunVars::example();
    let renderer = Renderer {
        vars: &vars,
        secrets: &secrets,
        run: &run,
        mask_secrets: false,
    };
    let mut pieces = renderer.pieces(template)?;
    for piece in &mut pieces {
        if let Piece::Placeholder(p) = piece {
            p.secret = true;
        }
    }
    render_file(path, template, &pieces).map(|r| r.text)
}

/// The string at `path` (map keys, list indexes as decimal) in a parsed document.
fn at<'a>(node: &'a Node, path: &[&str]) -> &'a Node {
    path.iter().fold(node, |node, key| match node {
        Node::Map(map) => &map[&Node::Str((*key).to_owned())],
        Node::List(items) => &items[key.parse::<usize>().unwrap()],
        other => panic!("no {key} in {other:?}"),
    })
}

fn string(value: &str) -> Node {
    Node::Str(value.to_owned())
}

#[test]
fn resolves_vars_secrets_and_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("API_KEY"), "s3cr3t\n").unwrap();
    let vars = BTreeMap::from([("port".to_owned(), "18081".to_owned())]);
    let secrets = sources(tmp.path());
    let run = RunVars::example();
    let r = Renderer {
        vars: &vars,
        secrets: &secrets,
        run: &run,
        mask_secrets: false,
    };
    let out = r
        .render("port = ${var:port}\nkey = ${secret:API_KEY}\nlit = \"$${secret:API_KEY}\" $5")
        .unwrap();
    assert_eq!(
        out,
        "port = 18081\nkey = s3cr3t\nlit = \"${secret:API_KEY}\" $5"
    );
    // In a TOML file, the bare secret becomes a string and the variable stays a number.
    let out = r
        .render_file(
            "config/service.toml",
            "port = ${var:port}\nkey = ${secret:API_KEY}\nlit = \"$${secret:API_KEY}\"",
        )
        .unwrap();
    assert_eq!(
        out,
        "port = 18081\nkey = \"s3cr3t\"\nlit = \"${secret:API_KEY}\""
    );
    // A filter escapes where the file's name tells nothing; raw opts out.
    std::fs::write(tmp.path().join("Q"), "a\"b").unwrap();
    assert_eq!(
        r.render_file("app.conf", "k = \"${secret:Q|toml}\" ${secret:Q}")
            .unwrap(),
        "k = \"a\\\"b\" a\"b"
    );
    assert_eq!(r.render("${secret:Q|json}").unwrap(), "a\\\"b");
    assert_eq!(
        r.render_file("a.json", "[\"${secret:Q|raw}\"]").unwrap(),
        "[\"a\"b\"]"
    );
    // A dry run shows the mask, escaped and checked as the value is; an unresolved secret is
    // still an error.
    let masked = Renderer {
        mask_secrets: true,
        ..r
    };
    assert_eq!(
        masked
            .render_file("a.toml", "k = ${secret:Q}\nv = \"${secret:API_KEY}\"")
            .unwrap(),
        "k = \"********\"\nv = \"********\""
    );
    assert_eq!(
        masked.render("key = ${secret:API_KEY}").unwrap(),
        "key = ********"
    );
    assert_eq!(
        masked.render_file("a.toml", "${secret:NOPE}"),
        Err(TemplateError::UnknownSecret("NOPE".into()))
    );
    assert!(matches!(
        masked.render_file("a.toml", "k = '${secret:Q}'"),
        Err(TemplateError::Unsafe { .. })
    ));
}

#[test]
fn names_what_is_missing_without_values() {
    let tmp = tempfile::tempdir().unwrap();
    let vars = BTreeMap::new();
    let secrets = sources(tmp.path());
    let run = RunVars::example();
    let r = Renderer {
        vars: &vars,
        secrets: &secrets,
        run: &run,
        mask_secrets: false,
    };
    assert_eq!(
        r.render("${secret:NOPE}"),
        Err(TemplateError::UnknownSecret("NOPE".into()))
    );
    assert_eq!(
        r.render("${var:port}"),
        Err(TemplateError::UnknownVar("port".into()))
    );
    assert_eq!(
        r.render("${env:HOME}"),
        Err(TemplateError::Syntax(PlaceholderError::Unknown(
            "env:HOME".into()
        )))
    );
    assert_eq!(
        r.render("x ${var:port"),
        Err(TemplateError::Syntax(PlaceholderError::Unterminated(2)))
    );
    assert_eq!(
        r.render("${secret:../../etc/passwd}"),
        Err(TemplateError::UnknownSecret("../../etc/passwd".into()))
    );
    std::fs::write(tmp.path().join("K"), "v").unwrap();
    assert_eq!(
        r.render("${secret:K|base64}"),
        Err(TemplateError::Syntax(PlaceholderError::UnknownFilter(
            "secret:K|base64".into()
        )))
    );
}

#[test]
fn places_that_cannot_hold_a_secret_are_refused_naming_the_placeholder_only() {
    let value = "pa'ss\"\nword";
    let refused = [
        ("a.toml", "${var:S} = 1\n"),
        ("a.toml", "[t.${var:S}]\n"),
        ("a.toml", "k = '${var:S}'\n"),
        ("a.toml", "k = '''x${var:S}'''\n"),
        ("a.toml", "k = pre${var:S}\n"),
        ("a.toml", "k = 1 # ${var:S}\n"),
        ("a.json", "{${var:S}: 1}"),
        ("a.yaml", "k: plain ${var:S}\n"),
        ("a.yaml", "k: '${var:S}'\n"),
        ("a.yaml", "${var:S}: 1\n"),
        ("a.env", "K='${var:S}'\n"),
    ];
    for (path, template) in refused {
        let err = render_secret(path, template, value).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, TemplateError::Unsafe { .. }),
            "{path} {template:?}: {message}"
        );
        assert!(
            message.contains("${var:S}") && message.contains(path),
            "{message}"
        );
        assert!(!message.contains("word"), "the value leaked: {message}");
    }
}

#[test]
fn a_template_that_does_not_parse_is_refused() {
    let err = render_secret("a.json", "{\"k\": \"${var:S}\",}", "v").unwrap_err();
    assert!(matches!(err, TemplateError::Unparsable { .. }), "{err}");
    // A value in a comment must not end the comment.
    let err = render_secret("a.toml", "k = \"x\"\n# ${var:S}\n", "a\nb = [").unwrap_err();
    assert!(matches!(err, TemplateError::Unsafe { .. }), "{err}");
}

#[test]
fn unknown_formats_and_files_without_placeholders_are_written_as_they_are() {
    assert_eq!(
        render_secret("secrets/API_KEY", "${var:S}", "a\"b\n").unwrap(),
        "a\"b\n"
    );
    assert_eq!(
        render_secret("x.json", "not json at all", "v").unwrap(),
        "not json at all"
    );
}

/// Arbitrary text, with the characters that break or change config files drawn often.
fn nasty() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => prop::sample::select(vec![
            "\"", "'", "\\", "\n", "\r", "\t", "$", "#", "=", ":", " ", "\\u0041", "\\n", "${",
            "\"\"\"", "'''", "- ", ": ", "{", "}", "[", "]", ",", "\u{0}", "\u{7f}", "\u{85}",
            "\u{2028}", "\u{2029}", "\u{feff}", "\u{fffe}", "é", "日本", "🚀", "%", "`", "~", "&", "*", "!", "|", ">",
        ])
        .prop_map(str::to_owned),
        2 => "[a-zA-Z0-9]{1,4}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|parts| parts.concat())
}

/// Each file: a template with the secret inside a string and as a whole value, and where each
/// lands in the parsed document.
/// A place in a parsed document (map keys, list indexes) and the text expected there, `{}`
/// standing for the secret.
type Place = (Vec<&'static str>, &'static str);

fn cases() -> Vec<(&'static str, &'static str, Vec<Place>)> {
    vec![
        (
            "config/app.toml",
            "a = \"pre ${var:S} post\"\nb = ${var:S}\nl = [${var:S}, \"x\"]\n[t]\nc = \"\"\"x${var:S}\"\"\"\n",
            vec![
                (vec!["a"], "pre {} post"),
                (vec!["b"], "{}"),
                (vec!["l", "0"], "{}"),
                (vec!["t", "c"], "x{}"),
            ],
        ),
        (
            "config/app.json",
            "{\"a\": \"pre ${var:S} post\", \"b\": ${var:S}, \"l\": [1, ${var:S}]}",
            vec![
                (vec!["a"], "pre {} post"),
                (vec!["b"], "{}"),
                (vec!["l", "1"], "{}"),
            ],
        ),
        (
            "config/app.yaml",
            "a: \"pre ${var:S} post\"\nb: ${var:S}\nl:\n  - ${var:S}\n  - [${var:S}, x]\n",
            vec![
                (vec!["0", "a"], "pre {} post"),
                (vec!["0", "b"], "{}"),
                (vec!["0", "l", "0"], "{}"),
                (vec!["0", "l", "1", "0"], "{}"),
            ],
        ),
        (
            ".env",
            "A=\"pre ${var:S} post\"\nB=${var:S}\n",
            vec![(vec!["0", "1"], "pre {} post"), (vec!["1", "1"], "{}")],
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the secret holds, the file's own parser reads exactly it back where it was put.
    #[test]
    fn every_format_reads_back_exactly_the_secret(value in nasty()) {
        for (path, template, places) in cases() {
            let rendered = render_secret(path, template, &value)
                .map_err(|e| TestCaseError::fail(format!("{path}: {e}")))?;
            let format = Format::of_path(path).unwrap();
            let parsed = parse(format, &rendered)
                .map_err(|e| TestCaseError::fail(format!("{path}: {e}\n{rendered}")))?;
            for (place, expected) in &places {
                prop_assert_eq!(
                    at(&parsed, place),
                    &string(&expected.replace("{}", &value)),
                    "{} at {:?}:\n{}", path, place, rendered
                );
            }
        }
    }

    /// A filter escapes for a string nested in another format: JSON inside a YAML string.
    #[test]
    fn a_filter_nests_one_format_in_another(value in nasty()) {
        let rendered = render_secret("a.yaml", "k: \"{\\\"p\\\": \\\"${var:S|json}\\\"}\"\n", &value)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let parsed = parse(Format::Yaml, &rendered).unwrap();
        let Node::Str(inner) = at(&parsed, &["0", "k"]) else { panic!("{parsed:?}") };
        let json: serde_json::Value = serde_json::from_str(inner).unwrap();
        prop_assert_eq!(json["p"].as_str(), Some(value.as_str()));
    }
}

#[test]
fn resolves_the_run_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let vars = BTreeMap::new();
    let secrets = sources(tmp.path());
    let run = RunVars::example();
    let r = Renderer {
        vars: &vars,
        secrets: &secrets,
        run: &run,
        mask_secrets: true,
    };
    assert_eq!(
        r.render("id=${run:id} trace=${run:trace_id} ${service:name}/${service:instance}")
            .unwrap(),
        format!(
            "id={} trace=0af7651916cd43dd8448eb211c80319c ingest/a",
            run.run_id
        )
    );
    assert_eq!(
        r.render("${run:traceparent}").unwrap(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    let untraced = RunVars {
        traceparent: None,
        ..RunVars::example()
    };
    let r = Renderer {
        run: &untraced,
        ..r
    };
    assert_eq!(
        r.render("${run:trace_id}"),
        Err(TemplateError::NoTraceContext("run:trace_id".into()))
    );
}

#[test]
fn an_ini_file_takes_a_value_as_it_is_or_refuses_it_without_quoting_it() {
    let template = "[db]\npassword = ${var:S}\n";
    let written = render_secret("conf/app.ini", template, "pa\"ss\\wo$rd=é").unwrap();
    assert_eq!(written, "[db]\npassword = pa\"ss\\wo$rd=é\n");
    let refused = render_secret("conf/app.ini", template, "first\nsecond").unwrap_err();
    let reason = refused.to_string();
    assert!(
        reason.contains("INI") && reason.contains("line break"),
        "{reason}"
    );
    assert!(!reason.contains("first"), "{reason}");
}
