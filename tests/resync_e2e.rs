//! Resync through a real PDS: a relay that lost one commit (a delete) breaks
//! the repository's chain; lexview notices at the next commit (its
//! `prevData` is not the last data seen), fetches the repository from the
//! PDS its DID document names, and ends with exactly what the PDS holds,
//! the cursor moving past the gap only once the snapshot is applied.

mod common;

use std::path::PathBuf;

use common::pds::Pds;
use common::server::Server;
use serde_json::{json, Value};

fn seq_of(frame: &[u8]) -> Option<i64> {
    lexview::decode::frame::decode_frame(frame).ok()?.seq()
}

#[test]
fn a_lost_commit_is_recovered_by_a_resync_from_the_pds() {
    let mut pds = Pds::start();
    let alice = pds.create_account("alice.test");
    let bob = pds.create_account("bob.test");
    let now = "2026-11-24T12:00:00.000Z";
    let post = |pds: &mut Pds, text: &str| {
        pds.cmd(
            json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
            "record": {"text": text, "createdAt": now}}),
        )
    };
    let first = post(&mut pds, "first, deleted while the relay was not looking");
    let second = post(&mut pds, "second");
    let lost = pds.cmd(
        json!({"op": "delete", "did": alice, "collection": "app.bsky.feed.post",
        "rkey": first["rkey"]}),
    );
    let third = post(&mut pds, "third");
    let like = pds.cmd(
        json!({"op": "create", "did": bob, "collection": "app.bsky.feed.like",
        "record": {"subject": {"uri": second["uri"], "cid": second["cid"]}, "createdAt": now}}),
    );
    let last = like["seq"].as_i64().unwrap();

    let frames = common::record_firehose(&pds.firehose, last);
    let lost_seq = lost["seq"].as_i64().unwrap();

    let n = frames.len();
    let kept: Vec<Vec<u8>> = frames
        .into_iter()
        .filter(|f| seq_of(f) != Some(lost_seq))
        .collect();
    assert_eq!(kept.len(), n - 1, "the delete's frame is left out");
    let relay = common::relay::start(kept, usize::MAX);

    let data = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let server = Server::start_full(
        &[&relay.url],
        data.path(),
        &root.join("lexicons"),
        &root.join("queries"),
        &pds.verify_args(),
    );
    // The cursor reaches the last seq, and the resync is done (the event
    // that asked for it went out with its cursor; the resync is durable).
    server.wait_for_cursor(last);
    server.wait_for(std::time::Duration::from_secs(60), |h| {
        h["resyncsPending"] == 0
    });
    let (status, body) = server.get(&format!(
        "/xrpc/com.atproto.repo.listRecords?repo={alice}&collection=app.bsky.feed.post"
    ));
    assert_eq!(status, 200, "{body}");
    let uris: Vec<&str> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    assert_eq!(
        uris,
        vec![
            third["uri"].as_str().unwrap(),
            second["uri"].as_str().unwrap()
        ],
        "the deleted post is gone, the others stay"
    );
    // Bob's like came after the gap and counts once.
    let (_, posts) = server.get(&format!(
        "/xrpc/app.bsky.feed.getPosts?uris={}",
        second["uri"].as_str().unwrap()
    ));
    assert_eq!(posts["posts"][0]["likeCount"], 1, "{posts}");
    let answers: Vec<(&str, &Value)> = vec![
        ("com.atproto.repo.listRecords", &body),
        ("app.bsky.feed.getPosts", &posts),
    ];
    common::assert_valid_outputs(&answers);

    assert_eq!(server.counter("resyncs_requested_total"), 1);
    assert_eq!(server.counter("resyncs_done_total"), 1);
    assert_eq!(server.counter("resyncs_failed_total"), 0);
    assert_eq!(server.counter("commits_rejected_total"), 0);
    assert!(server.stop().success());

    // Nothing pending, and the index is the repository, exactly.
    let (ok, out, err) = common::server::sql(data.path(), "SELECT count(*) AS n FROM resyncs");
    assert!(ok, "{err}");
    assert_eq!(out.lines().nth(2).map(str::trim), Some("0"), "{out}");
    let audit = common::server::command(
        &["audit", &alice, "--host", &pds.url],
        data.path(),
        &root.join("lexicons"),
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    assert!(stdout.contains(": 0 differences"), "{stdout}");
}
