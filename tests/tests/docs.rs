//! The docs say what the product does: where a page shows what a command prints, this test runs
//! the command against the built binaries and compares.
//!
//! A fenced block of `docs/*.md` or `README.md` is marked by an HTML comment on the line right
//! before its opening fence:
//! - `<!-- output-of: CMD -->`: the block is the whole of CMD's output (stdout, then stderr);
//! - `<!-- excerpt-of: CMD -->`: the block's lines appear in CMD's output, adjacent and in order;
//! - `<!-- excerpt -->`: output of one real run, shown as an illustration and not checked.
//!
//! CMD is a binary of this workspace and its arguments, split on spaces, run in the repository's
//! root without the test's `FLOTILLA_…` and `RUST_BACKTRACE` variables. In CMD, `<tmp>` is a fresh temporary directory
//! and `<block-above>` a file holding the nearest fenced block above. It may end with `; exit: N`
//! (the exit code expected, 0 by default) and with `; fleet: demo` (run `flotilla` against a real
//! nats-server and the five demo services with their agents).
//!
//! The only normalisations: trailing white space is dropped and a run of spaces counts as one;
//! the temporary directory prints as `<tmp>`; and a lower-case `<placeholder>` in the doc (e.g.
//! `<pid>`, `<host>`, `<run-id>`, `<ms>`) stands for any text without spaces.
//!
//! Every `console` block carries one of the three markers, and no other comment may stand right
//! before a fence (a misspelt marker would silently check nothing).
//!
//! Besides: every `flotilla …` command line in the docs (inline code, `sh` and `console` blocks)
//! names a real command and only its real flags, and the exit codes of `docs/exit-codes.md` are
//! those of `coordinator/src/exit.rs` and of `flotilla --help`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flotilla_tests::{Fleet, NatsServer, ROLES, binary, repo_root};

/// One fenced block of a page.
struct Block {
    /// `page:line` of the opening fence.
    place: String,
    lang: String,
    /// The comment right before the fence, without `<!--` and `-->`.
    comment: Option<String>,
    body: Vec<String>,
    /// The nearest fenced block above, for `<block-above>`.
    above: Option<String>,
}

/// What a marker asks for.
#[derive(Debug, PartialEq)]
enum Marker {
    Whole(String),
    Excerpt(String),
    Illustration,
}

impl Marker {
    fn parse(comment: &str) -> Option<Self> {
        if let Some(command) = comment.strip_prefix("output-of:") {
            Some(Self::Whole(command.trim().to_owned()))
        } else if let Some(command) = comment.strip_prefix("excerpt-of:") {
            Some(Self::Excerpt(command.trim().to_owned()))
        } else {
            (comment == "excerpt").then_some(Self::Illustration)
        }
    }
}

/// The pages that document the product.
fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo_root().join("docs"))
        .expect("docs/ is readable")
        .map(|entry| entry.expect("docs/ is readable").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages.push(repo_root().join("README.md"));
    pages
}

fn blocks(page: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(page).expect("page is readable");
    let name = page.strip_prefix(repo_root()).unwrap_or(page).display();
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks: Vec<Block> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        // A fence may be indented (in a list item); so is its body.
        let indent = lines[i].len() - lines[i].trim_start().len();
        let Some(lang) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].trim_start().starts_with("```"))
            .unwrap_or_else(|| panic!("{name}:{}: unclosed fence", i + 1));
        let comment = i
            .checked_sub(1)
            .map(|p| lines[p].trim())
            .and_then(|l| l.strip_prefix("<!--")?.strip_suffix("-->"))
            .map(|c| c.trim().to_owned());
        let above = blocks.last().map(|b: &Block| b.body.join("\n") + "\n");
        blocks.push(Block {
            place: format!("{name}:{}", i + 1),
            lang: lang.trim().to_owned(),
            comment,
            body: lines[i + 1..end]
                .iter()
                .map(|l| l.get(indent..).unwrap_or(l.trim_start()).to_owned())
                .collect(),
            above,
        });
        i = end + 1;
    }
    blocks
}

fn all_blocks() -> Vec<Block> {
    pages().iter().flat_map(|page| blocks(page)).collect()
}

/// Trailing white space dropped, runs of spaces as one.
fn normalise(line: &str) -> String {
    let mut out = String::new();
    for c in line.trim_end().chars() {
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    out
}

/// A doc line, cut at its `<placeholder>`s.
fn segments(doc: &str) -> Vec<Option<&str>> {
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .unwrap_or(after.len());
        let is_placeholder = name_len > 0
            && after.as_bytes()[0].is_ascii_lowercase()
            && after[name_len..].starts_with('>');
        if is_placeholder {
            out.push(Some(&rest[..start]));
            out.push(None);
            rest = &after[name_len + 1..];
        } else {
            out.push(Some(&rest[..start + 1]));
            rest = after;
        }
    }
    out.push(Some(rest));
    out
}

/// Whether `actual` is what the doc line shows; a placeholder is one or more non-space chars.
fn line_matches(doc: &str, actual: &str) -> bool {
    fn go(segments: &[Option<&str>], actual: &str) -> bool {
        match segments.split_first() {
            None => actual.is_empty(),
            Some((Some(literal), rest)) => actual
                .strip_prefix(literal)
                .is_some_and(|tail| go(rest, tail)),
            Some((None, rest)) => actual
                .char_indices()
                .skip(1)
                .map(|(i, _)| i)
                .chain([actual.len()])
                .take_while(|&i| !actual[..i].contains(' ') && !actual.is_empty())
                .any(|i| go(rest, &actual[i..])),
        }
    }
    go(&segments(&normalise(doc)), &normalise(actual))
}

fn lines_match(doc: &[String], actual: &[String]) -> bool {
    doc.len() == actual.len() && doc.iter().zip(actual).all(|(d, a)| line_matches(d, a))
}

fn excerpt_matches(doc: &[String], actual: &[String]) -> bool {
    doc.is_empty() || actual.windows(doc.len()).any(|w| lines_match(doc, w))
}

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

/// The `flotilla …` command lines of the docs: inline code spans, and lines of `sh` and
/// `console` blocks (after a `$ ` prompt), each cut at a comment, pipe or `;`.
fn documented_commands() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page is readable");
        let name = page
            .strip_prefix(repo_root())
            .unwrap_or(&page)
            .display()
            .to_string();
        let mut in_block = false;
        let prose: Vec<&str> = text
            .lines()
            .filter(|l| {
                let fence = l.trim_start().starts_with("```");
                in_block ^= fence;
                !in_block && !fence
            })
            .collect();
        let prose = prose.join("\n");
        let spans = prose.split('`').skip(1).step_by(2).map(String::from);
        let block_lines = blocks(&page)
            .into_iter()
            .filter(|b| b.lang == "sh" || b.lang == "console")
            .flat_map(|b| b.body);
        for line in spans.chain(block_lines) {
            let line = line.trim_start().trim_start_matches("$ ");
            let cut = line.find(['#', '|', ';', ')']).unwrap_or(line.len());
            if line.starts_with("flotilla ") {
                found.push((name.clone(), line[..cut].trim().to_owned()));
            }
        }
    }
    found
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
        if !subcommands.contains(&sub) {
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

#[test]
fn a_placeholder_stands_for_one_word_and_nothing_else_differs() {
    assert!(line_matches(
        "inference  a  <pid>  <host>",
        "inference a 9624     vm  "
    ));
    assert!(line_matches(
        r#"  keys = ["<key>"]"#,
        r#"  keys = ["Hi+8k="]"#
    ));
    assert!(line_matches(
        "Usage: flotilla <COMMAND>",
        "Usage: flotilla <COMMAND>"
    ));
    assert!(!line_matches(
        "Usage: flotilla <COMMAND>",
        "Usage: flotilla migrate"
    ));
    assert!(!line_matches("a <pid> b", "a 1 2 b"));
    assert!(!line_matches("a <pid> b", "a  b"));
    assert!(!line_matches("5 agent(s)", "4 agent(s)"));
    let doc = ["x".to_owned(), "y".to_owned()];
    let actual = ["w".to_owned(), "x".to_owned(), "y".to_owned()];
    assert!(excerpt_matches(&doc, &actual));
    assert!(!lines_match(&doc, &actual));
    assert!(!excerpt_matches(&doc, &actual[..2]));
}
