//! Confinement of plan paths to the service root.
//!
//! Two layers: a lexical check (in `flotilla_schemas::paths`, so that `flotilla plan check`
//! refuses the same paths) refuses absolute paths, `..`, empty components and NUL before
//! anything is touched; every file operation then goes through a `cap_std::fs::Dir` opened
//! on the root, which resolves beneath it (openat2 `RESOLVE_BENEATH` on Linux) so that symlinks
//! planted inside the root cannot lead outside either, even when swapped in mid-run.

pub use flotilla_schemas::paths::{PathError, relative_path};
