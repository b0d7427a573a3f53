// `--version` names the git commit: see scripts/build_commit.rs.
include!("../scripts/build_commit.rs");
