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
    /// A control character (newline, tab, escape, DEL, C1) or a bidirectional-formatting one
    /// (U+202E and its kin): a file name that reads differently from what it is.
    #[error(
        "path {path:?} holds the character U+{code:04X}; control and bidirectional-formatting characters are refused in file names"
    )]
    Unprintable { path: String, code: u32 },
}

/// Whether `c` may not appear in a file name: it would hide or reorder what an operator reads
/// (a newline splits a log line, U+202E shows `txt.exe` as `exe.txt`).
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
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
    if let Some(c) = raw.chars().find(|&c| unprintable(c)) {
        return Err(PathError::Unprintable {
            path: raw.to_owned(),
            code: u32::from(c),
        });
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

    #[test]
    fn refuses_control_and_bidi_characters_naming_the_character() {
        for (raw, code) in [
            ("config/a\nb.toml", 0x0A),
            ("a\tb", 0x09),
            ("a\u{1b}[31mb", 0x1B),
            ("a\u{7f}", 0x7F),
            ("a\u{85}b", 0x85),
            ("invoice\u{202E}txt.exe", 0x202E),
            ("a\u{2066}b", 0x2066),
            ("a\u{200F}b", 0x200F),
        ] {
            let error = relative_path(raw).unwrap_err();
            assert_eq!(
                error,
                PathError::Unprintable {
                    path: raw.to_owned(),
                    code
                }
            );
            let text = error.to_string();
            assert!(text.contains(&format!("U+{code:04X}")), "{text}");
            // The reason itself shows the character escaped, never raw.
            assert!(!text.chars().any(unprintable), "{text:?}");
        }
        // Non-ASCII letters stay allowed.
        assert!(relative_path("données/café.toml").is_ok());
    }
}
