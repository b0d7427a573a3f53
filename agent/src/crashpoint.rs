//! Test-only crash points. With `FLOTILLA_TEST_CRASH_AT=<point>` in its environment, the agent
//! stops dead at that point: it drops a marker file `crashpoint-<point>` in its state directory
//! and blocks, so a test can `kill -9` it at exactly that place and check what the next start
//! recovers. Without the variable, a crash point costs one environment lookup.

use std::path::Path;
use std::time::Duration;

/// The variable that arms a crash point.
pub const ENV: &str = "FLOTILLA_TEST_CRASH_AT";

/// Blocks forever when `point` is the armed crash point.
pub fn reached(state_dir: &Path, point: &str) {
    if std::env::var(ENV).as_deref() != Ok(point) {
        return;
    }
    tracing::warn!(point, "test crash point reached: waiting to be killed");
    let _ = std::fs::write(state_dir.join(format!("crashpoint-{point}")), "");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
