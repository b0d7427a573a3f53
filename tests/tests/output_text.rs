//! Text from data never reaches a terminal raw: a service whose check fails with `ESC[31m` and
//! U+202E (RIGHT-TO-LEFT OVERRIDE) on its stderr, in a plan whose name clears the screen, is shown
//! with those characters escaped in the progress lines, the tables, `watch`, the Markdown report
//! and the JUnit XML (which a strict parser reads). Real binaries, real sample service.

use flotilla_tests::{Fleet, NatsServer};

/// What the check prints on stderr, as the shell's `printf` writes it: ESC, then U+202E in UTF-8.
const CHECK: &str = r#"printf 'bad \033[31mred \342\200\256evil\n' >&2; exit 1"#;
/// How the reason shows once escaped.
const SHOWN: &str = r"bad \u001b[31mred \u202eevil";

fn assert_escaped(what: &str, text: &str) {
    assert!(
        !text.contains(['\u{1b}', '\u{202e}', '\u{9b}']),
        "{what} has a raw control character:\n{text:?}"
    );
}

/// Runs `flotilla ARGS` on a terminal (a pseudo-terminal from util-linux `script`, 200 columns),
/// so progress and `watch` draw their in-place views; returns what the terminal received. The
/// views draw with escape sequences of their own, so this checks for the data's: `ESC[31m` and
/// U+202E.
fn on_terminal(fleet: &Fleet, args: &[&str]) -> String {
    let flotilla = fleet.flotilla_command(args);
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_str().unwrap().replace('\'', r"'\''"));
    let line: Vec<String> = std::iter::once(flotilla.get_program())
        .chain(flotilla.get_args())
        .map(quote)
        .collect();
    let mut script = std::process::Command::new("script");
    script
        .args(["-q", "-e", "-c"])
        .arg(format!("stty cols 200 rows 50; exec {}", line.join(" ")))
        .arg("/dev/null")
        .stdin(std::process::Stdio::null())
        .current_dir(flotilla.get_current_dir().unwrap());
    for (key, value) in flotilla.get_envs() {
        if let Some(value) = value {
            script.env(key, value);
        }
    }
    let out = script.output().expect("script runs");
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !shown.contains("\u{1b}[31m") && !shown.contains('\u{202e}'),
        "{args:?} on a terminal shows the data's controls raw:\n{shown:?}"
    );
    shown
}

/// Runs `flotilla ARGS` (text output); checks both streams; returns its stdout.
fn text(fleet: &Fleet, args: &[&str]) -> String {
    let out = fleet.flotilla(args);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_escaped(&format!("{args:?} stdout"), &stdout);
    assert_escaped(&format!("{args:?} stderr"), &stderr);
    stdout + &stderr
}

#[test]
fn controls_and_bidi_overrides_from_data_are_shown_escaped_everywhere() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let plan = fleet.write_plan(
        "evil.toml",
        &format!(
            "name = \"evil\\u001b[2J\"\n[[service]]\nname = \"inference\"\n[[service.step]]\naction = \"run_command\"\nprogram = \"true\"\n[[service.check]]\ntype = \"command\"\nprogram = \"sh\"\nargs = [\"-c\", '''{CHECK}''']\n"
        ),
    );
    let junit = fleet.dir().join("report.xml");
    let md = fleet.dir().join("report.md");
    let migrate = text(
        &fleet,
        &[
            "migrate",
            plan.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
            "--report-md",
            md.to_str().unwrap(),
        ],
    );
    assert!(migrate.contains(SHOWN), "{migrate}");
    let run = fleet.flotilla(&["runs", "--output", "json"]);
    let runs: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let run = runs[0]["run_id"].as_str().unwrap().to_owned();

    for args in [
        &["status", &run][..],
        &["report", &run, "--format", "text"],
        &["report", &run, "--format", "md"],
        &["watch", &run],
    ] {
        let shown = text(&fleet, args);
        assert!(shown.contains(SHOWN), "{args:?}:\n{shown}");
        assert!(shown.contains(r"evil\u001b[2J"), "{args:?}:\n{shown}");
    }
    let runs = text(&fleet, &["runs"]);
    assert!(runs.contains(r"evil\u001b[2J"), "{runs}");

    // On a terminal: the progress bars of a migration (the same plan again), and `watch`.
    for args in [&["migrate", plan.to_str().unwrap()][..], &["watch", &run]] {
        let shown = on_terminal(&fleet, args);
        assert!(shown.contains(SHOWN), "{args:?}:\n{shown}");
    }

    let md = std::fs::read_to_string(md).unwrap();
    assert_escaped("the Markdown report", &md);
    assert!(md.contains(SHOWN), "{md}");

    let xml = std::fs::read_to_string(junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}:\n{xml}"));
    let failure = doc
        .descendants()
        .find(|n| n.has_tag_name("failure"))
        .unwrap_or_else(|| panic!("no failure in {xml}"));
    let message = failure.attribute("message").unwrap();
    assert!(message.contains(SHOWN), "{message}");
    assert_escaped("the JUnit report", &xml);
}
