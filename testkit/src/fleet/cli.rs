//! The `flotilla` CLI against a fleet: any command, and `flotilla migrate` as one call (write
//! the plan, run it with `--output json`, parse the report).

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use super::Fleet;

/// Numbers the plans [`Fleet::migrate`] writes, so that none overwrites an earlier one.
static PLANS: AtomicUsize = AtomicUsize::new(0);

impl Fleet {
    /// Starts `flotilla` in the background (stdout piped), for tests that act during a run.
    pub fn spawn_flotilla(&self, args: &[&str]) -> Child {
        self.flotilla_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flotilla starts")
    }

    /// `flotilla agents --output json`, parsed.
    pub fn agents(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.flotilla(&["agents", "--output", "json", "--discovery-window", "500ms"]);
        // 3: none answered.
        if out.status.code() == Some(3) {
            return Ok(Vec::new());
        }
        anyhow::ensure!(
            out.status.success(),
            "flotilla agents failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }
    /// How many lines `role`'s steps appended to `counter.txt` in its service root.
    pub fn counter(&self, role: &str) -> usize {
        std::fs::read_to_string(self.root(role).join("counter.txt"))
            .map(|c| c.lines().count())
            .unwrap_or(0)
    }

    /// The newest run's ID, once a run is recorded.
    pub fn only_run(&self) -> String {
        let mut id = String::new();
        crate::wait_for(
            "the run to be recorded",
            std::time::Duration::from_secs(20),
            || {
                let out = self.flotilla(&["runs", "--output", "json"]);
                if let Ok(Value::Array(runs)) = serde_json::from_slice::<Value>(&out.stdout)
                    && let Some(run) = runs.first()
                {
                    id = run["run_id"].as_str().unwrap_or_default().to_owned();
                }
                !id.is_empty()
            },
        )
        .unwrap();
        id
    }

    /// Runs the `flotilla` CLI against this fleet's NATS.
    pub fn flotilla(&self, args: &[&str]) -> Output {
        self.flotilla_command(args).output().expect("flotilla runs")
    }

    /// A `flotilla` command for this fleet: its NATS, its signing key and identity, run from the
    /// repository's root.
    pub fn flotilla_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(crate::binary("flotilla"));
        command
            .args(args)
            .env("FLOTILLA_NATS__URL", &self.nats_url)
            .envs(self.cli_env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .current_dir(crate::repo_root());
        command
    }

    /// Writes a plan into the fleet's directory and returns its path.
    pub fn write_plan(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("plan written");
        path
    }

    /// Runs `flotilla` with extra environment (e.g. another `FLOTILLA_NATS__URL`).
    pub fn flotilla_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.flotilla_command(args)
            .envs(env.iter().copied())
            .output()
            .expect("flotilla runs")
    }

    /// Starts `flotilla` in the background with extra environment, stdout and stderr piped.
    pub fn spawn_flotilla_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Child {
        self.flotilla_command(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flotilla starts")
    }

    /// Writes `plan` (a [`crate::Plan`] or any TOML text) into the fleet's directory and runs
    /// `flotilla migrate PLAN --output json`: the exit code and the parsed report (a panic that
    /// shows stdout and stderr when stdout is not JSON).
    pub fn migrate(&self, plan: impl Display) -> (Option<i32>, Value) {
        self.migrate_with(plan, &[])
    }

    /// [`Fleet::migrate`] with more arguments for `flotilla migrate` (e.g. `--no-finalize`).
    pub fn migrate_with(&self, plan: impl Display, args: &[&str]) -> (Option<i32>, Value) {
        let n = PLANS.fetch_add(1, Ordering::Relaxed);
        let path = self.write_plan(&format!("plan-{n}.toml"), &plan.to_string());
        self.migrate_file(&path, args)
    }

    /// `flotilla migrate PLAN --output json ARGS` of the plan file `plan` (e.g. one written with
    /// [`Fleet::write_plan`]): the exit code and the parsed report.
    pub fn migrate_file(&self, plan: &Path, args: &[&str]) -> (Option<i32>, Value) {
        let plan = plan.to_str().expect("the plan's path is UTF-8");
        let mut all = vec!["migrate", plan, "--output", "json"];
        all.extend_from_slice(args);
        let out = self.flotilla(&all);
        // Captured by the test harness, shown only when the test fails.
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        (out.status.code(), crate::json_stdout(&out))
    }
}
