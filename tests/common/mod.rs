//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use lexview::lexicon::Catalog;

/// A file under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The lexicon catalog of a fixture directory; panics on any load error.
pub fn catalog(rel: &str) -> Arc<Catalog> {
    let (catalog, errors) = Catalog::load_dir(&fixture(rel)).expect("read lexicon dir");
    assert!(errors.is_empty(), "lexicon load errors: {errors:#?}");
    Arc::new(catalog)
}

/// The bundled lexicons of the product (`./lexicons`).
pub fn bundled_catalog() -> Arc<Catalog> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    let (catalog, errors) = Catalog::load_dir(&dir).expect("read lexicon dir");
    assert!(
        errors.is_empty(),
        "bundled lexicon load errors: {errors:#?}"
    );
    Arc::new(catalog)
}

/// The frames of a recorded frames file.
pub fn frames(rel: &str) -> Vec<Vec<u8>> {
    let data = std::fs::read(fixture(rel)).expect("read frames");
    let (frames, truncated) = lexview::source::replay::split_frames(&data);
    assert!(truncated.is_none());
    frames.into_iter().map(<[u8]>::to_vec).collect()
}

/// Readable diff of two multi-line strings: the first differing lines.
pub fn assert_lines_eq(expected: &str, got: &str) {
    if expected == got {
        return;
    }
    for (i, (e, g)) in expected.lines().zip(got.lines()).enumerate() {
        if e != g {
            panic!(
                "first difference at line {}:\n  expected: {e}\n       got: {g}",
                i + 1
            );
        }
    }
    panic!(
        "line counts differ: expected {} lines, got {}",
        expected.lines().count(),
        got.lines().count()
    );
}
pub mod jetstream;
pub mod pds;
pub mod proxy;
pub mod relay;
pub mod server;

/// Checks XRPC answers against the bundled lexicons with Bluesky's own
/// validator (`@atproto/lexicon`, run by `tests/harness/check-xrpc.mjs`);
/// panics naming every answer that does not conform. Needs the npm harness
/// (`tests/harness/setup.sh`).
pub fn assert_valid_outputs(answers: &[(&str, &serde_json::Value)]) {
    use std::io::Write;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new("node")
        .arg(root.join("tests/harness/check-xrpc.mjs"))
        .arg(root.join("lexicons"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node (Node.js >= 20) is needed to validate XRPC answers");
    {
        let mut stdin = child.stdin.take().unwrap();
        for (nsid, output) in answers {
            let line = serde_json::json!({"nsid": nsid, "output": output});
            writeln!(stdin, "{line}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "check-xrpc.mjs failed");
    let verdicts: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), answers.len(), "one verdict per answer");
    let bad: Vec<String> = answers
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v["ok"] != true)
        .map(|((nsid, output), v)| format!("{nsid}: {} in {output}", v["error"]))
        .collect();
    assert!(
        bad.is_empty(),
        "answers that fail their lexicon:\n{}",
        bad.join("\n")
    );
}

/// Checks the server's GraphQL schema with graphql-js (introspection,
/// `buildClientSchema`, `assertValidSchema`) and validates `operations`
/// against it (`tests/harness/gql-check.mjs`); panics with graphql-js's errors.
pub fn assert_graphql_conforms(url: &str, operations: &str) {
    use std::io::Write;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new("node")
        .arg(root.join("tests/harness/gql-check.mjs"))
        .arg(url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node (Node.js >= 20) is needed for the GraphQL conformance check");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(operations.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("gql-check.mjs printed no verdict ({e}): {out:?}"));
    assert_eq!(verdict["ok"], true, "graphql-js: {}", verdict["error"]);
}

/// The frames of a `subscribeRepos` stream from `?cursor=0` up to and
/// including seq `last` (e.g. a real PDS's, to replay with changes).
pub fn record_firehose(url: &str, last: i64) -> Vec<Vec<u8>> {
    use futures::StreamExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?cursor=0"))
            .await
            .expect("connect to the firehose");
        let mut frames = Vec::new();
        loop {
            let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                .await
                .expect("the firehose went quiet before the last seq")
                .expect("stream open")
                .expect("frame");
            if let tokio_tungstenite::tungstenite::Message::Binary(b) = msg {
                let seq = lexview::decode::frame::decode_frame(&b)
                    .expect("frame")
                    .seq();
                frames.push(b.to_vec());
                if seq.is_some_and(|s| s >= last) {
                    return frames;
                }
            }
        }
    })
}
