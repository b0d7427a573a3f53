use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use flotilla_schemas::{CommandId, InstanceId, Outcome, RunId, ServiceName, decode};
use proptest::prelude::*;

use super::*;

/// Secrets full of what breaks naive redaction: quotes, backslashes, URL and HTML specials,
/// control characters, spaces, multi-byte and astral characters.
fn nasty_secret() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        "[a-zA-Z0-9 \"'\\\\%+&=?#/:;<>{}\\[\\]@!$*~^|`\t\n\r\u{1b}\u{7f}éß€💥-]{6,40}",
    )
    .expect("the strategy's pattern is valid")
}

/// Text around a secret, as a log line or an error message would have it.
fn context() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z .:=/]{0,12}").expect("valid")
}

/// The forms of `secret` a leak would take: written out by independent encoders.
fn leaked_forms(secret: &str) -> Vec<String> {
    let mut url = reqwest::Url::parse("http://127.0.0.1:9/api").unwrap();
    url.query_pairs_mut().append_pair("token", secret);
    let form = url.query().unwrap()["token=".len()..].to_owned();
    let mut path = reqwest::Url::parse("http://127.0.0.1:9/").unwrap();
    path.path_segments_mut().unwrap().push(secret);
    // A URL parser drops tabs and line breaks: what is left is redacted only when long enough.
    let url_forms = [form, path.path()[1..].to_owned()];
    let url_forms = url_forms
        .into_iter()
        .filter(|_| url_stripped(secret).len() >= MIN_SECRET_BYTES);
    let mut forms: Vec<String> = url_forms.collect();
    forms.extend([
        secret.to_owned(),
        json_escape(secret),
        format!("{secret:?}"),
        json_escape(&format!("{secret:?}")),
        hex_forms(secret.as_bytes())[1].clone(),
    ]);
    forms.extend(base64_forms(secret.as_bytes()));
    forms
}

fn leaks(text: &str, secret: &str) -> Option<String> {
    leaked_forms(secret)
        .into_iter()
        .find(|form| text.contains(form.as_str()))
}

fn result_with(reason: String) -> RunResult {
    RunResult {
        reason: Some(reason),
        ..RunResult::new(
            RunId::new(),
            CommandId::new(),
            ServiceName::parse("svc").unwrap(),
            InstanceId::parse("a").unwrap(),
            time::OffsetDateTime::now_utc(),
            Outcome::RolledBack,
        )
    }
}

/// A failing check's reason, quoting the secret in every way the agent's code and its crates
/// quote text.
fn reasons(secret: &str) -> String {
    let mut url = reqwest::Url::parse("http://127.0.0.1:9/api").unwrap();
    url.query_pairs_mut().append_pair("token", secret);
    let raw_url = format!("http://127.0.0.1:9/api?token={secret}");
    let parsed = reqwest::Url::parse(&raw_url)
        .ok()
        .filter(|_| url_stripped(secret).len() >= MIN_SECRET_BYTES)
        .map(|u| u.to_string())
        .unwrap_or_default();
    let mut prefixed = b"Basic ".to_vec();
    prefixed.extend_from_slice(secret.as_bytes());
    format!(
        "GET {url} answered 404; {parsed}; pattern {secret:?} not found; {}; {}; {}; x{}",
        serde_json::json!({ "body": secret }),
        STANDARD.encode(format!("user:{secret}")),
        URL_SAFE.encode(&prefixed),
        hex_forms(secret.as_bytes())[0],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever encoder wrote a random nasty secret into whatever text, scrubbing removes it.
    #[test]
    fn no_encoding_of_a_secret_survives_scrubbing(
        secret in nasty_secret(),
        before in context(),
        after in context(),
    ) {
        let redactor = Redactor::default();
        redactor.learn([secret.clone()]);
        for form in leaked_forms(&secret) {
            let text = format!("{before}{form}{after}");
            let scrubbed = redactor.scrub(&text);
            prop_assert!(leaks(&scrubbed, &secret).is_none(), "{form:?} survived in {scrubbed:?}");
            prop_assert!(scrubbed.contains(REDACTED));
        }
        let text = reasons(&secret);
        let scrubbed = redactor.scrub(&text);
        prop_assert!(leaks(&scrubbed, &secret).is_none(), "leak in {scrubbed:?}");
    }

    /// What the publisher sends holds no secret and is still a valid result.
    #[test]
    fn published_results_carry_no_secret_and_still_decode(secret in nasty_secret()) {
        let redactor = Redactor::default();
        redactor.learn([secret.clone()]);
        let result = result_with(reasons(&secret));
        let bytes = redactor.encode(&result);
        let text = String::from_utf8(bytes.clone()).unwrap();
        prop_assert!(leaks(&text, &secret).is_none(), "leak in {text}");
        let decoded: RunResult = decode(&bytes).unwrap();
        prop_assert_eq!(decoded.command_id, result.command_id);
        prop_assert!(decoded.reason.unwrap().contains(REDACTED));
    }
}

proptest! {
    // Each case writes, fsyncs and reopens a journal.
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The journal's file holds no secret, and reads back the (redacted) result.
    #[test]
    fn journalled_results_carry_no_secret(secret in nasty_secret()) {
        let dir = tempfile::tempdir().unwrap();
        let redactor = Redactor::default();
        redactor.learn([secret.clone()]);
        let mut journal = crate::journal::Journal::open(dir.path()).unwrap();
        journal.redact_with(redactor);
        let result = result_with(reasons(&secret));
        journal
            .append(crate::journal::Record::Finished { result: result.clone() })
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join("journal.jsonl")).unwrap();
        prop_assert!(leaks(&text, &secret).is_none(), "leak in {text}");
        let unpublished = crate::journal::Journal::open(dir.path()).unwrap().unpublished();
        prop_assert_eq!(unpublished.len(), 1);
        let shown = format!("{:?}", unpublished);
        prop_assert!(leaks(&shown, &secret).is_none());
    }
}

/// Text without a secret is returned as it is (not copied); short values are not redacted.
#[test]
fn ordinary_text_is_left_alone_and_unchanged_text_is_not_copied() {
    let redactor = Redactor::default();
    assert!(matches!(redactor.scrub("nothing known"), Cow::Borrowed(_)));
    redactor.learn(["hunter22".to_owned(), "short".to_owned()]);
    let text = "GET /health answered 503 for inference/a1";
    assert!(matches!(redactor.scrub(text), Cow::Borrowed(_)));
    // Below the minimum a value is not redacted: it would match ordinary words.
    assert_eq!(redactor.scrub("a short text"), "a short text");
    assert_eq!(redactor.scrub("pw=hunter22!"), format!("pw={REDACTED}!"));
}

/// Of two secrets, one inside the other, the longer is replaced whole.
#[test]
fn a_value_holding_another_is_replaced_whole() {
    let redactor = Redactor::default();
    redactor.learn(["abcdefgh".to_owned(), "xx-abcdefgh-yy".to_owned()]);
    assert_eq!(
        redactor.scrub("k=xx-abcdefgh-yy;"),
        format!("k={REDACTED};")
    );
}

/// A secret inside an identifier cannot be redacted in place: the result's text goes instead.
#[test]
fn a_result_whose_identifiers_hold_the_secret_keeps_no_text() {
    let redactor = Redactor::default();
    let result = result_with("token abcd-1234 refused".into());
    // The run ID's text is a UUID: a secret equal to a piece of it cannot be redacted in place.
    let piece = result.run_id.to_string()[..8].to_owned();
    redactor.learn([piece.clone()]);
    let scrubbed = redactor.scrub_result(&result);
    assert_eq!(scrubbed.command_id, result.command_id);
    assert!(scrubbed.reason.unwrap().starts_with(REDACTED));
}

/// The sources are read at start and on refresh; a short value is refused by name only.
#[test]
fn secrets_are_read_from_both_sources_and_short_ones_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("API_KEY"), "long-enough-value\n").unwrap();
    let sources = SecretSources {
        env_prefix: "FLOTILLA_TEST_REDACT_NO_SUCH_PREFIX_".into(),
        dir: Some(dir.path().to_owned()),
    };
    let redactor = Redactor::from_sources(&sources).unwrap();
    assert_eq!(
        redactor.scrub("k=long-enough-value"),
        format!("k={REDACTED}")
    );
    // A file added later is learned on refresh; a short one is reported, never shown.
    std::fs::write(dir.path().join("LATER"), "rotated-value-2").unwrap();
    std::fs::write(dir.path().join("PIN"), "1234").unwrap();
    redactor.refresh();
    assert_eq!(redactor.scrub("rotated-value-2"), REDACTED);
    let err = Redactor::from_sources(&sources).err().unwrap();
    assert_eq!(
        err,
        TooShort {
            name: "PIN".into(),
            len: 4
        }
    );
    assert!(!err.to_string().contains("1234"));
}

/// The agent refuses a secret in a check's URL or arguments (defence in depth) and takes one in a body.
#[test]
fn checks_refuse_a_secret_where_it_would_show_and_take_one_in_a_body() {
    use flotilla_schemas::Check;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("API_KEY"), "long-enough-value").unwrap();
    let sources = SecretSources {
        env_prefix: "FLOTILLA_TEST_REDACT_NO_SUCH_PREFIX_".into(),
        dir: Some(dir.path().to_owned()),
    };
    let vars = std::collections::BTreeMap::new();
    let run = crate::run_vars::RunVars::example();
    let renderer = crate::template::Renderer {
        vars: &vars,
        secrets: &sources,
        run: &run,
        mask_secrets: false,
    };
    let check = |json: serde_json::Value| serde_json::from_value::<Check>(json).unwrap();
    let url = check(serde_json::json!({
        "type": "http", "url": "http://127.0.0.1:9/api?token=${secret:API_KEY}"
    }));
    let err = crate::expand::expand(&renderer, flotilla_schemas::fields::Table::Check, &url)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("${secret:API_KEY} is not allowed in url"),
        "{err}"
    );
    let args = check(serde_json::json!({
        "type": "command", "program": "true", "args": ["${secret:API_KEY}"]
    }));
    assert!(
        crate::expand::expand(&renderer, flotilla_schemas::fields::Table::Check, &args).is_err()
    );
    let body = check(serde_json::json!({
        "type": "http", "url": "http://127.0.0.1:9/login", "body": "k=${secret:API_KEY}"
    }));
    let Check::Http(http) =
        crate::expand::expand(&renderer, flotilla_schemas::fields::Table::Check, &body).unwrap()
    else {
        unreachable!()
    };
    assert_eq!(http.body.as_deref(), Some("k=long-enough-value"));
}
