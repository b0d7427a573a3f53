//! `[service.job]`: how a run-once job runs and what a good run is.

use std::time::Duration;

use serde::Deserialize;

/// What a run of the job must do to count as good, and how it is run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// The longest a run may take: then its process group is killed and the run fails.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The exit codes of a good run.
    #[serde(default = "default_success_codes")]
    pub success_exit_codes: Vec<i32>,
    /// Files every run must produce, relative to the service root.
    #[serde(default)]
    pub outputs: Vec<JobOutput>,
    /// The job's own dry run (e.g. `["python3", "job.py", "--check"]`), run in the service
    /// root without changing anything: at precheck (and in a dry run) on the current files, and
    /// after the change on the new files before the job runs. It must exit 0.
    #[serde(default)]
    pub check_command: Vec<String>,
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub check_timeout: Duration,
    /// Where the figures the gates compare with come from.
    #[serde(default)]
    pub baseline: JobBaseline,
    /// Run the job again after a rollback restored its files (and require that run to be
    /// good). Off by default: the restored outputs are those of the last good run, and a job
    /// may be expensive or have effects outside its root.
    #[serde(default)]
    pub rerun_on_rollback: bool,
    /// An absolute limit on the run's peak memory, whatever the baseline.
    #[serde(default)]
    pub max_peak_memory_bytes: Option<u64>,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            timeout: default_timeout(),
            success_exit_codes: default_success_codes(),
            outputs: Vec::new(),
            check_command: Vec::new(),
            check_timeout: default_check_timeout(),
            baseline: JobBaseline::default(),
            rerun_on_rollback: false,
            max_peak_memory_bytes: None,
        }
    }
}

/// A file a good run produces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobOutput {
    /// Relative to the service root.
    pub path: String,
    /// It must hold at least one byte.
    #[serde(default = "yes")]
    pub non_empty: bool,
    /// It must be written by this run, not left over from an earlier one.
    #[serde(default = "yes")]
    pub fresh: bool,
    /// It must contain this text.
    #[serde(default)]
    pub contains: Option<String>,
}

/// Where the baseline of the duration and peak-memory gates comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobBaseline {
    /// The last good run this agent recorded on the current files; when there is none, the
    /// precheck runs the job once.
    #[default]
    Recorded,
    /// The precheck always runs the job once (fresh figures on the host as it is now).
    Run,
    /// No baseline: only the absolute limits apply (exit code, outputs, timeout, memory limit).
    None,
}

fn default_timeout() -> Duration {
    Duration::from_secs(3600)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_success_codes() -> Vec<i32> {
    vec![0]
}

fn yes() -> bool {
    true
}

impl JobConfig {
    /// Rules serde cannot express.
    pub fn check(&self) -> Result<(), String> {
        if self.success_exit_codes.is_empty() {
            return Err("service.job.success_exit_codes must list at least one code".into());
        }
        if self.timeout.is_zero() {
            return Err("service.job.timeout must be more than zero".into());
        }
        for output in &self.outputs {
            crate::confine::relative_path(&output.path)
                .map_err(|e| format!("service.job.outputs path {:?}: {e}", output.path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use crate::AgentConfig;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("agent.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    const JOB: &str = r#"
[agent]
instance = "a"
state_dir = "/var/lib/flotilla/train"
[service]
name = "train"
root = "/srv/train"
kind = "job"
command = ["python3", "train.py"]
[service.job]
timeout = "10m"
check_command = ["python3", "train.py", "--check"]
[[service.job.outputs]]
path = "out/model.json"
contains = "weights"
"#;

    #[test]
    fn a_job_needs_no_health_url_and_reads_its_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig::load(&write(dir.path(), JOB)).unwrap();
        let job = config.service.job().unwrap();
        assert_eq!(job.timeout, Duration::from_secs(600));
        assert_eq!(job.success_exit_codes, [0]);
        assert_eq!(job.outputs[0].path, "out/model.json");
        assert!(job.outputs[0].non_empty && job.outputs[0].fresh);
        assert_eq!(job.baseline, super::JobBaseline::Recorded);
        assert!(!job.rerun_on_rollback);
    }

    #[test]
    fn bad_job_settings_are_refused_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for (text, wanted) in [
            (
                JOB.replace("out/model.json", "../model.json"),
                "outputs path",
            ),
            (JOB.replace("kind = \"job\"\n", ""), "needs kind = \"job\""),
            (
                JOB.replace(
                    "timeout = \"10m\"",
                    "timeout = \"10m\"\nsuccess_exit_codes = []",
                ),
                "success_exit_codes",
            ),
            (JOB.replace("contains", "contians"), "contians"),
            (
                JOB.replace(
                    "kind = \"job\"",
                    "kind = \"job\"\nsupervisor = \"external\"\nrestart_command = [\"x\"]",
                ),
                "supervisor = \"agent\"",
            ),
        ] {
            let err = AgentConfig::load(&write(dir.path(), &text))
                .unwrap_err()
                .to_string();
            assert!(err.contains(wanted), "{wanted}: {err}");
        }
        let no_health = JOB
            .replace("kind = \"job\"\n", "")
            .split("[service.job]")
            .next()
            .unwrap()
            .to_owned();
        let err = AgentConfig::load(&write(dir.path(), &no_health))
            .unwrap_err()
            .to_string();
        assert!(err.contains("health_url is required"), "{err}");
    }

    /// The example of `docs/agent-config.md` loads, with every key it shows.
    #[test]
    fn the_documented_example_loads() {
        let doc = include_str!("../../../docs/agent-config.md");
        let start = doc
            .find("[service]\nname = \"train\"")
            .expect("the job example");
        let example = &doc[start..start + doc[start..].find("```").unwrap()];
        let text = format!(
            "[agent]\ninstance = \"a\"\nstate_dir = \"/var/lib/flotilla/train\"\n{example}"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig::load(&write(dir.path(), &text)).unwrap();
        let job = config.service.job().unwrap();
        assert_eq!(job.timeout, Duration::from_secs(7200));
        assert_eq!(job.max_peak_memory_bytes, Some(8 << 30));
        assert_eq!(job.outputs.len(), 2);
        assert_eq!(job.outputs[0].contains.as_deref(), Some("\"weights\""));
    }
}
