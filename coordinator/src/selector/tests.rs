use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

fn agent(service: &str, instance: &str, labels: &[(&str, &str)]) -> Presence {
    serde_json::from_value(serde_json::json!({
        "schema": "flotilla.presence.v1", "service": service, "instance": instance,
        "version": "0.1.0", "accepts": [], "host": "h", "state": "idle",
        "labels": labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<std::collections::BTreeMap<_, _>>(),
        "started_at": "2026-01-01T00:00:00Z",
    }))
    .unwrap()
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

#[test]
fn every_kubectl_form_parses() {
    let s = Selector::parse(
        "region=eu, tier != canary,zone in (a, b),os notin (win),gpu,!spot,x==y,e=",
    )
    .unwrap();
    let ops: Vec<(&str, &Op)> = s
        .requirements()
        .iter()
        .map(|r| (r.key.as_str(), &r.op))
        .collect();
    assert_eq!(
        ops,
        [
            ("region", &Op::Equals("eu".into())),
            ("tier", &Op::NotEquals("canary".into())),
            ("zone", &Op::In(set(&["a", "b"]))),
            ("os", &Op::NotIn(set(&["win"]))),
            ("gpu", &Op::Exists),
            ("spot", &Op::Absent),
            ("x", &Op::Equals("y".into())),
            ("e", &Op::Equals(String::new())),
        ]
    );
    assert_eq!(
        s.to_string(),
        "region=eu,tier!=canary,zone in (a,b),os notin (win),gpu,!spot,x=y,e="
    );
}

#[test]
fn matching_follows_kubernetes() {
    let eu_canary = agent("ingest", "a", &[("region", "eu"), ("tier", "canary")]);
    let us = agent("ingest", "b", &[("region", "us")]);
    let old = agent("ingest", "c", &[]);
    let cases = [
        ("region=eu", [true, false, false]),
        ("tier!=canary", [false, true, true]),
        ("region in (eu,us)", [true, true, false]),
        ("region notin (eu)", [false, true, true]),
        ("tier", [true, false, false]),
        ("!tier", [false, true, true]),
        ("region=eu,tier!=canary", [false, false, false]),
        ("service=ingest,instance in (b,c)", [false, true, true]),
    ];
    for (text, expected) in cases {
        let s = Selector::parse(text).unwrap();
        let got = [&eu_canary, &us, &old].map(|a| s.matches(a));
        assert_eq!(got, expected, "{text}");
    }
}

#[test]
fn errors_name_the_column_and_the_reason() {
    let cases = [
        ("", 1, "a selector must not be empty"),
        ("region=eu,", 11, "expected a label key"),
        (
            "region=eu tier=x",
            11,
            "expected ',' between requirements, found \"tier\"",
        ),
        ("zone in a,b", 9, "expected '(' after in"),
        ("zone in (a", 11, "expected ',' or ')'"),
        (
            "zone notin ()",
            13,
            "the list of values of notin must not be empty",
        ),
        ("zone ~ a", 6, "unexpected \"~\""),
        ("-zone=a", 1, "key \"-zone\": the name part of a label key"),
        ("zone=a b", 8, "found \"b\""),
        ("zone=a$", 6, "value \"a$\": a label value"),
        ("!", 2, "expected a label key"),
        ("région=eu", 1, "key \"région\""),
    ];
    for (text, column, reason) in cases {
        let err = Selector::parse(text).unwrap_err();
        assert_eq!(err.column, column, "{text}: {err}");
        let message = err.to_string();
        assert!(message.contains(reason), "{text}: {message}");
        assert!(
            message.contains(&format!("at column {column}")),
            "{message}"
        );
    }
}

#[test]
fn and_requires_both() {
    let both = Selector::parse("region=eu")
        .unwrap()
        .and(&Selector::parse("tier=canary").unwrap());
    assert_eq!(both.to_string(), "region=eu,tier=canary");
    assert!(both.matches(&agent("s", "a", &[("region", "eu"), ("tier", "canary")])));
    assert!(!both.matches(&agent("s", "a", &[("region", "eu")])));
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,10}[a-zA-Z0-9])?"
        .prop_filter("not an operator word", |n| n != "in" && n != "notin")
}

fn key() -> impl Strategy<Value = String> {
    (
        proptest::option::of("[a-z0-9]{1,5}(\\.[a-z0-9]{1,5}){0,2}"),
        name(),
    )
        .prop_map(|(prefix, name)| match prefix {
            Some(p) => format!("{p}/{name}"),
            None => name,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let values = || proptest::collection::btree_set(name(), 1..4);
    prop_oneof![
        name().prop_map(Op::Equals),
        name().prop_map(Op::NotEquals),
        values().prop_map(Op::In),
        values().prop_map(Op::NotIn),
        Just(Op::Exists),
        Just(Op::Absent),
    ]
}

fn selector() -> impl Strategy<Value = Selector> {
    proptest::collection::vec((key(), op()), 1..5).prop_map(|rs| Selector {
        requirements: rs
            .into_iter()
            .map(|(key, op)| Requirement { key, op })
            .collect(),
    })
}

proptest! {
    /// The canonical text reads back to the same selector, spaced out or not.
    #[test]
    fn the_canonical_text_reads_back(s in selector()) {
        let text = s.to_string();
        prop_assert_eq!(Selector::parse(&text).unwrap(), s.clone());
        let spaced = text.replace(',', " , ").replace('(', " ( ").replace("!=", " != ");
        prop_assert_eq!(Selector::parse(&spaced).unwrap(), s);
    }

    /// Any text is parsed or refused at a column within it (or just after its end), never a panic.
    #[test]
    fn any_text_is_parsed_or_refused_at_a_column_inside_it(text in "[a-z=!,() ~é.-]{0,24}") {
        if let Err(e) = Selector::parse(&text) {
            prop_assert!(e.column >= 1 && e.column <= text.chars().count() + 1, "{}", e);
        }
    }

    /// A requirement and its negation never both hold.
    #[test]
    fn a_requirement_and_its_negation_disagree(key in key(), value in proptest::option::of(name()), want in name()) {
        let lookup = value.as_deref();
        let pairs = [
            (Op::Equals(want.clone()), Op::NotEquals(want.clone())),
            (Op::In(BTreeSet::from([want.clone()])), Op::NotIn(BTreeSet::from([want]))),
            (Op::Exists, Op::Absent),
        ];
        for (yes, no) in pairs {
            let yes = Requirement { key: key.clone(), op: yes };
            let no = Requirement { key: key.clone(), op: no };
            prop_assert_ne!(yes.holds(lookup), no.holds(lookup));
        }
    }
}
