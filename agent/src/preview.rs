//! Dry runs: the steps of a migration played against the service root in memory, to show what
//! each would do (a unified diff of every file it writes or edits) and to find the step that
//! would fail, with the error the real step would fail with. Nothing on disk changes: files are
//! only read, through the same confined [`RootDir`] the real steps use. Secret values are masked
//! in everything it returns.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cap_std::fs::PermissionsExt;
use flotilla_schemas::{Step, StepPreview};

use crate::confine;
use crate::steps::{RootDir, StepError};
use crate::template::MASK;

/// The mode of a file a `write_file` creates without a `mode`.
const DEFAULT_MODE: u32 = 0o644;

/// A text file as the steps so far leave it: content and mode.
type TextFile = (String, u32);

/// The service root with the changes of the steps so far laid over it, in memory.
struct Overlay<'a> {
    root: &'a RootDir,
    /// Paths written (`Some`) or deleted (`None`) by earlier steps.
    changed: BTreeMap<PathBuf, Option<TextFile>>,
    secrets: Vec<&'a str>,
}

/// Plays `steps` (with `contents`, the rendered and masked content of each `write_file`) over
/// `root`: what each step would do, up to the first that would fail, and that failure (its index
/// from 0 and the error the real step would give). `secrets` are the agent's known secret
/// values, masked wherever they occur.
pub fn play(
    root: &RootDir,
    steps: &[Step],
    contents: &[Option<String>],
    secrets: &[String],
) -> (Vec<StepPreview>, Option<(usize, StepError)>) {
    let mut secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    // Longest first, so that a secret holding another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut overlay = Overlay {
        root,
        changed: BTreeMap::new(),
        secrets,
    };
    let mut shown = Vec::with_capacity(steps.len());
    for (index, (step, content)) in steps.iter().zip(contents).enumerate() {
        match overlay.step(step, content.as_deref()) {
            Ok((summary, diff)) => shown.push(StepPreview {
                step: index as u32 + 1,
                action: step.name().to_owned(),
                summary: overlay.mask(&summary),
                diff,
            }),
            Err(e) => return (shown, Some((index, e))),
        }
    }
    (shown, None)
}

impl Overlay<'_> {
    /// What `step` would do: a one-line summary and, for a file it changes, a unified diff.
    fn step(
        &mut self,
        step: &Step,
        content: Option<&str>,
    ) -> Result<(String, Option<String>), StepError> {
        match step {
            Step::WriteFile { path, mode, .. } => {
                let content = content.expect("precheck rendered every write_file");
                self.write_file(path, content, *mode)
            }
            Step::ReplaceText {
                path,
                find,
                replace,
            } => {
                let Some((text, mode)) = self.text(path)? else {
                    return Err(StepError::Io {
                        op: "read",
                        path: path.clone(),
                        source: rustix::io::Errno::NOENT.into(),
                    });
                };
                if find.is_empty() || !text.contains(find.as_str()) {
                    return Err(StepError::TextNotFound {
                        path: path.clone(),
                        find: find.clone(),
                    });
                }
                let count = text.matches(find.as_str()).count();
                let new = text.replace(find.as_str(), replace);
                let diff = self.diff(path, Some(&text), &new);
                self.set(path, Some((new, mode)))?;
                Ok((format!("edit {path}: {count} replacement(s)"), diff))
            }
            Step::Delete { path } => {
                let what = match self.overlaid(path)? {
                    Some(Some(_)) => "file",
                    Some(None) => return Err(StepError::NothingToDelete(path.clone())),
                    None => match self.root.metadata(path)? {
                        None => return Err(StepError::NothingToDelete(path.clone())),
                        Some(meta) if meta.is_dir() => "directory, with everything under it",
                        Some(meta) if meta.is_symlink() => "symlink, not its target",
                        Some(_) => "file",
                    },
                };
                self.set(path, None)?;
                Ok((format!("delete {path} ({what})"), None))
            }
            Step::RunCommand {
                program, args, env, ..
            } => {
                let mut line = std::iter::once(program)
                    .chain(args)
                    .map(|word| shown_word(word))
                    .collect::<Vec<_>>()
                    .join(" ");
                if !env.is_empty() {
                    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
                    line.push_str(&format!(" (env {})", keys.join(", ")));
                }
                Ok((
                    format!("run {line} in the service root (not run in a dry run)"),
                    None,
                ))
            }
            Step::Restart => Ok(("restart the service".to_owned(), None)),
        }
    }

    fn write_file(
        &mut self,
        path: &str,
        content: &str,
        mode: Option<u32>,
    ) -> Result<(String, Option<String>), StepError> {
        let (old, old_mode, readable) = match self.overlaid(path)? {
            Some(Some((text, mode))) => (Some(text), Some(mode), true),
            Some(None) => (None, None, true),
            None => match self.root.metadata(path)? {
                None => (None, None, true),
                Some(meta) => {
                    let old_mode = meta.is_file().then(|| meta.permissions().mode() & 0o7777);
                    match self.root.read_to_string(path) {
                        Ok(text) => (Some(text), old_mode, true),
                        Err(_) => (None, old_mode, false),
                    }
                }
            },
        };
        // As `RootDir::write_file`: the given mode, else the existing file's, else the default.
        let new_mode = mode.or(old_mode).unwrap_or(DEFAULT_MODE) & 0o7777;
        let modes = match old_mode {
            Some(old) if old != new_mode => format!("mode {old:04o} → {new_mode:04o}"),
            _ => format!("mode {new_mode:04o}"),
        };
        let summary = match (&old, readable) {
            (_, false) => format!("rewrite {path} ({modes}); its current content is not text"),
            (None, true) => format!("create {path} ({modes})"),
            (Some(old), true) if self.mask(old) == self.mask(content) => {
                format!("rewrite {path} ({modes}): no visible change")
            }
            (Some(_), true) => format!("rewrite {path} ({modes})"),
        };
        let diff = if readable {
            self.diff(path, old.as_deref(), content)
        } else {
            None
        };
        self.set(path, Some((content.to_owned(), new_mode)))?;
        Ok((summary, diff))
    }

    /// What earlier steps left at `path`: `Some(Some(file))` written, `Some(None)` deleted (it
    /// or a directory above it), `None` untouched.
    fn overlaid(&self, path: &str) -> Result<Option<Option<TextFile>>, StepError> {
        let relative = confine::relative_path(path)?;
        for ancestor in relative.ancestors() {
            match self.changed.get(ancestor) {
                Some(Some(file)) if ancestor == relative => return Ok(Some(Some(file.clone()))),
                Some(None) => return Ok(Some(None)),
                _ => {}
            }
        }
        Ok(None)
    }

    /// The text file at `path` as the steps so far leave it, or `None` when there is none.
    fn text(&self, path: &str) -> Result<Option<TextFile>, StepError> {
        if let Some(overlaid) = self.overlaid(path)? {
            return Ok(overlaid);
        }
        let Some(meta) = self.root.metadata(path)? else {
            return Ok(None);
        };
        let text = self.root.read_to_string(path)?;
        Ok(Some((text, meta.permissions().mode() & 0o7777)))
    }

    /// Records what a step leaves at `path`; a deletion takes everything under it along.
    fn set(&mut self, path: &str, file: Option<TextFile>) -> Result<(), StepError> {
        let relative = confine::relative_path(path)?;
        if file.is_none() {
            self.changed.retain(|p, _| !p.starts_with(&relative));
        }
        self.changed.insert(relative, file);
        Ok(())
    }

    /// The unified diff from `old` (`None`: no file) to `new`, secrets masked in both; `None`
    /// when nothing visible changes.
    fn diff(&self, path: &str, old: Option<&str>, new: &str) -> Option<String> {
        let (old_text, new_text) = (self.mask(old.unwrap_or("")), self.mask(new));
        if old.is_some() && old_text == new_text {
            return None;
        }
        let from = if old.is_some() {
            format!("a/{path}")
        } else {
            "/dev/null".to_owned()
        };
        let diff = similar::TextDiff::from_lines(&old_text, &new_text)
            .unified_diff()
            .context_radius(3)
            .header(&from, &format!("b/{path}"))
            .to_string();
        Some(capped(diff))
    }

    /// `text` with every known secret value replaced by [`MASK`].
    fn mask(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_owned(), |text, secret| text.replace(secret, MASK))
    }
}

/// The most of one diff a preview shows: a file shipped with the plan may be megabytes, and the
/// whole preview must fit in one result message.
const MAX_DIFF_BYTES: usize = 64 * 1024;

/// `diff`, cut after the last whole line within [`MAX_DIFF_BYTES`], saying how much was left out.
fn capped(diff: String) -> String {
    if diff.len() <= MAX_DIFF_BYTES {
        return diff;
    }
    let mut end = MAX_DIFF_BYTES;
    while !diff.is_char_boundary(end) {
        end -= 1;
    }
    let end = diff[..end].rfind('\n').map_or(end, |at| at + 1);
    let left = diff[end..].lines().count();
    format!(
        "{}… {left} more line(s) of diff not shown ({} bytes)\n",
        &diff[..end],
        diff.len() - end
    )
}

/// A program or argument as a shell would need it quoted to mean the same.
fn shown_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &str, content: &str) -> Step {
        Step::WriteFile {
            path: path.into(),
            content: content.into(),
            source: None,
            mode: None,
        }
    }

    #[test]
    fn a_huge_diff_is_cut_at_a_line_and_says_so() {
        let line = "x = \"é and more text on a line\"\n";
        let diff = capped(line.repeat(10_000));
        assert!(diff.len() < MAX_DIFF_BYTES + 100, "{}", diff.len());
        let (shown, note) = diff.rsplit_once("… ").unwrap();
        assert!(shown.ends_with('\n') && shown.lines().all(|l| format!("{l}\n") == line));
        assert!(note.contains("more line(s) of diff not shown"), "{note}");
        assert_eq!(capped("short\n".into()), "short\n");
    }

    #[test]
    fn shows_diffs_and_follows_earlier_steps_without_touching_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("legacy.conf"), "port=1\nkey=s3cr3t-value\n").unwrap();
        let root = RootDir::open(tmp.path()).unwrap();
        let steps = [
            write("config/service.toml", "port = 1\n"),
            Step::ReplaceText {
                path: "config/service.toml".into(),
                find: "1".into(),
                replace: "2".into(),
            },
            Step::ReplaceText {
                path: "legacy.conf".into(),
                find: "port=1".into(),
                replace: "port=3".into(),
            },
            Step::Delete {
                path: "legacy.conf".into(),
            },
            Step::Delete {
                path: "legacy.conf".into(),
            },
        ];
        let contents = [Some("port = 1\n".to_owned()), None, None, None, None];
        let secrets = ["s3cr3t-value".to_owned()];
        let (shown, failure) = play(&root, &steps, &contents, &secrets);
        assert_eq!(shown[0].summary, "create config/service.toml (mode 0644)");
        assert_eq!(
            shown[0].diff.as_deref(),
            Some("--- /dev/null\n+++ b/config/service.toml\n@@ -0,0 +1 @@\n+port = 1\n")
        );
        assert!(
            shown[1]
                .diff
                .as_deref()
                .unwrap()
                .contains("-port = 1\n+port = 2\n")
        );
        let legacy = shown[2].diff.as_deref().unwrap();
        assert!(legacy.contains(" key=********\n"), "{legacy}");
        assert!(!legacy.contains("s3cr3t"), "{legacy}");
        assert_eq!(shown[3].summary, "delete legacy.conf (file)");
        let (index, e) = failure.unwrap();
        assert_eq!(index, 4);
        assert_eq!(e.to_string(), "delete: legacy.conf does not exist");
        // Nothing changed on disk.
        assert!(!tmp.path().join("config").exists());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("legacy.conf")).unwrap(),
            "port=1\nkey=s3cr3t-value\n"
        );
    }

    #[test]
    fn fails_as_the_real_steps_fail() {
        let tmp = tempfile::tempdir().unwrap();
        let root = RootDir::open(tmp.path()).unwrap();
        let steps = [Step::ReplaceText {
            path: "missing.conf".into(),
            find: "a".into(),
            replace: "b".into(),
        }];
        let (_, failure) = play(&root, &steps, &[None], &[]);
        let simulated = failure.unwrap().1.to_string();
        let real = root
            .replace_text("missing.conf", "a", "b")
            .unwrap_err()
            .to_string();
        assert_eq!(simulated, real);
    }

    #[test]
    fn quotes_command_words_like_a_shell() {
        assert_eq!(shown_word("--root=/srv"), "--root=/srv");
        assert_eq!(shown_word("echo it's"), r"'echo it'\''s'");
        assert_eq!(shown_word(""), "''");
    }
}
