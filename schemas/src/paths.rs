//! The rule for plan paths: relative to the service root, never leaving it. Checked lexically
//! here, so that `flotilla plan check` and the agent refuse the same paths with the same words;
//! the agent then resolves every path beneath the root (see its `confine` module).

use std::path::{Component, Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {0:?} is empty")]
    Empty(String),
    #[error("path {0:?} is absolute; step paths are relative to the service root")]
    Absolute(String),
    #[error("path {0:?} leaves the service root ('..')")]
    ParentDir(String),
    #[error("path {0:?} holds a NUL byte or an empty or '.' component")]
    Malformed(String),
}

/// Checks a plan path lexically and returns it as a relative path beneath the root.
pub fn relative_path(raw: &str) -> Result<PathBuf, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty(raw.to_owned()));
    }
    if raw.contains('\0') || raw.split('/').any(|c| c.is_empty() || c == ".") {
        if raw.starts_with('/') {
            return Err(PathError::Absolute(raw.to_owned()));
        }
        return Err(PathError::Malformed(raw.to_owned()));
    }
    let path = Path::new(raw);
    for component in path.components() {
        match component {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(PathError::ParentDir(raw.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute(raw.to_owned()));
            }
            Component::CurDir => return Err(PathError::Malformed(raw.to_owned())),
        }
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        assert_eq!(
            relative_path("config/service.toml").unwrap(),
            PathBuf::from("config/service.toml")
        );
    }

    #[test]
    fn refuses_escapes() {
        assert!(matches!(
            relative_path("../etc/passwd"),
            Err(PathError::ParentDir(_))
        ));
        assert!(matches!(
            relative_path("a/../../b"),
            Err(PathError::ParentDir(_))
        ));
        assert!(matches!(
            relative_path("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(relative_path(""), Err(PathError::Empty(_))));
        assert!(matches!(
            relative_path("a//b"),
            Err(PathError::Malformed(_))
        ));
        assert!(matches!(relative_path("./a"), Err(PathError::Malformed(_))));
        assert!(matches!(
            relative_path("a\0b"),
            Err(PathError::Malformed(_))
        ));
    }
}
