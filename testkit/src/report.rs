//! Reading a run's JSON report (`flotilla migrate --output json`) in tests.

use serde_json::Value;

/// The entry of service `name` in the report's `services`; panics with the report when absent.
pub fn service<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["services"]
        .as_array()
        .unwrap_or_else(|| panic!("no services in {report:#}"))
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("{name} not in {report:#}"))
}
