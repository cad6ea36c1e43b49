//! `lexview backfill` from a real PDS (listRepos + getRepo, commits verified
//! against the in-memory PLC) gives exactly the index the live stream gave,
//! and a second run resumes (skips what is done) without changing it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::pds::Pds;
use common::server::{bin, sql, Server};
use serde_json::json;

/// The index, without `records.rev`: a live record carries the rev of the
/// commit that wrote it, a backfilled one the rev of the snapshot it came
/// from (a repository does not say which commit wrote each record). That
/// difference is on purpose; `revs` checks it.
fn dump(data: &Path) -> String {
    let mut out = String::new();
    for q in [
        "SELECT uri, cid, record::VARCHAR FROM records ORDER BY uri",
        "SELECT source_uri, path, target FROM links ORDER BY ALL",
        "SELECT target, collection, path, n FROM link_counts ORDER BY ALL",
        "SELECT uri, reason FROM quarantine ORDER BY ALL",
    ] {
        let (ok, stdout, stderr) = sql(data, q);
        assert!(ok, "sql failed: {stderr}");
        out.push_str(&stdout);
    }
    out
}

fn backfill(pds: &Pds, data: &Path) -> String {
    let lexicons = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    let out = Command::new(bin())
        .args([
            "backfill", "--host", &pds.url, "--verify", "full", "--plc", &pds.plc,
        ])
        .args([
            "--data",
            data.to_str().unwrap(),
            "--lexicons",
            lexicons.to_str().unwrap(),
        ])
        .env("LEXVIEW_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "backfill failed: {stderr}");
    stderr + &String::from_utf8_lossy(&out.stdout)
}

#[test]
fn a_backfill_from_the_pds_equals_the_live_index_and_resumes() {
    let mut pds = Pds::start();
    let live = tempfile::tempdir().unwrap();
    let lexicons = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    let server = Server::start(
        &[&format!("{}?cursor=0", pds.firehose)],
        live.path(),
        &lexicons,
    );

    let alice = pds.cmd(json!({"op": "createAccount", "handle": "alice.test"}))["did"].clone();
    let bob = pds.cmd(json!({"op": "createAccount", "handle": "bob.test"}))["did"].clone();
    let now = "2026-11-24T12:00:00.000Z";
    let post = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
        "record": {"text": "backfilled or live, the same", "createdAt": now}}),
    );
    let gone = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
        "record": {"text": "soon deleted", "createdAt": now}}),
    );
    pds.cmd(
        json!({"op": "create", "did": bob, "collection": "app.bsky.feed.like",
        "record": {"subject": {"uri": post["uri"], "cid": post["cid"]}, "createdAt": now}}),
    );
    pds.cmd(
        json!({"op": "create", "did": bob, "collection": "app.bsky.graph.follow",
        "record": {"subject": alice, "createdAt": now}}),
    );
    pds.cmd(
        json!({"op": "put", "did": bob, "collection": "app.bsky.actor.profile", "rkey": "self",
        "record": {"displayName": "Bob"}}),
    );
    pds.cmd(
        json!({"op": "put", "did": bob, "collection": "app.bsky.actor.profile", "rkey": "self",
        "record": {"displayName": "Bob B."}}),
    );
    pds.cmd(
        json!({"op": "create", "did": bob, "collection": "xyz.statusphere.status",
        "record": {"status": "not one grapheme", "createdAt": now}}),
    );
    let last = pds.cmd(
        json!({"op": "delete", "did": alice, "collection": "app.bsky.feed.post",
        "rkey": gone["rkey"]}),
    );
    server.wait_for_cursor(last["seq"].as_i64().unwrap());
    assert!(server.stop().success());
    let expected = dump(live.path());
    assert!(expected.contains("backfilled or live"), "{expected}");

    let filled = tempfile::tempdir().unwrap();
    let log = backfill(&pds, filled.path());
    assert!(
        log.contains("backfilled 2 repositories (0 failed)"),
        "{log}"
    );
    common::assert_lines_eq(&expected, &dump(filled.path()));

    let (ok, revs, _) = sql(
        filled.path(),
        "SELECT count(*) FROM records r JOIN backfill_repos b USING (did) WHERE r.rev <> b.rev",
    );
    assert!(
        ok && revs.lines().nth(2).map(str::trim) == Some("0"),
        "{revs}"
    );

    // Again: nothing to do, nothing changed.
    let log = backfill(&pds, filled.path());
    assert!(
        log.contains("2 already backfilled at their current rev"),
        "{log}"
    );
    assert!(
        log.contains("backfilled 0 repositories (0 failed)"),
        "{log}"
    );
    common::assert_lines_eq(&expected, &dump(filled.path()));

    // Audit: both indexes match each repository (the PDS found through the
    // DID document in the PLC)...
    let plc = pds.plc.clone();
    let audit = |did: &serde_json::Value, data: &Path| {
        let out = Command::new(bin())
            .args(["audit", did.as_str().unwrap(), "--plc", &plc])
            .args([
                "--data",
                data.to_str().unwrap(),
                "--lexicons",
                lexicons.to_str().unwrap(),
            ])
            .env("LEXVIEW_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    for did in [&alice, &bob] {
        for data in [live.path(), filled.path()] {
            let (ok, report) = audit(did, data);
            assert!(ok && report.contains(": 0 differences"), "{report}");
        }
    }
    // ...and report what changed in a repository since.
    let late = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
        "record": {"text": "written while nothing was indexing", "createdAt": now}}),
    );
    pds.cmd(json!({"op": "delete", "did": alice, "collection": "app.bsky.feed.post", "rkey": post["rkey"]}));
    let (ok, report) = audit(&alice, live.path());
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!("missing  {}", late["uri"].as_str().unwrap())),
        "{report}"
    );
    assert!(
        report.contains(&format!("extra    {}", post["uri"].as_str().unwrap())),
        "{report}"
    );
    assert!(report.contains(": 2 differences"), "{report}");
    // A backfill catches up with alice's new rev (only hers) and the audit is clean.
    let log = backfill(&pds, filled.path());
    assert!(
        log.contains("1 already backfilled") && log.contains("backfilled 1 repositories"),
        "{log}"
    );
    let (ok, report) = audit(&alice, filled.path());
    assert!(ok && report.contains(": 0 differences"), "{report}");
}
