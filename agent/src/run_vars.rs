//! The run's own variables (`${run:id}`, `${run:trace_id}`, `${run:traceparent}`,
//! `${service:name}`, `${service:instance}`): what the agent knows from the command it runs and
//! of itself, so that a check can speak the service's own correlation header.

use flotilla_schemas::RunId;
use flotilla_schemas::placeholder::RunVar;

/// The values of the run variables for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunVars {
    pub run_id: RunId,
    /// The W3C `traceparent` of the agent's span for the command; `None` without telemetry.
    pub traceparent: Option<String>,
    pub service: String,
    pub instance: String,
}

impl RunVars {
    /// The variables of `run_id`, with the trace context of the current span (the command's).
    pub fn current(run_id: RunId, service: &str, instance: &str) -> Self {
        let traceparent = flotilla_telemetry::http_headers()
            .into_iter()
            .find(|(name, _)| name == "traceparent")
            .map(|(_, value)| value);
        Self {
            run_id,
            traceparent,
            service: service.to_owned(),
            instance: instance.to_owned(),
        }
    }

    /// Variables of a fresh run with a fixed trace, for tests.
    #[cfg(test)]
    pub fn example() -> Self {
        Self {
            run_id: RunId::new(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            service: "ingest".into(),
            instance: "a".into(),
        }
    }

    /// The value of `var`; `None` for a trace variable when the command has no trace context.
    pub fn get(&self, var: RunVar) -> Option<String> {
        match var {
            RunVar::Id => Some(self.run_id.to_string()),
            // `00-<trace id>-<span id>-<flags>`.
            RunVar::TraceId => self
                .traceparent
                .as_deref()
                .and_then(|t| t.split('-').nth(1))
                .map(str::to_owned),
            RunVar::TraceParent => self.traceparent.clone(),
            RunVar::ServiceName => Some(self.service.clone()),
            RunVar::ServiceInstance => Some(self.instance.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_variables_come_from_the_traceparent() {
        let mut vars = RunVars::example();
        let run_id = vars.run_id;
        assert_eq!(vars.get(RunVar::Id), Some(run_id.to_string()));
        assert_eq!(
            vars.get(RunVar::TraceId).as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(vars.get(RunVar::ServiceName).as_deref(), Some("ingest"));
        assert_eq!(vars.get(RunVar::ServiceInstance).as_deref(), Some("a"));
        vars.traceparent = None;
        assert_eq!(vars.get(RunVar::TraceId), None);
        assert_eq!(vars.get(RunVar::TraceParent), None);
    }
}
