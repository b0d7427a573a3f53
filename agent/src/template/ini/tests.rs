//! The INI rule against a real reader: Python's `configparser`, the reader most INI-configured
//! services use. Every value the rule accepts reads back exactly; what it refuses is said.

use std::io::Write;
use std::process::{Command, Stdio};

use proptest::prelude::*;

use super::{is_ini, unwritable};

/// What Python's `configparser` reads as `[s] key` in `text`, or `None` if it cannot parse it.
fn configparser_reads(text: &str) -> Option<String> {
    let script = "import configparser,sys\n\
                  p=configparser.ConfigParser()\n\
                  p.read_string(sys.stdin.read())\n\
                  sys.stdout.write(p['s']['key'])\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

#[test]
fn ini_files_are_named_by_their_extension() {
    assert!(is_ini("config/app.ini"));
    assert!(is_ini("setup.cfg"));
    assert!(!is_ini("config/app.toml"));
    assert!(!is_ini("ini"));
}

#[test]
fn what_no_reader_can_carry_is_refused_with_the_reason() {
    for (value, why) in [
        (" lead", "strip the spaces"),
        ("trail ", "strip the spaces"),
        ("two\nlines", "line break"),
        ("tab\there", "control characters"),
        ("100%", "interpolation"),
        ("a;b", "comment"),
        ("a#b", "comment"),
    ] {
        let reason = unwritable(value).unwrap_or_else(|| panic!("{value:?} accepted"));
        assert!(reason.contains(why), "{value:?}: {reason}");
    }
    assert_eq!(unwritable("pa\"ss'wo\\rd$HOME=:é🚀"), None);
}

fn value() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => prop::sample::select(vec![
            "\"", "'", "\\", "\n", "\t", "$", "#", ";", "=", ":", " ", "%", "[", "]", "{", "}",
            "\u{85}", "\u{2028}", "\u{a0}", "é", "🚀", "\\n",
        ])
        .prop_map(str::to_owned),
        2 => "[a-zA-Z0-9]{1,4}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A value the rule accepts is what `configparser` reads back, exactly.
    #[test]
    fn an_accepted_value_reads_back_exactly(value in value()) {
        if unwritable(&value).is_none() {
            let read = configparser_reads(&format!("[s]\nkey = {value}\n"));
            prop_assert_eq!(read.as_deref(), Some(value.as_str()));
        }
    }
}
