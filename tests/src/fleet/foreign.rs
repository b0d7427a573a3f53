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
        let mut fleet = Self::empty(nats_url)?;
        let root = fleet.root(name);
        let state = fleet.dir.join("state").join(name);
        for dir in [&root, &state] {
            std::fs::create_dir_all(dir)?;
        }
        for (path, content) in files {
            std::fs::write(root.join(path), content)?;
        }
        let config = fleet.dir.join(format!("agent-{name}.toml"));
        let command: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
        std::fs::write(
            &config,
            format!(
                "[nats]\nurl = \"{nats_url}\"\n\n\
                 [agent]\ninstance = \"a\"\nstate_dir = {state:?}\nstop_service_on_exit = true\n\n\
                 [service]\nname = \"{name}\"\nroot = {root:?}\ncommand = [{command}]\n\
                 health_url = \"http://127.0.0.1:{port}/health\"\nstartup_timeout = \"30s\"\n\n\
                 [security]\ntrusted_keys = [\"{trusted}\"]\n",
                state = path_text(&state),
                root = path_text(&root),
                command = command.join(", "),
                trusted = fleet.trusted_key,
            ),
        )?;
        fleet.members.insert(
            name.to_owned(),
            Member {
                port,
                agent: None,
                config,
                env: Vec::new(),
            },
        );
        fleet.start_agent(name)?;
        fleet.wait_ready(Duration::from_secs(30))?;
        Ok(fleet)
    }
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}
