//! Runs the real `lexview` binary on a loopback port for a test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lexview")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `lexview serve`.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub data: PathBuf,
}

impl Server {
    pub fn start(sources: &[&str], data: &Path, lexicons: &Path) -> Server {
        let queries = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries");
        Server::start_with(sources, data, lexicons, &queries)
    }

    /// As [`Server::start`], with SQL query methods from `queries`.
    pub fn start_with(sources: &[&str], data: &Path, lexicons: &Path, queries: &Path) -> Server {
        Server::start_full(sources, data, lexicons, queries, &[])
    }

    /// As [`Server::start_with`], with more `serve` flags.
    pub fn start_full(
        sources: &[&str],
        data: &Path,
        lexicons: &Path,
        queries: &Path,
        extra: &[&str],
    ) -> Server {
        let port = free_port();
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .args([
                "--data",
                data.to_str().unwrap(),
                "--lexicons",
                lexicons.to_str().unwrap(),
                "--queries",
                queries.to_str().unwrap(),
                "--feeds",
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("feeds")
                    .to_str()
                    .unwrap(),
                "--search-config",
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("search.json")
                    .to_str()
                    .unwrap(),
            ])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--batch-ms", "50"])
            .env(
                "LEXVIEW_LOG",
                std::env::var("TEST_LEXVIEW_LOG").unwrap_or("info".into()),
            )
            // Nothing leaves loopback: a DID lookup (for a resync) that a
            // test does not point at its own PLC fails at once.
            .env("LEXVIEW_PLC", "http://127.0.0.1:9")
            // The tests' PDSes (named by their DID documents) are plain
            // HTTP on loopback.
            .env("LEXVIEW_UNSAFE_ALLOW_PRIVATE_HOSTS", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for s in sources {
            cmd.args(["--source", s]);
        }
        cmd.args(extra);
        let child = cmd.spawn().expect("spawn lexview");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            data: data.to_path_buf(),
        };
        server.wait_for(Duration::from_secs(30), |h| h["status"] == "ok");
        server
    }

    /// Sends SIGHUP (reload lexicons, query methods and feeds).
    pub fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let resp = reqwest::blocking::get(format!("{}{}", self.base, path)).expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    pub fn graphql(&self, query: &str) -> Value {
        let client = reqwest::blocking::Client::new();
        client
            .post(format!("{}/graphql", self.base))
            .json(&serde_json::json!({ "query": query }))
            .send()
            .expect("POST /graphql")
            .json()
            .expect("json")
    }

    pub fn health(&self) -> Option<Value> {
        reqwest::blocking::get(format!("{}/_health", self.base))
            .ok()?
            .json()
            .ok()
    }

    /// Polls `/_health` until `pred` holds.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(h) = self.health() {
                if pred(&h) {
                    return h;
                }
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting; last health: {:?}",
                self.health()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A counter from `/metrics`.
    pub fn counter(&self, name: &str) -> u64 {
        let text = reqwest::blocking::get(format!("{}/metrics", self.base))
            .expect("GET /metrics")
            .text()
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("lexview_{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    }

    /// Waits until the source's committed cursor reaches `seq`.
    pub fn wait_for_cursor(&self, seq: i64) -> Value {
        self.wait_for(Duration::from_secs(60), |h| {
            h["sources"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["cursor"].as_i64().is_some_and(|c| c >= seq))
            })
        })
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        send_signal(self.child.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "lexview did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(mut self) {
        send_signal(self.child.id(), "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}

/// `lexview <args> --data DATA --lexicons LEXICONS`, logging warnings only.
pub fn command(args: &[&str], data: &Path, lexicons: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .arg("--data")
        .arg(data)
        .arg("--lexicons")
        .arg(lexicons)
        .env("LEXVIEW_LOG", "warn")
        .env("LEXVIEW_UNSAFE_ALLOW_PRIVATE_HOSTS", "true");
    cmd
}

/// `lexview sql` against a stopped server's store.
pub fn sql(data: &Path, query: &str) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(["sql", query, "--data", data.to_str().unwrap()])
        .output()
        .expect("run sql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
