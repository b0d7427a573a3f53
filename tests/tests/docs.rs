//! The docs show what the binaries print: every marked block of the docs is checked against the
//! real output, every documented `flotilla` command and flag exists, and the exit codes of
//! `docs/exit-codes.md` are the coordinator's. The markers and normalisations are described in
//! `tests/src/docs.rs`.

use std::process::{Command, Output};

use flotilla_tests::docs::{
    Block, Marker, all_blocks, documented_commands, excerpt_matches, lines_match,
};
use flotilla_tests::{Fleet, NatsServer, ROLES, binary, repo_root};

/// A marker's command, parsed.
struct Invocation {
    args: Vec<String>,
    exit: i32,
    fleet: bool,
}

fn invocation(marker: &str) -> Invocation {
    let mut parts = marker.split(';').map(str::trim);
    let args = parts.next().unwrap_or_default();
    let mut invocation = Invocation {
        args: args
            .split(' ')
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect(),
        exit: 0,
        fleet: false,
    };
    for part in parts {
        match part.split_once(':').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("exit", code)) => invocation.exit = code.parse().expect("exit: N"),
            Some(("fleet", "demo")) => invocation.fleet = true,
            _ => panic!("unknown suffix {part:?} in marker {marker:?}"),
        }
    }
    invocation
}

/// Runs a marker's command; its output as lines, with the temporary directory as `<tmp>`.
fn run(block: &Block, invocation: &Invocation, fleet: Option<&Fleet>) -> (i32, Vec<String>) {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let tmp_path = tmp.path().display().to_string();
    let mut args: Vec<String> = invocation
        .args
        .iter()
        .map(|a| a.replace("<tmp>", &tmp_path))
        .collect();
    if args.iter().any(|a| a.contains("<block-above>")) {
        let file = tmp.path().join("block-above");
        let above = block.above.as_ref().expect("a block above <block-above>");
        std::fs::write(&file, above).expect("temp file written");
        for a in &mut args {
            *a = a.replace("<block-above>", &file.display().to_string());
        }
    }
    let (program, rest) = args.split_first().expect("a command");
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let mut command = match fleet {
        Some(fleet) => {
            assert_eq!(
                program, "flotilla",
                "{}: a fleet runs flotilla only",
                block.place
            );
            fleet.flotilla_command(&rest)
        }
        None => {
            let mut command = Command::new(binary(program));
            command
                .args(&rest)
                .current_dir(repo_root())
                .env("NO_COLOR", "1");
            command
        }
    };
    let set: Vec<String> = command
        .get_envs()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    // The docs show what a user sees without the test's variables (a backtrace, another NATS).
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("FLOTILLA_")) {
        if !set.contains(&name) {
            command.env_remove(name);
        }
    }
    command
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("the command runs");
    let text = String::from_utf8_lossy(&stdout).into_owned() + &String::from_utf8_lossy(&stderr);
    let lines = text
        .replace(&tmp_path, "<tmp>")
        .lines()
        .map(String::from)
        .collect();
    (status.code().unwrap_or(-1), lines)
}

/// Checks every checked block (those that need a fleet with `fleet`, the others without).
fn check_blocks(needs_fleet: bool, fleet: impl Fn() -> Option<Fleet>) {
    let blocks: Vec<(Block, Marker)> = all_blocks()
        .into_iter()
        .filter_map(|b| {
            let marker = Marker::parse(b.comment.as_deref()?)?;
            Some((b, marker))
        })
        .collect();
    let checked: Vec<(&Block, &str, bool)> = blocks
        .iter()
        .filter_map(|(b, m)| match m {
            Marker::Whole(c) => Some((b, c.as_str(), true)),
            Marker::Excerpt(c) => Some((b, c.as_str(), false)),
            Marker::Illustration => None,
        })
        .filter(|(_, c, _)| invocation(c).fleet == needs_fleet)
        .collect();
    assert!(
        !checked.is_empty(),
        "no checked block (fleet: {needs_fleet})"
    );
    let fleet = fleet();
    let mut wrong = Vec::new();
    for (block, command, whole) in checked {
        let invocation = invocation(command);
        let (code, actual) = run(block, &invocation, fleet.as_ref());
        let matches = if whole {
            lines_match(&block.body, &actual)
        } else {
            excerpt_matches(&block.body, &actual)
        };
        if code != invocation.exit || !matches {
            wrong.push(format!(
                "{} `{command}` exited {code} (expected {}) and printed:\n{}\n",
                block.place,
                invocation.exit,
                actual.join("\n")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs that differ from the binaries:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_output_block_is_marked_and_every_marker_is_known() {
    let mut wrong = Vec::new();
    for block in all_blocks() {
        match &block.comment {
            Some(c) if Marker::parse(c).is_none() => {
                wrong.push(format!("{}: unknown marker <!-- {c} -->", block.place));
            }
            None if block.lang == "console" => {
                wrong.push(format!("{}: a console block without a marker", block.place));
            }
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn blocks_without_a_fleet_show_what_the_binaries_print() {
    check_blocks(false, || None);
}

#[test]
fn blocks_with_the_demo_fleet_show_what_the_binaries_print() {
    let nats = NatsServer::start().expect("nats-server starts");
    check_blocks(true, || {
        Some(Fleet::start(nats.url(), &ROLES).expect("the demo fleet starts"))
    });
}

/// `flotilla WORDS --help`.
fn help(words: &[&str]) -> String {
    let out = Command::new(binary("flotilla"))
        .args(words)
        .arg("--help")
        .output()
        .expect("flotilla runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_documented_command_and_flag_exists() {
    let top = help(&[]);
    let listed = top.split("Commands:").nth(1).unwrap_or_default();
    let listed = listed.split("Options:").next().unwrap_or_default();
    let subcommands: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut wrong = Vec::new();
    for (page, line) in documented_commands() {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        let Some(&sub) = words.first() else { continue };
        if !sub.chars().all(|c| c.is_ascii_lowercase()) {
            continue;
        }
        // A hidden command (`man`) is not listed; its own --help says it exists.
        if !subcommands.contains(&sub) && !help(&[sub]).contains(&format!("Usage: flotilla {sub} "))
        {
            wrong.push(format!("{page}: `{line}`: no command {sub:?}"));
            continue;
        }
        // `plan check`, `keys generate`: the second word names the subcommand.
        let nested = words
            .get(1)
            .filter(|w| help(&[sub]).contains(&format!("\n  {w}  ")));
        let path: Vec<&str> = [sub].into_iter().chain(nested.copied()).collect();
        let flags = help(&path);
        for word in &words {
            let flag = word.trim_start_matches('[');
            let flag = flag.split(['=', ']']).next().unwrap_or(flag);
            if flag.starts_with("--")
                && !flags.contains(&format!("{flag} "))
                && !flags.contains(&format!("{flag}\n"))
            {
                wrong.push(format!(
                    "{page}: `{line}`: `flotilla {}` has no {flag}",
                    path.join(" ")
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `| N | … |` rows, `  N  …` help lines or `pub const X: u8 = N;` lines: their codes.
fn codes(lines: impl Iterator<Item = String>, parse: fn(&str) -> Option<&str>) -> Vec<u8> {
    let mut codes: Vec<u8> = lines.filter_map(|l| parse(&l)?.parse().ok()).collect();
    codes.sort_unstable();
    codes
}

#[test]
fn exit_codes_page_matches_the_coordinator_and_its_help() {
    let source = std::fs::read_to_string(repo_root().join("coordinator/src/exit.rs")).unwrap();
    let in_code = codes(source.lines().map(String::from), |l| {
        l.strip_prefix("pub const ")?
            .split_once(": u8 = ")?
            .1
            .strip_suffix(';')
    });
    let declared = source
        .lines()
        .filter(|l| l.starts_with("pub const "))
        .count();
    assert_eq!(
        in_code.len(),
        declared,
        "every constant of exit.rs is a literal u8"
    );

    let page = std::fs::read_to_string(repo_root().join("docs/exit-codes.md")).unwrap();
    let table = page.split("## Failure taxonomy").next().unwrap_or_default();
    let in_doc = codes(table.lines().map(String::from), |l| {
        l.strip_prefix('|')?.split('|').next().map(str::trim)
    });
    assert_eq!(
        in_doc, in_code,
        "docs/exit-codes.md vs coordinator/src/exit.rs"
    );

    let help = Command::new(binary("flotilla"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let after = help
        .split("Exit codes:")
        .nth(1)
        .expect("--help lists the exit codes");
    let in_help = codes(after.lines().map(String::from), |l| {
        l.strip_prefix("  ")?.split_whitespace().next()
    });
    assert_eq!(
        in_help, in_code,
        "`flotilla --help` vs coordinator/src/exit.rs"
    );
}
