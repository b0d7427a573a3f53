use super::*;

#[test]
fn each_field_takes_what_the_table_says() {
    assert_eq!(Table::Step.field(Some("write_file"), "path"), Takes::Path);
    assert_eq!(Table::Step.field(Some("delete"), "path"), Takes::Path);
    assert_eq!(
        Table::Step.field(Some("run_command"), "program"),
        Takes::Nothing
    );
    assert_eq!(
        Table::Step.field(Some("run_command"), "path"),
        Takes::Nothing
    );
    assert_eq!(
        Table::Precondition.field(Some("file_absent"), "path"),
        Takes::Path
    );
    assert_eq!(
        Table::Precondition.field(Some("file_absent"), "text"),
        Takes::Nothing
    );
    assert_eq!(Table::Check.field(Some("log"), "path"), Takes::Vars);
    assert_eq!(Table::Check.field(Some("http"), "headers"), Takes::Secrets);
    assert_eq!(Table::Check.field(Some("tcp"), "headers"), Takes::Nothing);
    assert_eq!(Table::Workload.field(Some("job"), "name"), Takes::Nothing);
    assert_eq!(Table::CrossService.field(None, "config_files"), Takes::Path);
    assert_eq!(
        Table::CrossService.field(None, "check"),
        Takes::Table(Table::Check)
    );
    assert_eq!(Table::CorrelationRequest.field(None, "body"), Takes::Vars);
    // The tag itself, and a key nobody listed, take nothing.
    assert_eq!(
        Table::Step.field(Some("write_file"), "action"),
        Takes::Nothing
    );
    assert_eq!(Table::Health.field(None, "nope"), Takes::Nothing);
}

#[test]
fn a_field_that_takes_no_placeholder_refuses_one() {
    let err = Takes::Nothing
        .check("program", "bin/${var:tool}")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "${var:tool} is not allowed in program: program takes no placeholder, it is used as written"
    );
    assert!(Takes::Nothing.check("program", "$${x}").is_err());
    assert!(Takes::Nothing.check("program", "bin/tool $5").is_ok());
}

#[test]
fn paths_take_vars_but_no_secret_and_must_stay_inside_the_root_as_written() {
    let path = Takes::Path;
    path.check("path", "config/${var:name}.toml").unwrap();
    path.check("path", "${service:name}/${service:instance}.toml")
        .unwrap();
    assert_eq!(
        path.check("path", "config/${secret:K}.toml"),
        Err(FieldError::Secret {
            key: "path".into(),
            name: "K".into()
        })
    );
    assert!(matches!(
        path.check("path", "/etc/${var:x}"),
        Err(FieldError::Path(PathError::Absolute(_)))
    ));
    assert!(matches!(
        path.check("path", "${var:x}/../../y"),
        Err(FieldError::Path(PathError::ParentDir(_)))
    ));
    assert!(matches!(
        path.check("path", "${var:x"),
        Err(FieldError::Syntax(_))
    ));
}

#[test]
fn secrets_are_taken_only_where_the_table_allows_them() {
    Takes::Secrets
        .check("body", "key=${secret:API_KEY}")
        .unwrap();
    Takes::FileContent
        .check("content", "k = \"${secret:API_KEY}\"")
        .unwrap();
    assert!(
        Takes::Vars
            .check("url", "http://h/${secret:API_KEY}")
            .is_err()
    );
    assert_eq!(
        Takes::Secrets.check("body", "${secret:../x}"),
        Err(FieldError::SecretName("../x".into()))
    );
    assert_eq!(
        Takes::Vars.check("url", "${var:}"),
        Err(FieldError::EmptyVar)
    );
}

/// The plan reference's table of fields says what [`ROWS`] says, row for row.
#[test]
fn the_plan_reference_lists_every_field() {
    let docs = include_str!("../../../docs/plan-reference.md");
    for row in ROWS {
        let line = doc_line(row);
        assert!(
            docs.lines().any(|l| l == line),
            "docs/plan-reference.md lacks the line\n{line}"
        );
    }
}

/// The line of the plan reference's table of fields that documents `row`.
fn doc_line(row: &Row) -> String {
    let table = table_name(row.table);
    let table = match row.variant {
        Some(variant) => format!("{table} `{variant}`"),
        None => table.to_owned(),
    };
    let takes = match row.takes {
        Takes::Nothing => "no (refused) | no".to_owned(),
        Takes::Vars => "yes | no".to_owned(),
        Takes::Path => "yes; a path inside the root, before and after expansion | no".to_owned(),
        Takes::Secrets => "yes | yes".to_owned(),
        Takes::FileContent => "yes, encoded for the file's format | yes".to_owned(),
        Takes::Table(inner) => format!("as in {} | as there", table_name(inner)),
    };
    format!("| {table} | `{}` | {takes} |", row.key)
}

fn table_name(table: Table) -> &'static str {
    match table {
        Table::Plan => "the plan",
        Table::Wave => "`[[wave]]`",
        Table::Step => "`[[step]]`",
        Table::Precondition => "`[[precondition]]`",
        Table::Health => "`[[health]]`",
        Table::Check => "`[[check]]`",
        Table::Workload => "`[[workload]]`",
        Table::CrossService => "`[cross_service]`",
        Table::LogCorrelation => "`[[cross_service.log_correlation]]`",
        Table::CorrelationRequest => "`cross_service.log_correlation.request`",
    }
}
