//! Files shipped with a plan: a `write_file` step names a template file next to the plan
//! (`source = "templates/ingest.toml.tmpl"`). The coordinator reads each file once, checks it as
//! `plan check` does (readable, UTF-8, placeholders well formed), fills in its digest and size,
//! and uploads it to the plan-files bucket once per run (a digest the bucket holds is not sent
//! again). Commands carry only the digest; a resumed run takes the digests from its record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_nats::jetstream;
use flotilla_bus::plan_files::{self, MAX_FILE_BYTES, PlanFileError, Upload};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{PlanFile, Step};

use crate::plan::Plan;

/// A plan file on this machine, with the digest and size commands carry.
#[derive(Debug, Clone)]
pub struct LocalFile {
    pub local: PathBuf,
    pub file: PlanFile,
}

/// What [`ship`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shipped {
    pub uploaded: usize,
    pub present: usize,
}

/// Every `write_file` source of `plan`, mutably.
fn sources(plan: &mut Plan) -> impl Iterator<Item = (String, &mut PlanFile)> {
    plan.services.iter_mut().flat_map(|service| {
        let name = service.name.to_string();
        service
            .steps
            .iter_mut()
            .enumerate()
            .filter_map(move |(i, step)| match step {
                Step::WriteFile {
                    source: Some(file), ..
                } => Some((format!("service {name} step {}", i + 1), file)),
                _ => None,
            })
    })
}

/// Reads every source of `plan` (relative to the directory of `plan_path`), checks it and fills
/// in its digest and size. Returns each distinct file once.
pub fn resolve(plan: &mut Plan, plan_path: &Path) -> Result<Vec<LocalFile>, String> {
    let dir = plan_path.parent().unwrap_or(Path::new(""));
    let mut read: BTreeMap<String, LocalFile> = BTreeMap::new();
    for (at, file) in sources(plan) {
        if let Some(known) = read.get(&file.path) {
            *file = known.file.clone();
            continue;
        }
        let local = dir.join(&file.path);
        let named = |why: String| format!("{at}: source {}: {why}", file.path);
        let bytes = std::fs::read(&local)
            .map_err(|e| named(format!("cannot read {}: {e}", local.display())))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(named(format!(
                "{} bytes, more than the {MAX_FILE_BYTES} bytes a plan may ship",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| named("not UTF-8 text: a template must be".into()))?;
        crate::plan::fields::well_formed(text).map_err(named)?;
        file.digest = plan_files::digest_of(&bytes);
        file.size = bytes.len() as u64;
        read.insert(
            file.path.clone(),
            LocalFile {
                local,
                file: file.clone(),
            },
        );
    }
    Ok(read.into_values().collect())
}

/// The distinct files `plan` ships, as a run record keeps them.
pub fn recorded(plan: &Plan) -> Vec<PlanFile> {
    let mut plan = plan.clone();
    let mut files: BTreeMap<String, PlanFile> = BTreeMap::new();
    for (_, file) in sources(&mut plan) {
        files.insert(file.path.clone(), file.clone());
    }
    files.into_values().collect()
}

/// Fills in the digests of a plan parsed back from a run record: the files as the run shipped
/// them, never as the disk holds them now.
pub fn bind(plan: &mut Plan, recorded: &[PlanFile]) -> Result<(), String> {
    for (at, file) in sources(plan) {
        let known = recorded
            .iter()
            .find(|r| r.path == file.path)
            .ok_or_else(|| {
                format!(
                    "{at}: source {}: the run record holds no digest for it",
                    file.path
                )
            })?;
        *file = known.clone();
    }
    Ok(())
}

/// Uploads each file the bucket does not hold yet, once; creates the bucket when missing.
pub async fn ship(
    js: &jetstream::Context,
    subjects: &Subjects,
    files: &[LocalFile],
) -> Result<Shipped, PlanFileError> {
    let mut shipped = Shipped::default();
    if files.is_empty() {
        return Ok(shipped);
    }
    let store = plan_files::create_or_open(js, subjects).await?;
    let mut seen = std::collections::BTreeSet::new();
    for local in files {
        if !seen.insert(local.file.digest.clone()) {
            continue;
        }
        match plan_files::upload_once(&store, &local.local, &local.file).await? {
            Upload::Uploaded => shipped.uploaded += 1,
            Upload::Present => shipped.present += 1,
        }
        tracing::info!(
            path = %local.file.path,
            digest = %local.file.digest,
            size = local.file.size,
            "plan file in the bucket"
        );
    }
    Ok(shipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
name = "p"
[[service]]
name = "inference"
[[service.step]]
action = "write_file"
path = "config/a.toml"
source = "templates/a.toml.tmpl"
[[service]]
name = "ingest"
[[service.step]]
action = "write_file"
path = "config/b.toml"
source = "templates/a.toml.tmpl"
"#;

    #[test]
    fn a_source_is_read_once_and_carries_its_digest() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("templates")).unwrap();
        std::fs::write(
            tmp.path().join("templates/a.toml.tmpl"),
            "password = \"${secret:DB}\"\n",
        )
        .unwrap();
        let path = tmp.path().join("plan.toml");
        let mut plan = Plan::parse(PLAN).unwrap();
        let files = resolve(&mut plan, &path).unwrap();
        assert_eq!(files.len(), 1, "one file, named by two services");
        let expected = plan_files::digest_of(b"password = \"${secret:DB}\"\n");
        assert_eq!(files[0].file.digest, expected);
        let recorded = recorded(&plan);
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].size, 26);
        // Parsed back from the record, the plan carries the recorded digest.
        let mut again = Plan::parse(PLAN).unwrap();
        bind(&mut again, &recorded).unwrap();
        assert_eq!(super::recorded(&again), recorded);
        assert!(bind(&mut Plan::parse(PLAN).unwrap(), &[]).is_err());
    }

    #[test]
    fn a_missing_or_malformed_source_is_refused_with_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("plan.toml");
        let err = resolve(&mut Plan::parse(PLAN).unwrap(), &path).unwrap_err();
        assert!(
            err.starts_with("service inference step 1: source templates/a.toml.tmpl: cannot read"),
            "{err}"
        );
        std::fs::create_dir(tmp.path().join("templates")).unwrap();
        std::fs::write(tmp.path().join("templates/a.toml.tmpl"), "x = ${var:port").unwrap();
        let err = resolve(&mut Plan::parse(PLAN).unwrap(), &path).unwrap_err();
        assert!(err.contains("source templates/a.toml.tmpl:"), "{err}");
        std::fs::write(tmp.path().join("templates/a.toml.tmpl"), [0xff, 0xfe]).unwrap();
        let err = resolve(&mut Plan::parse(PLAN).unwrap(), &path).unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn a_write_file_takes_content_or_source() {
        let both = PLAN.replacen(
            "source = \"templates/a.toml.tmpl\"",
            "source = \"t\"\ncontent = \"x\"",
            1,
        );
        let err = Plan::parse(&both).unwrap_err().to_string();
        assert!(err.contains("content or source, not both"), "{err}");
        let neither = PLAN.replacen("source = \"templates/a.toml.tmpl\"\n", "", 1);
        let err = Plan::parse(&neither).unwrap_err().to_string();
        assert!(err.contains("needs content"), "{err}");
    }
}
