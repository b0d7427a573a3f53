use super::*;

fn agent(service: &str, instance: &str, labels: &[(&str, &str)]) -> Presence {
    serde_json::from_value(serde_json::json!({
        "schema": "flotilla.presence.v1", "service": service, "instance": instance,
        "version": "0.1.0", "accepts": [], "host": "h", "state": "idle",
        "labels": labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
        "started_at": "2026-01-01T00:00:00Z",
    }))
    .unwrap()
}

fn targets(agents: &[Presence]) -> Vec<(ServiceName, InstanceId)> {
    agents
        .iter()
        .map(|a| (a.service.clone(), a.instance.clone()))
        .collect()
}

const STEP: &str = "[[step]]\naction = \"delete\"\npath = \"x\"\n";

fn plan(waves: &str, services: &str) -> Plan {
    Plan::parse(&format!("name = \"p\"\n{STEP}{waves}{services}")).unwrap()
}

fn names(waves: &[Wave]) -> Vec<(String, Vec<String>, Option<u32>)> {
    waves
        .iter()
        .map(|w| {
            let members = w.placed.as_ref().unwrap().targets.iter();
            let members = members.map(|(s, i)| format!("{s}/{i}")).collect();
            (w.name.clone(), members, w.cap())
        })
        .collect()
}

#[test]
fn a_canary_wave_takes_the_labelled_agent_and_the_rest_takes_the_others() {
    let plan = plan(
        "[[wave]]\nname = \"canary\"\nselector = \"tier=canary\"\n[[wave]]\nname = \"all\"\nmax_parallel = \"50%\"\n",
        "[[service]]\nname = \"ingest\"\n[[service]]\nname = \"web\"\n",
    );
    let agents = [
        agent("web", "b", &[]),
        agent("ingest", "b", &[("tier", "stable")]),
        agent("ingest", "a", &[("tier", "canary")]),
        agent("web", "a", &[]),
    ];
    let waves = place(&plan, &targets(&agents), &agents, None).unwrap();
    assert_eq!(
        names(&waves),
        [
            ("canary".into(), vec!["ingest/a".into()], None),
            (
                "all".into(),
                vec!["ingest/b".into(), "web/a".into(), "web/b".into()],
                Some(2)
            ),
        ]
    );
}

#[test]
fn an_agent_matched_by_two_waves_goes_to_the_first() {
    let plan = plan(
        "[[wave]]\nname = \"eu\"\nselector = \"region=eu\"\n[[wave]]\nname = \"canary\"\nselector = \"tier=canary\"\n",
        "[[service]]\nname = \"ingest\"\n",
    );
    let agents = [
        agent("ingest", "a", &[("region", "eu"), ("tier", "canary")]),
        agent("ingest", "b", &[("tier", "canary")]),
        agent("ingest", "c", &[]),
    ];
    let waves = place(&plan, &targets(&agents), &agents, None).unwrap();
    let got: Vec<_> = names(&waves).into_iter().map(|(n, m, _)| (n, m)).collect();
    assert_eq!(
        got,
        [
            ("eu".into(), vec!["ingest/a".to_owned()]),
            ("canary".into(), vec!["ingest/b".to_owned()]),
            ("rest".into(), vec!["ingest/c".to_owned()]),
        ]
    );
}

#[test]
fn a_selector_that_matches_nothing_is_refused_naming_the_wave() {
    let plan = plan(
        "[[wave]]\nname = \"canary\"\nselector = \"tier=canary\"\n",
        "[[service]]\nname = \"ingest\"\n",
    );
    let agents = [agent("ingest", "a", &[("tier", "stable")])];
    let limit = Selector::parse("region=eu").unwrap();
    let problems = place(&plan, &targets(&agents), &agents, Some(&limit)).unwrap_err();
    assert_eq!(
        problems,
        [
            "wave \"canary\": its selector \"tier=canary\" matches none of the 1 agent(s) of this plan's services that \"region=eu\" selects"
        ]
    );
}

#[test]
fn a_dependent_canary_cannot_run_before_its_dependency() {
    let plan = plan(
        "[[wave]]\nname = \"canary\"\nselector = \"tier=canary\"\n",
        "[[service]]\nname = \"ingest\"\n[[service]]\nname = \"training\"\ndepends_on = [\"ingest\"]\n[[wave]]\nname = \"x\"\nservices = [\"ingest\"]\n",
    );
    let agents = [
        agent("ingest", "a", &[]),
        agent("training", "a", &[("tier", "canary")]),
    ];
    let problems = place(&plan, &targets(&agents), &agents, None).unwrap_err();
    assert_eq!(
        problems,
        [
            "training/a is in wave \"canary\", but it depends on ingest, and ingest/a is not in an earlier wave"
        ]
    );
}

#[test]
fn shares_round_up_and_are_at_least_one() {
    assert_eq!(cap_of(Amount::Percent(50.0), 3), 2);
    assert_eq!(cap_of(Amount::Percent(25.0), 0), 1);
    assert_eq!(cap_of(Amount::Percent(1.0), 5), 1);
    assert_eq!(cap_of(Amount::Count(3), 5), 3);
}

#[test]
fn a_log_correlation_check_needs_its_services_in_a_limited_run() {
    let plan = plan(
        "",
        "[[service]]\nname = \"ingest\"\n[[service]]\nname = \"web\"\n[cross_service]\n[[cross_service.log_correlation]]\nrequest = { service = \"ingest\", url = \"http://127.0.0.1:1/x\" }\nexpect_in_logs = [\"web\"]\nlog = \"web.log\"\n",
    );
    let agents = [
        agent("ingest", "a", &[("region", "eu")]),
        agent("web", "a", &[]),
    ];
    let eu = [agents[0].clone()];
    let limit = Selector::parse("region=eu").unwrap();
    let problems = place(&plan, &targets(&eu), &agents, Some(&limit)).unwrap_err();
    assert_eq!(
        problems,
        [
            "log correlation check 1 needs an agent of web, and \"region=eu\" selects none: select web too, or run without that check"
        ]
    );
    assert!(place(&plan, &targets(&agents), &agents, None).is_ok());
}
