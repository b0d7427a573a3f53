//! Exit codes: each means one thing, so scripts and CI can act on them.

/// Every service succeeded.
pub const OK: u8 = 0;
/// At least one service failed validation or was refused, and was rolled back or left unchanged.
pub const FAILED: u8 = 1;
/// Bad input: arguments, plan or configuration. Nothing was changed.
pub const USAGE: u8 = 2;
/// Pre-flight failed: a targeted service has no live agent, or an agent is incompatible; also
/// `agents` when none answers, and `setup` when a stream or bucket has other settings.
/// Nothing was changed.
pub const PREFLIGHT: u8 = 3;
/// NATS is unreachable or unusable.
pub const BUS: u8 = 4;
/// A rollback failed: at least one service needs a human.
pub const ROLLBACK_FAILED: u8 = 5;
/// At least one agent did not answer in time (its service's state is unknown).
pub const TIMED_OUT: u8 = 6;
/// The run was cancelled (Ctrl-C or `flotilla cancel`): nothing more was dispatched, and
/// `flotilla resume RUN` finishes it.
pub const CANCELLED: u8 = 7;

/// What a command returns: the exit code of a command that ran to its end (having printed what
/// it had to), or the error that stopped it.
pub type Outcome = Result<u8, CommandError>;

/// Why a command stopped: what to tell the user, and the exit code (one of the above) it means.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    code: u8,
    message: String,
}

impl CommandError {
    /// `message` ends the command with exit `code`.
    pub fn new(code: u8, message: impl std::fmt::Display) -> Self {
        Self {
            code,
            message: message.to_string(),
        }
    }

    /// The exit code this error means.
    pub fn code(&self) -> u8 {
        self.code
    }

    /// Says the error on stderr (whatever `--output`: stdout stays empty), controls escaped;
    /// returns its exit code. The one place a command's error becomes the process's.
    pub fn report(&self) -> u8 {
        eprintln!("error: {}", crate::sanitize::multi_line(&self.message));
        self.code
    }
}

/// A configuration that cannot be assembled is bad input.
impl From<crate::settings::SettingsError> for CommandError {
    fn from(error: crate::settings::SettingsError) -> Self {
        Self::new(USAGE, error)
    }
}
