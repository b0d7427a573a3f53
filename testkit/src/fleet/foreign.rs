//! A fleet of one service that is not the sample service: any program, run by its agent.

use std::path::Path;
use std::time::Duration;

use super::{Fleet, Member};

impl Fleet {
    /// Starts one agent for `name`, the service `command` (run from its root, which first gets
    /// `files`, `(relative path, content)`), healthy when `http://127.0.0.1:<port>/health`
    /// answers 200. The agent supervises the service and stops it when it stops.
    pub fn start_foreign(
        nats_url: &str,
        name: &str,
        command: &[&str],
        port: u16,
        files: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut fleet = Self::empty(nats_url, Vec::new())?;
        fleet.setup()?;
        fleet.add_foreign(name, command, port, files)?;
        Ok(fleet)
    }

    /// Adds one more service that is not the sample service, as [`Fleet::start_foreign`] starts
    /// the first: a fleet of several foreign services, trusting the same signing key.
    pub fn add_foreign(
        &mut self,
        name: &str,
        command: &[&str],
        port: u16,
        files: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.add_foreign_with_env(name, command, port, files, &[])
    }

    /// [`Fleet::add_foreign`], the agent started with `env` too (e.g. `FLOTILLA_SECRET_<NAME>`,
    /// a secret it resolves; the service does not inherit it).
    pub fn add_foreign_with_env(
        &mut self,
        name: &str,
        command: &[&str],
        port: u16,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let command: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
        let service = format!(
            "command = [{command}]\n\
             health_url = \"http://127.0.0.1:{port}/health\"\nstartup_timeout = \"30s\"\n",
            command = command.join(", "),
        );
        self.add_member(name, &service, port, files, env)
    }

    /// Lays out and starts the agent of a service that is not the sample service: its root
    /// (with `files`), its state dir, and a configuration whose `[service]` table ends with
    /// `service` (its command and how it is judged). Waits for it to answer.
    pub(super) fn add_member(
        &mut self,
        name: &str,
        service: &str,
        port: u16,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let nats_url = self.nats_url().to_owned();
        let root = self.root(name);
        let state = self.dir.join("state").join(name);
        for dir in [&root, &state] {
            std::fs::create_dir_all(dir)?;
        }
        for (path, content) in files {
            std::fs::write(root.join(path), content)?;
        }
        let config = self.dir.join(format!("agent-{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[nats]\nurl = \"{nats_url}\"\n\n\
                 [agent]\ninstance = \"a\"\nstate_dir = {state:?}\nstop_service_on_exit = true\n\n\
                 [service]\nname = \"{name}\"\nroot = {root:?}\n{service}\n\
                 [security]\ntrusted_keys = [\"{trusted}\"]\n",
                state = path_text(&state),
                root = path_text(&root),
                trusted = self.trusted_key,
            ),
        )?;
        self.members.insert(
            name.to_owned(),
            Member {
                port,
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
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}
