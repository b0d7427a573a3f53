//! The HTML report of real runs, loaded in headless Chromium (Debian's `chromium`, which
//! `scripts/test.sh` installs when it is missing): the page's script draws the timeline and the
//! charts without errors, they name the run's services, and a screenshot is taken.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_tests::{Fleet, NatsServer, ROLES, json_stdout, repo_root, wait_for};

/// How long one Chromium invocation may take.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

/// The Chromium binary: `CHROMIUM_BIN`, else `chromium` on the PATH.
fn chromium() -> PathBuf {
    if let Some(bin) = std::env::var_os("CHROMIUM_BIN") {
        return bin.into();
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("chromium"))
                .find(|p| p.is_file())
        })
        .expect("chromium is not installed: run scripts/test.sh (it installs Debian's chromium) or apt-get install chromium")
}

/// Runs headless Chromium on `page` with `args`; returns its stdout. Bounded: a Chromium that
/// hangs is killed.
fn headless(page: &Path, profile: &Path, args: &[&str]) -> String {
    let out_path = profile.with_extension("out");
    let err_path = profile.with_extension("err");
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("chromium starts");
    let mut status = None;
    let waited = wait_for("chromium to finish", CHROMIUM_TIMEOUT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if waited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "chromium {args:?} failed ({status:?}):\n{stderr}"
    );
    std::fs::read_to_string(&out_path).unwrap()
}

#[test]
fn the_html_report_of_a_demo_run_renders_in_chromium_with_its_timeline_and_charts() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let page = fleet.dir().join("report.html");
    let plan = repo_root().join("deploy/demo/plan.toml");
    let out = fleet.flotilla(&[
        "migrate",
        plan.to_str().unwrap(),
        "--output",
        "json",
        "--report-html",
        page.to_str().unwrap(),
    ]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let run_id = report["run_id"].as_str().unwrap();
    let html = std::fs::read_to_string(&page).unwrap();

    // `flotilla report --format html` writes the same page.
    let printed = fleet.flotilla(&["report", run_id, "--format", "html"]);
    assert_eq!(printed.status.code(), Some(0));
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert!(printed.starts_with("<!DOCTYPE html>"), "{printed}");
    assert!(printed.contains(run_id));

    // Self-contained: nothing is fetched.
    for external in ["src=\"http", "href=\"http", "<link", "@import", "url(http"] {
        assert!(!html.contains(external), "the page refers to {external}…");
    }
    assert!(html.contains(run_id));
    assert!(html.contains("Migration guide, per service"));
    assert!(html.contains("Correlation"));

    let profile = fleet.dir().join("chromium-profile");
    let dom = headless(&page, &profile, &["--dump-dom"]);
    assert!(
        dom.contains("data-rendered=\"ok\""),
        "the page's script did not finish drawing:\n{dom}"
    );
    assert!(dom.contains("<svg id=\"timeline\""), "{dom}");
    for role in ROLES {
        let target = format!("{role}/a");
        assert!(
            dom.contains(&format!("class=\"row\" data-service=\"{role}\"")),
            "{role} has no row on the timeline"
        );
        assert!(
            dom.contains(&format!(">{target}</text>")),
            "{target} is not named on the timeline"
        );
        assert!(
            dom.contains(&format!("class=\"chart\" data-service=\"{role}\"")),
            "{role} has no chart"
        );
    }
    for phase in [
        "precheck", "backup", "apply", "restart", "validate", "finalize",
    ] {
        assert!(
            dom.contains(&format!("data-phase=\"{phase}\"")),
            "no {phase} bar on the timeline"
        );
    }
    assert!(dom.contains(">startup_ms</text>"), "no startup chart");
    assert!(dom.contains(">memory_bytes</text>"), "no memory chart");
    assert!(dom.contains("class=\"limit\""), "no gate limit drawn");

    let png = fleet.dir().join("report.png");
    headless(
        &page,
        &profile,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1400,1800",
        ],
    );
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(bytes.len() > 10_000, "screenshot of {} bytes", bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    // Kept for people (and docs/img/report.png) under target/tmp.
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::copy(&png, keep.join("report.png"));
    let _ = std::fs::copy(&page, keep.join("report.html"));
}

#[test]
fn the_html_report_marks_a_rollback_on_the_timeline() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "training"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    // Wave 1 succeeds; wave 2 fails (the file it edits does not exist), so wave 1 is rolled back.
    let plan = fleet.write_plan(
        "breaks.toml",
        "name = \"breaks\"\n[[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n[[wave]]\nname = \"rest\"\n\
         [[service]]\nname = \"inference\"\n[[service.step]]\naction = \"write_file\"\npath = \"note.txt\"\ncontent = \"x\"\n\
         [[service]]\nname = \"training\"\n[[service.step]]\naction = \"replace_text\"\npath = \"missing.conf\"\nfind = \"a\"\nreplace = \"b\"\n",
    );
    let page = fleet.dir().join("rollback.html");
    let out = fleet.flotilla(&[
        "migrate",
        plan.to_str().unwrap(),
        "--output",
        "json",
        "--report-html",
        page.to_str().unwrap(),
    ]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let dom = headless(&page, &fleet.dir().join("profile"), &["--dump-dom"]);
    assert!(dom.contains("data-rendered=\"ok\""), "{dom}");
    assert!(
        dom.contains("class=\"mark rollback\""),
        "no rollback mark:\n{dom}"
    );
    assert!(dom.contains("kind-rollback"), "no rollback bars:\n{dom}");
    assert!(dom.contains("data-phase=\"rollback\""), "{dom}");
    assert!(dom.contains("rolled_back"), "{dom}");
    let _ = std::fs::copy(
        &page,
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("rollback.html"),
    );
}
