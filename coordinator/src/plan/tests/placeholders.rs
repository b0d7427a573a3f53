//! `plan check` holds every field to what `flotilla_schemas::fields` says it takes.

use super::*;

/// `GOOD` with `table` appended.
fn with(table: &str) -> String {
    format!("{GOOD}{table}")
}

fn refused(text: &str) -> String {
    Plan::parse(text).unwrap_err().to_string()
}

#[test]
fn paths_and_config_files_take_vars_and_run_variables() {
    let text = GOOD.replace(
        "config/service.toml",
        "config/${var:name}-${service:instance}.toml",
    ) + "[[service.precondition]]\ntype = \"file_exists\"\npath = \"${service:name}.conf\"\n\
           [[service.step]]\naction = \"delete\"\npath = \"old/${var:name}\"\n\
           [cross_service]\nconfig_files = [\"config/${var:name}.toml\", \"${service:name}.conf\"]\n";
    let plan = Plan::parse(&text).unwrap();
    // Expanded by each agent, with its own vars: the plan keeps them as written.
    let cross = plan.cross_service.unwrap();
    assert_eq!(cross.config_files[0], "config/${var:name}.toml");
}

#[test]
fn a_secret_in_any_path_is_refused_at_its_line_and_key() {
    for (text, at) in [
        (
            GOOD.replace("config/service.toml", "config/${secret:K}.toml"),
            "line 9, key service[0].step[0].path: ${secret:K} is not allowed in path",
        ),
        (
            with("[[service.precondition]]\ntype = \"file_absent\"\npath = \"${secret:K}\"\n"),
            "line 17, key service[0].precondition[0].path: ${secret:K} is not allowed in path",
        ),
        (
            with("[cross_service]\nconfig_files = [\"a.toml\", \"${secret:K}.toml\"]\n"),
            "line 16, key cross_service.config_files[1]: ${secret:K} is not allowed in config_files[1]",
        ),
    ] {
        let err = refused(&text);
        assert!(err.contains(at), "{at}\n{err}");
    }
}

#[test]
fn a_path_that_leaves_the_root_as_written_is_refused_with_its_placeholders() {
    let err = refused(&with(
        "[cross_service]\nconfig_files = [\"../${var:name}.toml\"]\n",
    ));
    assert!(
        err.contains(
            "key cross_service.config_files[0]: path \"../${var:name}.toml\" leaves the service root"
        ),
        "{err}"
    );
    let err = refused(&GOOD.replace("config/service.toml", "/etc/${var:name}"));
    assert!(
        err.contains("line 9, key service[0].step[0].path: path \"/etc/${var:name}\" is absolute"),
        "{err}"
    );
}

#[test]
fn a_placeholder_in_a_field_that_takes_none_is_refused_at_its_line_and_key() {
    for (table, at) in [
        (
            "[[service.check]]\ntype = \"command\"\nprogram = \"${var:tool}\"\n",
            "line 17, key service[0].check[0].program: ${var:tool} is not allowed in program: program takes no placeholder",
        ),
        (
            "[[service.step]]\naction = \"run_command\"\nprogram = \"bin/${run:id}\"\n",
            "line 17, key service[0].step[2].program: ${run:id} is not allowed in program",
        ),
        (
            "[[service.check]]\ntype = \"http\"\nmethod = \"${var:verb}\"\n",
            "line 17, key service[0].check[0].method: ${var:verb} is not allowed in method",
        ),
        (
            "[[service.workload]]\ntype = \"job\"\nname = \"${service:name}\"\nprogram = \"true\"\n",
            "line 17, key service[0].workload[0].name: ${service:name} is not allowed in name",
        ),
        (
            "[cross_service]\nrequired_keys = [\"server.port\", \"${var:key}\"]\n",
            "line 16, key cross_service.required_keys[1]: ${var:key} is not allowed in required_keys[1]",
        ),
        (
            "[cross_service]\n[[cross_service.log_correlation]]\nrequest = { service = \"inference\", url = \"http://x/\", method = \"${var:m}\" }\nexpect_in_logs = [\"inference\"]\nlog = \"a.log\"\n",
            "line 17, key cross_service.log_correlation[0].request.method: ${var:m} is not allowed in request.method",
        ),
    ] {
        let err = refused(&with(table));
        assert!(err.contains(at), "{at}\n{err}");
    }
}

#[test]
fn fields_that_now_take_placeholders_check_them() {
    // `find`, `replace`, a run_command's `args` and `env`, `body_contains`, `stdout_contains`,
    // a precondition's `text`: `${var:…}` and the run variables, no secret.
    let fine = with(
        "[[service.step]]\naction = \"replace_text\"\npath = \"a\"\nfind = \"${var:old}\"\nreplace = \"$${HOME}\"\n\
         [[service.step]]\naction = \"run_command\"\nprogram = \"true\"\nargs = [\"${run:id}\"]\nenv = { NAME = \"${service:name}\" }\n",
    );
    Plan::parse(&fine).unwrap();
    for (table, at) in [
        (
            "[[service.step]]\naction = \"replace_text\"\npath = \"a\"\nfind = \"x\"\nreplace = \"${secret:K}\"\n",
            "key service[0].step[2].replace: ${secret:K} is not allowed in replace",
        ),
        (
            "[[service.step]]\naction = \"run_command\"\nprogram = \"true\"\nenv = { K = \"${secret:K}\" }\n",
            "key service[0].step[2].env.K: ${secret:K} is not allowed in env.K",
        ),
        (
            "[[service.precondition]]\ntype = \"file_contains\"\npath = \"a\"\ntext = \"${var:x\"\n",
            "key service[0].precondition[0].text: unterminated placeholder",
        ),
    ] {
        let err = refused(&with(table));
        assert!(err.contains(at), "{at}\n{err}");
    }
}

#[test]
fn the_plan_and_wave_names_take_no_placeholder() {
    let err = refused(&GOOD.replace("name = \"demo\"", "name = \"demo-${run:id}\""));
    assert!(
        err.contains("line 2, key name: ${run:id} is not allowed in name"),
        "{err}"
    );
    let err = refused(&format!(
        "{GOOD}[[wave]]\nname = \"canary ${{var:x}}\"\nservices = [\"inference\"]\n"
    ));
    assert!(
        err.contains("line 16, key wave[0].name: ${var:x} is not allowed in name"),
        "{err}"
    );
}
