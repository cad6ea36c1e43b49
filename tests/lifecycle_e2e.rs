//! Account lifecycle and identity through a real PDS: deactivation, takedown,
//! reactivation, deletion and a handle change each reach every answer, count
//! and search result.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::pds::Pds;
use common::server::Server;
use serde_json::{json, Value};

/// The answers that change with alice's and carol's state.
struct View {
    likes: usize,
    like_count: i64,
    followers: i64,
    search: i64,
}

fn view(server: &Server, post: &str, bob: &str, answers: &mut Vec<(&'static str, Value)>) -> View {
    let (status, likes) = server.get(&format!("/xrpc/app.bsky.feed.getLikes?uri={post}"));
    assert_eq!(status, 200, "{likes}");
    let (_, posts) = server.get(&format!("/xrpc/app.bsky.feed.getPosts?uris={post}"));
    let (_, profile) = server.get(&format!("/xrpc/app.bsky.actor.getProfile?actor={bob}"));
    let (_, search) = server.get("/xrpc/dev.lexview.search.searchRecords?q=bergwanderung");
    let v = View {
        likes: likes["likes"].as_array().unwrap().len(),
        like_count: posts["posts"][0]["likeCount"].as_i64().unwrap(),
        followers: profile["followersCount"].as_i64().unwrap(),
        search: search["hitsTotal"].as_i64().unwrap(),
    };
    answers.push(("app.bsky.feed.getLikes", likes));
    answers.push(("app.bsky.feed.getPosts", posts));
    answers.push(("app.bsky.actor.getProfile", profile));
    answers.push(("dev.lexview.search.searchRecords", search));
    v
}

/// Polls until `check` holds for the view (search commits on a timer).
fn eventually(
    server: &Server,
    post: &str,
    bob: &str,
    answers: &mut Vec<(&'static str, Value)>,
    want: (usize, i64, i64, i64),
) {
    let start = Instant::now();
    loop {
        let v = view(server, post, bob, answers);
        let got = (v.likes, v.like_count, v.followers, v.search);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "got {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn account_status_and_handle_changes_reach_every_answer() {
    let mut pds = Pds::start();
    let data = tempfile::tempdir().unwrap();
    let lexicons = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    // With every commit verified against the in-memory PLC's DID documents
    // (legacy key format), through the handle change's #identity too.
    let queries = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries");
    let server = Server::start_full(
        &[&format!("{}?cursor=0", pds.firehose)],
        data.path(),
        &lexicons,
        &queries,
        &pds.verify_args(),
    );
    let mut answers: Vec<(&'static str, Value)> = Vec::new();

    let alice = pds.create_account("alice.test");
    let bob = pds.create_account("bob.test");
    let carol = pds.create_account("carol.test");
    let now = "2026-11-24T12:00:00.000Z";
    let post = pds.cmd(
        json!({"op": "create", "did": bob, "collection": "app.bsky.feed.post",
        "record": {"text": "a post to like", "createdAt": now}}),
    );
    let subject = json!({"uri": post["uri"], "cid": post["cid"]});
    for who in [&alice, &carol] {
        pds.cmd(
            json!({"op": "create", "did": who, "collection": "app.bsky.feed.like",
            "record": {"subject": subject, "createdAt": now}}),
        );
        pds.cmd(
            json!({"op": "create", "did": who, "collection": "app.bsky.graph.follow",
            "record": {"subject": bob, "createdAt": now}}),
        );
    }
    let alices = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
        "record": {"text": "Bergwanderung am Sonntag", "createdAt": now}}),
    );
    server.wait_for_cursor(alices["seq"].as_i64().unwrap());
    let uri = post["uri"].as_str().unwrap().to_string();
    eventually(&server, &uri, &bob, &mut answers, (2, 2, 2, 1));

    // Deactivated: alice's like, follow and post leave every answer.
    let r = pds.cmd(json!({"op": "deactivate", "did": alice}));
    assert_eq!(r["ok"], true, "{r}");
    server.wait_for_cursor(r["seq"].as_i64().unwrap());
    eventually(&server, &uri, &bob, &mut answers, (1, 1, 1, 0));
    let (status, body) = server.get("/xrpc/app.bsky.actor.getProfile?actor=alice.test");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("AccountDeactivated")),
        "{body}"
    );
    let (status, body) = server.get(&format!(
        "/xrpc/com.atproto.repo.getRecord?repo={alice}&collection=app.bsky.feed.post&rkey={}",
        alices["rkey"].as_str().unwrap()
    ));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("RecordNotFound")),
        "{body}"
    );

    // Reactivated: all of it is back, counted once.
    let r = pds.cmd(json!({"op": "activate", "did": alice}));
    server.wait_for_cursor(r["seq"].as_i64().unwrap());
    eventually(&server, &uri, &bob, &mut answers, (2, 2, 2, 1));
    let (status, body) = server.get("/xrpc/app.bsky.actor.getProfile?actor=alice.test");
    assert_eq!(status, 200, "{body}");

    // A takedown hides carol; lifting it restores her.
    let r = pds.cmd(json!({"op": "takedown", "did": carol, "applied": true}));
    assert_eq!(r["ok"], true, "{r}");
    server.wait_for_cursor(r["seq"].as_i64().unwrap());
    eventually(&server, &uri, &bob, &mut answers, (1, 1, 1, 1));
    let (status, body) = server.get(&format!("/xrpc/app.bsky.actor.getProfile?actor={carol}"));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("AccountTakedown")),
        "{body}"
    );
    let r = pds.cmd(json!({"op": "takedown", "did": carol, "applied": false}));
    server.wait_for_cursor(r["seq"].as_i64().unwrap());
    eventually(&server, &uri, &bob, &mut answers, (2, 2, 2, 1));

    // A handle change reaches the answers that carry handles.
    let r = pds.cmd(json!({"op": "updateHandle", "did": bob, "handle": "robert.test"}));
    assert_eq!(r["ok"], true, "{r}");
    server.wait_for_cursor(r["seq"].as_i64().unwrap());
    let (_, profile) = server.get(&format!("/xrpc/app.bsky.actor.getProfile?actor={bob}"));
    assert_eq!(profile["handle"], "robert.test", "{profile}");
    let (_, posts) = server.get(&format!("/xrpc/app.bsky.feed.getPosts?uris={uri}"));
    assert_eq!(
        posts["posts"][0]["author"]["handle"], "robert.test",
        "{posts}"
    );
    let (status, _) = server.get("/xrpc/app.bsky.actor.getProfile?actor=robert.test");
    assert_eq!(status, 200);
    answers.push(("app.bsky.actor.getProfile", profile));
    answers.push(("app.bsky.feed.getPosts", posts));

    // Deleted: alice's records, links, counts and search documents are gone.
    let r = pds.cmd(json!({"op": "deleteAccount", "did": alice}));
    assert_eq!(r["ok"], true, "{r}");
    server.wait_for_cursor(r["seq"].as_i64().unwrap());
    eventually(&server, &uri, &bob, &mut answers, (1, 1, 1, 0));
    let (_, body) = server.get(&format!(
        "/xrpc/com.atproto.repo.listRecords?repo={alice}&collection=app.bsky.feed.like"
    ));
    assert_eq!(body["records"], json!([]), "{body}");
    let (status, body) = server.get(&format!(
        "/xrpc/blue.microcosm.links.getBacklinksCount?subject={bob}&source=app.bsky.graph.follow:subject"
    ));
    assert_eq!((status, &body["total"]), (200, &json!(1)), "{body}");

    let refs: Vec<(&str, &Value)> = answers.iter().map(|(n, v)| (*n, v)).collect();
    common::assert_valid_outputs(&refs);

    let counter = |name: &str| server.counter(name);
    assert!(counter("commits_verified_total") >= 6);
    assert_eq!(counter("commits_rejected_total"), 0);
    // Each reactivation (alice's, carol's lifted takedown) refetched the
    // repository, in case commits were dropped while it was inactive.
    assert!(counter("resyncs_done_total") >= 2);
    // Every handle (alice, bob, carol, and bob's new one) checked both ways.
    assert!(counter("handles_verified_total") >= 4);
    assert_eq!(counter("handles_invalid_total"), 0);
    assert_eq!(counter("resyncs_failed_total"), 0);
}
