//! docs/getting-started.md, part 2 ("The same fleet, by hand"), followed literally: its shell
//! blocks run in order in one bash, as the guide says (one terminal), against its fixed ports.
//! A reader takes a while between starting the services and migrating: the migration starts
//! 30 s after the services did, when their start-up thread pools have wound down, which is when
//! an agent that counted threads as processes saw the memory "grow" and rolled the fleet back.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_tests::{binary, repo_root, wait_for};

/// How long a reader waits between starting the services (2.4) and migrating (2.7).
const READER_PAUSE_S: u64 = 30;

/// The ports part 2 uses: NATS and the five services.
const PORTS: [u16; 6] = [4222, 18081, 18082, 18083, 18084, 18085];

/// The `sh` blocks of part 2, each with the `### 2.N` heading it sits under.
fn part_two_blocks(guide: &str) -> Vec<(String, String)> {
    let start = guide.find("## 2. ").expect("part 2");
    let end = guide[start..]
        .find("\n## 3. ")
        .map_or(guide.len(), |e| start + e);
    let (mut heading, mut block, mut blocks) = (String::new(), None::<String>, Vec::new());
    for line in guide[start..end].lines() {
        match (&mut block, line) {
            (None, l) if l.starts_with("### ") => heading = l[4..].to_owned(),
            (None, "```sh") => block = Some(String::new()),
            (Some(code), "```") => {
                blocks.push((heading.clone(), std::mem::take(code)));
                block = None;
            }
            (Some(code), l) => {
                code.push_str(l);
                code.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The script: the guide's blocks, with marks of when the services started and a wait on the
/// clock before the migration.
fn script(blocks: &[(String, String)]) -> String {
    let mut script = String::new();
    let mut paused = false;
    for (heading, code) in blocks {
        if heading.starts_with("2.7") && !std::mem::replace(&mut paused, true) {
            script.push_str(&format!(
                "while [ \"$(date +%s%N)\" -lt $((services_started + {READER_PAUSE_S}000000000)) ]; \
                 do sleep 0.1; done\necho \"==> {READER_PAUSE_S} s since the services started\"\n"
            ));
        }
        script.push_str(&format!("echo '==> {heading}'\n"));
        // The test harness has built the binaries already (cargo test cannot build under itself).
        let code = code.replace("cargo build --workspace --bins\n", "");
        script.push_str(&code);
        if heading.starts_with("2.4") {
            script.push_str("services_started=$(date +%s%N)\n");
        }
    }
    script
}

#[test]
fn part_two_migrates_the_fleet_as_written() {
    let root = repo_root();
    let guide = std::fs::read_to_string(root.join("docs/getting-started.md")).unwrap();
    let blocks = part_two_blocks(&guide);
    let headings: Vec<&str> = blocks.iter().map(|(h, _)| &h[..3]).collect();
    assert_eq!(
        headings,
        [
            "2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.7", "2.7", "2.8"
        ],
        "the guide's part 2 changed: adapt this test"
    );
    // The guide runs the binaries from target/debug.
    let bin_dir = binary("flotilla").parent().unwrap().to_owned();
    assert_eq!(
        bin_dir,
        root.join("target/debug"),
        "the guide expects the binaries in target/debug"
    );
    for port in PORTS {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port}, which the guide uses, is taken"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("part-two.sh");
    std::fs::write(&script_path, script(&blocks)).unwrap();
    let output_path = dir.path().join("output.txt");
    let output = std::fs::File::create(&output_path).unwrap();
    let mut bash = Command::new("bash")
        .arg(&script_path)
        .current_dir(&root)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .process_group(0)
        .spawn()
        .unwrap();
    let finished = wait_for(
        "the guide's commands to finish",
        Duration::from_secs(READER_PAUSE_S + 240),
        || bash.try_wait().ok().flatten().is_some(),
    );
    if finished.is_err() {
        // Everything the script started is in its process group.
        let _ = Command::new("kill")
            .arg("--")
            .arg(format!("-{}", bash.id()))
            .status();
        let _ = bash.wait();
    }
    let text = std::fs::read_to_string(&output_path).unwrap();
    finished.unwrap_or_else(|e| panic!("{e}:\n{text}"));
    println!("{text}");
    let migrate = text
        .split("==> 2.7")
        .nth(1)
        .unwrap_or_else(|| panic!("no migration:\n{text}"));
    let paused = text.find(&format!("==> {READER_PAUSE_S} s since"));
    assert!(
        paused.is_some_and(|at| at < text.find("==> 2.7").unwrap()),
        "{text}"
    );
    assert!(
        migrate.contains("succeeded, 5 service(s) migrated and finalized")
            && migrate.contains("exit code: 0"),
        "the migration of part 2.7 failed:\n{text}"
    );
}
