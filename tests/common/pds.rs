//! A real PLC and PDS (`@atproto/pds` from the npm registry) on loopback,
//! driven through `tests/harness/pds.mjs` one JSON line at a time.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

pub struct Pds {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub firehose: String,
    pub url: String,
    /// The in-memory PLC directory's URL.
    pub plc: String,
}

impl Pds {
    pub fn start() -> Pds {
        Pds::launch(false)
    }

    /// As [`Pds::start`], with the real Bluesky AppView (`@atproto/bsky` on
    /// an embedded Postgres) indexing the same PDS; ask it with
    /// [`Pds::appview`].
    pub fn start_with_appview() -> Pds {
        Pds::launch(true)
    }

    fn launch(appview: bool) -> Pds {
        let harness = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/harness");
        let status = Command::new(harness.join("setup.sh"))
            .status()
            .expect("run tests/harness/setup.sh");
        assert!(status.success(), "installing the PDS harness failed");
        let mut child = Command::new("node")
            .arg(harness.join("pds.mjs"))
            .env("LEXVIEW_APPVIEW", if appview { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (Node.js >= 20) is needed for the PDS tests");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready line");
        let ready: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad ready line {line:?}: {e}"));
        Pds {
            child,
            stdin,
            stdout,
            firehose: ready["firehose"].as_str().unwrap().to_string(),
            url: ready["pds"].as_str().unwrap().to_string(),
            plc: ready["plc"].as_str().unwrap().to_string(),
        }
    }

    /// `serve` flags that verify commits and handles against this PDS's
    /// PLC and the PDS itself.
    pub fn verify_args(&self) -> Vec<&str> {
        vec![
            "--verify",
            "full",
            "--plc",
            &self.plc,
            "--handle-resolver",
            &self.url,
        ]
    }

    /// Creates an account; returns its DID.
    pub fn create_account(&mut self, handle: &str) -> String {
        let out = self.cmd(serde_json::json!({"op": "createAccount", "handle": handle}));
        out["did"].as_str().expect("a DID").to_string()
    }

    /// The AppView's answer (status, body) to `GET path`.
    pub fn appview(&mut self, path: &str) -> (u16, Value) {
        let out = self.cmd(serde_json::json!({"op": "appview", "path": path}));
        (out["status"].as_u64().unwrap() as u16, out["body"].clone())
    }

    /// Sends one command and returns its answer; panics if it failed.
    pub fn cmd(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let out: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad answer {line:?}: {e}"));
        assert_eq!(out["ok"], true, "{cmd} failed: {out}");
        out
    }
}

impl Drop for Pds {
    fn drop(&mut self) {
        // SIGTERM first, so the harness stops what it started (the
        // AppView's Postgres runs as its own process), then SIGKILL.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
