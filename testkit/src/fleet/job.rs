//! A fleet of one run-once job (`kind = "job"`): any program, run by its agent when a
//! migration asks, with no health endpoint.

use super::Fleet;
use std::path::PathBuf;

impl Fleet {
    /// Starts one agent for the job `name`: `command` run from its root (which first gets
    /// `files`, `(relative path, content)`), judged as `job_section` says (the body of the
    /// agent's `[service.job]` table, TOML).
    pub fn start_job(
        nats_url: &str,
        name: &str,
        command: &[&str],
        job_section: &str,
        files: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut fleet = Self::empty(nats_url, Vec::new())?;
        fleet.setup()?;
        fleet.add_job_with_env(name, command, job_section, files, &[])?;
        Ok(fleet)
    }

    /// Adds one more job to this fleet, as [`Fleet::start_job`] starts the first, its agent
    /// started with `env` too (e.g. its NATS identity, or `FLOTILLA_SECRET_<NAME>`).
    pub fn add_job_with_env(
        &mut self,
        name: &str,
        command: &[&str],
        job_section: &str,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let command: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
        // The job's table follows the service's keys: `[service.job]` ends `[service]`.
        let service = format!(
            "kind = \"job\"\ncommand = [{command}]\n\n[service.job]\n{job_section}\n",
            command = command.join(", "),
        );
        self.add_member(name, &service, 0, files, env)
    }

    /// The state directory of the job `name`'s agent; its `service-output.log` holds what
    /// every run of the job wrote.
    pub fn job_state_dir(&self, name: &str) -> PathBuf {
        self.dir.join("state").join(name)
    }
}
