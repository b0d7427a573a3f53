// The build script of both binaries (`include!`d by coordinator/build.rs and agent/build.rs):
// sets FLOTILLA_COMMIT, the short git commit of the sources, for `--version`. Without a git
// checkout (a source tarball, the Docker build, whose context leaves .git out) it is
// `FLOTILLA_COMMIT` from the environment if set, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo::rerun-if-env-changed=FLOTILLA_COMMIT");
    let commit = std::env::var("FLOTILLA_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // A checkout moves HEAD, a commit moves the branch's ref: rebuild then. Only this
    // branch's ref: other branches (other worktrees') commits must not rebuild this one.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for path in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        // Only files that exist: cargo reruns the script at every build for a missing one.
        if let Some(p) = git(&["rev-parse", "--path-format=absolute", "--git-path", path])
            && std::path::Path::new(&p).exists()
        {
            println!("cargo::rerun-if-changed={p}");
        }
    }
    println!("cargo::rustc-env=FLOTILLA_COMMIT={commit}");
}
