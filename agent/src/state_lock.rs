//! One agent per state directory: `<state_dir>/agent.lock`, flocked for the agent's life. The
//! kernel releases the lock when the agent dies however it dies (kill -9 included), so a lock is
//! never stale; the file's content (the holder's PID) only names the holder in the error.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// Why the state directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another agent{} already uses the state directory {dir}; stop it, or give this agent its own agent.state_dir",
        holder.map(|pid| format!(" (PID {pid})")).unwrap_or_default()
    )]
    Held { dir: PathBuf, holder: Option<u32> },
    #[error("cannot lock the state directory {dir} ({path})")]
    Io {
        dir: PathBuf,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The lock on a state directory, held until dropped (or until the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "agent.lock";

impl StateLock {
    /// Locks `state_dir` (creating it), or says which agent holds it.
    pub fn acquire(state_dir: &Path) -> Result<Self, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            dir: state_dir.to_owned(),
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        // Not truncated on open: the holder's PID must survive a failed attempt.
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held {
                    dir: state_dir.to_owned(),
                    holder: text.trim().parse().ok(),
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(
            err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
        drop(held);
        StateLock::acquire(dir.path()).unwrap();
    }
}
