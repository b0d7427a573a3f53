//! Extra resident memory, to make the service look heavier than it is.

use anyhow::{Context, Result, anyhow};

const MIB: usize = 1 << 20;

/// Allocates `mebibytes` MiB and writes to every byte of it.
///
/// The caller keeps the returned buffer alive for as long as the memory
/// should stay resident.
pub fn allocate(mebibytes: u64) -> Result<Vec<u8>> {
    let bytes = usize::try_from(mebibytes)
        .ok()
        .and_then(|mib| mib.checked_mul(MIB))
        .ok_or_else(|| anyhow!("extra_memory_mb = {mebibytes} is too large"))?;
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(bytes)
        .with_context(|| format!("allocating extra_memory_mb = {mebibytes}"))?;
    // A non-zero fill forces every page to be written, so it counts as
    // resident memory instead of staying a lazily mapped zero page.
    buffer.resize(bytes, 0xA5);
    // Without this the optimiser may drop the fill, as nothing reads it.
    Ok(std::hint::black_box(buffer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_and_fills() {
        let buffer = allocate(1).expect("allocate 1 MiB");
        assert_eq!(buffer.len(), MIB);
        assert!(buffer.iter().all(|&byte| byte == 0xA5));
        assert!(allocate(0).expect("allocate nothing").is_empty());
    }

    #[test]
    fn rejects_absurd_sizes() {
        assert!(allocate(u64::MAX).is_err());
    }
}
