//! A fleet of one sample service run by an external supervisor (a stand-in for systemd).

use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use super::Fleet;

impl Fleet {
    /// One service run by an *external* supervisor: a small shell script stands in for
    /// `systemctl restart` (stop the old process, start a new one in the background, write its PID
    /// file). The agent is configured with `supervisor = "external"`, `restart_command` and
    /// `pid_file`, and the service is already running when the agent starts, as under systemd.
    pub fn start_external(nats_url: &str, role: &str) -> anyhow::Result<Self> {
        let mut fleet = Self::empty(nats_url, Vec::new())?;
        let member = fleet.lay_out(role)?;
        let pid_file = fleet.dir.join(format!("{role}.pid"));
        let script = fleet.dir.join(format!("supervise-{role}.sh"));
        let root = fleet.root(role);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 # Stands in for `systemctl restart`: stop the running service, start a new one.\n\
                 if [ -f {pid} ]; then\n  old=$(cat {pid})\n  kill \"$old\" 2>/dev/null\n  \
                 while kill -0 \"$old\" 2>/dev/null; do sleep 0.02; done\nfi\n\
                 nohup {sample} --role {role} --root {root} >> {log} 2>&1 &\n\
                 echo $! > {pid}\n",
                pid = pid_file.display(),
                sample = crate::binary("flotilla-sample").display(),
                root = root.display(),
                log = fleet.dir.join(format!("{role}-external.out")).display(),
            ),
        )?;
        let config = std::fs::read_to_string(&member.config)?;
        let command_line = config
            .lines()
            .find(|l| l.starts_with("command = "))
            .context("command line")?
            .to_owned();
        let external = format!(
            "supervisor = \"external\"\nrestart_command = [\"sh\", \"{}\"]\npid_file = \"{}\"",
            script.display(),
            pid_file.display()
        );
        std::fs::write(&member.config, config.replace(&command_line, &external))?;
        anyhow::ensure!(
            Command::new("sh").arg(&script).status()?.success(),
            "the stand-in supervisor failed"
        );
        fleet.external_pid_files.push(pid_file);
        fleet.members.insert(role.to_owned(), member);
        fleet.setup()?;
        fleet.start_agent(role)?;
        fleet.wait_ready(Duration::from_secs(30))?;
        Ok(fleet)
    }
}
