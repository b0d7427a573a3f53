//! The environment the agent gives the programs it starts (the service, `run_command` steps,
//! `command` checks, job workloads): its own environment without its secrets.
//!
//! The agent's `FLOTILLA_…` variables (its configuration overrides: the NATS password, key and
//! credentials paths) and the variables its `[secrets]` source reads (`<env_prefix>NAME`) are
//! removed; the ordinary environment (PATH, HOME, LANG, proxies, OTEL_…) is kept. Names listed in
//! `service.inherit_env` are passed through anyway, for a service that needs one of them.

use std::collections::BTreeMap;

/// The prefix of every agent variable: configuration overrides and the default secret prefix.
pub const AGENT_PREFIX: &str = "FLOTILLA_";

/// The agent's environment without its own and its secrets' variables, plus the names in
/// `pass_through`; with a default `PATH` when the agent has none, so that programs are found.
pub fn inherited(secret_prefix: &str, pass_through: &[String]) -> BTreeMap<String, String> {
    let mut env = filter(std::env::vars_os(), secret_prefix, pass_through);
    env.entry("PATH".to_owned())
        .or_insert_with(|| "/usr/bin:/bin".to_owned());
    env
}

/// systemd's notification variables are the agent's own: a service it starts that speaks
/// `sd_notify` would otherwise report to the agent's unit as if it were the agent.
const SYSTEMD_OWN: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

fn filter(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    secret_prefix: &str,
    pass_through: &[String],
) -> BTreeMap<String, String> {
    vars.filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| {
            pass_through.contains(name)
                || !(name.starts_with(AGENT_PREFIX)
                    || SYSTEMD_OWN.contains(&name.as_str())
                    || (!secret_prefix.is_empty() && name.starts_with(secret_prefix)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(names: &[&str]) -> impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)> {
        names
            .iter()
            .map(|n| ((*n).into(), "v".into()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn keeps_the_ordinary_environment_and_drops_the_agents_secrets() {
        let env = filter(
            vars(&[
                "PATH",
                "HOME",
                "LANG",
                "FLOTILLA_NATS__AUTH__PASSWORD",
                "FLOTILLA_SECRET_API_KEY",
                "APP_SECRET_DB",
                "FLOTILLA_SAMPLE_X",
            ]),
            "APP_SECRET_",
            &["FLOTILLA_SAMPLE_X".into()],
        );
        let names: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(names, ["FLOTILLA_SAMPLE_X", "HOME", "LANG", "PATH"]);
    }

    #[test]
    fn systemds_notification_variables_stay_the_agents() {
        let env = filter(
            vars(&["PATH", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"]),
            "FLOTILLA_SECRET_",
            &[],
        );
        let names: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(names, ["PATH"]);
    }
}
