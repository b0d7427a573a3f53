//! Reading the docs for `tests/tests/docs.rs`, which checks that they say what the product does:
//! where a page shows what a command prints, it runs the command and compares.
//!
//! A fenced block of `docs/*.md` or `README.md` is marked by an HTML comment on the line right
//! before its opening fence:
//! - `<!-- output-of: CMD -->`: the block is the whole of CMD's output (stdout, then stderr);
//! - `<!-- excerpt-of: CMD -->`: the block's lines appear in CMD's output, adjacent and in order;
//! - `<!-- excerpt -->`: output of one real run, shown as an illustration and not checked.
//!
//! CMD is a binary of this workspace and its arguments, split on spaces, run in the repository's
//! root without the test's `FLOTILLA_…` and `RUST_BACKTRACE` variables. In CMD, `<tmp>` is a
//! fresh temporary directory and `<block-above>` a file holding the nearest fenced block above.
//! CMD may end with `; exit: N` (the exit code expected, 0 by default) and with `; fleet: demo`
//! (run `flotilla` against a real nats-server and the five demo services with their agents).
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

use crate::repo_root;

/// One fenced block of a page.
pub struct Block {
    /// `page:line` of the opening fence.
    pub place: String,
    pub lang: String,
    /// The comment right before the fence, without `<!--` and `-->`.
    pub comment: Option<String>,
    pub body: Vec<String>,
    /// The nearest fenced block above, for `<block-above>`.
    pub above: Option<String>,
}

/// What a marker asks for.
#[derive(Debug, PartialEq)]
pub enum Marker {
    Whole(String),
    Excerpt(String),
    Illustration,
}

impl Marker {
    pub fn parse(comment: &str) -> Option<Self> {
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
pub fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo_root().join("docs"))
        .expect("docs/ is readable")
        .map(|entry| entry.expect("docs/ is readable").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages.push(repo_root().join("README.md"));
    pages
}

pub fn blocks(page: &Path) -> Vec<Block> {
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

pub fn all_blocks() -> Vec<Block> {
    pages().iter().flat_map(|page| blocks(page)).collect()
}

/// Trailing white space dropped, runs of spaces as one.
pub fn normalise(line: &str) -> String {
    let mut out = String::new();
    for c in line.trim_end().chars() {
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    out
}

/// A doc line, cut at its `<placeholder>`s.
pub fn segments(doc: &str) -> Vec<Option<&str>> {
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
pub fn line_matches(doc: &str, actual: &str) -> bool {
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

pub fn lines_match(doc: &[String], actual: &[String]) -> bool {
    doc.len() == actual.len() && doc.iter().zip(actual).all(|(d, a)| line_matches(d, a))
}

pub fn excerpt_matches(doc: &[String], actual: &[String]) -> bool {
    doc.is_empty() || actual.windows(doc.len()).any(|w| lines_match(doc, w))
}

/// The `flotilla …` command lines of the docs: inline code spans, and lines of `sh` and
/// `console` blocks (after a `$ ` prompt), each cut at a comment, pipe or `;`.
pub fn documented_commands() -> Vec<(String, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
