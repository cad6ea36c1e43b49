//! The README's first command as a new user runs it: `lexview serve` with
//! no flags at all (live relay, `--verify auto` -> full, handle checks by
//! DNS and HTTPS), from a folder that holds what the repository holds
//! (`lexicons/`, `queries/`, `feeds/`, `search.json`), on
//! `127.0.0.1:3000`. The test machine has no route to the network, so the
//! relay is unreachable: the server must stay up, retry, answer
//! `/_health` and show the source as not connected.
//!
//! Regression: `HandleChecker::new` built a runtime and called `block_on`
//! inside serve's runtime, so this command panicked at start ("Cannot start
//! a runtime from within a runtime") while every other test passed
//! `--handle-resolver`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::bin;
use serde_json::Value;

/// A folder laid out as the repository is, where `./data` is fresh.
fn checkout_like_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for sub in ["lexicons", "queries", "feeds"] {
        copy_dir(&root.join(sub), &dir.path().join(sub));
    }
    std::fs::copy(root.join("search.json"), dir.path().join("search.json")).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn health(base: &str) -> Option<Value> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .get(format!("{base}/_health"))
        .send()
        .ok()?
        .json()
        .ok()
}

/// Runs `lexview <args>` in `dir` with no `LEXVIEW_*` variable but the log
/// filter, and checks that it serves on `base` and stays up for a while.
fn stays_up(dir: &Path, args: &[&str], base: &str) -> Value {
    stays_up_until(dir, args, base, |_| true)
}

/// As [`stays_up`], returning the first `/_health` answer (after 6 s up)
/// that `done` accepts, within 40 s.
fn stays_up_until(dir: &Path, args: &[&str], base: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("LEXVIEW_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("spawn lexview");
    // Read as it comes: a full pipe would block the server's logging.
    let mut stderr = child.stderr.take().unwrap();
    let log_reader = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
        log
    });
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(40) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "lexview {args:?} exited with {status} after {:?}:\n{}",
                start.elapsed(),
                log_reader.join().unwrap()
            );
        }
        if let Some(h) = health(base) {
            let finished = start.elapsed() > Duration::from_secs(6) && done(&h);
            last = Some(h);
            if finished {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let alive = child.try_wait().unwrap().is_none();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let log = log_reader.join().unwrap();
    assert!(alive, "lexview {args:?} died:\n{log}");
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
    assert!(
        status.success(),
        "lexview {args:?} exited with {status} after SIGTERM:\n{log}"
    );
    last.unwrap_or_else(|| panic!("no /_health answer from {base}:\n{log}"))
}

#[test]
fn the_readme_first_command_stays_up_without_a_network() {
    let dir = checkout_like_folder();
    // Offline, the relay cannot be reached: the source says so and retries
    // (a connection attempt gives up after `CONNECT_TIMEOUT`, 10 s).
    let h = stays_up_until(dir.path(), &[], "http://127.0.0.1:3000", |h| {
        h["sources"][0]["connection"]["failures"].as_u64() > Some(0)
    });
    assert_eq!(h["status"], "ok", "{h}");
    let sources = h["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 1, "{h}");
    assert_eq!(sources[0]["source"], "wss://bsky.network", "{h}");
    let link = &sources[0]["connection"];
    if link["state"] != "connected" {
        assert!(
            link["failures"].as_u64().unwrap() >= 1,
            "a failed connection is counted: {h}"
        );
        assert!(link["lastError"].is_string(), "{h}");
    }
    assert!(
        dir.path().join("data").is_dir(),
        "the store lives in ./data by default"
    );
}

#[test]
fn a_verified_recording_without_a_handle_resolver_stays_up() {
    let dir = checkout_like_folder();
    let frames = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jetstream/frames.bin");
    let port = common::server::free_port();
    let listen = format!("127.0.0.1:{port}");
    let source = format!("replay:{}", frames.display());
    let h = stays_up(
        dir.path(),
        &[
            "serve", "--source", &source, "--verify", "full", "--listen", &listen,
        ],
        &format!("http://{listen}"),
    );
    assert_eq!(h["status"], "ok", "{h}");
}

/// `/_health` tells the truth: a relay that stays unreachable longer than
/// `--max-disconnected` makes the server "degraded" (503), with the reason,
/// while it keeps retrying.
#[test]
fn a_source_down_too_long_makes_the_server_degraded() {
    let dir = checkout_like_folder();
    let port = common::server::free_port();
    let listen = format!("127.0.0.1:{port}");
    let h = stays_up_until(
        dir.path(),
        &[
            "serve",
            "--source",
            "ws://127.0.0.1:9",
            "--max-disconnected",
            "2",
            "--listen",
            &listen,
        ],
        &format!("http://{listen}"),
        |h| h["status"] == "degraded",
    );
    assert_eq!(h["status"], "degraded", "{h}");
    let problem = h["problems"][0].as_str().unwrap();
    assert!(
        problem.contains("ws://127.0.0.1:9 has been disconnected for"),
        "{h}"
    );
}
