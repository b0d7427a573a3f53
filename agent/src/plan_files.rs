//! Files shipped with the plan: a `write_file` step's `source` is fetched from the plan-files
//! bucket at precheck and checked against the digest the signed command carries. Only then is it
//! a template like inline `content`; a missing or altered object refuses the command before
//! anything changes.

use async_nats::jetstream;
use flotilla_bus::plan_files::{self, PlanFileError};
use flotilla_schemas::PlanFile;
use flotilla_schemas::subjects::Subjects;

/// Where the agent fetches plan files from; set once the session is connected.
#[derive(Clone)]
pub struct PlanFiles {
    js: jetstream::Context,
    subjects: Subjects,
}

/// How long a precheck waits for a shipped file. A fetch of an object deleted while it was read
/// was seen to wait forever (the agent then held its command, and its shutdown, for good).
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the second attempt after a fetch timed out may take.
const RECHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a shipped file cannot be used. Names the file and digest, never the content.
#[derive(Debug, thiserror::Error)]
pub enum ShippedError {
    #[error("the command ships {0}, but this agent has no connection to the plan-files bucket")]
    Unconnected(String),
    #[error(transparent)]
    Fetch(#[from] PlanFileError),
    #[error(
        "plan file {0} could not be fetched from the plan-files bucket within {FETCH_TIMEOUT:?}"
    )]
    TimedOut(String),
    #[error("plan file {0} is not UTF-8 text: a template must be")]
    NotText(String),
    #[error("a write_file step has both content and source {0}: give one")]
    Both(String),
}

impl PlanFiles {
    /// Plan files of the bucket `subjects` names.
    pub fn new(js: jetstream::Context, subjects: Subjects) -> Self {
        Self { js, subjects }
    }
}

/// The template of a `write_file` step: `content`, or the verified text of `source`.
pub async fn template<'a>(
    files: Option<&PlanFiles>,
    content: &'a str,
    source: Option<&PlanFile>,
) -> Result<std::borrow::Cow<'a, str>, ShippedError> {
    let Some(file) = source else {
        return Ok(content.into());
    };
    if !content.is_empty() {
        return Err(ShippedError::Both(file.path.clone()));
    }
    let files = files.ok_or_else(|| ShippedError::Unconnected(file.path.clone()))?;
    let fetch = || plan_files::fetch(&files.js, &files.subjects, file);
    let bytes = match tokio::time::timeout(FETCH_TIMEOUT, fetch()).await {
        Ok(fetched) => fetched?,
        // An object deleted while it was read leaves the reader waiting for purged chunks; asked
        // again, the bucket says what happened (usually: the object is gone).
        Err(_) => tokio::time::timeout(RECHECK_TIMEOUT, fetch())
            .await
            .map_err(|_| ShippedError::TimedOut(file.path.clone()))??,
    };
    String::from_utf8(bytes)
        .map(Into::into)
        .map_err(|_| ShippedError::NotText(file.path.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PlanFile {
        PlanFile {
            path: "templates/a.toml.tmpl".into(),
            digest: flotilla_bus::plan_files::digest_of(b"a = 1\n"),
            size: 6,
        }
    }

    #[tokio::test]
    async fn inline_content_needs_no_bucket_and_a_source_refuses_without_one() {
        assert_eq!(template(None, "a = 1\n", None).await.unwrap(), "a = 1\n");
        let err = template(None, "", Some(&shipped())).await.unwrap_err();
        assert!(matches!(err, ShippedError::Unconnected(ref p) if p == "templates/a.toml.tmpl"));
        let err = template(None, "x", Some(&shipped())).await.unwrap_err();
        assert!(matches!(err, ShippedError::Both(_)), "{err}");
    }
}
