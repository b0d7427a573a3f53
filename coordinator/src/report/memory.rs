//! The memory figures of a service, as every report shows them: before → after, and the source
//! both come from (`cgroup`, `pss` or `rss`, see `flotilla_schemas::MemorySource`).

use flotilla_schemas::Measurements;

/// `20.0 MiB → 20.1 MiB (rss)`; `-` for a figure not measured; no source from an older agent.
pub(super) fn memory_figures(m: &Measurements) -> String {
    let mib = |v: Option<u64>| {
        v.map_or_else(
            || "-".into(),
            |v| format!("{:.1} MiB", v as f64 / 1048576.0),
        )
    };
    let source = m
        .memory_source
        .map(|s| format!(" ({})", s.as_str()))
        .unwrap_or_default();
    format!(
        "{} → {}{source}",
        mib(m.rss_bytes_before),
        mib(m.rss_bytes_after)
    )
}

#[cfg(test)]
mod tests {
    use flotilla_schemas::MemorySource;

    use super::*;

    #[test]
    fn names_the_source_when_the_agent_gave_it() {
        let mut m = Measurements {
            rss_bytes_before: Some(7 * 1048576),
            rss_bytes_after: Some(7 * 1048576 + 104858),
            ..Default::default()
        };
        assert_eq!(memory_figures(&m), "7.0 MiB → 7.1 MiB");
        m.memory_source = Some(MemorySource::Pss);
        assert_eq!(memory_figures(&m), "7.0 MiB → 7.1 MiB (pss)");
        m.rss_bytes_after = None;
        assert_eq!(memory_figures(&m), "7.0 MiB → - (pss)");
    }
}
