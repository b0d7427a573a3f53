//! The agents of a fleet, one by one: their processes, signals, environment and logs.

use std::path::PathBuf;
use std::process::{Child, Command};

use super::Fleet;

impl Fleet {
    /// The PID of `role`'s agent, while it runs.
    pub fn agent_pid(&self, role: &str) -> Option<u32> {
        self.members
            .get(role)
            .and_then(|m| m.agent.as_ref())
            .map(Child::id)
    }

    /// Sends `signal` (e.g. `"STOP"`, `"CONT"`) to `role`'s agent; true when it was delivered.
    pub fn signal_agent(&self, role: &str, signal: &str) -> bool {
        self.agent_pid(role).is_some_and(|pid| {
            Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// Whether `role`'s agent has exited, and with which status (`None` while it runs).
    pub fn agent_exit(&mut self, role: &str) -> Option<std::process::ExitStatus> {
        self.members
            .get_mut(role)
            .and_then(|m| m.agent.as_mut())
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Replaces (or adds) one variable of `role`'s agent environment, for its next start.
    pub fn set_agent_env(&mut self, role: &str, key: &str, value: &str) {
        if let Some(member) = self.members.get_mut(role) {
            member.env.retain(|(k, _)| k != key);
            member.env.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Starts a replacement agent for `role` while the current one may still run (frozen, or
    /// cut off): on a copy of its state directory, as a new host that took the state over would,
    /// since one state directory admits one agent. It adopts the running service.
    pub fn start_replacement_agent(&mut self, role: &str) -> anyhow::Result<()> {
        let state = self.dir.join("state").join(role);
        let copy = self.dir.join("state").join(format!("{role}-replacement"));
        anyhow::ensure!(
            Command::new("cp")
                .arg("-a")
                .arg(&state)
                .arg(&copy)
                .status()?
                .success(),
            "cannot copy the state directory {}",
            state.display()
        );
        self.set_agent_env(
            role,
            "FLOTILLA_AGENT__STATE_DIR",
            &copy.display().to_string(),
        );
        self.start_agent(role)
    }

    /// The agent log of `role` (its stdout and stderr, across restarts).
    pub fn agent_log(&self, role: &str) -> PathBuf {
        self.dir.join(format!("agent-{role}.log"))
    }

    /// The roles of this fleet.
    pub fn roles(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }
}
