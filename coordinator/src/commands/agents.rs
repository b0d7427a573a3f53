//! `flotilla agents`: the live agents.

use flotilla_telemetry::error_chain;

use super::{connect_reader, fail};
use crate::cli::{AgentFilter, Cli, OutputFormat};
use crate::discovery;
use crate::exit::{self, Outcome};
use crate::sanitize::one_line;
use crate::selector::Selector;

/// Lists the agents that answer presence, pass `filter` and match every one of `selectors`.
pub(super) async fn agents(cli: &Cli, filter: &AgentFilter, selectors: &[Selector]) -> Outcome {
    let (client, subjects) = connect_reader(cli).await?;
    let mut found =
        match discovery::discover(&client, &subjects, cli.settings.discovery_window).await {
            Ok(found) => found,
            Err(e) => return Err(fail(exit::BUS, error_chain(&e))),
        };
    let answered = found.len();
    found.retain(|a| filter.matches(a.service.as_str()) && selectors.iter().all(|s| s.matches(a)));
    // Like none answering (exit 3, stdout empty), but saying that others did.
    if answered > 0 && found.is_empty() {
        let mut asked: Vec<String> = Vec::new();
        if !filter.service.is_empty() {
            asked.push(format!("of service {}", filter.service.join(", ")));
        }
        asked.extend(selectors.iter().map(|s| format!("matching \"{s}\"")));
        return Err(fail(
            exit::PREFLIGHT,
            format!(
                "{answered} agent(s) answered, none {}",
                one_line(&asked.join(" and "))
            ),
        ));
    }
    // An error like any other: stdout stays empty, stderr says why.
    if found.is_empty() {
        return Err(fail(
            exit::PREFLIGHT,
            format!(
                "no agent answered within {} (--discovery-window). Are the agents running and \
                 connected to this server ({}), with the same --prefix ({}), in the same account, \
                 and allowed to subscribe to {}? An agent's log says whether it is connected \
                 (an agent waiting for the streams still answers).",
                humantime::format_duration(cli.settings.discovery_window),
                one_line(&cli.settings.nats.url.to_string()),
                subjects.prefix(),
                subjects.presence()
            ),
        ));
    }
    match cli.output {
        OutputFormat::Json => super::print_json(&found),
        OutputFormat::Text => {
            println!(
                "{:16} {:10} {:8} {:10} {:8} {:12} {:16} LABELS",
                "SERVICE", "INSTANCE", "VERSION", "STATE", "PID", "RESULT KEY", "HOST"
            );
            for a in &found {
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
            eprintln!("{} agent(s)", found.len());
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
