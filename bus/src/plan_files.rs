//! The plan-files bucket: a JetStream object store holding each file shipped with a plan under
//! its digest. The coordinator uploads a file once (a digest already present is not uploaded
//! again, by this run or a later one); every agent fetches it and checks the digest before use.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, object_store, stream};
use flotilla_schemas::PlanFile;
use flotilla_schemas::subjects::Subjects;
use tokio::io::AsyncReadExt;

/// The prefix of a digest: the algorithm.
pub const DIGEST_PREFIX: &str = "blake3:";

/// The largest file a plan may ship (the agent holds it in memory to render it).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Why a plan file could not be stored or fetched. Messages name the file and its digest,
/// never its content.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error("cannot open the plan-files bucket {bucket}")]
    Bucket {
        bucket: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot upload {path} ({digest}) to the plan-files bucket")]
    Upload {
        path: String,
        digest: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("plan file {path} ({digest}) is not in the plan-files bucket {bucket}")]
    Missing {
        path: String,
        digest: String,
        bucket: String,
    },
    #[error("cannot fetch plan file {path} ({digest}) from the plan-files bucket")]
    Fetch {
        path: String,
        digest: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("plan file {path}: the command carries no valid digest ({digest:?})")]
    NoDigest { path: String, digest: String },
    #[error(
        "plan file {path}: the bucket holds {found_size} bytes with digest {found}, the command says {size} bytes with {digest}: refused"
    )]
    Mismatch {
        path: String,
        digest: String,
        size: u64,
        found: String,
        found_size: u64,
    },
    #[error("plan file {path} is {size} bytes, more than the {max} bytes a plan may ship")]
    TooLarge { path: String, size: u64, max: u64 },
}

/// The digest of `bytes`, as commands carry it (`blake3:<hex>`).
pub fn digest_of(bytes: &[u8]) -> String {
    format!("{DIGEST_PREFIX}{}", blake3::hash(bytes).to_hex())
}

/// Whether `digest` has the form [`digest_of`] writes.
pub fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix(DIGEST_PREFIX).is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The bucket as Flotilla creates it: on disk (a resumed run finds its files), for a month.
pub fn bucket_config(subjects: &Subjects) -> object_store::Config {
    object_store::Config {
        bucket: subjects.files_bucket(),
        description: Some("Flotilla plan files (templates), each under its digest".into()),
        max_age: Duration::from_secs(30 * 24 * 3600),
        max_bytes: 4 << 30,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The stream under the bucket, as the server keeps it (for `flotilla setup`'s comparison).
pub fn bucket_as_stream(subjects: &Subjects) -> stream::Config {
    let config = bucket_config(subjects);
    stream::Config {
        name: format!("OBJ_{}", config.bucket),
        subjects: vec![
            format!("$O.{}.C.>", config.bucket),
            format!("$O.{}.M.>", config.bucket),
        ],
        max_age: config.max_age,
        max_bytes: config.max_bytes,
        storage: config.storage,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Creates the bucket, or opens it when it exists (the coordinator).
pub async fn create_or_open(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<object_store::ObjectStore, PlanFileError> {
    let bucket = subjects.files_bucket();
    if let Ok(store) = js.get_object_store(&bucket).await {
        return Ok(store);
    }
    js.create_object_store(bucket_config(subjects))
        .await
        .map_err(|e| PlanFileError::Bucket {
            bucket,
            source: Box::new(e),
        })
}

/// What [`upload_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// The bucket did not hold the digest: the file was uploaded.
    Uploaded,
    /// The bucket held the digest already, with the right size: nothing was sent.
    Present,
}

/// Stores the file at `local` under `file.digest`, unless the bucket holds that digest already.
/// The file is streamed, not read into memory; the digest was computed by the caller.
pub async fn upload_once(
    store: &object_store::ObjectStore,
    local: &Path,
    file: &PlanFile,
) -> Result<Upload, PlanFileError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| PlanFileError::Upload {
        path: file.path.clone(),
        digest: file.digest.clone(),
        source,
    };
    match store.info(&file.digest).await {
        Ok(info) if !info.deleted && info.size as u64 == file.size => return Ok(Upload::Present),
        Ok(_) => {}
        Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => {}
        Err(e) => return Err(failed(Box::new(e))),
    }
    let mut data = tokio::fs::File::open(local)
        .await
        .map_err(|source| PlanFileError::Read {
            path: local.display().to_string(),
            source,
        })?;
    store
        .put(file.digest.as_str(), &mut data)
        .await
        .map_err(|e| failed(Box::new(e)))?;
    Ok(Upload::Uploaded)
}

/// Fetches `file` from the bucket and checks its size and digest: only bytes that hash to the
/// digest the (signed) command carries are returned.
pub async fn fetch(
    js: &jetstream::Context,
    subjects: &Subjects,
    file: &PlanFile,
) -> Result<Vec<u8>, PlanFileError> {
    if !valid_digest(&file.digest) {
        return Err(PlanFileError::NoDigest {
            path: file.path.clone(),
            digest: file.digest.clone(),
        });
    }
    if file.size > MAX_FILE_BYTES {
        return Err(PlanFileError::TooLarge {
            path: file.path.clone(),
            size: file.size,
            max: MAX_FILE_BYTES,
        });
    }
    let bucket = subjects.files_bucket();
    let missing = || PlanFileError::Missing {
        path: file.path.clone(),
        digest: file.digest.clone(),
        bucket: bucket.clone(),
    };
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| PlanFileError::Fetch {
        path: file.path.clone(),
        digest: file.digest.clone(),
        source,
    };
    let store = js
        .get_object_store(&bucket)
        .await
        .map_err(|e| failed(Box::new(e)))?;
    let mut object = match store.get(&file.digest).await {
        Ok(object) => object,
        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(failed(Box::new(e))),
    };
    let stored_size = object.info().size as u64;
    let mut bytes = Vec::with_capacity(stored_size.min(MAX_FILE_BYTES) as usize);
    // One byte past the limit is enough to know the object is too large.
    (&mut object)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| failed(Box::new(e)))?;
    let found = digest_of(&bytes);
    if found != file.digest || bytes.len() as u64 != file.size {
        return Err(PlanFileError::Mismatch {
            path: file.path.clone(),
            digest: file.digest.clone(),
            size: file.size,
            found,
            found_size: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_have_one_form() {
        let digest = digest_of(b"port = 1\n");
        assert!(valid_digest(&digest), "{digest}");
        assert!(!valid_digest(""));
        assert!(!valid_digest(&digest.replace("blake3:", "sha256:")));
        assert!(!valid_digest(&digest.to_uppercase()));
        assert!(!valid_digest(&digest[..digest.len() - 1]));
    }
}
