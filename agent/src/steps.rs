//! The step vocabulary, executed inside the service root through a capability-confined
//! directory handle. A step that would reach outside the root fails without touching anything.

use std::path::Path;
use std::time::{Duration, Instant};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, Permissions, PermissionsExt};

use crate::children::{Group, Launcher};
use crate::confine;

/// Why a step failed. Messages name paths and programs, never written content.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Path(#[from] confine::PathError),
    #[error("cannot open the service root {path}")]
    Root {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: {via} leads outside the service root (through a symlink) or cannot be searched: {why}"
    )]
    Escapes {
        path: String,
        via: String,
        why: String,
    },
    #[error("replace_text: {find:?} does not occur in {path}")]
    TextNotFound { path: String, find: String },
    #[error("delete: {0} does not exist")]
    NothingToDelete(String),
    #[error("run_command: {program} is not on the agent's allow-list")]
    NotAllowed { program: String },
    #[error("run_command: cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("run_command: {program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
    #[error("run_command: {program} exited with {status}{stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
}

fn io<'a>(op: &'static str, path: &'a str) -> impl FnOnce(std::io::Error) -> StepError + 'a {
    move |source| StepError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// File operations confined to one service root.
pub struct RootDir {
    dir: Dir,
    /// Files written and not yet fsynced, when their fsync is left to [`Pending::sync`].
    deferred: Option<std::sync::Mutex<Unsynced>>,
}

/// Files a [`RootDir`] wrote without fsyncing them, each with its step path (for errors).
#[derive(Default)]
pub struct Unsynced(Vec<(String, cap_std::fs::File)>);

/// What [`RootDir::into_unsynced`] leaves to make durable: the files written, and the root, whose
/// file system holds what no file's fsync covers (renames, created directories, deletions, what
/// a `run_command` wrote).
pub struct Pending {
    files: Unsynced,
    root: Dir,
}

/// At most this many written files wait for [`Unsynced::sync`], each holding a descriptor;
/// past it they are fsynced at once.
const MAX_UNSYNCED: usize = 64;

impl RootDir {
    /// Opens the service root.
    pub fn open(root: &Path) -> Result<Self, StepError> {
        let dir =
            Dir::open_ambient_dir(root, ambient_authority()).map_err(|source| StepError::Root {
                path: root.to_owned(),
                source,
            })?;
        Ok(Self {
            dir,
            deferred: None,
        })
    }

    /// Opens the service root for steps whose written files are fsynced later, all at once,
    /// by [`Pending::sync`] on what [`RootDir::into_unsynced`] returns: until then they are
    /// in place (renamed over) but may not survive a power loss.
    pub fn open_deferring_fsync(root: &Path) -> Result<Self, StepError> {
        Ok(Self {
            deferred: Some(Default::default()),
            ..Self::open(root)?
        })
    }

    /// What the steps changed and is not durable yet.
    pub fn into_unsynced(self) -> Pending {
        let files = self
            .deferred
            .map(|d| d.into_inner().unwrap_or_else(|e| e.into_inner()))
            .unwrap_or_default();
        Pending {
            files,
            root: self.dir,
        }
    }

    /// Writes `content` to `path` (write to a temporary name, then rename over), creating parent
    /// directories. Keeps an existing file's mode unless `mode` is given.
    pub fn write_file(
        &self,
        path: &str,
        content: &[u8],
        mode: Option<u32>,
    ) -> Result<(), StepError> {
        let relative = confine::relative_path(path)?;
        if let Some(parent) = relative.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.dir
                .create_dir_all(parent)
                .map_err(io("create directory for", path))?;
        }
        let existing_mode = self
            .dir
            .symlink_metadata(&relative)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.permissions().mode());
        let mode = mode.or(existing_mode).unwrap_or(0o644) & 0o7777;
        let file_name = relative
            .file_name()
            .expect("a checked relative path ends in a name")
            .to_string_lossy();
        let temp = relative.with_file_name(format!(".{file_name}.flotilla-tmp"));
        self.dir.write(&temp, content).map_err(io("write", path))?;
        self.dir
            .set_permissions(&temp, Permissions::from_mode(mode))
            .map_err(io("chmod", path))?;
        let file = self.dir.open(&temp).map_err(io("fsync", path))?;
        match &self.deferred {
            Some(pending) => {
                let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                pending.0.push((path.to_owned(), file));
                if pending.0.len() >= MAX_UNSYNCED {
                    std::mem::take(&mut *pending).sync()?;
                }
            }
            None => file.sync_all().map_err(io("fsync", path))?,
        }
        self.dir
            .rename(&temp, &self.dir, &relative)
            .map_err(io("rename into", path))?;
        Ok(())
    }

    /// Checks, changing nothing, that `path` resolves beneath the root: that no directory above
    /// it (nor, with `follow_final`, `path` itself) is reached through a symlink that leads
    /// outside. What does not exist yet is fine (a step creates it); other errors are left to
    /// the step, which reports them in its own words. The step itself stays confined anyway:
    /// this only lets the precheck refuse before a backup and a restart.
    pub fn resolves_beneath(&self, path: &str, follow_final: bool) -> Result<(), StepError> {
        let relative = confine::relative_path(path)?;
        let mut prefixes: Vec<&Path> = relative.ancestors().collect();
        // Shortest first; the empty path (the root itself) is not a step's to check.
        prefixes.pop();
        prefixes.reverse();
        if !follow_final {
            prefixes.pop();
        }
        for prefix in prefixes {
            match self.dir.metadata(prefix) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(StepError::Escapes {
                        path: path.to_owned(),
                        via: prefix.display().to_string(),
                        why: e.to_string(),
                    });
                }
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Whether `path` exists (without following a final symlink).
    pub fn exists(&self, path: &str) -> Result<bool, StepError> {
        Ok(self.metadata(path)?.is_some())
    }

    /// What is at `path` (without following a final symlink), or `None`.
    pub fn metadata(&self, path: &str) -> Result<Option<cap_std::fs::Metadata>, StepError> {
        let relative = confine::relative_path(path)?;
        match self.dir.symlink_metadata(&relative) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("stat", path)(e)),
        }
    }

    /// Reads a text file.
    pub fn read_to_string(&self, path: &str) -> Result<String, StepError> {
        let relative = confine::relative_path(path)?;
        self.dir.read_to_string(&relative).map_err(io("read", path))
    }

    /// Replaces every occurrence of `find` in `path` with `replace`.
    pub fn replace_text(&self, path: &str, find: &str, replace: &str) -> Result<(), StepError> {
        let relative = confine::relative_path(path)?;
        let text = self
            .dir
            .read_to_string(&relative)
            .map_err(io("read", path))?;
        if find.is_empty() || !text.contains(find) {
            return Err(StepError::TextNotFound {
                path: path.to_owned(),
                find: find.to_owned(),
            });
        }
        self.write_file(path, text.replace(find, replace).as_bytes(), None)
    }

    /// Deletes a file, a symlink (not its target), or a directory and everything under it.
    pub fn delete(&self, path: &str) -> Result<(), StepError> {
        let relative = confine::relative_path(path)?;
        let meta = match self.dir.symlink_metadata(&relative) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StepError::NothingToDelete(path.to_owned()));
            }
            Err(e) => return Err(io("stat", path)(e)),
        };
        if meta.is_dir() {
            self.dir
                .remove_dir_all(&relative)
                .map_err(io("delete", path))
        } else {
            self.dir.remove_file(&relative).map_err(io("delete", path))
        }
    }
}

impl Unsynced {
    /// fsyncs every file, in the order written; the first failure ends it.
    pub fn sync(self) -> Result<(), StepError> {
        for (path, file) in self.0 {
            file.sync_all().map_err(io("fsync", &path))?;
        }
        Ok(())
    }
}

impl Pending {
    /// fsyncs every file written (the first failure names its step path), then commits the
    /// root's file system with one `syncfs`: a file's fsync makes its data durable, not the
    /// rename that put it in place (that is its directory's), and a deletion or a
    /// `run_command`'s writes have no file of ours to fsync.
    pub fn sync(self) -> Result<(), StepError> {
        self.files.sync()?;
        // `Dir`'s own descriptor is `O_PATH`, which `syncfs` refuses: open the root for reading.
        let root = self.root.open(".").map_err(io("open", "."))?;
        rustix::fs::syncfs(&root).map_err(|e| StepError::Io {
            op: "syncfs",
            path: ".".to_owned(),
            source: e.into(),
        })
    }
}

/// Runs an allowed program in `root` without a shell, with the launcher's environment plus
/// `env`; fails unless it exits 0.
pub async fn run_command(
    root: &Path,
    program: &str,
    args: &[String],
    env: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
    launcher: &Launcher,
) -> Result<(), StepError> {
    let output = run_program(root, program, args, env, timeout, launcher).await?;
    if output.status.success() {
        return Ok(());
    }
    Err(StepError::Failed {
        program: program.to_owned(),
        status: output.status.to_string(),
        stderr: last_line(&output.stderr),
    })
}

/// [`run_program`] with no extra environment and a timeout in milliseconds, timed: the run,
/// and how long it took.
pub async fn run_timed(
    root: &Path,
    program: &str,
    args: &[String],
    timeout_ms: u64,
    launcher: &Launcher,
) -> (Result<std::process::Output, StepError>, Duration) {
    let started = Instant::now();
    let run = run_program(
        root,
        program,
        args,
        &Default::default(),
        Duration::from_millis(timeout_ms),
        launcher,
    )
    .await;
    (run, started.elapsed())
}

/// Runs `program` in `root` without a shell, with the launcher's environment (the agent's,
/// without its secrets) plus `env`, and returns its exit status and output; kills it after
/// `timeout`. With `launcher.contain`, it runs in its own process group, killed with whatever it
/// spawned once it ends (see [`crate::children`]). With `launcher.run_as`, it runs as that less
/// privileged user.
pub async fn run_program(
    root: &Path,
    program: &str,
    args: &[String],
    env: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
    launcher: &Launcher,
) -> Result<std::process::Output, StepError> {
    let mut command = tokio::process::Command::new(program);
    if let Some(user) = launcher.run_as {
        command.uid(user.uid).gid(user.gid);
    }
    if launcher.contain {
        command.process_group(0);
    }
    let child = command
        .args(args)
        .current_dir(root)
        .env_clear()
        .envs(&launcher.env)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| StepError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    let _group = child
        .id()
        .filter(|_| launcher.contain)
        .map(|pid| Group::record(pid, launcher.registry.as_deref()));
    tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| StepError::Timeout {
            program: program.to_owned(),
            timeout,
        })?
        .map_err(|source| StepError::Spawn {
            program: program.to_owned(),
            source,
        })
}

/// `": <last non-empty line>"` of a program's output (at most 200 characters), or nothing.
pub fn last_line(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => format!(": {}", truncate(line, 200)),
        None => String::new(),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunAs;
    use std::os::unix::fs::symlink;

    #[test]
    fn writes_replaces_and_deletes_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = RootDir::open(tmp.path()).unwrap();
        root.write_file("config/service.toml", b"a = 1\n", Some(0o600))
            .unwrap();
        root.replace_text("config/service.toml", "a = 1", "a = 2")
            .unwrap();
        let path = tmp.path().join("config/service.toml");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a = 2\n");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&path).unwrap().permissions()
            ) & 0o777,
            0o600
        );
        root.delete("config").unwrap();
        assert!(!tmp.path().join("config").exists());
        assert!(matches!(
            root.delete("config"),
            Err(StepError::NothingToDelete(_))
        ));
    }

    #[test]
    fn deferred_writes_are_in_place_at_once_and_fsynced_later_in_bounded_batches() {
        let tmp = tempfile::tempdir().unwrap();
        let root = RootDir::open_deferring_fsync(tmp.path()).unwrap();
        root.write_file("a.conf", b"1\n", None).unwrap();
        root.replace_text("a.conf", "1", "2").unwrap();
        // Readable (renamed into place) before any fsync: restart and validate read it so.
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("a.conf")).unwrap(),
            "2\n"
        );
        for i in 0..MAX_UNSYNCED + 1 {
            root.write_file(&format!("many/{i}"), b"x", None).unwrap();
        }
        // The 64th pending file fsynced the batch: only what came after still waits.
        let unsynced = root.into_unsynced();
        assert_eq!(unsynced.files.0.len(), 3);
        unsynced.sync().unwrap();
        // A root opened plainly fsyncs each file itself and leaves nothing to sync.
        let plain = RootDir::open(tmp.path()).unwrap();
        plain.write_file("b.conf", b"b", None).unwrap();
        assert!(plain.into_unsynced().files.0.is_empty());
    }

    #[test]
    fn a_planted_symlink_does_not_lead_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let (svc, outside) = (tmp.path().join("svc"), tmp.path().join("outside"));
        std::fs::create_dir_all(&svc).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), "untouched").unwrap();
        symlink(&outside, svc.join("escape")).unwrap();
        let root = RootDir::open(&svc).unwrap();
        assert!(root.write_file("escape/victim", b"owned", None).is_err());
        assert!(
            root.replace_text("escape/victim", "untouched", "owned")
                .is_err()
        );
        assert!(root.write_file("escape/new", b"owned", None).is_err());
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "untouched"
        );
        assert!(!outside.join("new").exists());
        // Deleting the link removes the link, not the directory it points to.
        root.delete("escape").unwrap();
        assert!(outside.join("victim").exists());
    }

    #[test]
    fn a_symlink_leading_outside_is_found_without_touching_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let (svc, outside) = (tmp.path().join("svc"), tmp.path().join("outside"));
        std::fs::create_dir_all(svc.join("config")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), "untouched").unwrap();
        symlink(&outside, svc.join("escape")).unwrap();
        symlink("../../outside", svc.join("config/up")).unwrap();
        symlink(outside.join("victim"), svc.join("victim.toml")).unwrap();
        symlink("config", svc.join("inside")).unwrap();
        let root = RootDir::open(&svc).unwrap();
        for (path, via) in [
            ("escape/victim", "escape"),
            ("escape/new/deeper", "escape"),
            ("config/up/victim", "config/up"),
        ] {
            let Err(StepError::Escapes { via: found, .. }) = root.resolves_beneath(path, false)
            else {
                panic!("{path} was not refused");
            };
            assert_eq!(found, via);
        }
        // A final symlink counts only where the step follows it (replace_text reads through it).
        assert!(root.resolves_beneath("victim.toml", false).is_ok());
        assert!(matches!(
            root.resolves_beneath("victim.toml", true),
            Err(StepError::Escapes { .. })
        ));
        // Inside links, and what does not exist yet, are fine.
        for path in ["inside/service.toml", "new/dir/file", "config/service.toml"] {
            root.resolves_beneath(path, true).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "untouched"
        );
    }

    #[test]
    fn replace_text_fails_when_the_text_is_absent() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "abc").unwrap();
        let root = RootDir::open(tmp.path()).unwrap();
        assert!(matches!(
            root.replace_text("f", "zzz", "y"),
            Err(StepError::TextNotFound { .. })
        ));
    }

    #[tokio::test]
    async fn run_command_reports_exit_status_and_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let env = Default::default();
        run_command(
            tmp.path(),
            "true",
            &[],
            &env,
            Duration::from_secs(5),
            &Launcher::default(),
        )
        .await
        .unwrap();
        let err = run_command(
            tmp.path(),
            "sh",
            &["-c".into(), "echo boom >&2; exit 3".into()],
            &env,
            Duration::from_secs(5),
            &Launcher::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "run_command: sh exited with exit status: 3: boom"
        );
        let err = run_command(
            tmp.path(),
            "sleep",
            &["5".into()],
            &env,
            Duration::from_millis(100),
            &Launcher::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, StepError::Timeout { .. }));
    }

    /// Runs `program arg` in `root` as nobody.
    async fn as_nobody(root: &Path, program: &str, arg: &str) -> std::process::Output {
        let nobody = Launcher {
            run_as: Some(RunAs {
                uid: 65534,
                gid: 65534,
            }),
            ..Default::default()
        };
        run_program(
            root,
            program,
            &[arg.into()],
            &Default::default(),
            Duration::from_secs(5),
            &nobody,
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn run_as_drops_to_the_configured_user() {
        let tmp = tempfile::tempdir().unwrap();
        let output = as_nobody(tmp.path(), "id", "-u").await;
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "65534");
        // As nobody, the root-owned service root is read-only.
        let write = as_nobody(tmp.path(), "touch", "x").await;
        assert!(!write.status.success() && !tmp.path().join("x").exists());
    }
}
