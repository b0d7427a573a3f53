//! Escaping a value for the inside of one kind of string, so that the file's parser reads back
//! exactly the value. Every function here is checked against the real parser by the property
//! tests in `template/tests.rs`.

use std::fmt::Write;

use super::context::{Format, Quote};

/// `value` escaped for the inside of a `quote` string, or `None` where that kind of string has no
/// escapes able to hold every value.
pub fn escape(quote: Quote, value: &str) -> Option<String> {
    match quote {
        Quote::TomlBasic | Quote::YamlDouble => Some(backslash_escaped(value)),
        Quote::Json => Some(json(value)),
        Quote::EnvDouble => Some(env_double(value)),
        Quote::TomlLiteral | Quote::YamlSingle | Quote::EnvSingle => None,
    }
}

/// `value` escaped for the inside of `format`'s usual string (what a `|toml`, `|json`, `|yaml`
/// or `|env` filter writes).
pub fn escape_for(format: Format, value: &str) -> String {
    escape(format.quote(), value).expect("each format's usual string has escapes")
}

/// `value` and each escaped form it can take in a written file, without repeats: what a search
/// for it in the files must look for.
pub fn written_forms(value: &str) -> Vec<String> {
    let mut forms = vec![value.to_owned()];
    for quote in [Quote::TomlBasic, Quote::Json, Quote::EnvDouble] {
        let form = escape(quote, value).expect("these strings have escapes");
        if !forms.contains(&form) {
            forms.push(form);
        }
    }
    forms
}

/// `value` as a whole quoted string of `format`.
pub fn quoted(format: Format, value: &str) -> String {
    format!("\"{}\"", escape_for(format, value))
}

/// The escapes TOML basic strings and YAML double-quoted scalars share: `\\`, `\"`, `\n`,
/// `\r`, `\t` and `\uXXXX`, the last for every control character (TOML forbids most raw, YAML
/// folds or refuses them), the characters YAML 1.1 reads as line breaks, and the byte-order mark.
fn backslash_escaped(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control()
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn json(value: &str) -> String {
    let quoted = serde_json::to_string(value).expect("a string always serialises");
    quoted[1..quoted.len() - 1].to_owned()
}

/// The double-quoted value of `dotenvy`: `\\`, `\"`, `\$` and `\n` are its escapes, and `$`
/// would otherwise start a substitution.
fn env_double(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' | '"' | '$' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}
