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
