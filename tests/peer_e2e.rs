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
//!
//! The scenario has every kind of embed: images, an external card with a
//! thumbnail, a quote, a quote with a video (of a post that itself quotes,
//! so the view goes two levels down) and a quote of a deleted post. Image
//! and video URLs follow the AppView's development config
//! (`https://bsky.public.url`, without production's `@jpeg`), which lexview
//! is told through its URL flags.
//!
//! Blocks and post gates: alice blocks dave after dave replied to her (and
//! bob replied to dave), so threads and feeds show blockedPost placeholders
//! and leave dave's reply out of alice's thread; dave's quote of alice is a
//! viewBlocked; a postgate detaches carol's quote of alice's post, and
//! another forbids quotes (made before bob quotes that post: the AppView
//! applies that rule when it indexes the quote).
//!
//! Thread gates: a followers-only thread (bob follows alice, erin does
//! not), a mentions-only thread (erin mentioned, bob not) and a thread
//! nobody may reply to; each gate is made before the replies, since the
//! AppView decides a reply's fate when it indexes it.

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

/// Waits until the AppView has indexed the record `created` (its
/// `com.atproto.repo.getRecord` answers from its own index). The AppView
/// indexes repositories concurrently, behind the PDS, and decides thread
/// and post gates when it indexes the reply or quote, so a gate must be in
/// before what it governs is written.
fn wait_for_appview(pds: &mut Pds, created: &Value) {
    let uri = created["uri"].as_str().unwrap();
    let parts: Vec<&str> = uri.trim_start_matches("at://").split('/').collect();
    let path = format!(
        "/xrpc/com.atproto.repo.getRecord?repo={}&collection={}&rkey={}",
        parts[0], parts[1], parts[2]
    );
    let start = Instant::now();
    while pds.appview(&path).0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the AppView did not index {uri} in 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn answers_equal_the_bluesky_appview() {
    let mut pds = Pds::start_with_appview();
    let data = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut args = pds.verify_args();
    args.extend([
        "--image-url",
        "https://bsky.public.url/img/{preset}/plain/{did}/{cid}",
        "--video-playlist-url",
        "https://bsky.public.url/vid/{did}/{cid}/playlist.m3u8",
        "--video-thumbnail-url",
        "https://bsky.public.url/vid/{did}/{cid}/thumbnail.jpg",
    ]);
    let server = Server::start_full(
        &[&format!("{}?cursor=0", pds.firehose)],
        data.path(),
        &root.join("lexicons"),
        &root.join("queries"),
        &args,
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

    // Embeds of every kind.
    const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";
    let mut upload = |did: &str, base64: &str, mime: &str| {
        pds.cmd(json!({"op": "uploadBlob", "did": did, "base64": base64, "mimeType": mime}))["blob"]
            .clone()
    };
    let picture = upload(&alice, PNG, "image/png");
    let thumb = upload(&bob, PNG, "image/png");
    // Not a real video: the PDS keeps the declared type of bytes it cannot sniff.
    let clip = upload(&bob, "bm90IHJlYWxseSBhIHZpZGVv", "video/mp4");
    let strong = |r: &Value| json!({"uri": r["uri"], "cid": r["cid"]});
    let images = pds.cmd(json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
        "record": {"text": "a picture", "createdAt": now(), "embed": {"$type": "app.bsky.embed.images",
            "images": [{"image": picture, "alt": "one pixel", "aspectRatio": {"width": 1, "height": 1}}]}}}));
    let card = pds.cmd(json!({"op": "create", "did": bob, "collection": "app.bsky.feed.post",
        "record": {"text": "a link", "createdAt": now(), "embed": {"$type": "app.bsky.embed.external",
            "external": {"uri": "https://example.com/article", "title": "An article",
                         "description": "About things", "thumb": thumb}}}}));
    let quote = pds.cmd(
        json!({"op": "create", "did": carol, "collection": "app.bsky.feed.post",
        "record": {"text": "quoting alice", "createdAt": now(),
            "embed": {"$type": "app.bsky.embed.record", "record": root_ref}}}),
    );
    // carol pins her quote: with includePins her author feed leads with it,
    // whatever the filter, and does not show it again below.
    pds.cmd(
        json!({"op": "create", "did": carol, "collection": "app.bsky.actor.profile", "rkey": "self",
        "record": {"displayName": "Carol", "pinnedPost": strong(&quote)}}),
    );
    let quote_media = pds.cmd(
        json!({"op": "create", "did": bob, "collection": "app.bsky.feed.post",
        "record": {"text": "quoting a quote, with a clip", "createdAt": now(),
            "embed": {"$type": "app.bsky.embed.recordWithMedia",
                "record": {"$type": "app.bsky.embed.record", "record": strong(&quote)},
                "media": {"$type": "app.bsky.embed.video", "video": clip, "alt": "a clip",
                          "aspectRatio": {"width": 16, "height": 9}}}}}),
    );
    let doomed = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
        "record": {"text": "soon gone", "createdAt": now()}}),
    );
    let orphan = pds.cmd(
        json!({"op": "create", "did": carol, "collection": "app.bsky.feed.post",
        "record": {"text": "quoting what will be deleted", "createdAt": now(),
            "embed": {"$type": "app.bsky.embed.record", "record": strong(&doomed)}}}),
    );
    pds.cmd(
        json!({"op": "delete", "did": alice, "collection": "app.bsky.feed.post",
        "rkey": doomed["rkey"]}),
    );

    // Blocks and post gates.
    let dave = pds.create_account("dave.test");
    let dave_reply = pds.cmd(json!({"op": "create", "did": dave, "collection": "app.bsky.feed.post",
        "record": {"text": "dave replies", "createdAt": now(), "reply": {"root": root_ref, "parent": root_ref}}}));
    let under_dave = pds.cmd(
        json!({"op": "create", "did": bob, "collection": "app.bsky.feed.post",
        "record": {"text": "bob answers dave", "createdAt": now(),
            "reply": {"root": root_ref, "parent": strong(&dave_reply)}}}),
    );
    pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.graph.block",
        "record": {"subject": dave, "createdAt": now()}}),
    );
    let dave_quote = pds.cmd(
        json!({"op": "create", "did": dave, "collection": "app.bsky.feed.post",
        "record": {"text": "dave quotes a picture", "createdAt": now(),
            "embed": {"$type": "app.bsky.embed.record", "record": strong(&images)}}}),
    );
    pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.postgate",
        "rkey": post["rkey"], "record": {"post": post["uri"], "createdAt": now(),
            "detachedEmbeddingUris": [quote["uri"]]}}),
    );
    let unquotable = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
        "record": {"text": "no quotes please", "createdAt": now()}}),
    );
    let no_quotes = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.postgate",
        "rkey": unquotable["rkey"], "record": {"post": unquotable["uri"], "createdAt": now(),
            "embeddingRules": [{"$type": "app.bsky.feed.postgate#disableRule"}]}}),
    );
    wait_for_appview(&mut pds, &no_quotes);
    let gated_quote = pds.cmd(
        json!({"op": "create", "did": bob, "collection": "app.bsky.feed.post",
        "record": {"text": "bob quotes anyway", "createdAt": now(),
            "embed": {"$type": "app.bsky.embed.record", "record": strong(&unquotable)}}}),
    );

    // Thread gates.
    let erin = pds.create_account("erin.test");
    let mut gated_thread = |text: &str, facets: Value, allow: Value, repliers: &[&str]| {
        let root = pds.cmd(
            json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
            "record": {"text": text, "facets": facets, "createdAt": now()}}),
        );
        let gate = pds.cmd(json!({"op": "create", "did": alice, "collection": "app.bsky.feed.threadgate",
            "rkey": root["rkey"], "record": {"post": root["uri"], "allow": allow, "createdAt": now()}}));
        wait_for_appview(&mut pds, &gate);
        let replies: Vec<Value> = repliers
            .iter()
            .map(|who| {
                pds.cmd(
                    json!({"op": "create", "did": who, "collection": "app.bsky.feed.post",
                    "record": {"text": format!("a reply under '{text}'"), "createdAt": now(),
                        "reply": {"root": strong(&root), "parent": strong(&root)}}}),
                )
            })
            .collect();
        (root, replies)
    };
    let (followers_only, followers_replies) = gated_thread(
        "followers only",
        json!([]),
        json!([{"$type": "app.bsky.feed.threadgate#followerRule"}]),
        &[bob.as_str(), erin.as_str()],
    );
    let (mentions_only, mentions_replies) = gated_thread(
        "@erin.test may reply",
        json!([{"index": {"byteStart": 0, "byteEnd": 10},
                "features": [{"$type": "app.bsky.richtext.facet#mention", "did": erin}]}]),
        json!([{"$type": "app.bsky.feed.threadgate#mentionRule"}]),
        &[erin.as_str(), bob.as_str()],
    );
    let (nobody, _) = gated_thread("nobody may reply", json!([]), json!([]), &[carol.as_str()]);

    let last = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.graph.follow",
        "record": {"subject": bob, "createdAt": now()}}),
    );
    server.wait_for_cursor(last["seq"].as_i64().unwrap());

    let (p, r) = (
        post["uri"].as_str().unwrap(),
        reply["uri"].as_str().unwrap(),
    );
    let embedded = [&images, &card, &quote, &quote_media, &orphan]
        .map(|r| format!("uris={}", r["uri"].as_str().unwrap()))
        .join("&");
    let (q, qm) = (
        quote["uri"].as_str().unwrap(),
        quote_media["uri"].as_str().unwrap(),
    );
    let (dr, ud) = (
        dave_reply["uri"].as_str().unwrap(),
        under_dave["uri"].as_str().unwrap(),
    );
    let (dq, gq) = (
        dave_quote["uri"].as_str().unwrap(),
        gated_quote["uri"].as_str().unwrap(),
    );
    let gated_roots = [&followers_only, &mentions_only, &nobody]
        .map(|r| format!("uris={}", r["uri"].as_str().unwrap()))
        .join("&");
    let (fo, mo) = (
        followers_only["uri"].as_str().unwrap(),
        mentions_only["uri"].as_str().unwrap(),
    );
    let (erin_gated, bob_gated) = (
        followers_replies[1]["uri"].as_str().unwrap(),
        mentions_replies[1]["uri"].as_str().unwrap(),
    );
    let cases = [
        format!("/xrpc/app.bsky.feed.getPosts?{gated_roots}"),
        format!("/xrpc/app.bsky.feed.getPostThread?uri={fo}"),
        format!("/xrpc/app.bsky.feed.getPostThread?uri={mo}"),
        format!("/xrpc/app.bsky.feed.getPostThread?uri={erin_gated}"),
        format!("/xrpc/app.bsky.feed.getPostThread?uri={bob_gated}"),
        format!("/xrpc/app.bsky.feed.getAuthorFeed?actor={erin}"),
        format!("/xrpc/app.bsky.feed.getPosts?{embedded}"),
        format!("/xrpc/app.bsky.feed.getPosts?uris={dq}&uris={gq}"),
        format!("/xrpc/app.bsky.feed.getPostThread?uri={dr}"),
        format!("/xrpc/app.bsky.feed.getPostThread?uri={ud}"),
        format!("/xrpc/app.bsky.feed.getAuthorFeed?actor={dave}"),
        format!("/xrpc/app.bsky.feed.getQuotes?uri={p}"),
        format!("/xrpc/app.bsky.feed.getQuotes?uri={q}"),
        format!("/xrpc/app.bsky.feed.getPostThread?uri={qm}"),
        format!("/xrpc/app.bsky.feed.getAuthorFeed?actor={carol}"),
        format!("/xrpc/app.bsky.feed.getAuthorFeed?actor={carol}&includePins=true"),
        format!(
            "/xrpc/app.bsky.feed.getAuthorFeed?actor={carol}&includePins=true&filter=posts_with_media"
        ),
        format!("/xrpc/app.bsky.feed.getLikes?uri={p}"),
        format!("/xrpc/app.bsky.feed.getRepostedBy?uri={p}"),
        format!("/xrpc/app.bsky.feed.getPosts?uris={p}&uris={r}"),
        format!("/xrpc/app.bsky.feed.getPostThread?uri={p}"),
        format!("/xrpc/app.bsky.feed.getAuthorFeed?actor={bob}"),
        format!("/xrpc/app.bsky.actor.getProfile?actor={alice}"),
        format!("/xrpc/app.bsky.actor.getProfile?actor={carol}"),
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
    // The pin cases agree because both lead with the pinned post (not
    // because both left it out).
    for filter in ["", "&filter=posts_with_media"] {
        let (_, feed) = server.get(&format!(
            "/xrpc/app.bsky.feed.getAuthorFeed?actor={carol}&includePins=true{filter}"
        ));
        let items = feed["feed"].as_array().unwrap();
        assert_eq!(items[0]["post"]["uri"], quote["uri"], "{feed}");
        assert_eq!(
            items[0]["reason"]["$type"], "app.bsky.feed.defs#reasonPin",
            "{feed}"
        );
        let shown = items.iter().filter(|i| i["post"]["uri"] == quote["uri"]);
        assert_eq!(shown.count(), 1, "{feed}");
    }
    let (_, profile) = server.get(&format!("/xrpc/app.bsky.actor.getProfile?actor={carol}"));
    assert_eq!(profile["pinnedPost"]["uri"], quote["uri"], "{profile}");
    assert!(server.stop().success());
}
