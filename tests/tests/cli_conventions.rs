//! The command-line conventions of both binaries, run for real: `--version` names the git
//! commit, the man pages are generated from the CLI, `--help` lists a command's own options
//! before the global ones, and `-v`/`-q` move the log level (with `RUST_LOG` still winning).

use std::process::{Command, Output};

use flotilla_tests::{NatsServer, binary, repo_root};
use futures::StreamExt;

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(binary(program))
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .env("OTEL_SDK_DISABLED", "true")
        .current_dir(repo_root())
        .output()
        .expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `--version` of both binaries: `<name> <version> (<commit>)`, the commit one of this
/// repository's (or `unknown` when built without git).
#[test]
fn version_names_the_binary_and_the_git_commit() {
    for program in ["flotilla", "flotilla-agent"] {
        let out = run(program, &["--version"], &[]);
        assert!(out.status.success(), "{program}: {out:?}");
        let text = stdout(&out);
        let rest = text
            .trim()
            .strip_prefix(&format!("{program} {} (", env!("CARGO_PKG_VERSION")))
            .unwrap_or_else(|| panic!("{program}: {text}"));
        let commit = rest.strip_suffix(')').unwrap_or_else(|| panic!("{text}"));
        if repo_root().join(".git").exists() {
            assert!(
                commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
                "{program}: {text}"
            );
            let known = Command::new("git")
                .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
                .current_dir(repo_root())
                .status()
                .unwrap();
            assert!(
                known.success(),
                "{commit} is not a commit of this repository"
            );
        } else {
            assert_eq!(commit, "unknown");
        }
    }
}

/// `flotilla man --out DIR` writes flotilla.1 and a page per subcommand, from the CLI itself.
#[test]
fn man_pages_are_generated_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        "flotilla",
        &["man", "--out", dir.path().to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let page = |name: &str| {
        std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let main = page("flotilla.1");
    assert!(main.contains(".TH flotilla 1"), "{main}");
    let version = format!("\"flotilla {} (", env!("CARGO_PKG_VERSION"));
    assert!(
        main.contains(&version),
        "the page names the version:\n{main}"
    );
    for command in ["migrate", "watch", "runs", "agents", "rollback", "report"] {
        let text = page(&format!("flotilla-{command}.1"));
        assert!(
            text.contains(&format!(".TH flotilla-{command} 1")),
            "{text}"
        );
    }
    let runs = page("flotilla-runs.1");
    assert!(
        runs.contains("\\-\\-limit") && runs.contains("\\-\\-status"),
        "{runs}"
    );
    assert!(page("flotilla-watch.1").contains("\\-\\-service"));
    // The hidden command has no page.
    assert!(!dir.path().join("flotilla-man.1").exists());
}

/// A command's own options come first in `--help`, then the global ones under their heading.
#[test]
fn help_lists_a_commands_own_options_before_the_global_ones() {
    for help in ["-h", "--help"] {
        let out = run("flotilla", &["runs", help], &[]);
        let text = stdout(&out);
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
        };
        assert!(at("Options:") < at("--limit"));
        assert!(at("--limit") < at("Global options:"), "{text}");
        assert!(at("Global options:") < at("--nats-url"));
        assert!(at("--trace-url") < at("Global options (NATS identity):"));
        assert!(at("Global options (NATS identity):") < at("--nats-user"));
    }
}

/// `-q` hides a warning, `-v` shows info lines, and `RUST_LOG` beats both. The warning is a
/// real one: a presence answer that is not JSON, sent by a bare NATS client.
#[test]
fn verbosity_flags_move_the_log_level_and_rust_log_wins() {
    let nats = NatsServer::start().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async_nats::connect(nats.url())).unwrap();
    let subject = flotilla_schemas::subjects::Subjects::new("flotilla")
        .unwrap()
        .presence();
    let mut requests = runtime.block_on(client.subscribe(subject)).unwrap();
    let answerer = client.clone();
    runtime.spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = answerer.publish(reply, "not json".into()).await;
            }
        }
    });
    runtime.block_on(client.flush()).unwrap();

    let url = nats.url().to_owned();
    let agents = |flags: &[&str], env: &[(&str, &str)]| {
        let mut args = flags.to_vec();
        args.extend(["agents", "--discovery-window", "500ms"]);
        let mut env = env.to_vec();
        env.push(("FLOTILLA_NATS__URL", url.as_str()));
        let out = run("flotilla", &args, &env);
        // No real agent answered: exit 3 however loud the logs are.
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        stderr(&out)
    };
    const WARNING: &str = "ignoring a malformed presence answer";
    let default = agents(&[], &[]);
    assert!(default.contains(WARNING), "{default}");
    assert!(!default.contains(" INFO "), "{default}");
    let quiet = agents(&["-q"], &[]);
    assert!(!quiet.contains(WARNING), "{quiet}");
    assert!(quiet.contains("error: no agent answered"), "{quiet}");
    let verbose = agents(&["-v"], &[]);
    assert!(verbose.contains(" INFO "), "{verbose}");
    assert!(!verbose.contains(" DEBUG "), "{verbose}");
    let debug = agents(&["-vv"], &[]);
    assert!(debug.contains(WARNING), "{debug}");
    let rust_log = agents(&["-q"], &[("RUST_LOG", "warn")]);
    assert!(
        rust_log.contains(WARNING),
        "RUST_LOG wins over -q: {rust_log}"
    );
    let both = run("flotilla", &["-q", "-v", "agents"], &[]);
    assert_eq!(both.status.code(), Some(2), "-q and -v conflict: {both:?}");
    assert!(stderr(&both).contains("cannot be used with"));
}
