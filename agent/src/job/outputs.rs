//! The files a job must produce: what they were before a run, and whether the run produced them.

use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use flotilla_schemas::JobOutputReport;

use super::JobOutput;

/// What an output was before a run: its size and modification time, or nothing. A run that
/// leaves both unchanged did not write it.
pub type Stamp = Option<(u64, Option<std::time::SystemTime>)>;

/// The service root, opened so that an output path cannot resolve outside it (symlinks
/// included).
fn open(root: &Path) -> std::io::Result<Dir> {
    Dir::open_ambient_dir(root, ambient_authority())
}

fn stamp(dir: &Dir, path: &str) -> Stamp {
    let relative = crate::confine::relative_path(path).ok()?;
    let meta = dir.metadata(relative).ok()?;
    let modified = meta.modified().ok().map(|t| t.into_std());
    Some((meta.len(), modified))
}

/// The stamps of `outputs` now, in order.
pub fn stamps(root: &Path, outputs: &[JobOutput]) -> Vec<Stamp> {
    let Ok(dir) = open(root) else {
        return vec![None; outputs.len()];
    };
    outputs.iter().map(|o| stamp(&dir, &o.path)).collect()
}

/// Judges each output after a run, given its stamp before it.
pub fn judge(root: &Path, outputs: &[JobOutput], before: &[Stamp]) -> Vec<JobOutputReport> {
    let dir = open(root);
    outputs
        .iter()
        .zip(before.iter().chain(std::iter::repeat(&None)))
        .map(|(output, before)| {
            let (bytes, verdict) = match &dir {
                Ok(dir) => one(dir, output, before),
                Err(e) => (None, Err(format!("cannot open the service root: {e}"))),
            };
            let (passed, detail) = match verdict {
                Ok(detail) => (true, detail),
                Err(detail) => (false, detail),
            };
            JobOutputReport {
                path: output.path.clone(),
                bytes,
                passed,
                detail,
            }
        })
        .collect()
}

fn one(dir: &Dir, output: &JobOutput, before: &Stamp) -> (Option<u64>, Result<String, String>) {
    let now = stamp(dir, &output.path);
    let Some((bytes, _)) = now else {
        return (None, Err("missing".into()));
    };
    if output.non_empty && bytes == 0 {
        return (Some(bytes), Err("empty".into()));
    }
    if output.fresh && before.is_some() && now == *before {
        return (
            Some(bytes),
            Err("not written by this run (unchanged since before it)".into()),
        );
    }
    if let Some(wanted) = &output.contains {
        let content = crate::confine::relative_path(&output.path)
            .ok()
            .and_then(|relative| dir.read(relative).ok())
            .unwrap_or_default();
        // Bytes, not text: an output may be binary; the needle is found either way.
        let found = content
            .windows(wanted.len().max(1))
            .any(|w| w == wanted.as_bytes());
        if !found {
            return (Some(bytes), Err(format!("does not contain {wanted:?}")));
        }
    }
    (Some(bytes), Ok(format!("{bytes} bytes")))
}

/// `path (why)` for each output that failed, or `None` when all passed.
pub fn failures(reports: &[JobOutputReport]) -> Option<String> {
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{} ({})", r.path, r.detail))
        .collect();
    (!failed.is_empty()).then(|| failed.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(path: &str, contains: Option<&str>) -> JobOutput {
        JobOutput {
            path: path.into(),
            non_empty: true,
            fresh: true,
            contains: contains.map(Into::into),
        }
    }

    #[test]
    fn an_output_must_exist_be_non_empty_fresh_and_hold_its_text() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("stale.txt"), "old").unwrap();
        std::fs::write(root.join("rewritten.txt"), "old").unwrap();
        let outputs = [
            output("missing.txt", None),
            output("empty.txt", None),
            output("stale.txt", None),
            output("rewritten.txt", Some("weights")),
            output("wrong.txt", Some("weights")),
        ];
        let before = stamps(root, &outputs);
        std::fs::write(root.join("empty.txt"), "").unwrap();
        std::fs::write(root.join("rewritten.txt"), "new weights").unwrap();
        std::fs::write(root.join("wrong.txt"), "nothing").unwrap();
        let reports = judge(root, &outputs, &before);
        let verdicts: Vec<(bool, &str)> = reports
            .iter()
            .map(|r| (r.passed, r.detail.as_str()))
            .collect();
        assert_eq!(
            verdicts,
            [
                (false, "missing"),
                (false, "empty"),
                (false, "not written by this run (unchanged since before it)"),
                (true, "11 bytes"),
                (false, "does not contain \"weights\""),
            ]
        );
        assert_eq!(reports[3].bytes, Some(11));
        let failed = failures(&reports).unwrap();
        assert!(
            failed.starts_with("missing.txt (missing), empty.txt (empty)"),
            "{failed}"
        );
    }

    #[test]
    fn an_output_cannot_lead_outside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "outside").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret.txt"), root.join("link.txt")).unwrap();
        let outputs = [output("link.txt", None)];
        let reports = judge(&root, &outputs, &[None]);
        assert!(!reports[0].passed, "{:?}", reports[0]);
    }
}
