//! `[[cross_service.log_correlation]]`: one service is sent a request carrying the run's
//! correlation ID (in the service's own header), and the logs of other services must show that
//! ID within a deadline — proof that the ID travels with the call across the fleet.

use std::collections::BTreeMap;

use flotilla_schemas::{Check, HttpCheck, ServiceName};
use serde::Deserialize;

use super::{Plan, RuleError};

/// What the log of every `expect_in_logs` service must show, unless the plan says otherwise.
pub const DEFAULT_CONTAINS: &str = "${run:id}";

/// One log-correlation check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogCorrelation {
    /// The request, sent by the agent of `request.service` once every service is migrated.
    pub request: CorrelationRequest,
    /// The services whose logs must show `contains`: each of their agents searches its own.
    pub expect_in_logs: Vec<ServiceName>,
    /// The log file at each of those services: inside the service root, or an absolute path.
    pub log: String,
    /// What the logs must show, with placeholders; the run's correlation ID by default.
    #[serde(default = "default_contains")]
    pub contains: String,
    /// How long each log may take to show it, from when the request was answered.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// The request of a log-correlation check: an HTTP check sent by `service`'s agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelationRequest {
    pub service: ServiceName,
    pub url: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_contains() -> String {
    DEFAULT_CONTAINS.to_owned()
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_expect_status() -> u16 {
    200
}

impl LogCorrelation {
    /// The check the requesting agent runs.
    pub fn request_check(&self) -> Check {
        let r = &self.request;
        Check::Http(HttpCheck {
            url: Some(r.url.clone()),
            method: r.method.clone(),
            body: r.body.clone(),
            expect_status: r.expect_status,
            body_contains: None,
            timeout_ms: r.timeout_ms,
            headers: r.headers.clone(),
        })
    }

    /// The check each `expect_in_logs` agent runs on its service's log.
    pub fn log_check(&self) -> Check {
        Check::Log {
            path: self.log.clone(),
            contains: Some(self.contains.clone()),
            timeout_ms: self.timeout_ms,
        }
    }
}

/// Every service a log-correlation check names is one of the plan's.
pub(super) fn check(plan: &Plan) -> Result<(), RuleError> {
    let Some(cross) = &plan.cross_service else {
        return Ok(());
    };
    let unknown = |key: String, name: &ServiceName| RuleError {
        span: None,
        key,
        reason: format!("{name} is not a [[service]] of the plan"),
    };
    for (i, correlation) in cross.log_correlation.iter().enumerate() {
        let at = format!("cross_service.log_correlation[{i}]");
        if plan.service(&correlation.request.service).is_none() {
            return Err(unknown(
                format!("{at}.request.service"),
                &correlation.request.service,
            ));
        }
        if correlation.expect_in_logs.is_empty() {
            return Err(RuleError {
                span: None,
                key: format!("{at}.expect_in_logs"),
                reason: "names no service whose log must show the ID".into(),
            });
        }
        for (j, name) in correlation.expect_in_logs.iter().enumerate() {
            if plan.service(name).is_none() {
                return Err(unknown(format!("{at}.expect_in_logs[{j}]"), name));
            }
        }
    }
    Ok(())
}
