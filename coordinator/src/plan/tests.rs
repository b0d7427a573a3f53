use super::*;

const GOOD: &str = r#"
name = "demo"
command_timeout = "30s"

[[service]]
name = "inference"
[[service.step]]
action = "write_file"
path = "config/service.toml"
content = "x"
[[service.step]]
action = "restart"
[[service.health]]
body_contains = "standard"
"#;

fn five(extra: &str, services_extra: &[(&str, &str)]) -> String {
    let mut text = format!("name = \"five\"\n{extra}\n[[step]]\naction = \"restart\"\n");
    for name in ["a", "b", "c", "d", "e"] {
        text.push_str(&format!("[[service]]\nname = \"{name}\"\n"));
        for (svc, line) in services_extra {
            if *svc == name {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

fn wave_names(plan: &Plan) -> Vec<(String, Vec<String>)> {
    plan.waves
        .iter()
        .map(|w| {
            (
                w.name.clone(),
                w.services.iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn parses_a_plan() {
    let plan = Plan::parse(GOOD).unwrap();
    assert_eq!(plan.command_timeout, Duration::from_secs(30));
    assert_eq!(plan.on_failure, OnFailure::Rollback);
    assert_eq!(plan.failure_budget, Amount::Count(0));
    assert_eq!(plan.services[0].steps.len(), 2);
    assert_eq!(plan.services[0].health[0].url, None);
    assert_eq!(plan.waves.len(), 1);
    assert_eq!(plan.waves[0].name, "all");
}

#[test]
fn an_unknown_step_names_the_line_and_the_variants() {
    let err = Plan::parse(&GOOD.replace("action = \"restart\"", "action = \"reboot\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 12"), "{err}");
    assert!(err.contains("reboot"), "{err}");
}

#[test]
fn an_unknown_key_is_named() {
    let err = Plan::parse(&GOOD.replace("command_timeout", "comand_timeout"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("comand_timeout"), "{err}");
}

#[test]
fn plan_level_steps_apply_to_services_without_their_own() {
    let text = "name = \"x\"\n[[step]]\naction = \"restart\"\n[[health]]\nbody_contains = \"ok\"\n[[service]]\nname = \"a\"\n[[service]]\nname = \"b\"\n[[service.step]]\naction = \"delete\"\npath = \"f\"\n";
    let plan = Plan::parse(text).unwrap();
    assert_eq!(plan.services[0].steps, vec![Step::Restart]);
    assert_eq!(plan.services[1].steps[0].name(), "delete");
    assert_eq!(plan.services[1].health.len(), 1);
}

#[test]
fn rules_are_checked() {
    let twice = format!(
        "{GOOD}\n[[service]]\nname = \"inference\"\n[[service.step]]\naction = \"restart\"\n"
    );
    let err = Plan::parse(&twice).unwrap_err().to_string();
    assert!(
        err.contains("appears twice") && err.contains("line 17, key service[1].name"),
        "{err}"
    );
    assert!(
        Plan::parse("name = \"x\"\nservice = []\n")
            .unwrap_err()
            .to_string()
            .contains("no [[service]]")
    );
    let bad_name = GOOD.replace("name = \"inference\"", "name = \"In.ference\"");
    assert!(
        Plan::parse(&bad_name)
            .unwrap_err()
            .to_string()
            .contains("may only hold")
    );
    let err = Plan::parse(&GOOD.replace("\"30s\"", "\"10ms\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3, key command_timeout"), "{err}");
}

#[test]
fn waves_by_name_size_and_the_rest() {
    let plan = Plan::parse(&five(
        "max_parallel = 2\n[[wave]]\nname = \"canary\"\nservices = [\"c\"]\n[[wave]]\nname = \"early\"\nsize = \"50%\"\nmax_parallel = 1\n[[wave]]\nname = \"late\"\n",
        &[],
    ))
    .unwrap();
    assert_eq!(
        wave_names(&plan),
        [
            ("canary".to_owned(), vec!["c".to_owned()]),
            (
                "early".to_owned(),
                vec!["a".to_owned(), "b".to_owned(), "d".to_owned()]
            ),
            ("late".to_owned(), vec!["e".to_owned()]),
        ]
    );
    assert_eq!(plan.waves[0].cap(), Some(2));
    assert_eq!(plan.waves[1].cap(), Some(1));
}

#[test]
fn services_in_no_wave_go_to_an_implicit_last_wave() {
    let plan = Plan::parse(&five(
        "[[wave]]\nname = \"canary\"\nservices = [\"a\"]\n[[wave]]\nname = \"two\"\nsize = 2\n",
        &[],
    ))
    .unwrap();
    let names: Vec<String> = plan.waves.iter().map(|w| w.name.clone()).collect();
    assert_eq!(names, ["canary", "two", "rest"]);
    assert_eq!(plan.waves[2].services.len(), 2);
}

#[test]
fn depends_on_derives_waves_when_none_are_declared() {
    let plan = Plan::parse(&five(
        "",
        &[
            ("a", "depends_on = [\"b\"]"),
            ("b", "depends_on = [\"c\", \"d\"]"),
        ],
    ))
    .unwrap();
    assert_eq!(
        wave_names(&plan),
        [
            (
                "level-1".to_owned(),
                vec!["c".to_owned(), "d".to_owned(), "e".to_owned()]
            ),
            ("level-2".to_owned(), vec!["b".to_owned()]),
            ("level-3".to_owned(), vec!["a".to_owned()]),
        ]
    );
}

#[test]
fn wave_errors_point_at_the_line_and_key() {
    let cases = [
        (
            five("[[wave]]\nname = \"canary\"\nservices = [\"zz\"]\n", &[]),
            "line 4, key wave[0].services[0]",
            "not a [[service]]",
        ),
        (
            five(
                "[[wave]]\nname = \"one\"\nservices = [\"a\"]\n[[wave]]\nname = \"two\"\nservices = [\"a\"]\n",
                &[],
            ),
            "key wave[1].services[0]",
            "already in wave \"one\"",
        ),
        (
            five(
                "[[wave]]\nname = \"one\"\n[[wave]]\nname = \"two\"\nsize = 1\n",
                &[],
            ),
            "key wave[0]",
            "only the last wave may take the rest",
        ),
        (
            five("[[wave]]\nname = \"one\"\nsize = \"150%\"\n", &[]),
            "line 4",
            "between 0% and 100%",
        ),
        (
            five("max_parallel = 0\n", &[]),
            "line 2, key max_parallel",
            "at least 1",
        ),
        (
            five("max_parallel = \"0%\"\n", &[]),
            "line 2, key max_parallel",
            "a share above 0%",
        ),
        (
            five("[[wave]]\nname = \"c\"\nselector = \"tier in (a\"\n", &[]),
            "line 4, key wave[0].selector",
            "column 11: expected ',' or ')' in the list of values",
        ),
        (
            five(
                "[[wave]]\nname = \"c\"\nservices = [\"a\"]\nselector = \"tier=canary\"\n",
                &[],
            ),
            "key wave[0].selector",
            "a wave takes one of `services`, `size` and `selector`",
        ),
        (
            five(
                "[[wave]]\nname = \"c\"\nservices = [\"a\"]\npause = \"later\"\n",
                &[],
            ),
            "line 5, key wave[0].pause",
            "\"later\" is neither \"manual\" nor a duration of at least 1s",
        ),
        (
            five("", &[("a", "depends_on = [\"a\"]")]),
            "key service[0].depends_on[0]",
            "depends on itself",
        ),
        (
            five(
                "",
                &[("a", "depends_on = [\"b\"]"), ("b", "depends_on = [\"a\"]")],
            ),
            "key service[0].depends_on",
            "cycle",
        ),
        (
            five(
                "[[wave]]\nname = \"one\"\nservices = [\"a\", \"b\"]\n",
                &[("a", "depends_on = [\"b\"]")],
            ),
            "key service[0].depends_on[0]",
            "must be in an earlier wave",
        ),
        (
            five("failure_budget = \"lots\"\n", &[]),
            "line 2",
            "not a percentage",
        ),
    ];
    for (text, at, why) in cases {
        let err = Plan::parse(&text).unwrap_err().to_string();
        assert!(
            err.contains(at) && err.contains(why),
            "{err}\nwanted {at} / {why}\n{text}"
        );
    }
}

#[test]
fn the_failure_budget_is_a_count_or_a_share() {
    let plan = Plan::parse(&five(
        "failure_budget = \"40%\"\non_failure = \"continue\"\n",
        &[],
    ))
    .unwrap();
    assert_eq!(plan.allowed_failures(5), 2);
    assert_eq!(plan.allowed_failures(2), 0);
    assert_eq!(plan.on_failure, OnFailure::Continue);
    let plan = Plan::parse(&five("failure_budget = 1\n", &[])).unwrap();
    assert_eq!(plan.allowed_failures(5), 1);
}

#[test]
fn finalize_is_auto_unless_the_plan_says_manual() {
    assert_eq!(Plan::parse(GOOD).unwrap().finalize, Finalize::Auto);
    let plan = Plan::parse(&five("finalize = \"manual\"\n", &[])).unwrap();
    assert_eq!(plan.finalize, Finalize::Manual);
    let err = Plan::parse(&five("finalize = \"later\"\n", &[])).unwrap_err();
    assert!(err.to_string().contains("manual"), "{err}");
}

#[test]
fn a_service_may_override_the_timeout() {
    let plan = Plan::parse(&five("", &[("b", "command_timeout = \"5s\"")])).unwrap();
    assert_eq!(plan.services[1].command_timeout, Duration::from_secs(5));
    assert_eq!(plan.services[0].command_timeout, Duration::from_secs(120));
}

#[test]
fn the_reference_example_is_a_valid_plan() {
    let doc = include_str!("../../../docs/plan-reference.md");
    let start = doc
        .find("## A complete example")
        .and_then(|i| doc[i..].find("```toml\n").map(|j| i + j + 8))
        .expect("the reference has a complete example");
    let end = start + doc[start..].find("\n```").expect("the example ends");
    let plan = Plan::parse(&doc[start..end]).unwrap();
    assert_eq!(
        wave_names(&plan),
        [
            ("canary".to_owned(), vec!["inference".to_owned()]),
            (
                "early".to_owned(),
                vec!["ingest".to_owned(), "preprocess".to_owned()]
            ),
            (
                "rest".to_owned(),
                vec!["training".to_owned(), "execution".to_owned()]
            ),
        ]
    );
    let training = plan
        .service(&ServiceName::parse("training").unwrap())
        .unwrap();
    assert_eq!(training.command_timeout, Duration::from_secs(300));
    assert_eq!(training.gates.startup_max_increase_pct, 50.0);
    assert_eq!(training.gates.memory_max_increase_pct, 15.0);
}

#[test]
fn paths_outside_the_root_are_refused_at_their_line_and_key() {
    for (path, reason) in [
        ("/etc/passwd", "path \"/etc/passwd\" is absolute"),
        ("../x", "path \"../x\" leaves the service root"),
        ("a//b", "holds a NUL byte or an empty or '.' component"),
    ] {
        let text = GOOD.replace("config/service.toml", path);
        let err = Plan::parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("line 9, key service[0].step[0].path: ") && err.contains(reason),
            "{err}"
        );
    }
    let text = format!("{GOOD}[[service.precondition]]\ntype = \"file_exists\"\npath = \"/etc\"\n");
    let err = Plan::parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("line 17, key service[0].precondition[0].path"),
        "{err}"
    );
    let text = format!("{GOOD}[cross_service]\nconfig_files = [\"ok.toml\", \"../up.toml\"]\n");
    let err = Plan::parse(&text).unwrap_err().to_string();
    assert!(err.contains("key cross_service.config_files[1]"), "{err}");
}

#[test]
fn malformed_placeholders_are_refused_in_every_field_the_agent_renders() {
    let content = |value: &str| GOOD.replace("content = \"x\"", &format!("content = \"{value}\""));
    for (text, at, reason) in [
        (
            content("port = ${var:port"),
            "line 10, key service[0].step[0].content: ",
            "unterminated placeholder starting at byte 7",
        ),
        (
            content("${env:HOME}"),
            "line 10, key service[0].step[0].content: ",
            "unknown placeholder ${env:HOME}",
        ),
        (
            content("${secret:../../etc/shadow}"),
            "line 10, key service[0].step[0].content: ",
            "secret name \"../../etc/shadow\" is not valid",
        ),
        (
            format!("{GOOD}[[service.check]]\ntype = \"http\"\nurl = \"http://x:${{var:port/\"\n"),
            "line 17, key service[0].check[0].url: ",
            "unterminated placeholder",
        ),
        (
            format!("{GOOD}[[service.check]]\ntype = \"command\"\nprogram = \"true\"\nargs = [\"ok\", \"${{var:}}\"]\n"),
            "line 18, key service[0].check[0].args[1]: ",
            "names no variable",
        ),
        (
            GOOD.replace(
                "command_timeout = \"30s\"\n",
                "command_timeout = \"30s\"\n[[workload]]\ntype = \"http\"\nname = \"w\"\nurl = \"${nope}\"\n",
            ),
            "line 7, key workload[0].url: ",
            "unknown placeholder ${nope}",
        ),
        (
            format!("{GOOD}[cross_service]\n[[cross_service.check]]\ntype = \"tcp\"\naddress = \"${{var:host\"\n"),
            "line 18, key cross_service.check[0].address: ",
            "unterminated placeholder",
        ),
    ] {
        let err = Plan::parse(&text).unwrap_err().to_string();
        assert!(err.contains(at) && err.contains(reason), "{at}{reason}\n{err}");
    }
    // A secret where its value would show in failure reasons and logs is refused.
    for (table, at) in [
        (
            "[[service.check]]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/api?token=${secret:API_KEY}\"\n",
            "service[0].check[0].url",
        ),
        (
            "[[service.check]]\ntype = \"tcp\"\naddress = \"${secret:HOST}:80\"\n",
            "service[0].check[0].address",
        ),
        (
            "[[service.check]]\ntype = \"log\"\npath = \"out.log\"\ncontains = \"${secret:API_KEY}\"\n",
            "service[0].check[0].contains",
        ),
        (
            "[[service.check]]\ntype = \"command\"\nprogram = \"true\"\nargs = [\"--key=${secret:API_KEY}\"]\n",
            "service[0].check[0].args",
        ),
    ] {
        let err = Plan::parse(&format!("{GOOD}{table}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(at) && err.contains("is not allowed in"),
            "{at}\n{err}"
        );
    }
    let body = format!(
        "{GOOD}[[service.check]]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/login\"\nmethod = \"POST\"\nbody = \"key=${{secret:API_KEY}}\"\n"
    );
    Plan::parse(&body).unwrap();
    // What only the agent knows (its vars, its secrets) and literal `${` are fine offline.
    let fine = content("${var:anything} ${secret:ANY_KEY} $${secret:LATER}");
    Plan::parse(&fine).unwrap();
    let replace = GOOD.replace(
        "[[service.step]]\naction = \"restart\"",
        "[[service.step]]\naction = \"replace_text\"\npath = \"a\"\nfind = \"$${x\"\nreplace = \"${var:y}\"",
    );
    Plan::parse(&replace).unwrap();
}

#[test]
fn headers_and_run_variables_are_read_and_checked() {
    let headers =
        r#"headers = { "X-Request-Id" = "${run:id}", "traceparent" = "${run:traceparent}" }"#;
    let correlation = |contains: &str, service: &str| {
        format!(
            "[cross_service]\n[[cross_service.log_correlation]]\n\
             request = {{ service = \"inference\", url = \"http://127.0.0.1:1/forward\", {headers} }}\n\
             expect_in_logs = [\"{service}\"]\nlog = \"relay.log\"\ncontains = \"{contains}\"\n"
        )
    };
    let good = format!(
        "{GOOD}{headers}\n[[service.check]]\ntype = \"log\"\npath = \"relay.log\"\n\
         contains = \"request_id=${{run:id}} trace=${{run:trace_id}} ${{service:name}}/${{service:instance}}\"\n\
         [[service.workload]]\ntype = \"http\"\nname = \"w\"\nurl = \"http://x/\"\n{headers}\n{}",
        correlation("${run:id}", "inference")
    );
    // A secret may be a header's value (an `Authorization` header): only names are quoted.
    Plan::parse(&good.replacen("${run:traceparent}", "${secret:TOKEN}", 1)).unwrap();
    let plan = Plan::parse(&good).unwrap();
    let health = &plan.services[0].health[0];
    assert_eq!(health.headers["X-Request-Id"], "${run:id}");
    let cross = plan.cross_service.unwrap();
    let request = cross.log_correlation[0].request_check();
    assert!(matches!(&request, Check::Http(h) if h.headers["traceparent"] == "${run:traceparent}"));
    for (text, at) in [
        (
            format!("{GOOD}headers = {{ \"X-Request-Id\" = \"${{run:nope}}\" }}\n"),
            "key service[0].health[0].headers.X-Request-Id: unknown placeholder ${run:nope}",
        ),
        (
            format!(
                "{GOOD}[[service.check]]\ntype = \"http\"\nheaders = {{ \"X-Id\" = \"${{service:port}}\" }}\n"
            ),
            "key service[0].check[0].headers.X-Id: unknown placeholder ${service:port}",
        ),
        (
            format!("{GOOD}{}", correlation("${run:trace}", "inference")),
            "key cross_service.log_correlation[0].contains: unknown placeholder ${run:trace}",
        ),
        (
            format!("{GOOD}{}", correlation("${run:id}", "nowhere"))
                .replace("${run:traceparent}", "${secret:TOKEN}"),
            "key cross_service.log_correlation[0].request.headers.traceparent: ${secret:TOKEN} is not allowed in request.headers.traceparent",
        ),
        (
            format!("{GOOD}{}", correlation("${run:id}", "nowhere")),
            "key cross_service.log_correlation[0].expect_in_logs[0]: nowhere is not a [[service]]",
        ),
    ] {
        let err = Plan::parse(&text).unwrap_err().to_string();
        assert!(err.contains(at), "{at}\n{err}");
    }
}

mod analysis;
mod placeholders;

#[test]
fn selector_waves_are_kept_for_placement_and_shares_are_caps() {
    let plan = Plan::parse(&five(
        "max_parallel = \"25%\"\n[[wave]]\nname = \"canary\"\nselector = \"tier = canary , region in (eu)\"\nmax_parallel = 1\n[[wave]]\nname = \"rest\"\n",
        &[],
    ))
    .unwrap();
    assert_eq!(plan.waves.len(), 2);
    let canary = &plan.waves[0];
    assert!(canary.services.is_empty());
    assert_eq!(
        canary.selector.as_ref().map(ToString::to_string).as_deref(),
        Some("tier=canary,region in (eu)")
    );
    assert_eq!(canary.cap(), Some(1));
    assert_eq!(plan.waves[1].max_parallel, Some(Amount::Percent(25.0)));
    // 25% of the five services, rounded up.
    assert_eq!(plan.waves[1].cap(), Some(2));
}
