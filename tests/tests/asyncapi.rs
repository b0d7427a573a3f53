//! `schemas/asyncapi.json` and `docs/wire-protocol.md` are the contract another team implements
//! from: these tests fail when a subject, stream, header, schema file or enum value exists in
//! Rust but not in them, or the other way round.

use std::collections::BTreeSet;
use std::path::Path;

use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{InstanceId, RunId, ServiceName};
use flotilla_telemetry::store as telemetry;
use serde_json::Value;

const PREFIX: &str = "pfx-x";
const SERVICE: &str = "svc-s";
const INSTANCE: &str = "inst-i";
const RUN: &str = "01234567-89ab-7cde-8f01-234567890abc";
const TRACE: &str = "tracehex";

fn read(relative: &str) -> String {
    let path = flotilla_tests::repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn asyncapi() -> Value {
    serde_json::from_str(&read("schemas/asyncapi.json")).expect("asyncapi.json is JSON")
}

fn doc() -> String {
    read("docs/wire-protocol.md")
}

/// What a Rust name builder returns for the sentinel arguments, written back as the template
/// the AsyncAPI document uses (`{prefix}.command.{service}.{instance}`).
fn template_of(builder: &str) -> Option<String> {
    let s = Subjects::new(PREFIX).unwrap();
    let (svc, inst) = (
        ServiceName::parse(SERVICE).unwrap(),
        InstanceId::parse(INSTANCE).unwrap(),
    );
    let run: RunId = RUN.parse().unwrap();
    let built = match builder {
        "Subjects::command" => s.command(&svc, &inst),
        "Subjects::command_delivery" => s.command_delivery(&svc, &inst),
        "Subjects::all_command_deliveries" => s.all_command_deliveries(),
        "Subjects::all_commands" => s.all_commands(),
        "Subjects::event" => s.event(&run, &svc, &inst),
        "Subjects::run_events" => s.run_events(&run),
        "Subjects::all_events" => s.all_events(),
        "Subjects::progress" => s.progress(&run, &svc, &inst),
        "Subjects::run_progress" => s.run_progress(&run),
        "Subjects::all_progress" => s.all_progress(),
        "Subjects::presence" => s.presence(),
        "Subjects::agent_service_group" => s.agent_service_group(&svc, &inst),
        "Subjects::commands_stream" => s.commands_stream(),
        "Subjects::legacy_commands_stream" => s.legacy_commands_stream(),
        "Subjects::last_command_get" => s.last_command_get(&svc, &inst),
        "Subjects::events_stream" => s.events_stream(),
        "Subjects::agent_consumer" => s.agent_consumer(&svc, &inst),
        "Subjects::runs_bucket" => s.runs_bucket(),
        "Subjects::files_bucket" => s.files_bucket(),
        "Subjects::agents_bucket" => s.agents_bucket(),
        "Subjects::agent_key" => s.agent_key(&svc, &inst),
        "telemetry::stream_name" => telemetry::stream_name(PREFIX),
        "telemetry::all_subjects" => telemetry::all_subjects(PREFIX),
        "telemetry::traces_subject" => telemetry::traces_subject(PREFIX, TRACE),
        "telemetry::logs_subject" => telemetry::logs_subject(PREFIX, TRACE),
        _ => return None,
    };
    Some(
        built
            .replace("PFX_X", "{PREFIX}")
            .replace("pfx_x", "{bucket_prefix}")
            .replace(PREFIX, "{prefix}")
            .replace(SERVICE, "{service}")
            .replace(INSTANCE, "{instance}")
            .replace(RUN, "{run_id}")
            .replace(TRACE, "{trace_id}"),
    )
}

/// Every builder the AsyncAPI document names, with the template it gives for it.
fn documented_builders(api: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for channel in api["channels"].as_object().unwrap().values() {
        if let Some(builder) = channel["x-flotilla-builder"].as_str() {
            let suffix = channel["x-flotilla-builder-suffix"].as_str().unwrap_or("");
            let address = channel["address"].as_str().unwrap();
            let template = address.strip_suffix(suffix).unwrap_or_else(|| {
                panic!("channel {address} does not end with its builder suffix {suffix}")
            });
            out.push((builder.to_owned(), template.to_owned()));
        }
    }
    for (builder, template) in api["x-flotilla-names"].as_object().unwrap() {
        out.push((builder.clone(), template.as_str().unwrap().to_owned()));
    }
    out
}

/// The public functions returning a `String` in a Rust source file, named `<scope>::<fn>`.
fn string_builders_in(relative: &str, scope: &str) -> BTreeSet<String> {
    let source = read(relative);
    let mut names = BTreeSet::new();
    for (start, _) in source.match_indices("pub fn ") {
        let signature = &source[start..];
        let signature = &signature[..signature.find('{').unwrap()];
        let name = &signature["pub fn ".len()..signature.find('(').unwrap()];
        if signature.trim_end().ends_with("-> String") {
            names.insert(format!("{scope}::{name}"));
        }
    }
    names
}

#[test]
fn every_rust_subject_and_name_is_in_the_asyncapi_document_and_matches() {
    let api = asyncapi();
    let documented = documented_builders(&api);
    let mut rust = string_builders_in("schemas/src/subjects.rs", "Subjects");
    rust.extend(string_builders_in("telemetry/src/store.rs", "telemetry"));
    let named: BTreeSet<String> = documented.iter().map(|(b, _)| b.clone()).collect();
    assert_eq!(
        rust, named,
        "the name builders in Rust and those schemas/asyncapi.json names differ"
    );
    for (builder, template) in &documented {
        let built = template_of(builder)
            .unwrap_or_else(|| panic!("{builder}: teach template_of how to call it"));
        assert_eq!(&built, template, "{builder} builds another name");
    }
}

/// The `const` of a schema file's `schema` property, behind a `$ref` or not.
fn schema_tag(schema: &Value) -> Option<&str> {
    let property = &schema["properties"]["schema"];
    let property = match property["$ref"].as_str() {
        Some(pointer) => schema.pointer(pointer.trim_start_matches('#')).unwrap(),
        None => property,
    };
    property["const"].as_str()
}

#[test]
fn every_schema_file_is_a_message_of_the_asyncapi_document_and_back() {
    let api = asyncapi();
    let mut referenced = BTreeSet::new();
    for (id, message) in api["components"]["messages"].as_object().unwrap() {
        let Some(reference) = message["payload"]["$ref"].as_str() else {
            continue;
        };
        let (file, fragment) = reference.split_once('#').unwrap_or((reference, ""));
        let path = flotilla_tests::repo_root().join("schemas").join(file);
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("message {id}: {}: {e}", path.display()));
        if fragment.is_empty() {
            assert_eq!(
                message["name"].as_str(),
                schema_tag(&schema),
                "message {id} is named after another schema than its payload's"
            );
        } else {
            assert!(
                !schema.pointer(fragment).unwrap_or(&Value::Null).is_null(),
                "message {id}: {reference} points at nothing"
            );
        }
        referenced.insert(Path::new(file).file_name().unwrap().to_owned());
    }
    let on_disk: BTreeSet<_> = std::fs::read_dir(flotilla_tests::repo_root().join("schemas/json"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        on_disk, referenced,
        "schemas/json and the AsyncAPI messages differ"
    );
}

#[test]
fn every_header_is_in_the_asyncapi_document_and_the_doc() {
    let api = asyncapi();
    let command_headers = &api["components"]["messages"]["command"]["headers"]["properties"];
    for header in [
        "Nats-Msg-Id",
        flotilla_bus::signing::SIGNATURE_HEADER,
        flotilla_schemas::HEADER_RUN_ID,
        flotilla_schemas::HEADER_RUN_TRACEPARENT,
        "traceparent",
    ] {
        assert!(
            command_headers.get(header).is_some(),
            "command header {header} is not in schemas/asyncapi.json"
        );
    }
    let doc = doc();
    let mut headers = BTreeSet::new();
    for message in api["components"]["messages"].as_object().unwrap().values() {
        if let Some(props) = message["headers"]["properties"].as_object() {
            headers.extend(props.keys().cloned());
        }
    }
    headers.insert(flotilla_schemas::HTTP_CORRELATION_HEADER.to_owned());
    for header in headers {
        assert!(
            doc.contains(&format!("`{header}")),
            "header {header} is not in docs/wire-protocol.md"
        );
    }
}

#[test]
fn every_channel_and_name_is_in_the_doc() {
    let api = asyncapi();
    let doc = doc();
    let mut names: Vec<String> = documented_builders(&api)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    names.extend(
        api["channels"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|c| c["address"].as_str().map(str::to_owned)),
    );
    for name in names {
        let written = name
            .replace("{PREFIX}", "PREFIX")
            .replace("{bucket_prefix}", "<prefix_>")
            .replace('{', "<")
            .replace('}', ">");
        assert!(
            doc.contains(&written),
            "{written} is not in docs/wire-protocol.md"
        );
    }
}

/// The `const` or `enum` values of a definition in a schema file.
fn values_of(file: &str, definition: &str, property: Option<&str>) -> Vec<String> {
    let schema: Value = serde_json::from_str(&read(&format!("schemas/json/{file}"))).unwrap();
    let def = &schema["$defs"][definition];
    let mut out = Vec::new();
    for variant in def["oneOf"].as_array().into_iter().flatten() {
        let value = match property {
            Some(p) => &variant["properties"][p]["const"],
            None => &variant["const"],
        };
        out.extend(value.as_str().map(str::to_owned));
    }
    for value in def["enum"].as_array().into_iter().flatten() {
        out.extend(value.as_str().map(str::to_owned));
    }
    assert!(!out.is_empty(), "{file}: no values for {definition}");
    out
}

#[test]
fn every_command_kind_outcome_phase_and_status_is_in_the_doc() {
    let doc = doc();
    let enums = [
        ("flotilla.command.v2.schema.json", "Action", Some("kind")),
        ("flotilla.command.v2.schema.json", "Step", Some("action")),
        ("flotilla.result.v1.schema.json", "Outcome", None),
        ("flotilla.result.v1.schema.json", "MemorySource", None),
        ("flotilla.progress.v1.schema.json", "Phase", None),
        ("flotilla.progress.v1.schema.json", "PhaseStatus", None),
        ("flotilla.presence.v1.schema.json", "AgentState", None),
        ("flotilla.run.v1.schema.json", "RunStatus", None),
        ("flotilla.run.v1.schema.json", "Stage", None),
        ("flotilla.run.v1.schema.json", "Finalize", None),
    ];
    for (file, definition, property) in enums {
        for value in values_of(file, definition, property) {
            assert!(
                doc.contains(&format!("`{value}`")),
                "{definition} `{value}` ({file}) is not in docs/wire-protocol.md"
            );
        }
    }
}
