//! The cross-service stage (T006 phase 3).

use flotilla_schemas::{
    Check, HttpCheck, Inspection, InstanceId, Outcome, Presence, RunResult, ServiceName,
};

use super::dispatch::InspectRequest;
use super::{Engine, ProgressSink, RolloutError};
use crate::plan::ServiceInspect;
use crate::store::{CrossServiceVerdict, LogCorrelationVerdict, ServiceInspection, Stage};

mod consistency;

impl<'a, P: ProgressSink> Engine<'a, P> {
    /// T006 phase 3, once every service is migrated: each agent reaches the other services'
    /// endpoints and runs the plan's cross-service checks, and reports the shape of its
    /// configuration; the coordinator flags failed checks, standard configurations that lack a
    /// required key, and configuration files that hold a literal secret. A failure rolls the
    /// fleet back (unless `--no-verify`).
    pub(super) async fn cross_service_stage(&mut self) -> Result<(), RolloutError> {
        let Some(spec) = self.plan.cross_service.clone() else {
            return Ok(());
        };
        self.sink
            .stage("cross-service checks: communication, configuration consistency");
        let members: Vec<usize> = (0..self.record.targets.len())
            .filter(|&t| self.migrated(t))
            .collect();
        let mut problems = Vec::new();
        let endpoints = if spec.communication {
            let discovered = crate::discovery::discover(
                self.client,
                self.subjects,
                std::time::Duration::from_secs(1),
                flotilla_bus::registry::INACTIVE_AFTER,
            )
            .await
            .map(|discovered| discovered.found)
            .map_err(|e| flotilla_telemetry::error_chain(&e));
            let migrated: Vec<(ServiceName, InstanceId)> = members
                .iter()
                .map(|&t| {
                    let target = &self.record.targets[t];
                    (target.service.clone(), target.instance.clone())
                })
                .collect();
            communication_endpoints(discovered, &migrated, &mut problems)
        } else {
            Vec::new()
        };
        let round = self.first_round(&spec, &members, &endpoints, &mut problems);
        let (answers, unanswered) = self.inspect_round(round).await?;
        let mut services = Vec::new();
        let mut settings = Vec::new();
        for (t, result) in answers {
            let name = self.target_name(t);
            let inspection = result.inspection.clone().unwrap_or_default();
            // A plan `plan check` passed places every key: an error here is one it refused.
            let own = self.inspect_spec(&spec, t).unwrap_or_default();
            problems.extend(answer_problems(&name, &result, &inspection, &own));
            settings.push((name, inspection.settings.clone()));
            services.push(ServiceInspection {
                service: self.record.targets[t].service.clone(),
                instance: self.record.targets[t].instance.clone(),
                checks: inspection.checks,
                config: inspection.config,
                settings: inspection.settings,
            });
        }
        problems.extend(consistency::settings_problems(&settings));
        for t in unanswered {
            let name = self.target_name(t);
            problems.push(format!("{name}: no answer to the cross-service checks"));
        }
        let correlation = self
            .log_correlation_round(&spec, &members, &mut problems)
            .await?;
        let ok = problems.is_empty();
        self.record.notes.push(if ok {
            format!("cross-service checks passed: {} service(s)", services.len())
        } else {
            format!("cross-service checks failed: {}", problems.join(" | "))
        });
        self.record.cross_service = Some(CrossServiceVerdict {
            ok,
            problems,
            services,
            log_correlation: correlation,
        });
        if !ok && self.correlation.enforce {
            self.record.stage = Stage::RollingBack;
        }
        self.save().await
    }

    /// The cross-service stage of target `t`'s service: the fleet-wide keys with its own.
    fn inspect_spec(
        &self,
        spec: &crate::plan::CrossService,
        t: usize,
    ) -> Result<ServiceInspect, String> {
        let service = &self.record.targets[t].service;
        let own = self
            .plan
            .service(service)
            .and_then(|s| s.cross_service.as_ref());
        spec.for_service(own)
    }

    /// The first round's inspections for every migrated member: the plan's checks, a reach of
    /// every other migrated service's endpoint, the log-correlation requests, and the service's
    /// configuration files and settings. A request nobody can send goes to `problems`.
    fn first_round(
        &self,
        spec: &crate::plan::CrossService,
        members: &[usize],
        endpoints: &[(ServiceName, String)],
        problems: &mut Vec<String>,
    ) -> Vec<InspectRequest> {
        // A log-correlation request is sent by the first migrated instance of its service, in
        // this first round; the logs are searched in a second one, once it was answered.
        let requester = |plan_service: &ServiceName| {
            members
                .iter()
                .copied()
                .find(|&t| self.record.targets[t].service == *plan_service)
        };
        let mut round = Vec::new();
        for &t in members {
            let target = &self.record.targets[t];
            let mut checks = spec.checks.clone();
            for endpoint in endpoints
                .iter()
                .filter(|(s, _)| *s != target.service)
                .map(|(_, e)| e)
            {
                checks.push(Check::Http(HttpCheck {
                    url: Some(endpoint.clone()),
                    method: None,
                    body: None,
                    expect_status: 200,
                    body_contains: None,
                    timeout_ms: 5_000,
                    headers: Default::default(),
                }));
            }
            for correlation in &spec.log_correlation {
                if requester(&correlation.request.service) == Some(t) {
                    checks.push(correlation.request_check());
                }
            }
            let own = match self.inspect_spec(spec, t) {
                Ok(own) => own,
                Err(e) => {
                    problems.push(format!("{}: {e}", self.target_name(t)));
                    ServiceInspect::default()
                }
            };
            round.push(InspectRequest {
                target: t,
                checks,
                config_files: own.config_files,
                settings: own.settings,
                revalidate: None,
            });
        }
        for correlation in &spec.log_correlation {
            if requester(&correlation.request.service).is_none() {
                problems.push(format!(
                    "log correlation: no migrated instance of {} to send the request",
                    correlation.request.service
                ));
            }
        }
        round
    }

    /// The second round of the cross-service stage: the agents of each log-correlation check's
    /// `expect_in_logs` services search their service's log for the run's ID (by default) until
    /// the check's deadline. Failures go to `problems`; returns the verdicts, per agent.
    pub(super) async fn log_correlation_round(
        &mut self,
        spec: &crate::plan::CrossService,
        members: &[usize],
        problems: &mut Vec<String>,
    ) -> Result<Vec<LogCorrelationVerdict>, RolloutError> {
        if spec.log_correlation.is_empty() {
            return Ok(Vec::new());
        }
        self.sink
            .stage("cross-service check: the run's correlation ID in other services' logs");
        let mut searches: Vec<(usize, Vec<Check>)> = Vec::new();
        for correlation in &spec.log_correlation {
            for service in &correlation.expect_in_logs {
                let found: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&t| self.record.targets[t].service == *service)
                    .collect();
                if found.is_empty() {
                    problems.push(format!(
                        "log correlation: no migrated instance of {service} to search the log of"
                    ));
                }
                for t in found {
                    match searches.iter_mut().find(|(s, _)| *s == t) {
                        Some((_, checks)) => checks.push(correlation.log_check()),
                        None => searches.push((t, vec![correlation.log_check()])),
                    }
                }
            }
        }
        let round = searches
            .into_iter()
            .map(|(target, checks)| InspectRequest {
                target,
                checks,
                ..InspectRequest::default()
            })
            .collect();
        let (answers, unanswered) = self.inspect_round(round).await?;
        let mut verdicts = Vec::new();
        for (t, result) in answers {
            let name = self.target_name(t);
            let checks = result.inspection.unwrap_or_default().checks;
            for verdict in checks.iter().filter(|v| !v.passed) {
                problems.push(format!(
                    "{name}: log correlation failed: {}",
                    verdict.detail
                ));
            }
            if result.outcome != Outcome::Succeeded {
                problems.push(format!("{name}: {}", result.reason.unwrap_or_default()));
            }
            verdicts.push(LogCorrelationVerdict {
                service: self.record.targets[t].service.clone(),
                instance: self.record.targets[t].instance.clone(),
                checks,
            });
        }
        for t in unanswered {
            let name = self.target_name(t);
            problems.push(format!("{name}: no answer to the log-correlation search"));
        }
        Ok(verdicts)
    }
}

/// The endpoints the communication checks reach: those of the services of `migrated` that the
/// agents announced in `discovered`. What leaves a communication check unmade goes to
/// `problems`, so the stage fails instead of passing having checked nothing: discovery that
/// failed, and a migrated agent that did not answer discovery, which no other service could
/// then be shown to reach. An agent that answered without an endpoint runs a job
/// (`kind = "job"`): there is nothing to reach, and nothing left unmade.
pub(super) fn communication_endpoints(
    discovered: Result<Vec<Presence>, String>,
    migrated: &[(ServiceName, InstanceId)],
    problems: &mut Vec<String>,
) -> Vec<(ServiceName, String)> {
    let agents = match discovered {
        Ok(agents) => agents,
        Err(e) => {
            problems.push(format!(
                "communication: discovery of the agents' endpoints failed, nothing was checked: {e}"
            ));
            return Vec::new();
        }
    };
    for (service, instance) in migrated {
        let answered = agents
            .iter()
            .any(|p| p.service == *service && p.instance == *instance);
        if !answered {
            problems.push(format!(
                "communication: {service}/{instance} did not answer discovery, so no service was checked to reach it"
            ));
        }
    }
    agents
        .into_iter()
        .filter(|p| migrated.iter().any(|(service, _)| *service == p.service))
        .filter_map(|p| p.endpoint.map(|e| (p.service, e)))
        .collect()
}

/// The problems one agent's answer to the cross-service checks shows: failed checks, the
/// configuration problems of [`consistency::config_problems`], and an answer that is not a
/// success. `name` is `service/instance`; `spec` is its service's part of the stage.
pub(super) fn answer_problems(
    name: &str,
    result: &RunResult,
    inspection: &Inspection,
    spec: &ServiceInspect,
) -> Vec<String> {
    let mut problems = Vec::new();
    for verdict in inspection.checks.iter().filter(|v| !v.passed) {
        problems.push(format!(
            "{name}: {} check failed: {}",
            verdict.kind, verdict.detail
        ));
    }
    problems.extend(consistency::config_problems(name, inspection, spec));
    if result.outcome != Outcome::Succeeded {
        problems.push(format!(
            "{name}: {}",
            result.reason.clone().unwrap_or_default()
        ));
    }
    problems
}

#[cfg(test)]
mod tests;
