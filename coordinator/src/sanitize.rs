//! Makes text from data (reasons, stderr lines, paths, plan and wave names, hosts) safe to show:
//! on a terminal, in a Markdown file and in XML. Agents, plans and traces are data: a reason that
//! carries `ESC[2J` would clear the operator's screen, `U+202E` would show a line reversed, a
//! stray `\r` would overwrite one, and XML 1.0 cannot carry most C0 controls at all.
//!
//! Every character that is a control (C0, DEL, C1), a bidirectional-text control, a line or
//! paragraph separator, or an XML non-character (`U+FFFE`, `U+FFFF`) is shown as an escape:
//! `\n`, `\r` and `\t` for those three, `\uXXXX` (four lower-case hex digits, as in JSON) for the
//! rest; e.g. `ESC[31m` becomes `\u001b[31m`. The escaping is for display: a backslash is left
//! as it is, so the text `\u001b` and an escaped ESC look alike.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` on one line: every escaped character, line breaks and tabs included, is shown as an
/// escape. For fields of line-oriented output (progress lines, table cells, XML attributes).
pub fn one_line(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// `text` with its line breaks kept, every other escaped character shown as an escape (tabs too:
/// they would misalign tables, and the JUnit writer drops raw ones).
/// For whole documents (a report, an error message) and multi-line fields (XML element text).
pub fn multi_line(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

/// True for the characters that are never shown raw.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Arabic letter mark, left-to-right and right-to-left marks.
            '\u{061c}' | '\u{200e}' | '\u{200f}'
            // Embeddings and overrides (U+202E is RIGHT-TO-LEFT OVERRIDE), then isolates.
            | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            // Line and paragraph separators: a line break to some terminals and editors.
            | '\u{2028}' | '\u{2029}'
            // Not characters in XML 1.0.
            | '\u{fffe}' | '\u{ffff}'
        )
}

fn escape(text: &str, keep_breaks: bool) -> Cow<'_, str> {
    let kept = |c: char| !needs_escape(c) || (keep_breaks && c == '\n');
    if text.chars().all(kept) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if kept(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_are_shown_as_escapes() {
        let evil = "red \u{1b}[31mALERT\u{1b}[0m \u{202e}txt.exe\u{7}\u{9b}2J\u{0}\r\n\tend";
        assert_eq!(
            one_line(evil),
            "red \\u001b[31mALERT\\u001b[0m \\u202etxt.exe\\u0007\\u009b2J\\u0000\\r\\n\\tend"
        );
        assert_eq!(
            multi_line(evil),
            "red \\u001b[31mALERT\\u001b[0m \\u202etxt.exe\\u0007\\u009b2J\\u0000\\r\n\\tend"
        );
        assert_eq!(
            one_line("\u{2066}\u{2028}\u{fffe}"),
            "\\u2066\\u2028\\ufffe"
        );
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let plain = "health <check> said \"no\" → 503 in 12 ms, ünïcode ✓ \\ ok";
        assert!(matches!(one_line(plain), Cow::Borrowed(p) if p == plain));
        assert!(matches!(multi_line("a\nb c"), Cow::Borrowed("a\nb c")));
    }
}
