//! Peer agreement: lexview and the real Bluesky AppView (`@atproto/bsky`,
//! on an embedded Postgres, both indexing the same real PDS) give the same
//! answers for the same scenario.
//!
//! Compared are the fields both produce, after dropping what differs on
//! purpose or by nature: timestamps of indexing (`indexedAt`), viewer state
//! (no viewer here, so the AppView's `viewer` is empty), `labels` (lexview
//! has no labelers), and the AppView's `associated` block (list, feed,
//! starter-pack and labeler counts and the notification declaration: records
//! lexview does not index), and `bookmarkCount` (bookmarks are private: the
//! AppView keeps them in its bsync service, no repository holds them). Each
//! compared answer is listed in `cases`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::pds::Pds;
use common::server::Server;
use serde_json::{json, Value};

/// Drops the keys that differ on purpose (see the module doc), recursively.
fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "indexedAt"
                            | "viewer"
                            | "labels"
                            | "associated"
                            | "bookmarkCount"
                            | "cursor"
                    )
                })
                .map(|(k, v)| (k.clone(), normalise(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        _ => v.clone(),
    }
}

#[test]
fn answers_equal_the_bluesky_appview() {
    let mut pds = Pds::start_with_appview();
    let data = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let server = Server::start_full(
        &[&format!("{}?cursor=0", pds.firehose)],
        data.path(),
        &root.join("lexicons"),
        &root.join("queries"),
        &pds.verify_args(),
    );

    let alice = pds.create_account("alice.test");
    let bob = pds.create_account("bob.test");
    let carol = pds.create_account("carol.test");
    // Each record a second later than the one before: the AppView orders
    // lists by the records' times (ties broken by CID), lexview by record
    // key, and the two agree when times follow the writes.
    let mut clock = 0;
    let mut now = || {
        clock += 1;
        format!("2026-11-24T12:00:{clock:02}.000Z")
    };
    let post = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
        "record": {"text": "a post for the peers", "createdAt": now(), "langs": ["en"]}}),
    );
    let root_ref = json!({"uri": post["uri"], "cid": post["cid"]});
    let reply = pds.cmd(json!({"op": "create", "did": bob, "collection": "app.bsky.feed.post",
        "record": {"text": "a reply", "createdAt": now(), "reply": {"root": root_ref, "parent": root_ref}}}));
    for who in [&bob, &carol] {
        pds.cmd(
            json!({"op": "create", "did": who, "collection": "app.bsky.feed.like",
            "record": {"subject": root_ref, "createdAt": now()}}),
        );
        pds.cmd(
            json!({"op": "create", "did": who, "collection": "app.bsky.graph.follow",
            "record": {"subject": alice, "createdAt": now()}}),
        );
    }
    // The root's author likes the reply: the thread's `rootAuthorLike`.
    let reply_ref = json!({"uri": reply["uri"], "cid": reply["cid"]});
    pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.like",
        "record": {"subject": reply_ref, "createdAt": now()}}),
    );
    pds.cmd(
        json!({"op": "create", "did": carol, "collection": "app.bsky.feed.repost",
        "record": {"subject": root_ref, "createdAt": now()}}),
    );
    let last = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.graph.follow",
        "record": {"subject": bob, "createdAt": now()}}),
    );
    server.wait_for_cursor(last["seq"].as_i64().unwrap());

    let (p, r) = (
        post["uri"].as_str().unwrap(),
        reply["uri"].as_str().unwrap(),
    );
    let cases = [
        format!("/xrpc/app.bsky.feed.getLikes?uri={p}"),
        format!("/xrpc/app.bsky.feed.getRepostedBy?uri={p}"),
        format!("/xrpc/app.bsky.feed.getPosts?uris={p}&uris={r}"),
        format!("/xrpc/app.bsky.feed.getPostThread?uri={p}"),
        format!("/xrpc/app.bsky.feed.getAuthorFeed?actor={bob}"),
        format!("/xrpc/app.bsky.actor.getProfile?actor={alice}"),
        format!("/xrpc/app.bsky.graph.getFollowers?actor={alice}"),
        format!("/xrpc/app.bsky.graph.getFollows?actor={alice}"),
    ];
    // The AppView indexes asynchronously: wait until it agrees, or report
    // the last difference.
    let start = Instant::now();
    let mut pending: Vec<&String> = cases.iter().collect();
    while !pending.is_empty() {
        let mut diffs = Vec::new();
        pending.retain(|path| {
            let (ours_status, ours) = server.get(path);
            let (theirs_status, theirs) = pds.appview(path);
            let (ours, theirs) = (normalise(&ours), normalise(&theirs));
            if (ours_status, &ours) == (theirs_status, &theirs) {
                return false;
            }
            diffs.push(format!(
                "{path}\nlexview ({ours_status}): {ours:#}\nAppView ({theirs_status}): {theirs:#}"
            ));
            true
        });
        if !diffs.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{} answers differ after 60 s:\n{}",
                diffs.len(),
                diffs.join("\n\n")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert!(server.stop().success());
}
