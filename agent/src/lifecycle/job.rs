//! The phases of a run-once job ([`crate::job`]): where a service is health-probed, restarted
//! and gated on its startup, a job is dry-run, run, and gated on its run.

use flotilla_schemas::{CommandId, Gates, JobRun, RunId, Step};

use super::Lifecycle;
use super::error::PhaseError;
use super::migrate::{Findings, Prepared};
use crate::job::{JobBaseline, JobConfig, baseline, gates, outputs, run};

impl Lifecycle {
    /// The job settings, when the service is a job.
    pub(super) fn job_config(&self) -> Option<JobConfig> {
        self.config.service.job()
    }

    /// Runs the job once and judges its outputs: the figures, and why the run is bad, if it is.
    async fn run_job_once(&self, job: &JobConfig) -> Result<(JobRun, Option<String>), PhaseError> {
        let service = &self.config.service;
        let log = self.config.agent.state_dir.join(crate::SERVICE_OUTPUT_LOG);
        let before = outputs::stamps(&service.root, &job.outputs);
        let finished = run::run(&run::Invocation {
            root: &service.root,
            command: &service.command,
            env: &service.env,
            launcher: &self.service_launcher(),
            log: &log,
            timeout: job.timeout,
        })
        .await
        .map_err(|e| PhaseError::Job(flotilla_telemetry::error_chain(&e)))?;
        let mut run = finished.run;
        run.outputs = outputs::judge(&service.root, &job.outputs, &before);
        let problem = if !run.exited_with(&job.success_exit_codes) {
            Some(format!(
                "the job ended with {} after {}ms{}",
                run.ending(),
                run.duration_ms,
                finished.last_line
            ))
        } else {
            outputs::failures(&run.outputs).map(|f| format!("the job did not produce {f}"))
        };
        Ok((run, problem))
    }

    /// How the job and its dry run start: as the service does (the agent's user, the
    /// service's environment), contained in a process group recorded for recovery.
    fn service_launcher(&self) -> crate::children::Launcher {
        crate::children::Launcher {
            run_as: None,
            ..self.launcher.clone()
        }
    }

    /// The job's own dry run, on the files the root holds now.
    async fn job_dry_run(&self, job: &JobConfig, files: &str) -> Result<(), PhaseError> {
        let Some((program, args)) = job.check_command.split_first() else {
            return Ok(());
        };
        let service = &self.config.service;
        let output = crate::steps::run_program(
            &service.root,
            program,
            args,
            &service.env,
            job.check_timeout,
            &self.service_launcher(),
        )
        .await
        .map_err(|e| {
            PhaseError::Job(format!("the job's check_command on the {files} files: {e}"))
        })?;
        if output.status.success() {
            return Ok(());
        }
        let said = crate::steps::last_line(&output.stderr);
        let said = if said.is_empty() {
            crate::steps::last_line(&output.stdout)
        } else {
            said
        };
        Err(PhaseError::Job(format!(
            "the job's check_command refuses the {files} files: {program} exited with {}{said}",
            output.status
        )))
    }

    /// Precheck (and dry run) of a job, where a service's health is probed: no `restart` step,
    /// and the job's own dry run passes on the current files.
    pub(super) async fn job_precheck(
        &self,
        job: &JobConfig,
        steps: &[Step],
    ) -> Result<(), PhaseError> {
        if let Some(index) = steps.iter().position(|s| matches!(s, Step::Restart)) {
            return Err(PhaseError::Job(format!(
                "step {} (restart): {} is a job: the restart phase runs it once after the steps; a restart step would run it twice",
                index + 1,
                self.config.service.name
            )));
        }
        self.job_dry_run(job, "current").await
    }

    /// The baseline run of a job, as [`JobBaseline`] says; `None` for a service. A baseline run
    /// that is bad refuses the migration: the job is broken before anything changes.
    pub(super) async fn job_baseline(&self) -> Result<Option<Box<JobRun>>, PhaseError> {
        let Some(job) = self.job_config() else {
            return Ok(None);
        };
        let state_dir = &self.config.agent.state_dir;
        match job.baseline {
            JobBaseline::None => return Ok(None),
            JobBaseline::Recorded => {
                if let Some(run) = baseline::load(state_dir).run {
                    return Ok(Some(Box::new(run)));
                }
            }
            JobBaseline::Run => {}
        }
        tracing::info!("running the job once for its baseline");
        let (run, problem) = self.run_job_once(&job).await?;
        if let Some(problem) = problem {
            return Err(PhaseError::Job(format!(
                "the job is not good before the migration: {problem}"
            )));
        }
        let recorded = baseline::Recorded {
            run: Some(run.clone()),
            ..Default::default()
        };
        if let Err(e) = baseline::save(state_dir, &recorded) {
            tracing::warn!(error = %e, "cannot record the job's baseline");
        }
        Ok(Some(Box::new(run)))
    }

    /// The restart phase of a job: its dry run on the new files, then its run, whose figures go
    /// to `after` whatever its ending.
    pub(super) async fn job_restart_phase(
        &self,
        job: &JobConfig,
        after: &mut Option<Box<JobRun>>,
    ) -> Result<(), PhaseError> {
        self.job_dry_run(job, "new").await?;
        let (run, problem) = self.run_job_once(job).await?;
        let ended_well = run.exited_with(&job.success_exit_codes);
        *after = Some(Box::new(run));
        // A bad ending is this phase's verdict; bad outputs are the validate phase's.
        match problem {
            Some(problem) if !ended_well => Err(PhaseError::Job(problem)),
            _ => Ok(()),
        }
    }

    /// The validate phase of a job: outputs, functional checks, gates, workloads. A good run
    /// becomes the recorded baseline of migration `migration`.
    pub(super) async fn job_validate(
        &self,
        job: &JobConfig,
        (migration, run_id): (CommandId, RunId),
        gate_config: &Gates,
        prepared: &Prepared,
        findings: &mut Findings,
    ) -> Result<(), PhaseError> {
        let after = findings
            .measurements
            .job_after
            .clone()
            .ok_or_else(|| PhaseError::Job("the job did not run".into()))?;
        if let Some(failed) = outputs::failures(&after.outputs) {
            return Err(PhaseError::Job(format!("the job did not produce {failed}")));
        }
        let cx = self.context(run_id);
        for check in &prepared.checks {
            let passed = crate::checks::run(&cx, check)
                .await
                .map_err(PhaseError::Check)?;
            tracing::info!(check = %passed, "functional check passed");
        }
        let before = findings.measurements.job_before.as_deref();
        findings.gates = gates::evaluate(gate_config, before, &after, job.max_peak_memory_bytes);
        for ((workload, before), report) in
            prepared.workloads.iter().zip(findings.workloads.iter_mut())
        {
            let figures = self.measure(workload, run_id).await;
            findings.gates.extend(crate::workload::gates(
                workload.name(),
                before,
                &figures,
                gate_config,
            ));
            report.after = Some(figures);
        }
        let tripped = gates::tripped(&findings.gates);
        if !tripped.is_empty() {
            return Err(PhaseError::Job(tripped));
        }
        let recorded = baseline::Recorded {
            run: Some(*after),
            migration: Some(migration),
            replaced: findings.measurements.job_before.as_deref().cloned(),
        };
        if let Err(e) = baseline::save(&self.config.agent.state_dir, &recorded) {
            tracing::warn!(error = %e, "cannot record the job's run as its baseline");
        }
        Ok(())
    }

    /// After a rollback of `migration` restored a job's files: its baseline is the one from
    /// before, and with `rerun_on_rollback` the job runs again and must be good.
    pub(super) async fn job_after_restore(
        &self,
        job: &JobConfig,
        migration: CommandId,
    ) -> Result<(), PhaseError> {
        let state_dir = &self.config.agent.state_dir;
        if let Err(e) = baseline::rolled_back(state_dir, migration) {
            tracing::warn!(error = %e, "cannot restore the job's recorded baseline");
        }
        if !job.rerun_on_rollback {
            tracing::info!("job files restored; not re-run (rerun_on_rollback is off)");
            return Ok(());
        }
        let (run, problem) = self.run_job_once(job).await?;
        if let Some(problem) = problem {
            return Err(PhaseError::Job(format!(
                "the job's run on the restored files: {problem}"
            )));
        }
        let recorded = baseline::Recorded {
            run: Some(run),
            ..Default::default()
        };
        if let Err(e) = baseline::save(state_dir, &recorded) {
            tracing::warn!(error = %e, "cannot record the job's baseline");
        }
        Ok(())
    }
}
