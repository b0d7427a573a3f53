//! A fleet of one run-once job (`kind = "job"`): any program, run by its agent when a
//! migration asks, with no health endpoint.

use std::path::PathBuf;
use std::time::Duration;

use super::{Fleet, Member};

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
        let nats_url = self.nats_url().to_owned();
        let root = self.root(name);
        let state = self.job_state_dir(name);
        for dir in [&root, &state] {
            std::fs::create_dir_all(dir)?;
        }
        for (path, content) in files {
            std::fs::write(root.join(path), content)?;
        }
        let config = self.dir.join(format!("agent-{name}.toml"));
        let command: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
        std::fs::write(
            &config,
            format!(
                "[nats]\nurl = \"{nats_url}\"\n\n\
                 [agent]\ninstance = \"a\"\nstate_dir = \"{state}\"\n\n\
                 [service]\nname = \"{name}\"\nroot = \"{root}\"\nkind = \"job\"\n\
                 command = [{command}]\n\n\
                 [service.job]\n{job_section}\n\n\
                 [security]\ntrusted_keys = [\"{trusted}\"]\n",
                state = state.display(),
                root = root.display(),
                command = command.join(", "),
                trusted = self.trusted_key,
            ),
        )?;
        self.members.insert(
            name.to_owned(),
            Member {
                port: 0,
                agent: None,
                config,
                env: env
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            },
        );
        self.start_agent(name)?;
        self.wait_ready(Duration::from_secs(30))
    }

    /// The state directory of the job `name`'s agent; its `service-output.log` holds what
    /// every run of the job wrote.
    pub fn job_state_dir(&self, name: &str) -> PathBuf {
        self.dir.join("state").join(name)
    }
}
