//! The verdicts of the checks across the fleet, as the run record keeps them: the cross-service
//! checks (communication, configuration consistency, log correlation) and the correlation of
//! every service's spans and logs. The rollout writes them; reports and `status` read them.

use flotilla_schemas::{CheckVerdict, ConfigShape, InstanceId, ServiceName, SettingReport};
use flotilla_tracestore::VerifyReport;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The cross-service checks' verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CrossServiceVerdict {
    /// True when no problem was found.
    pub ok: bool,
    /// Every failure, as `service/instance: what`.
    #[serde(default)]
    pub problems: Vec<String>,
    /// What each migrated agent found: its checks of the others, its configuration's shape.
    #[serde(default)]
    pub services: Vec<ServiceInspection>,
    /// What each agent's search of its service's log for the run's ID found.
    #[serde(default)]
    pub log_correlation: Vec<LogCorrelationVerdict>,
}

/// One agent's answer to the cross-service checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceInspection {
    pub service: ServiceName,
    pub instance: InstanceId,
    #[serde(default)]
    pub checks: Vec<CheckVerdict>,
    #[serde(default)]
    pub config: Vec<ConfigShape>,
    /// The settings the fleet must agree on, as this service holds them (digests keyed by the
    /// run, never values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<SettingReport>,
}

/// One agent's answer to the log-correlation search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogCorrelationVerdict {
    pub service: ServiceName,
    pub instance: InstanceId,
    #[serde(default)]
    pub checks: Vec<CheckVerdict>,
}

/// The correlation check's verdict: `flotilla verify`'s report, or why the trace could not be
/// read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CorrelationVerdict {
    /// The trace was read and checked.
    Checked(VerifyReport),
    /// The trace could not be read.
    Failed(CorrelationFailure),
}

/// A correlation check that could not read the trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CorrelationFailure {
    /// Always false.
    #[schemars(extend("const" = false))]
    pub ok: bool,
    /// Why the trace could not be read.
    pub error: String,
}

// === impl CorrelationVerdict ===

impl CorrelationVerdict {
    /// A check that could not read the trace, for `error`.
    pub fn failed(error: String) -> Self {
        CorrelationVerdict::Failed(CorrelationFailure { ok: false, error })
    }

    /// True when every service is correlated.
    pub fn ok(&self) -> bool {
        match self {
            CorrelationVerdict::Checked(report) => report.ok,
            CorrelationVerdict::Failed(failure) => failure.ok,
        }
    }

    /// True when the check failed only for want of telemetry (or could not read the trace at
    /// all): nothing it found contradicts the correlation.
    pub fn inconclusive(&self) -> bool {
        match self {
            CorrelationVerdict::Checked(report) => report.inconclusive,
            CorrelationVerdict::Failed(_) => true,
        }
    }

    /// The report, when the trace was read.
    pub fn report(&self) -> Option<&VerifyReport> {
        match self {
            CorrelationVerdict::Checked(report) => Some(report),
            CorrelationVerdict::Failed(_) => None,
        }
    }

    /// Why the trace could not be read, when it could not.
    pub fn error(&self) -> Option<&str> {
        match self {
            CorrelationVerdict::Checked(_) => None,
            CorrelationVerdict::Failed(failure) => Some(&failure.error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed verdicts read the JSON that the untyped record held, and write it back the same.
    #[test]
    fn verdicts_keep_their_json_shape() {
        let failed = serde_json::json!({ "ok": false, "error": "no trace" });
        let verdict: CorrelationVerdict = serde_json::from_value(failed.clone()).unwrap();
        assert_eq!(verdict.error(), Some("no trace"));
        assert_eq!(serde_json::to_value(&verdict).unwrap(), failed);

        let checked = serde_json::json!({
            "run_id": "r", "trace_id": "t", "ok": true, "services": [], "orphans": [],
            "roots": [], "problems": [], "others": [],
        });
        let verdict: CorrelationVerdict = serde_json::from_value(checked.clone()).unwrap();
        assert!(verdict.ok() && verdict.report().is_some());
        assert_eq!(serde_json::to_value(&verdict).unwrap(), checked);

        let cross = serde_json::json!({
            "ok": false, "problems": ["a/1: http check failed: 503"],
            "services": [{ "service": "a", "instance": "1",
                "checks": [{ "kind": "http", "passed": false, "detail": "503" }], "config": [] }],
            "log_correlation": [{ "service": "b", "instance": "1", "checks": [] }],
        });
        let verdict: CrossServiceVerdict = serde_json::from_value(cross.clone()).unwrap();
        assert_eq!(verdict.services[0].checks[0].detail, "503");
        assert_eq!(serde_json::to_value(&verdict).unwrap(), cross);
    }
}
