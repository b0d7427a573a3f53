//! `flotilla man --out DIR` (hidden): the man pages, generated from the command line's own
//! definition, so that they cannot drift from `--help`.

use std::path::Path;

use clap::CommandFactory;

use super::fail;
use crate::cli::Cli;
use crate::exit::{self, Outcome};

/// Writes `flotilla.1` and one page per subcommand (`flotilla-migrate.1`, …) into `out`.
pub(super) fn write_pages(out: &Path) -> Outcome {
    let cannot =
        |e: std::io::Error| fail(exit::USAGE, format!("cannot write {}: {e}", out.display()));
    std::fs::create_dir_all(out).map_err(cannot)?;
    let command = Cli::command().name("flotilla").version(crate::VERSION);
    clap_mangen::generate_to(command, out).map_err(cannot)?;
    eprintln!("man pages written to {}", out.display());
    Ok(exit::OK)
}
