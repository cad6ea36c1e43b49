//! An outage of the DID directory delays commits; it never loses one.
//!
//! Two `lexview serve`s verify the same real PDS's firehose (signed
//! commits with Sync 1.1 proofs, from `@atproto/pds`): one resolves DIDs
//! through the PLC directory directly, the other through a proxy that is
//! down for the first 10 s and again mid-stream. Commits whose DID document
//! cannot be had then are not dropped: their repositories are resynced
//! once the directory answers, and handles checked once it does. At the
//! end both indexes hold the same records, links, counts and accounts.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::pds::Pds;
use common::proxy::Proxy;
use common::server::{sql, Server};
use serde_json::{json, Value};

fn strong_ref(r: &Value) -> Value {
    json!({"uri": r["uri"], "cid": r["cid"]})
}

/// `lexview serve` on the PDS's firehose from its first seq, verifying
/// every commit with DID documents from `plc`.
fn lexview(pds: &Pds, plc: &str, data: &std::path::Path) -> Server {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Server::start_full(
        &[&format!("{}?cursor=0", pds.firehose)],
        data,
        &root.join("lexicons"),
        &root.join("queries"),
        &[
            "--verify",
            "full",
            "--plc",
            plc,
            "--handle-resolver",
            &pds.url,
        ],
    )
}

/// The index as text, without what a resync legitimately sets otherwise
/// (a record's `rev` is its repository's at the snapshot).
fn dump(data: &std::path::Path) -> String {
    let mut out = String::new();
    for q in [
        "SELECT uri, cid, record::VARCHAR FROM records ORDER BY uri",
        "SELECT target, collection, path, n FROM link_counts ORDER BY ALL",
        "SELECT source_uri, path, target FROM links ORDER BY ALL",
        "SELECT did, handle, active, status FROM actors ORDER BY did",
        "SELECT count(*) AS resyncs_left FROM resyncs",
    ] {
        let (ok, stdout, stderr) = sql(data, q);
        assert!(ok, "sql failed: {stderr}");
        out.push_str(&stdout);
    }
    out
}

/// The handles `/xrpc/app.bsky.actor.getProfile` shows for `dids`.
fn handles(server: &Server, dids: &[&str]) -> Vec<String> {
    dids.iter()
        .map(|did| {
            let (_, body) = server.get(&format!("/xrpc/app.bsky.actor.getProfile?actor={did}"));
            body["handle"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn a_directory_outage_delays_commits_but_loses_none() {
    let mut pds = Pds::start();
    let plc = pds.plc.trim_start_matches("http://").to_string();
    let directory = Proxy::start(&plc, false);
    let clean_dir = tempfile::tempdir().unwrap();
    let outage_dir = tempfile::tempdir().unwrap();
    let clean = lexview(&pds, &pds.plc.clone(), clean_dir.path());
    let outage = lexview(&pds, &directory.url, outage_dir.path());
    let started = Instant::now();

    // While the directory is down: accounts, posts, replies, likes,
    // follows, a profile written twice, a delete.
    let now = "2026-11-24T12:00:00.000Z";
    let alice = pds.create_account("alice.test");
    let bob = pds.create_account("bob.test");
    let carol = pds.create_account("carol.test");
    let post = |pds: &mut Pds, did: &str, text: &str| {
        pds.cmd(
            json!({"op": "create", "did": did, "collection": "app.bsky.feed.post",
            "record": {"text": text, "createdAt": now}}),
        )
    };
    let like = |pds: &mut Pds, did: &str, subject: &Value| {
        pds.cmd(
            json!({"op": "create", "did": did, "collection": "app.bsky.feed.like",
            "record": {"subject": strong_ref(subject), "createdAt": now}}),
        )
    };
    let p1 = post(&mut pds, &alice, "first, during the outage");
    let p2 = post(&mut pds, &bob, "second, during the outage");
    pds.cmd(
        json!({"op": "create", "did": carol, "collection": "app.bsky.feed.post",
        "record": {"text": "a reply", "createdAt": now,
                   "reply": {"root": strong_ref(&p1), "parent": strong_ref(&p1)}}}),
    );
    like(&mut pds, &bob, &p1);
    let carol_like = like(&mut pds, &carol, &p1);
    like(&mut pds, &alice, &p2);
    pds.cmd(
        json!({"op": "create", "did": bob, "collection": "app.bsky.graph.follow",
        "record": {"subject": alice, "createdAt": now}}),
    );
    for name in ["Alice", "Alice B."] {
        pds.cmd(
            json!({"op": "put", "did": alice, "collection": "app.bsky.actor.profile",
            "rkey": "self", "record": {"displayName": name}}),
        );
    }
    let gone = post(&mut pds, &carol, "deleted during the outage");
    pds.cmd(
        json!({"op": "delete", "did": carol, "collection": "app.bsky.feed.post",
        "rkey": gone["rkey"]}),
    );

    // The directory comes back 10 s after the start.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    assert!(
        outage.counter("commits_deferred_total") > 0,
        "commits waited for the directory"
    );
    assert_eq!(outage.counter("commits_rejected_total"), 0);
    directory.set_up(true);
    std::thread::sleep(Duration::from_secs(2));

    // Down again mid-stream: an unlike, a delete of a liked post, new posts.
    directory.set_up(false);
    pds.cmd(
        json!({"op": "delete", "did": carol, "collection": "app.bsky.feed.like",
        "rkey": carol_like["rkey"]}),
    );
    pds.cmd(
        json!({"op": "delete", "did": bob, "collection": "app.bsky.feed.post",
        "rkey": p2["rkey"]}),
    );
    let p3 = post(&mut pds, &alice, "third, during the second outage");
    like(&mut pds, &carol, &p3);
    std::thread::sleep(Duration::from_secs(5));
    directory.set_up(true);

    // Both reach the PDS's last seq; the outage run's resyncs and handle
    // checks finish once the directory answers.
    let head = pds.cmd(json!({"op": "head"}))["seq"].as_i64().unwrap();
    clean.wait_for_cursor(head);
    outage.wait_for_cursor(head);
    outage.wait_for(Duration::from_secs(120), |h| h["resyncsPending"] == 0);
    let dids = [alice.as_str(), bob.as_str(), carol.as_str()];
    let want = handles(&clean, &dids);
    assert_eq!(want, ["alice.test", "bob.test", "carol.test"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while handles(&outage, &dids) != want {
        assert!(
            Instant::now() < deadline,
            "handles: {:?}",
            handles(&outage, &dids)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(outage.counter("commits_rejected_total"), 0);
    assert!(outage.counter("resyncs_done_total") > 0);
    assert!(clean.stop().success());
    assert!(outage.stop().success());

    let (want, got) = (dump(clean_dir.path()), dump(outage_dir.path()));
    assert!(want.contains("third, during the second outage"), "{want}");
    assert_eq!(
        got, want,
        "the outage run's index differs from the clean run's"
    );
}
