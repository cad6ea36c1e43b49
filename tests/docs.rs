//! Every shell block of the README and of `docs/` runs here, so the docs
//! cannot rot. Per file, the blocks run in order as one bash script
//! (`set -euo pipefail`), in a scratch folder holding copies of the
//! repository's user-facing folders (`lexicons/`, `queries/`, `feeds/`,
//! `search.json`, and `tests/fixtures/`), with `lexview` on PATH and
//! `cargo run --release --` meaning `lexview`. Info strings:
//!
//! - `sh`: commands that must succeed;
//! - `sh server`: one long-running command, started in the background; the
//!   blocks after it run once its `/_health` answers (on its `--listen`,
//!   default 127.0.0.1:3000); it is stopped with SIGTERM (and must exit
//!   cleanly) before the next `sh server` block, before a `sh stopped`
//!   block and at the end of the file;
//! - `sh stopped`: runs after the server was stopped;
//! - `sh noexec`: not run here; each such block must be listed in
//!   [`COVERED_ELSEWHERE`] with the test that covers it.
//!
//! Files run one after another (they share port 3000).

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

/// Blocks that are not run here, and where they are covered.
const COVERED_ELSEWHERE: &[(&str, &str)] = &[
    (
        "cargo run --release",
        "tests/default_path.rs runs `lexview serve` with no flags",
    ),
    ("./test.sh", "the suite itself (.ci/run calls it)"),
];

#[derive(Debug, PartialEq)]
enum Kind {
    Run,
    Server,
    Stopped,
    NoExec,
}

/// The shell blocks of a Markdown file, in order.
fn blocks(text: &str) -> Vec<(Kind, String, usize)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or_default();
        let kind = match (lang, words.next()) {
            ("sh" | "bash" | "shell", None) => Some(Kind::Run),
            ("sh", Some("server")) => Some(Kind::Server),
            ("sh", Some("stopped")) => Some(Kind::Stopped),
            ("sh", Some("noexec")) => Some(Kind::NoExec),
            ("sh", Some(other)) => panic!("line {}: unknown sh block kind {other:?}", n + 1),
            _ => None,
        };
        let mut body = String::new();
        for (_, l) in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        if let Some(kind) = kind {
            out.push((kind, body, n + 1));
        }
    }
    out
}

/// The bash script that runs `file`'s blocks.
fn script(file: &str, text: &str) -> String {
    let mut s = String::from(
        r#"set -euo pipefail
cargo() { if [ "${1:-}" = run ] && [ "${2:-}" = --release ] && [ "${3:-}" = -- ]; then shift 3; lexview "$@"; else echo "docs test: unexpected cargo $*" >&2; return 1; fi; }
server_pid=""
server_health=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid"
    if ! wait "$server_pid"; then echo "docs test: the server did not exit cleanly" >&2; exit 1; fi
    server_pid=""
  fi
}
start_server() {
  stop_server
  bash -c "$1" &
  server_pid=$!
  server_health="http://$2/_health"
  for _ in $(seq 1 300); do
    if curl -sf "$server_health" >/dev/null; then return 0; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then echo "docs test: the server died" >&2; exit 1; fi
    sleep 0.1
  done
  echo "docs test: no /_health from $server_health" >&2; exit 1
}
trap 'if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi' EXIT
"#,
    );
    for (kind, body, line) in blocks(text) {
        s.push_str(&format!("echo '--- {file}:{line}' >&2\n"));
        match kind {
            Kind::Run => s.push_str(&body),
            Kind::Stopped => {
                s.push_str("stop_server\n");
                s.push_str(&body);
            }
            Kind::Server => {
                let command = body.trim();
                assert!(
                    !command.contains('\n'),
                    "{file}:{line}: a server block holds one command"
                );
                let listen = command
                    .split_whitespace()
                    .skip_while(|w| *w != "--listen")
                    .nth(1)
                    .unwrap_or("127.0.0.1:3000")
                    .replace("localhost", "127.0.0.1");
                s.push_str(&format!("start_server {} {listen}\n", shell_quote(command)));
            }
            Kind::NoExec => {
                let known = COVERED_ELSEWHERE
                    .iter()
                    .any(|(cmd, _)| body.lines().any(|l| l.trim().starts_with(cmd)));
                assert!(
                    known,
                    "{file}:{line}: a noexec block not listed in COVERED_ELSEWHERE:\n{body}"
                );
            }
        }
    }
    s.push_str("stop_server\n");
    s
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
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

/// The Markdown files whose shell blocks are run.
fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    if let Ok(dir) = std::fs::read_dir(root.join("docs")) {
        let mut docs: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        docs.sort();
        files.extend(docs);
    }
    files
}

#[test]
fn every_shell_block_of_the_readme_and_the_docs_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin_dir = Path::new(common::server::bin())
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failures = Vec::new();
    for file in doc_files(root) {
        let name = file.strip_prefix(root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        for sub in ["lexicons", "queries", "feeds"] {
            copy_dir(&root.join(sub), &scratch.path().join(sub));
        }
        std::fs::copy(root.join("search.json"), scratch.path().join("search.json")).unwrap();
        std::fs::create_dir_all(scratch.path().join("tests")).unwrap();
        std::os::unix::fs::symlink(
            root.join("tests/fixtures"),
            scratch.path().join("tests/fixtures"),
        )
        .unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script(&name, &text))
            .current_dir(scratch.path())
            .env("PATH", &path)
            .env("LEXVIEW_LOG", "warn");
        for (k, _) in std::env::vars() {
            if k.starts_with("LEXVIEW_") && k != "LEXVIEW_LOG" {
                cmd.env_remove(k);
            }
        }
        let out = cmd.output().expect("run bash");
        if !out.status.success() {
            failures.push(format!(
                "{name}: exit {}\n--- stdout\n{}\n--- stderr\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_block_reader_finds_kinds_and_refuses_unknown_ones() {
    let text = "x\n```sh\necho a\n```\n```sh server\nlexview serve\n```\n```text\nout\n```\n```sh noexec\n./test.sh\n```\n";
    let b = blocks(text);
    assert_eq!(
        b.iter().map(|(k, _, _)| k).collect::<Vec<_>>(),
        vec![&Kind::Run, &Kind::Server, &Kind::NoExec]
    );
    assert_eq!(b[0].1, "echo a\n");
    let bad = std::panic::catch_unwind(|| blocks("```sh later\nx\n```\n"));
    assert!(bad.is_err());
}
