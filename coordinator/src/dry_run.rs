//! `migrate --dry-run`: every target agent previews its migration — a `preview` command, signed
//! and delivered like every command, that runs the migration's own precheck and plays its steps
//! in memory — and the answers become a per-service report: what each step would do (diffs,
//! deletions, commands), or the reason the real run would stop on. Nothing is recorded in the
//! run store, and no agent changes, backs up or journals anything.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use flotilla_bus::signing::{SIGNATURE_HEADER, SigningKey};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{
    Action, Command, CommandId, HEADER_RUN_ID, InstanceId, Outcome, RunId, RunResult, ServiceName,
    StepPreview, encode,
};
use serde::Serialize;
use time::OffsetDateTime;

use crate::events::{EventsError, RunEvent, RunEvents};
use crate::exit;
use crate::plan::Plan;
use crate::rollout::Target;

/// What an agent that predates the `preview` kind answers (serde's words for an unknown tag).
const OLD_AGENT_REFUSAL: &str = "unknown variant `preview`";

/// A dry run's report: the plan's waves, and per target what its migration would do.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunReport {
    /// The plan's name.
    pub plan: String,
    /// The correlation ID the previews ran under (their events carry it; no run is recorded).
    pub run_id: RunId,
    pub failure_budget: String,
    pub on_failure: &'static str,
    pub waves: Vec<WavePreview>,
    /// The exit code the dry run ends with: what the real run's would be, as far as the agents
    /// can tell without changing anything (docs/exit-codes.md).
    pub exit_code: u8,
}

/// One wave of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct WavePreview {
    pub name: String,
    /// `None`: no cap.
    pub max_parallel: Option<u32>,
    /// The wave's selector, which matched exactly its `targets` (less those earlier waves took).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The operator's selector (`-l`), which every target matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    pub targets: Vec<TargetPreview>,
    /// Its analysis gates' queries, rendered as the run sends them (`${run:id}` left as it is:
    /// a dry run has no run ID).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<AnalysisPreview>,
}

/// One analysis query of a wave, as the run would send it to Prometheus.
#[derive(Debug, Clone, Serialize)]
pub struct AnalysisPreview {
    pub name: String,
    pub query: String,
    pub threshold: String,
}

/// What one target's migration would do.
#[derive(Debug, Clone, Serialize)]
pub struct TargetPreview {
    pub service: ServiceName,
    pub instance: InstanceId,
    pub status: PreviewStatus,
    /// Why it would not migrate: the reason the real run would give.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Each step, up to the one that would fail.
    pub steps: Vec<StepPreview>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_bytes: Option<u64>,
    /// Health checks after the restart (the agent's own when the plan names none).
    pub health_checks: usize,
    pub functional_checks: usize,
    pub workloads: usize,
}

/// How a target's preview ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviewStatus {
    /// Every check passed and every step would apply.
    WouldMigrate,
    /// The real run would refuse or fail it, for `reason`.
    Refused,
    /// The agent predates dry runs: it does not know the `preview` command.
    Unsupported,
    /// The agent did not answer within the service's `command_timeout`.
    TimedOut,
    /// The command never reached the commands stream.
    NotDelivered,
}

impl PreviewStatus {
    /// The status as written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PreviewStatus::WouldMigrate => "would migrate",
            PreviewStatus::Refused => "refused",
            PreviewStatus::Unsupported => "unsupported",
            PreviewStatus::TimedOut => "timed out",
            PreviewStatus::NotDelivered => "not delivered",
        }
    }

    /// The exit code this status calls for, as the real run's would be.
    fn exit_code(self) -> u8 {
        match self {
            PreviewStatus::WouldMigrate => exit::OK,
            PreviewStatus::Refused => exit::FAILED,
            PreviewStatus::Unsupported => exit::PREFLIGHT,
            PreviewStatus::TimedOut | PreviewStatus::NotDelivered => exit::TIMED_OUT,
        }
    }
}

/// Sends every target its preview and collects the answers.
pub async fn run(
    client: &async_nats::Client,
    subjects: &Subjects,
    signer: Option<&SigningKey>,
    plan: &Plan,
    targets: &[Target],
) -> Result<DryRunReport, EventsError> {
    let run_id = RunId::new();
    // Opened before anything is sent, from the run's first event: no answer can be missed.
    let trust = crate::trust::ResultTrust::new(
        targets
            .iter()
            .map(|t| (&t.service, &t.instance, &t.agent_keys[..])),
    );
    let mut events = RunEvents::open(client, subjects, run_id, trust).await?;
    let js = jetstream::new(client.clone());
    let commands = preview_commands(plan, targets, run_id);
    let mut answers: HashMap<CommandId, Result<RunResult, PreviewStatus>> = HashMap::new();
    for command in &commands {
        if let Err(e) = publish(&js, subjects, signer, command).await {
            tracing::warn!(error = %e, service = %command.service, "preview not delivered");
            answers.insert(command.command_id, Err(PreviewStatus::NotDelivered));
        }
    }
    let longest = plan
        .services
        .iter()
        .map(|s| s.command_timeout)
        .max()
        .unwrap_or(Duration::from_secs(60));
    collect_answers(&mut events, &commands, &mut answers, longest).await;
    let report = |command: &Command| {
        let service = plan
            .service(&command.service)
            .expect("targets come from the plan");
        let answer = answers
            .remove(&command.command_id)
            .unwrap_or(Err(PreviewStatus::TimedOut));
        target_preview(command, service, answer)
    };
    let waves = by_wave(plan, commands.iter().map(report).collect());
    let exit_code = severest(waves.iter().flat_map(|w| &w.targets).map(|t| t.status));
    Ok(DryRunReport {
        plan: plan.name.clone(),
        run_id,
        failure_budget: plan.failure_budget.to_string(),
        on_failure: plan.on_failure.as_str(),
        waves,
        exit_code,
    })
}

/// One preview command per target, expiring with its service's `command_timeout`.
fn preview_commands(plan: &Plan, targets: &[Target], run_id: RunId) -> Vec<Command> {
    let now = OffsetDateTime::now_utc();
    targets
        .iter()
        .map(|target| {
            let service = plan
                .service(&target.service)
                .expect("targets come from the plan");
            Command {
                schema: Default::default(),
                command_id: CommandId::new(),
                run_id,
                service: target.service.clone(),
                instance: target.instance.clone(),
                issued_at: now,
                expires_at: now + service.command_timeout,
                action: Action::Preview {
                    steps: service.steps.clone(),
                    preconditions: service.preconditions.clone(),
                    checks: service.checks.clone(),
                    workloads: service.workloads.clone(),
                },
            }
        })
        .collect()
}

/// Files the results of `commands` into `answers` until each has one or `patience` passed.
async fn collect_answers(
    events: &mut RunEvents,
    commands: &[Command],
    answers: &mut HashMap<CommandId, Result<RunResult, PreviewStatus>>,
    patience: Duration,
) {
    let deadline = tokio::time::Instant::now() + patience;
    while answers.len() < commands.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(event) = events.next(left).await else {
            break;
        };
        if let RunEvent::Result(result) = event
            && commands.iter().any(|c| c.command_id == result.command_id)
        {
            answers.entry(result.command_id).or_insert(Ok(*result));
        }
    }
}

/// The previews grouped by the plan's waves, in order.
fn by_wave(plan: &Plan, mut previews: Vec<TargetPreview>) -> Vec<WavePreview> {
    plan.waves
        .iter()
        .map(|wave| WavePreview {
            name: wave.name.clone(),
            max_parallel: wave.cap(),
            selector: wave.selector.as_ref().map(ToString::to_string),
            limit: wave
                .placed
                .as_ref()
                .and_then(|p| p.limit.as_ref())
                .map(ToString::to_string),
            targets: previews
                .extract_if(.., |p| wave.takes(&p.service, &p.instance))
                .collect(),
            analysis: Vec::new(),
        })
        .map(|mut preview| {
            preview.analysis = analysis_preview(plan, &preview);
            preview
        })
        .collect()
}

/// The wave's analysis queries for its targets' services.
fn analysis_preview(plan: &Plan, wave: &WavePreview) -> Vec<AnalysisPreview> {
    let Some(analysis) = &plan.analysis else {
        return Vec::new();
    };
    let mut services: Vec<String> = Vec::new();
    for t in &wave.targets {
        if !services.contains(&t.service.to_string()) {
            services.push(t.service.to_string());
        }
    }
    analysis
        .queries(&wave.name, "${run:id}", &services)
        .into_iter()
        .map(|q| AnalysisPreview {
            name: q.gate.name.clone(),
            query: q.query,
            threshold: q.gate.threshold.to_string(),
        })
        .collect()
}

/// The exit code of the severest status: not answered (6), then an agent too old (3), then a
/// refusal (1).
fn severest(statuses: impl Iterator<Item = PreviewStatus>) -> u8 {
    let rank = |code: u8| match code {
        exit::TIMED_OUT => 3,
        exit::PREFLIGHT => 2,
        exit::FAILED => 1,
        _ => 0,
    };
    statuses
        .map(PreviewStatus::exit_code)
        .max_by_key(|&code| rank(code))
        .unwrap_or(exit::OK)
}

fn target_preview(
    command: &Command,
    service: &crate::plan::ServicePlan,
    answer: Result<RunResult, PreviewStatus>,
) -> TargetPreview {
    let mut preview = TargetPreview {
        service: command.service.clone(),
        instance: command.instance.clone(),
        status: PreviewStatus::WouldMigrate,
        reason: None,
        steps: Vec::new(),
        backup_bytes: None,
        health_checks: service.health.len().max(1),
        functional_checks: service.checks.len(),
        workloads: service.workloads.len(),
    };
    let result = match answer {
        Ok(result) => result,
        Err(status) => {
            preview.status = status;
            preview.reason = Some(match status {
                PreviewStatus::NotDelivered => {
                    "the preview command could not be delivered".to_owned()
                }
                _ => "no answer within its command_timeout".to_owned(),
            });
            return preview;
        }
    };
    if let Some(found) = result.preview {
        preview.steps = found.steps;
        preview.backup_bytes = found.backup_bytes;
    }
    if result.outcome != Outcome::Succeeded {
        let reason = result.reason.unwrap_or_default();
        if reason.contains(OLD_AGENT_REFUSAL) {
            preview.status = PreviewStatus::Unsupported;
            preview.reason = Some(format!(
                "this agent predates dry runs (it does not know the preview command); upgrade it, or run without --dry-run. It said: {reason}"
            ));
        } else {
            preview.status = PreviewStatus::Refused;
            preview.reason = Some(reason);
        }
    }
    preview
}

/// Publishes one preview into the commands stream, signed like every command, and waits for the
/// stream to store it.
async fn publish(
    js: &jetstream::Context,
    subjects: &Subjects,
    signer: Option<&SigningKey>,
    command: &Command,
) -> Result<(), String> {
    let subject = subjects.command(&command.service, &command.instance);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", command.command_id.to_string().as_str());
    headers.insert(HEADER_RUN_ID, command.run_id.to_string().as_str());
    let payload = encode(command);
    if let Some(signer) = signer {
        headers.insert(SIGNATURE_HEADER, signer.sign(&payload).as_str());
    }
    let ack = js
        .publish_with_headers(subject.clone(), headers, payload.into())
        .await
        .map_err(|e| format!("{subject}: {e}"))?;
    ack.await.map(|_| ()).map_err(|e| format!("{subject}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_that_predates_previews_is_reported_unsupported() {
        let plan = Plan::parse(
            "name = \"p\"\n[[service]]\nname = \"inference\"\n[[step]]\naction = \"restart\"\n",
        )
        .unwrap();
        let service = &plan.services[0];
        let now = OffsetDateTime::now_utc();
        let command = Command {
            schema: Default::default(),
            command_id: CommandId::new(),
            run_id: RunId::new(),
            service: service.name.clone(),
            instance: InstanceId::parse("a").unwrap(),
            issued_at: now,
            expires_at: now,
            action: Action::Preview {
                steps: service.steps.clone(),
                preconditions: Vec::new(),
                checks: Vec::new(),
                workloads: Vec::new(),
            },
        };
        // What an agent built before the preview kind answers: it cannot decode the command.
        let answer = |reason: &str| RunResult {
            reason: Some(reason.to_owned()),
            ..RunResult::of(&command, now, Outcome::Refused)
        };
        let old = answer(
            "malformed flotilla.command.v1 message: unknown variant `preview`, expected one of `migrate`, `rollback`, `finalize`, `inspect` at line 1 column 286",
        );
        let shown = target_preview(&command, service, Ok(old));
        assert_eq!(shown.status, PreviewStatus::Unsupported);
        assert!(
            shown
                .reason
                .unwrap()
                .starts_with("this agent predates dry runs")
        );
        let refused = target_preview(&command, service, Ok(answer("precheck: nope")));
        assert_eq!(refused.status, PreviewStatus::Refused);
        assert_eq!(refused.reason.as_deref(), Some("precheck: nope"));
    }

    #[test]
    fn the_severest_status_sets_the_exit_code() {
        use PreviewStatus::*;
        assert_eq!(severest([WouldMigrate, WouldMigrate].into_iter()), 0);
        assert_eq!(severest([Refused, WouldMigrate].into_iter()), 1);
        assert_eq!(severest([Refused, Unsupported].into_iter()), 3);
        assert_eq!(severest([Unsupported, TimedOut, Refused].into_iter()), 6);
        assert_eq!(severest(std::iter::empty()), 0);
    }
}
