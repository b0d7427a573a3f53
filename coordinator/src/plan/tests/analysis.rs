//! `[analysis]` and `[[wave.analysis]]`: what is accepted, what is refused and where.

use super::*;

fn plan(analysis: &str, gate: &str) -> String {
    format!(
        "name = \"a\"\n[[step]]\naction = \"restart\"\n{analysis}\n[[wave]]\nname = \"canary\"\nservices = [\"ingest\"]\n[[wave.analysis]]\nname = \"errors\"\n{gate}\n[[service]]\nname = \"ingest\"\n[[service]]\nname = \"training\"\n"
    )
}

const PROMETHEUS: &str = "[analysis]\nprometheus = \"http://127.0.0.1:9090/\"";

fn refusal(text: &str) -> String {
    Plan::parse(text).unwrap_err().to_string()
}

#[test]
fn a_gate_is_read_with_its_threshold_and_renders_the_run_placeholders() {
    let text = plan(
        PROMETHEUS,
        "query = 'sum(rate(x{service=\"${service:name}\",run=\"${run:id}\"}[1m])) or vector(0)'\nmax_increase = \"10%\"\ninconclusive = \"warn\"",
    );
    let plan = Plan::parse(&text).unwrap();
    let analysis = plan.analysis.as_ref().unwrap();
    assert_eq!(analysis.prometheus, "http://127.0.0.1:9090");
    let gate = &analysis.gates[0];
    assert_eq!(
        (gate.wave.as_str(), gate.name.as_str()),
        ("canary", "errors")
    );
    assert_eq!(gate.threshold, Threshold::MaxIncrease(0.1));
    assert_eq!(gate.inconclusive, flotilla_schemas::Inconclusive::Warn);
    let queries = analysis.queries("canary", "R1", &["ingest".into(), "b".into()]);
    assert_eq!(
        queries.iter().map(|q| q.query.as_str()).collect::<Vec<_>>(),
        [
            "sum(rate(x{service=\"ingest\",run=\"R1\"}[1m])) or vector(0)",
            "sum(rate(x{service=\"b\",run=\"R1\"}[1m])) or vector(0)"
        ]
    );
    assert!(
        analysis
            .queries("rest", "R1", &["training".into()])
            .is_empty()
    );
}

#[test]
fn a_query_without_service_is_one_per_wave_with_max_as_the_default_failing_policy() {
    let plan = Plan::parse(&plan(PROMETHEUS, "query = 'up'\nmax = 0.5")).unwrap();
    let analysis = plan.analysis.unwrap();
    assert_eq!(analysis.gates[0].threshold, Threshold::Max(0.5));
    assert_eq!(
        analysis.gates[0].inconclusive,
        flotilla_schemas::Inconclusive::Fail
    );
    let queries = analysis.queries("canary", "R", &["a".into(), "b".into()]);
    assert_eq!(queries.len(), 1);
}

#[test]
fn broken_gates_are_refused_at_their_key() {
    let cases = [
        (
            plan(PROMETHEUS, "query = 'up'\nmax = 1\nmax_increase = \"5%\""),
            "key wave[0].analysis[0].max_increase: an analysis gate takes either `max` or `max_increase`, not both",
        ),
        (
            plan(PROMETHEUS, "query = 'up'"),
            "an analysis gate needs `max` (a value) or `max_increase` (a percentage)",
        ),
        (
            plan(PROMETHEUS, "query = 'up'\nmax_increase = 5"),
            "max_increase is a percentage, like \"10%\"",
        ),
        (
            plan(PROMETHEUS, "query = 'up{x=\"${secret:TOKEN}\"}'\nmax = 1"),
            "key wave[0].analysis[0].query: an analysis query takes only ${run:id} and ${service:name}",
        ),
        (
            plan(PROMETHEUS, "query = 'up{x=\"${wave}\"}'\nmax = 1"),
            "unknown placeholder ${wave}",
        ),
        (
            plan(
                "[analysis]\nprometheus = \"127.0.0.1:9090\"",
                "query = 'up'\nmax = 1",
            ),
            "key analysis.prometheus: \"127.0.0.1:9090\" is not an http:// or https:// URL",
        ),
        (
            plan("", "query = 'up'\nmax = 1"),
            "wave \"canary\" has [[wave.analysis]] gates but the plan has no [analysis]",
        ),
        (
            plan(PROMETHEUS, "query = 'up'\nmax = 1\nwindow = \"1m\""),
            "unknown field `window`",
        ),
    ];
    for (text, expected) in cases {
        let error = refusal(&text);
        assert!(error.contains(expected), "{expected:?} not in {error}");
    }
}
