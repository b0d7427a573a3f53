//! One run of the service as a batch job (how training and preprocess run in production): it
//! processes a fixed number of records and prints one JSON line with its figures, so a
//! migration tool can check the exit code, the duration and the throughput.

use std::time::{Duration, Instant};

use crate::config::Config;

/// Records one job run processes.
const RECORDS: u64 = 200_000;

/// Runs the job; `Err` when the configuration says the job must fail (`fail_health`).
pub fn run(config: &Config) -> anyhow::Result<()> {
    let started = Instant::now();
    // The same knob that slows the server's start slows the job: a regression shows in both.
    std::thread::sleep(Duration::from_millis(config.behaviour.startup_delay_ms));
    let mut checksum = 0u64;
    for record in 0..RECORDS {
        checksum = checksum.rotate_left(5) ^ record.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    if config.behaviour.fail_health {
        anyhow::bail!("job failed: the configuration marks it as failing");
    }
    let elapsed = started.elapsed();
    let per_second = RECORDS as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "{}",
        serde_json::json!({
            "service": config.role.as_str(),
            "layout": config.layout.as_str(),
            "records": RECORDS,
            "duration_ms": elapsed.as_millis() as u64,
            "records_per_second": per_second.round() as u64,
            "checksum": checksum,
        })
    );
    Ok(())
}
