//! Secrets: `${secret:NAME}` placeholders resolved from `<root>/secrets/NAME` or the environment.

use std::fs;
use std::io;
use std::path::Path;

use anyhow::{Context, Result, anyhow, ensure};

use super::Secret;

/// Directory, relative to the root, holding one file per secret.
const SECRETS_DIR: &str = "secrets";
/// Prefix of the environment variable that may supply a secret.
const SECRET_ENV_PREFIX: &str = "FLOTILLA_SECRET_";

/// Resolves a `${secret:NAME}` placeholder.
pub(super) fn resolve_placeholder(
    root: &Path,
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret> {
    // The value is deliberately left out of the error: it may be a pasted secret.
    let name = value
        .strip_prefix("${secret:")
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or_else(|| anyhow!("must be a ${{secret:NAME}} placeholder, not a literal"))?;
    resolve_secret(root, name, env)
}

/// Reads secret `name` from `<root>/secrets/NAME` (trimmed), or else from
/// the environment variable `FLOTILLA_SECRET_NAME`.
pub(super) fn resolve_secret(
    root: &Path,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret> {
    // The name becomes a file name: keep it from escaping the secrets dir.
    ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "invalid secret name {name:?}: use ASCII letters, digits, '_' or '-'"
    );
    let file = root.join(SECRETS_DIR).join(name);
    let variable = format!("{SECRET_ENV_PREFIX}{name}");
    let value = match fs::read_to_string(&file) {
        Ok(text) => text.trim().to_owned(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => env(&variable).ok_or_else(|| {
            anyhow!(
                "secret {name} not found: no file {} and no environment variable {variable}",
                file.display()
            )
        })?,
        Err(err) => {
            return Err(err).with_context(|| format!("reading secret file {}", file.display()));
        }
    };
    ensure!(!value.is_empty(), "secret {name} is empty");
    Ok(Secret(value))
}
