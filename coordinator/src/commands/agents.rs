//! `flotilla agents`: the live agents (and, with `--all`, the registered ones that did not
//! answer); `flotilla agents forget`: removing decommissioned agents from the registry.

use flotilla_schemas::{InstanceId, Presence, ServiceName};
use flotilla_telemetry::error_chain;
use serde::Serialize;
use time::OffsetDateTime;

use super::{connect_reader, fail};
use crate::cli::{AgentFilter, Cli, OutputFormat};
use crate::discovery::{self, Silent};
use crate::exit::{self, Outcome};
use crate::registry;
use crate::sanitize::one_line;
use crate::selector::Selector;

/// A registered agent that did not answer, as `--all` lists it.
#[derive(Debug, Serialize)]
struct SilentRow {
    service: String,
    instance: String,
    /// `silent` (active: waited for) or `inactive`.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    labels: flotilla_schemas::labels::Labels,
    #[serde(with = "time::serde::rfc3339::option")]
    started_at: Option<OffsetDateTime>,
    /// When the broker stored the agent's last refresh.
    #[serde(with = "time::serde::rfc3339")]
    refreshed_at: OffsetDateTime,
}

impl SilentRow {
    fn of(silent: &Silent) -> Self {
        let r = &silent.registered;
        let (service, instance) = r.key.split_once('.').unwrap_or((&r.key, ""));
        let entry = r.entry.as_ref();
        Self {
            service: service.to_owned(),
            instance: instance.to_owned(),
            state: if silent.active { "silent" } else { "inactive" },
            version: entry.map(|e| e.version.clone()),
            host: entry.map(|e| e.host.clone()),
            key_id: entry.and_then(|e| e.key_id.clone()),
            labels: entry.map(|e| e.labels.clone()).unwrap_or_default(),
            started_at: entry.map(|e| e.started_at),
            refreshed_at: r.stored_at,
        }
    }

    /// Whether a listing with `filter` and `selectors` shows it (selectors match what a live
    /// agent of these labels would show).
    fn shown(&self, filter: &AgentFilter, selectors: &[Selector]) -> bool {
        filter.matches(&self.service)
            && selectors
                .iter()
                .all(|s| s.matches_parts(&self.service, &self.instance, &self.labels))
    }
}

/// Lists the agents that answer presence, pass `filter` and match every one of `selectors`;
/// with `all`, also the registered agents that did not answer.
pub(super) async fn agents(
    cli: &Cli,
    filter: &AgentFilter,
    selectors: &[Selector],
    all: bool,
) -> Outcome {
    let (client, subjects) = connect_reader(cli).await?;
    let discovered = match discovery::discover(
        &client,
        &subjects,
        cli.settings.discovery_window,
        cli.settings.agent_inactive_after,
    )
    .await
    {
        Ok(discovered) => discovered,
        Err(e) => return Err(fail(exit::BUS, error_chain(&e))),
    };
    let mut found = discovered.found;
    let answered = found.len();
    found.retain(|a| filter.matches(a.service.as_str()) && selectors.iter().all(|s| s.matches(a)));
    let silent: Vec<SilentRow> = discovered
        .silent
        .iter()
        .map(SilentRow::of)
        .filter(|row| row.shown(filter, selectors))
        .collect();
    let note = silent_note(&silent, all);
    // Nothing to list: no live agent shown, and no silent one asked for.
    let nothing = found.is_empty() && (!all || silent.is_empty());
    // Like none answering (exit 3, stdout empty), but saying that others did.
    if answered > 0 && nothing {
        let mut asked: Vec<String> = Vec::new();
        if !filter.service.is_empty() {
            asked.push(format!("of service {}", filter.service.join(", ")));
        }
        asked.extend(selectors.iter().map(|s| format!("matching \"{s}\"")));
        return Err(fail(
            exit::PREFLIGHT,
            format!(
                "{answered} agent(s) answered, none {}{note}",
                one_line(&asked.join(" and "))
            ),
        ));
    }
    // An error like any other: stdout stays empty, stderr says why.
    if nothing {
        return Err(fail(
            exit::PREFLIGHT,
            format!(
                "no agent answered within {} (--discovery-window). Are the agents running and \
                 connected to this server ({}), with the same --prefix ({}), in the same account, \
                 and allowed to subscribe to {}? An agent's log says whether it is connected \
                 (an agent waiting for the streams still answers).{note}",
                humantime::format_duration(cli.settings.discovery_window),
                one_line(&cli.settings.nats.url.to_string()),
                subjects.prefix(),
                subjects.presence()
            ),
        ));
    }
    let shown_silent: &[SilentRow] = if all { &silent } else { &[] };
    match cli.output {
        OutputFormat::Json => {
            print_json_rows(&found, shown_silent);
            if !note.is_empty() {
                eprintln!("{} agent(s){note}", found.len());
            }
        }
        OutputFormat::Text => {
            print_table(&found, shown_silent);
            eprintln!("{} agent(s){note}", found.len());
        }
    }
    Ok(exit::OK)
}

/// `, 2 registered agent(s) did not answer (1 inactive): …` for the listing's last line.
fn silent_note(silent: &[SilentRow], all: bool) -> String {
    if silent.is_empty() {
        return String::new();
    }
    let inactive = silent.iter().filter(|r| r.state == "inactive").count();
    let hint = if all {
        "`flotilla agents forget` removes decommissioned ones"
    } else {
        "`flotilla agents --all` lists them"
    };
    format!(
        "; {} registered agent(s) did not answer ({inactive} inactive): {hint}",
        silent.len()
    )
}

/// The live agents' presences, then the silent rows: one JSON array.
fn print_json_rows(found: &[Presence], silent: &[SilentRow]) {
    let mut rows: Vec<serde_json::Value> = found
        .iter()
        .map(|p| serde_json::to_value(p).expect("presence serializes"))
        .collect();
    rows.extend(
        silent
            .iter()
            .map(|r| serde_json::to_value(r).expect("row serializes")),
    );
    super::print_json(&rows);
}

fn print_table(found: &[Presence], silent: &[SilentRow]) {
    println!(
        "{:16} {:10} {:8} {:10} {:8} {:12} {:16} LABELS",
        "SERVICE", "INSTANCE", "VERSION", "STATE", "PID", "RESULT KEY", "HOST"
    );
    for a in found {
        let state = serde_json::to_value(a.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let pid = a
            .service_pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        // The ID of the key that signs its results (`-`: an agent too old to sign).
        let key = a
            .result_key
            .as_deref()
            .map_or_else(|| "-".to_owned(), crate::trust::key_id);
        println!(
            "{:16} {:10} {:8} {:10} {:8} {:12} {:16} {}",
            a.service.as_str(),
            a.instance.as_str(),
            one_line(&a.version),
            state,
            pid,
            key,
            one_line(&a.host),
            labels_text(&a.labels)
        );
    }
    for r in silent {
        let dash = |v: &Option<String>| v.as_deref().map_or("-".into(), one_line).into_owned();
        println!(
            "{:16} {:10} {:8} {:10} {:8} {:12} {:16} {}",
            one_line(&r.service),
            one_line(&r.instance),
            dash(&r.version),
            r.state,
            "-",
            dash(&r.key_id),
            dash(&r.host),
            labels_text(&r.labels)
        );
    }
}

/// `flotilla agents forget SERVICE/INSTANCE… | --inactive`: purges their registry entries.
pub(super) async fn forget(cli: &Cli, names: &[String], inactive: bool) -> Outcome {
    let (client, subjects) = connect_reader(cli).await?;
    let mut keys = Vec::new();
    for name in names {
        let parsed = name.split_once('/').and_then(|(service, instance)| {
            Some((
                ServiceName::parse(service).ok()?,
                InstanceId::parse(instance).ok()?,
            ))
        });
        let Some((service, instance)) = parsed else {
            return Err(fail(
                exit::USAGE,
                format!("{}: not SERVICE/INSTANCE", one_line(name)),
            ));
        };
        keys.push(subjects.agent_key(&service, &instance));
    }
    let js = async_nats::jetstream::new(client);
    let snapshot = registry::read(
        &js,
        &subjects,
        std::time::Duration::ZERO,
        registry::READ_TIMEOUT,
    )
    .await;
    let registered: Vec<&str> = snapshot.entries.iter().map(|r| r.key.as_str()).collect();
    if let Some(missing) = keys.iter().find(|k| !registered.contains(&k.as_str())) {
        return Err(fail(
            exit::PREFLIGHT,
            format!(
                "{} is not in the agent registry ({}): nothing forgotten",
                one_line(&missing.replacen('.', "/", 1)),
                subjects.agents_bucket()
            ),
        ));
    }
    if inactive {
        // Inactive and silent: an agent that answers is live, however old its entry.
        let discovered = discovery::discover(
            &js.client(),
            &subjects,
            cli.settings.discovery_window,
            cli.settings.agent_inactive_after,
        )
        .await
        .map_err(|e| fail(exit::BUS, error_chain(&e)))?;
        for silent in discovered.silent.iter().filter(|s| !s.active) {
            if !keys.contains(&silent.registered.key) {
                keys.push(silent.registered.key.clone());
            }
        }
    }
    if let Err(e) = registry::forget(&js, &subjects, &keys).await {
        return Err(fail(exit::BUS, error_chain(&e)));
    }
    let forgotten: Vec<String> = keys.iter().map(|k| k.replacen('.', "/", 1)).collect();
    match cli.output {
        OutputFormat::Json => super::print_json(&serde_json::json!({ "forgotten": forgotten })),
        OutputFormat::Text => {
            for name in &forgotten {
                println!("forgot {}", one_line(name));
            }
            eprintln!("{} agent(s) forgotten", forgotten.len());
        }
    }
    Ok(exit::OK)
}

/// An agent's labels as a selector would match them (`region=eu,tier=canary`), `-` for none.
fn labels_text(labels: &flotilla_schemas::labels::Labels) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    one_line(&pairs.join(",")).into_owned()
}
