//! End to end against a real PDS: records written through the PDS's own XRPC
//! API arrive over its firehose, are validated and indexed, and come back out
//! of getRecord, listRecords, GraphQL, backlinks, query methods, feeds, search
//! and the Bluesky views.
//!
//! Most tests share one fixture ([`fixture`]): one PDS, one `lexview serve`
//! and the records they read, written once per test binary. They run side by
//! side, each holding a turn ([`shared`]); a test that counts the server's
//! store reads, or briefly adds records that other tests count, runs alone
//! ([`alone`]). The last two tests start a PDS and a lexview of their own.

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{
    Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

use common::pds::Pds;
use common::server::{sql, Server};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The `createdAt` of every record the shared fixture writes.
const NOW: &str = "2026-11-24T12:00:00.000Z";
/// The SQL-defined feed (`feeds/rust.sql`).
const FEED_URI: &str = "at://did:web:localhost/app.bsky.feed.generator/rust";
/// The saved-search feed (`feeds/rust-ranked.json`).
const RANKED_URI: &str = "at://did:web:localhost/app.bsky.feed.generator/rust-ranked";

fn strong_ref(r: &Value) -> Value {
    json!({"uri": r["uri"], "cid": r["cid"]})
}

/// The harness command that creates a post by `did` at `now`, a reply when
/// `reply` (its `{root, parent}`) is given.
fn post_op(did: &str, text: &str, now: &str, reply: Option<Value>) -> Value {
    let mut record = json!({"text": text, "createdAt": now});
    if let Some(reply) = reply {
        record["reply"] = reply;
    }
    json!({"op": "create", "did": did, "collection": "app.bsky.feed.post", "record": record})
}

/// lexview on the PDS's firehose: every commit is verified (the default),
/// with DID documents from the PDS's in-memory PLC.
fn start_lexview(pds: &Pds, data: &std::path::Path) -> Server {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Server::start_full(
        &[&format!("{}?cursor=0", pds.firehose)],
        data,
        &root.join("lexicons"),
        &root.join("queries"),
        &["--plc", &pds.plc, "--handle-resolver", &pds.url],
    )
}

/// What the shared fixture wrote: three accounts' DIDs and the PDS's answer
/// (`uri`, `cid`, `rkey`, `seq`) to each write a test names.
struct Records {
    alice: String,
    bob: String,
    carol: String,
    /// Alice's post, "Hello from alice".
    p1: Value,
    /// Bob's reply to `p1`, "hi alice".
    r1: Value,
    /// Carol's reply to `r1`, "hi both".
    r2: Value,
    /// Bob's "Learning Rust today".
    rust1: Value,
    /// Carol's "rust borrowck is my friend".
    rust2: Value,
    /// Carol's like of `p1`, deleted again.
    carol_like: Value,
    /// Carol's post quoting `p1`.
    quote: Value,
    /// Alice's calendar event, "Rust meetup".
    event: Value,
}

/// One PDS and one lexview, shared by the tests of this file that use them.
struct Fixture {
    /// The harness answers one command at a time.
    pds: Mutex<Pds>,
    server: Server,
    records: Records,
    /// The store `server` serves.
    data: TempDir,
    /// A copy of the store as the server left it on SIGTERM once it had
    /// indexed `records` (it was then started again on `data`): `lexview
    /// sql` cannot open the store of a running server.
    stopped: TempDir,
    /// How the server exited on that SIGTERM.
    stopped_with: ExitStatus,
    /// `lexview sql` opens a store for writing: one at a time.
    stopped_sql: Mutex<()>,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// A test's turn at the shared server: tests that only read share it, a
/// test that counts store reads (`/_health` reads too) or adds records that
/// others count takes it alone.
static TURNS: RwLock<()> = RwLock::new(());

/// The shared fixture, started by the first test that asks for it.
fn fixture() -> &'static Fixture {
    static STARTED: AtomicBool = AtomicBool::new(false);
    FIXTURE.get_or_init(|| {
        // A second attempt would start a second PDS and fail the same way.
        assert!(
            !STARTED.swap(true, Ordering::SeqCst),
            "the shared fixture failed to start: see the first test that failed"
        );
        Fixture::start()
    })
}

/// The fixture, for a test that may run beside other readers.
fn shared() -> (&'static Fixture, RwLockReadGuard<'static, ()>) {
    let f = fixture();
    (f, TURNS.read().unwrap_or_else(PoisonError::into_inner))
}

/// The fixture, for a test that no other test may run beside.
fn alone() -> (&'static Fixture, RwLockWriteGuard<'static, ()>) {
    let f = fixture();
    (f, TURNS.write().unwrap_or_else(PoisonError::into_inner))
}

impl Fixture {
    /// Writes the records, waits until lexview has indexed them, stops it
    /// (keeping a copy of its store) and starts it again on the same store.
    fn start() -> Fixture {
        let mut pds = Pds::start();
        let data = tempfile::tempdir().unwrap();
        let server = start_lexview(&pds, data.path());
        let (records, last) = write_records(&mut pds);
        server.wait_for_cursor(last);
        let stopped_with = server.stop();
        let stopped = tempfile::tempdir().unwrap();
        copy_dir(data.path(), stopped.path());
        let server = start_lexview(&pds, data.path());
        server.wait_for_cursor(last);
        // SAFETY: `stop_fixture` is a plain function that only reads the
        // initialised `FIXTURE`; registered once (`fixture` starts once).
        assert_eq!(unsafe { libc::atexit(stop_fixture) }, 0);
        Fixture {
            pds: Mutex::new(pds),
            server,
            records,
            data,
            stopped,
            stopped_with,
            stopped_sql: Mutex::new(()),
        }
    }

    fn pds(&self) -> MutexGuard<'_, Pds> {
        self.pds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `lexview sql` on the stopped copy of the store: its table.
    fn stopped_sql(&self, query: &str) -> String {
        let _one = self
            .stopped_sql
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (ok, out, err) = sql(self.stopped.path(), query);
        assert!(ok, "{err}");
        out
    }
}

/// Statics are never dropped: when the test binary exits, this stops the
/// shared lexview and removes its stores. (The PDS harness stops by itself
/// when its stdin closes.)
extern "C" fn stop_fixture() {
    let Some(f) = FIXTURE.get() else { return };
    let pid = f.server.child.id() as libc::pid_t;
    // SAFETY: `pid` is our own child, not yet waited for.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    let _ = std::fs::remove_dir_all(f.data.path());
    let _ = std::fs::remove_dir_all(f.stopped.path());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Three accounts, their posts, replies, a quote, likes (one deleted), a
/// repost, follows, an event with RSVPs, books, statuses (one invalid) and a
/// profile written twice; returns them and the seq of the last write.
fn write_records(pds: &mut Pds) -> (Records, i64) {
    let alice = pds.create_account("alice.test");
    let bob = pds.create_account("bob.test");
    let carol = pds.create_account("carol.test");
    let now = NOW;
    let post = |did: &str, text: &str, reply: Option<Value>| post_op(did, text, now, reply);
    let p1 = pds.cmd(post(&alice, "Hello from alice", None));
    let r1 = pds.cmd(post(
        &bob,
        "hi alice",
        Some(json!({"root": strong_ref(&p1), "parent": strong_ref(&p1)})),
    ));
    let r2 = pds.cmd(post(
        &carol,
        "hi both",
        Some(json!({"root": strong_ref(&p1), "parent": strong_ref(&r1)})),
    ));
    let rust1 = pds.cmd(post(&bob, "Learning Rust today", None));
    pds.cmd(post(&carol, "rustic bread, no crabs", None));
    let rust2 = pds.cmd(post(&carol, "rust borrowck is my friend", None));
    let like = |did: &str, subject: &Value| json!({"op": "create", "did": did, "collection": "app.bsky.feed.like", "record": {"subject": strong_ref(subject), "createdAt": now}});
    pds.cmd(like(&bob, &p1));
    let carol_like = pds.cmd(like(&carol, &p1));
    pds.cmd(like(&alice, &r2));
    pds.cmd(json!({"op": "create", "did": carol, "collection": "app.bsky.feed.repost", "record": {"subject": strong_ref(&p1), "createdAt": now}}));
    let quote = pds.cmd(
        json!({"op": "create", "did": carol, "collection": "app.bsky.feed.post", "record": {
        "text": "look at this", "createdAt": now,
        "embed": {"$type": "app.bsky.embed.record", "record": strong_ref(&p1)}}}),
    );
    let follow = |did: &str, subject: &str| json!({"op": "create", "did": did, "collection": "app.bsky.graph.follow", "record": {"subject": subject, "createdAt": now}});
    pds.cmd(follow(&bob, &alice));
    pds.cmd(follow(&carol, &alice));
    pds.cmd(follow(&alice, &bob));
    let event = pds.cmd(json!({"op": "create", "did": alice, "collection": "community.lexicon.calendar.event", "record": {
        "name": "Rust meetup", "createdAt": now, "startsAt": "2026-12-01T18:00:00.000Z",
        "mode": "community.lexicon.calendar.event#inperson", "status": "community.lexicon.calendar.event#scheduled"}}));
    pds.cmd(json!({"op": "create", "did": bob, "collection": "community.lexicon.calendar.rsvp", "record": {
        "subject": strong_ref(&event), "status": "community.lexicon.calendar.rsvp#going", "createdAt": now}}));
    pds.cmd(json!({"op": "create", "did": carol, "collection": "community.lexicon.calendar.rsvp", "record": {
        "subject": strong_ref(&event), "status": "community.lexicon.calendar.rsvp#interested", "createdAt": now}}));
    pds.cmd(
        json!({"op": "create", "did": carol, "collection": "buzz.bookhive.book", "record": {
        "title": "The Dispossessed", "authors": "Ursula K. Le Guin", "hiveId": "bk_1", "stars": 9,
        "status": "buzz.bookhive.defs#finished", "createdAt": now}}),
    );
    pds.cmd(
        json!({"op": "create", "did": bob, "collection": "buzz.bookhive.book", "record": {
        "title": "The Dispossessed", "authors": "Ursula K. Le Guin", "hiveId": "bk_1", "stars": 6,
        "review": "Anarres stayed with me.", "status": "buzz.bookhive.defs#finished", "createdAt": now}}),
    );
    pds.cmd(json!({"op": "create", "did": alice, "collection": "xyz.statusphere.status", "record": {"status": "🦀", "createdAt": now}}));
    // Invalid for its lexicon (one grapheme at most); the PDS has no lexicon for it and stores it.
    pds.cmd(json!({"op": "create", "did": bob, "collection": "xyz.statusphere.status", "record": {"status": "🦀🦀", "createdAt": now}}));
    pds.cmd(json!({"op": "put", "did": alice, "collection": "app.bsky.actor.profile", "rkey": "self", "record": {"displayName": "Alice"}}));
    pds.cmd(json!({"op": "put", "did": alice, "collection": "app.bsky.actor.profile", "rkey": "self", "record": {"displayName": "Alice B."}}));
    let last = pds.cmd(json!({"op": "delete", "did": carol, "collection": "app.bsky.feed.like", "rkey": carol_like["rkey"]}));
    let records = Records {
        alice,
        bob,
        carol,
        p1,
        r1,
        r2,
        rust1,
        rust2,
        carol_like,
        quote,
        event,
    };
    (records, last["seq"].as_i64().unwrap())
}

/// Checks XRPC answers against their lexicons (Bluesky's own validator).
fn assert_valid(answers: &[(&str, Value)]) {
    let refs: Vec<(&str, &Value)> = answers.iter().map(|(n, v)| (*n, v)).collect();
    common::assert_valid_outputs(&refs);
}

/// The first message of a GraphQL error answer.
fn gql_error(gql: &Value) -> &str {
    gql["errors"][0]["message"].as_str().unwrap()
}

/// `s` with `:` and `/` percent-encoded, for a query parameter.
fn enc(s: &Value) -> String {
    s.as_str().unwrap().replace(':', "%3A").replace('/', "%2F")
}

/// getRecord, by DID and by handle: an update replaces the record, and a
/// deleted record is gone.
#[test]
fn get_record_answers_by_did_and_by_handle() {
    let (f, _turn) = shared();
    let (server, r) = (&f.server, &f.records);
    let (status, body) = server.get(&format!(
        "/xrpc/com.atproto.repo.getRecord?repo={}&collection=app.bsky.feed.post&rkey={}",
        r.alice,
        r.p1["rkey"].as_str().unwrap()
    ));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cid"], r.p1["cid"]);
    assert_eq!(body["value"]["text"], "Hello from alice");
    let (status, body) = server.get("/xrpc/com.atproto.repo.getRecord?repo=alice.test&collection=app.bsky.actor.profile&rkey=self");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["value"]["displayName"], "Alice B.",
        "the update replaced the record"
    );
    // The deleted like is gone.
    let (status, body) = server.get(&format!(
        "/xrpc/com.atproto.repo.getRecord?repo={}&collection=app.bsky.feed.like&rkey={}",
        r.carol,
        r.carol_like["rkey"].as_str().unwrap()
    ));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("RecordNotFound")),
        "{body}"
    );
}

#[test]
fn list_records_is_newest_first_without_deleted_records() {
    let (f, _turn) = shared();
    let (server, r) = (&f.server, &f.records);
    let (_, body) = server.get(&format!(
        "/xrpc/com.atproto.repo.listRecords?repo={}&collection=app.bsky.feed.post",
        r.bob
    ));
    let uris: Vec<&Value> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["uri"])
        .collect();
    assert_eq!(
        uris,
        [&r.rust1["uri"], &r.r1["uri"]],
        "newest first: {body}"
    );
    let (_, body) = server.get(&format!(
        "/xrpc/com.atproto.repo.listRecords?repo={}&collection=app.bsky.feed.like",
        r.carol
    ));
    assert_eq!(body["records"].as_array().unwrap().len(), 0, "{body}");
}

/// GraphQL per collection, names from the full NSID.
#[test]
fn graphql_names_each_collection_by_its_full_nsid() {
    let (f, _turn) = shared();
    let gql = f.server.graphql(
        r#"{ communityLexiconCalendarRsvp { totalCount nodes { did status subject { uri cid } } }
             buzzBookhiveBook { nodes { title stars } }
             xyzStatusphereStatus { totalCount nodes { status } } }"#,
    );
    assert!(gql.get("errors").is_none(), "{gql}");
    let d = &gql["data"];
    assert_eq!(d["communityLexiconCalendarRsvp"]["totalCount"], 2);
    assert_eq!(
        d["communityLexiconCalendarRsvp"]["nodes"][0]["subject"]["uri"],
        f.records.event["uri"]
    );
    assert_eq!(d["buzzBookhiveBook"]["nodes"].as_array().unwrap().len(), 2);
    assert!(d["buzzBookhiveBook"]["nodes"]
        .as_array()
        .unwrap()
        .contains(&json!({"title": "The Dispossessed", "stars": 9})));
    assert_eq!(
        d["xyzStatusphereStatus"]["totalCount"], 1,
        "the invalid status is not indexed"
    );
}

/// GraphQL: the author as an Actor and backlink counts, one page at a time.
#[test]
fn graphql_posts_have_actor_authors_and_backlink_counts() {
    let (f, _turn) = shared();
    let (server, r) = (&f.server, &f.records);
    let gql = server.graphql(&format!(
        r#"{{ appBskyFeedPostByUri(uri: "{}") {{ author {{ did handle }}
              likes: backlinkCount(source: "app.bsky.feed.like:subject.uri")
              replies: backlinkCount(source: "app.bsky.feed.post:reply.parent.uri")
              backlinkCounts {{ collection path count }} }} }}"#,
        r.p1["uri"].as_str().unwrap()
    ));
    assert!(gql.get("errors").is_none(), "{gql}");
    let node = &gql["data"]["appBskyFeedPostByUri"];
    assert_eq!(
        node["author"],
        json!({"did": r.alice, "handle": "alice.test"})
    );
    assert_eq!(
        (&node["likes"], &node["replies"]),
        (&json!(1), &json!(1)),
        "{gql}"
    );
    assert_eq!(
        node["backlinkCounts"],
        json!([
            {"collection": "app.bsky.feed.like", "path": ".subject.uri", "count": 1},
            {"collection": "app.bsky.feed.post", "path": ".embed.record.uri", "count": 1},
            {"collection": "app.bsky.feed.post", "path": ".reply.parent.uri", "count": 1},
            {"collection": "app.bsky.feed.post", "path": ".reply.root.uri", "count": 2},
            {"collection": "app.bsky.feed.repost", "path": ".subject.uri", "count": 1},
        ])
    );
    let gql = server.graphql("{ appBskyFeedPost(first: 100) { nodes { uri author { handle } likes: backlinkCount(source: \"app.bsky.feed.like:subject.uri\") } } }");
    assert!(gql.get("errors").is_none(), "{gql}");
    assert_eq!(
        gql["data"]["appBskyFeedPost"]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        7,
        "seven posts"
    );
}

/// Typed nested values: strongRefs as objects, the embed union by $type.
#[test]
fn graphql_nested_values_are_typed() {
    let (f, _turn) = shared();
    let r = &f.records;
    let gql = f.server.graphql(&format!(
        r#"{{ r: appBskyFeedPostByUri(uri: "{}") {{ reply {{ root {{ uri }} parent {{ uri cid }} }} }}
              q: appBskyFeedPostByUri(uri: "{}") {{ embed {{ __typename ... on AppBskyEmbedRecord {{ record {{ uri }} }} }} }} }}"#,
        r.r2["uri"].as_str().unwrap(),
        r.quote["uri"].as_str().unwrap()
    ));
    assert!(gql.get("errors").is_none(), "{gql}");
    assert_eq!(
        gql["data"]["r"]["reply"],
        json!({"root": {"uri": r.p1["uri"]}, "parent": {"uri": r.r1["uri"], "cid": r.r1["cid"]}})
    );
    assert_eq!(
        gql["data"]["q"]["embed"],
        json!({"__typename": "AppBskyEmbedRecord", "record": {"uri": r.p1["uri"]}})
    );
}

/// Reverse joins, typed per source lexicon and path, with their counts: a
/// post's likes and replies, its author's followers and follows, an
/// event's RSVPs filtered by status.
#[test]
fn graphql_reverse_joins_are_typed_and_counted() {
    let (f, _turn) = shared();
    let r = &f.records;
    let gql = f.server.graphql(&format!(
        r#"{{ p: appBskyFeedPostByUri(uri: "{}") {{
                 appBskyFeedLikeBySubjectCount appBskyFeedPostByReplyParentCount
                 appBskyFeedLikeBySubject {{ totalCount nodes {{ author {{ handle }} }} }}
                 appBskyFeedPostByReplyParent {{ nodes {{ uri }} }}
                 author {{ followers: appBskyGraphFollowBySubjectCount follows: appBskyGraphFollowCount
                   appBskyGraphFollowBySubject {{ nodes {{ author {{ handle }} }} }} }} }}
              e: communityLexiconCalendarEventByUri(uri: "{}") {{ communityLexiconCalendarRsvpBySubjectCount
                 going: communityLexiconCalendarRsvpBySubject(where: {{status: {{eq: "community.lexicon.calendar.rsvp#going"}}}}) {{
                   totalCount nodes {{ author {{ handle }} }} }} }} }}"#,
        r.p1["uri"].as_str().unwrap(),
        r.event["uri"].as_str().unwrap()
    ));
    assert!(gql.get("errors").is_none(), "{gql}");
    let p = &gql["data"]["p"];
    assert_eq!(
        (
            &p["appBskyFeedLikeBySubjectCount"],
            &p["appBskyFeedPostByReplyParentCount"]
        ),
        (&json!(1), &json!(1)),
        "{gql}"
    );
    assert_eq!(
        p["appBskyFeedLikeBySubject"],
        json!({"totalCount": 1, "nodes": [{"author": {"handle": "bob.test"}}]}),
        "carol's like was deleted"
    );
    assert_eq!(
        p["appBskyFeedPostByReplyParent"]["nodes"],
        json!([{"uri": r.r1["uri"]}])
    );
    assert_eq!(
        (&p["author"]["followers"], &p["author"]["follows"]),
        (&json!(2), &json!(1))
    );
    let mut followers: Vec<&str> = p["author"]["appBskyGraphFollowBySubject"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["author"]["handle"].as_str().unwrap())
        .collect();
    followers.sort();
    assert_eq!(followers, ["bob.test", "carol.test"]);
    assert_eq!(
        gql["data"]["e"],
        json!({"communityLexiconCalendarRsvpBySubjectCount": 2,
               "going": {"totalCount": 1, "nodes": [{"author": {"handle": "bob.test"}}]}})
    );
}

/// Reverse joins and actor counts are batched: a page of posts with each
/// post's likes and each author's followers, follower, follow and post
/// counts costs the same number of store reads for one post as for all.
/// Alone: it counts the server's store reads.
#[test]
fn graphql_reverse_joins_are_batched_per_page() {
    let (f, _alone) = alone();
    let server = &f.server;
    let reads = || server.counter("store_reads_total");
    let page = |n: usize| {
        let before = reads();
        let gql = server.graphql(&format!(
            "{{ appBskyFeedPost(first: {n}) {{ nodes {{
                 appBskyFeedLikeBySubjectCount
                 appBskyFeedLikeBySubject(first: 5) {{ totalCount nodes {{ uri author {{ handle }} }} }}
                 author {{ handle
                   followers: appBskyGraphFollowBySubjectCount follows: appBskyGraphFollowCount
                   posts: appBskyFeedPostCount
                   appBskyGraphFollowBySubject {{ totalCount nodes {{ author {{ handle }} }} }} }} }} }} }}"
        ));
        assert!(gql.get("errors").is_none(), "{gql}");
        (gql, reads() - before)
    };
    let (_, one) = page(1);
    let (all, many) = page(100);
    let nodes = all["data"]["appBskyFeedPost"]["nodes"].as_array().unwrap();
    let authors: std::collections::HashSet<&str> = nodes
        .iter()
        .map(|n| n["author"]["handle"].as_str().unwrap())
        .collect();
    assert!(nodes.len() > 2 && authors.len() > 1, "{all}");
    assert_eq!(
        one,
        many,
        "store reads for 1 post and for {} posts",
        nodes.len()
    );
    // Each batched page is its own post's: it agrees with the post's count
    // from link_counts (a separate path), and alice's post has bob's like.
    for n in nodes {
        let likes = &n["appBskyFeedLikeBySubject"];
        assert_eq!(
            likes["totalCount"], n["appBskyFeedLikeBySubjectCount"],
            "{n}"
        );
        assert_eq!(
            likes["nodes"].as_array().unwrap().len() as u64,
            likes["totalCount"].as_u64().unwrap().min(5),
            "{n}"
        );
    }
    let alices: Vec<&Value> = nodes
        .iter()
        .filter(|n| n["author"]["handle"] == "alice.test")
        .collect();
    assert_eq!(
        alices[0]["appBskyFeedLikeBySubject"]["nodes"][0]["author"]["handle"], "bob.test",
        "{all}"
    );
}

/// Forward joins: a strongRef's target record, typed, with its own counts.
#[test]
fn graphql_forward_joins_reach_typed_targets() {
    let (f, _turn) = shared();
    let gql = f.server.graphql(
        r#"{ communityLexiconCalendarRsvp { nodes { status subject { target {
               __typename ... on CommunityLexiconCalendarEvent { name author { handle } } } } } }
             appBskyFeedLike { nodes { subject { target { ... on AppBskyFeedPost {
               text likes: backlinkCount(source: "app.bsky.feed.like:subject.uri") } } } } } }"#,
    );
    assert!(gql.get("errors").is_none(), "{gql}");
    for node in gql["data"]["communityLexiconCalendarRsvp"]["nodes"]
        .as_array()
        .unwrap()
    {
        assert_eq!(
            node["subject"]["target"],
            json!({"__typename": "CommunityLexiconCalendarEvent", "name": "Rust meetup", "author": {"handle": "alice.test"}}),
            "{gql}"
        );
    }
    let mut liked: Vec<Value> = gql["data"]["appBskyFeedLike"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["subject"]["target"].clone())
        .collect();
    liked.sort_by_key(|v| v.to_string());
    assert_eq!(
        liked,
        [
            json!({"text": "Hello from alice", "likes": 1}),
            json!({"text": "hi both", "likes": 1})
        ]
    );
}

/// Forward joins at any depth: the liked reply's parent and the parent's
/// parent, each level one batched lookup. Alone: it counts the server's
/// store reads.
#[test]
fn graphql_forward_joins_at_any_depth_are_one_batch_per_level() {
    let (f, _alone) = alone();
    let server = &f.server;
    let reads_before = server.counter("store_reads_total");
    let gql = server.graphql(
        r#"{ appBskyFeedLike { nodes { subject { target { ... on AppBskyFeedPost { text
             reply { parent { target { ... on AppBskyFeedPost { text
               reply { parent { target { ... on AppBskyFeedPost { text } } } }
             } } } } } } } } } }"#,
    );
    assert!(gql.get("errors").is_none(), "{gql}");
    let chain = gql["data"]["appBskyFeedLike"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| &n["subject"]["target"])
        .find(|t| t["text"] == "hi both")
        .expect("alice's like of carol's reply");
    assert_eq!(
        chain["reply"]["parent"]["target"]["text"], "hi alice",
        "{gql}"
    );
    assert_eq!(
        chain["reply"]["parent"]["target"]["reply"]["parent"]["target"]["text"], "Hello from alice",
        "{gql}"
    );
    // The page and its first level (a few queries), then one batch per
    // further level, however many likes there are.
    let join_reads = server.counter("store_reads_total") - reads_before;
    assert!(
        join_reads <= 6,
        "{join_reads} store reads for a three-level join"
    );
}

/// where, sortBy and order; a value is bound, never spliced.
#[test]
fn graphql_where_sort_by_and_order_filter_and_sort() {
    let (f, _turn) = shared();
    let gql = f.server.graphql(
        r#"{ a: appBskyFeedPost(where: {text: {contains: "rust"}}, sortBy: text, order: ASC) { totalCount nodes { text } }
             b: buzzBookhiveBook(where: {stars: {gte: 7}}) { totalCount nodes { stars } }
             c: appBskyFeedPost(where: {text: {in: ["hi alice", "hi both"]}}) { totalCount }
             d: appBskyFeedPost(where: {text: {eq: "x' OR '1'='1"}}) { totalCount }
             e: appBskyFeedPost(where: {author: "carol.test"}) { totalCount } }"#,
    );
    assert!(gql.get("errors").is_none(), "{gql}");
    let d = &gql["data"];
    assert_eq!(
        d["a"],
        json!({"totalCount": 2, "nodes": [{"text": "rust borrowck is my friend"}, {"text": "rustic bread, no crabs"}]})
    );
    assert_eq!(d["b"], json!({"totalCount": 1, "nodes": [{"stars": 9}]}));
    assert_eq!(d["c"]["totalCount"], 2);
    assert_eq!(d["d"]["totalCount"], 0, "a value is data, not SQL");
    assert_eq!(d["e"]["totalCount"], 4);
}

/// Cursor pages forward (`first`, `after`) and backward (`last`,
/// `before`); `first` with `last` and a cursor that is not one are refused.
#[test]
fn graphql_cursors_page_forward_and_backward() {
    let (f, _turn) = shared();
    let server = &f.server;
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..5 {
        let gql = server.graphql(&format!(
            r#"{{ appBskyFeedPost(where: {{author: "carol.test"}}, sortBy: indexedAt, order: DESC, first: 3{after})
                 {{ nodes {{ uri }} pageInfo {{ hasNextPage endCursor }} }} }}"#
        ));
        let conn = &gql["data"]["appBskyFeedPost"];
        seen.extend(
            conn["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["uri"].clone()),
        );
        if conn["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = format!(
            r#", after: "{}""#,
            conn["pageInfo"]["endCursor"].as_str().unwrap()
        );
    }
    seen.sort_by_key(|v| v.to_string());
    seen.dedup();
    assert_eq!(seen.len(), 4, "two pages give carol's four posts once each");
    // Backward: the last two by text, then the page before them.
    let order = r#"where: {author: "carol.test"}, sortBy: text, order: ASC"#;
    let all = server.graphql(&format!(
        "{{ appBskyFeedPost({order}) {{ nodes {{ text }} }} }}"
    ));
    let texts: Vec<Value> = all["data"]["appBskyFeedPost"]["nodes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(texts.len(), 4, "{all}");
    let tail = server.graphql(&format!(
        "{{ appBskyFeedPost({order}, last: 2) {{ nodes {{ text }} pageInfo {{ hasPreviousPage hasNextPage startCursor }} }} }}"
    ));
    let conn = &tail["data"]["appBskyFeedPost"];
    assert_eq!(conn["nodes"].as_array().unwrap()[..], texts[2..], "{tail}");
    assert_eq!(conn["pageInfo"]["hasPreviousPage"], true);
    assert_eq!(conn["pageInfo"]["hasNextPage"], false);
    let head = server.graphql(&format!(
        r#"{{ appBskyFeedPost({order}, last: 2, before: "{}") {{ nodes {{ text }} pageInfo {{ hasPreviousPage hasNextPage }} }} }}"#,
        conn["pageInfo"]["startCursor"].as_str().unwrap()
    ));
    let conn = &head["data"]["appBskyFeedPost"];
    assert_eq!(conn["nodes"].as_array().unwrap()[..], texts[..2], "{head}");
    assert_eq!(conn["pageInfo"]["hasPreviousPage"], false);
    assert_eq!(conn["pageInfo"]["hasNextPage"], true);
    let gql = server.graphql("{ appBskyFeedPost(first: 1, last: 1) { totalCount } }");
    assert!(gql_error(&gql).contains("not both"), "{gql}");
    let gql = server.graphql(r#"{ appBskyFeedPost(after: "garbage") { totalCount } }"#);
    assert!(gql_error(&gql).contains("not a cursor"), "{gql}");
}

/// Aggregations: an event's RSVPs by status; posts by month.
#[test]
fn graphql_aggregations_group_by_value_and_by_month() {
    let (f, _turn) = shared();
    let gql = f.server.graphql(&format!(
        r#"{{ r: communityLexiconCalendarRsvpAggregate(groupBy: [status], where: {{linksTo: "{}"}}) {{ keys count }}
              p: appBskyFeedPostAggregate(groupBy: [createdAt], bucket: MONTH) {{ keys count }} }}"#,
        f.records.event["uri"].as_str().unwrap()
    ));
    assert!(gql.get("errors").is_none(), "{gql}");
    assert_eq!(
        gql["data"]["r"],
        json!([{"keys": ["community.lexicon.calendar.rsvp#going"], "count": 1},
               {"keys": ["community.lexicon.calendar.rsvp#interested"], "count": 1}])
    );
    assert_eq!(
        gql["data"]["p"],
        json!([{"keys": ["2026-11-01"], "count": 7}])
    );
    let gql = f
        .server
        .graphql("{ appBskyFeedPostAggregate(groupBy: [text, langs, createdAt, uri]) { count } }");
    assert!(
        gql.get("errors").is_some(),
        "four groupBy fields are refused: {gql}"
    );
}

/// The schema and the operations of these tests, checked by graphql-js.
#[test]
fn graphql_schema_and_operations_pass_graphql_js() {
    let (f, _turn) = shared();
    common::assert_graphql_conforms(
        &format!("{}/graphql", f.server.base),
        r#"query Rsvps { communityLexiconCalendarRsvp { totalCount nodes { did status subject { uri cid } } } }
           query Books { buzzBookhiveBook { nodes { title stars } } }
           query Post($uri: String!) { appBskyFeedPostByUri(uri: $uri) { author { did handle }
               likes: backlinkCount(source: "app.bsky.feed.like:subject.uri")
               backlinkCounts { collection path count } } }
           query Page { appBskyFeedPost(first: 100) { nodes { uri author { handle } } pageInfo { hasNextPage endCursor } } }
           query Filtered($after: String) { appBskyFeedPost(where: {text: {contains: "rust"}, author: "carol.test"},
               sortBy: indexedAt, order: DESC, first: 3, after: $after) { totalCount nodes { text } } }
           query ByStatus($event: String) { communityLexiconCalendarRsvpAggregate(groupBy: [status],
               where: {linksTo: $event}, bucket: DAY) { keys count } }
           query Joins($uri: String!) { appBskyFeedPostByUri(uri: $uri) { appBskyFeedLikeBySubjectCount
               appBskyFeedLikeBySubject(first: 5) { totalCount nodes { author { handle } } }
               author { appBskyGraphFollowBySubjectCount appBskyGraphFollow { nodes { subject } } } } }
           query Search($q: String!) { search(query: $q, collection: "app.bsky.feed.post", first: 10) {
               totalCount hits { score record { ... on AppBskyFeedPost { uri text author { handle } } } } } }"#,
    );
}

/// Cost control: clear errors, no work done.
#[test]
fn graphql_cost_control_refuses_with_clear_errors() {
    let (f, _turn) = shared();
    let server = &f.server;
    let gql = server.graphql("{ appBskyFeedPost(first: 101) { totalCount } }");
    assert!(
        gql_error(&gql).contains("first must be between 0 and 100"),
        "{gql}"
    );
    let deep = format!(
        "{{ __schema {{ types {{ {}name{} }} }} }}",
        "fields { type { ofType { ".repeat(6),
        " } } }".repeat(6)
    );
    let gql = server.graphql(&deep);
    assert!(gql_error(&gql).contains("nested too deep"), "{gql}");
    let wide = format!(
        "{{ appBskyFeedPostByUri(uri: \"{}\") {{ {} }} }}",
        f.records.p1["uri"].as_str().unwrap(),
        (0..3_000)
            .map(|i| format!("a{i}: uri"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Refused before it runs: more fields than one operation may select.
    let gql = server.graphql(&wide);
    assert!(
        gql_error(&gql).contains("3001 fields in one operation; at most 2000"),
        "{gql}"
    );
}

/// Constellation-compatible backlinks: records and DIDs that link to a
/// subject, counted, paged newest first, filtered by DID.
#[test]
fn constellation_backlinks_page_newest_first() {
    let (f, _turn) = shared();
    let (server, r) = (&f.server, &f.records);
    let (alice, bob, carol) = (&r.alice, &r.bob, &r.carol);
    let mut answers: Vec<(&str, Value)> = Vec::new();
    let (status, body) = server.get(&format!(
        "/xrpc/blue.microcosm.links.getBacklinks?subject={}&source=app.bsky.feed.like:subject.uri",
        enc(&r.p1["uri"])
    ));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 1, "carol's like was deleted: {body}");
    assert_eq!(
        body["records"],
        json!([{"did": bob, "collection": "app.bsky.feed.like", "rkey": body["records"][0]["rkey"]}])
    );
    answers.push(("blue.microcosm.links.getBacklinks", body));
    let (_, body) = server.get(&format!(
        "/xrpc/blue.microcosm.links.getBacklinksCount?subject={}&source=app.bsky.feed.post:reply.root.uri",
        enc(&r.p1["uri"])
    ));
    assert_eq!(body, json!({"total": 2}));
    answers.push(("blue.microcosm.links.getBacklinksCount", body));
    // Alice's followers, one page at a time, newest first.
    let page = |cursor: Option<&str>| {
        let mut q = format!(
            "/xrpc/blue.microcosm.links.getBacklinkDids?subject={alice}&source=app.bsky.graph.follow:subject&limit=1"
        );
        if let Some(c) = cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        server.get(&q)
    };
    let (status, first) = page(None);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["total"], 2);
    assert_eq!(
        first["linking_dids"],
        json!([carol]),
        "newest first: {first}"
    );
    let (_, second) = page(first["cursor"].as_str());
    assert_eq!(second["linking_dids"], json!([bob]), "{second}");
    assert!(second.get("cursor").is_none(), "last page: {second}");
    answers.push(("blue.microcosm.links.getBacklinkDids", first));
    answers.push(("blue.microcosm.links.getBacklinkDids", second));
    // The same through getBacklinks, filtered to one follower's DID.
    let (_, body) = server.get(&format!(
        "/xrpc/blue.microcosm.links.getBacklinks?subject={alice}&source=app.bsky.graph.follow:subject&did={bob}"
    ));
    assert_eq!(body["total"], 1, "{body}");
    assert_eq!(body["records"][0]["did"], json!(bob));
    answers.push(("blue.microcosm.links.getBacklinks", body));
    // A parameter that looks like SQL is data: it matches no path.
    let (status, body) = server.get(&format!(
        "/xrpc/blue.microcosm.links.getBacklinksCount?subject={alice}&source=app.bsky.graph.follow:subject'%20OR%20'1'='1"
    ));
    assert_eq!((status, body), (200, json!({"total": 0})));
    assert_valid(&answers);
}

/// Bad backlink parameters get the XRPC error envelope, naming the
/// parameter.
#[test]
fn bad_parameters_get_the_xrpc_envelope() {
    let (f, _turn) = shared();
    for (query, names) in [
        ("subject=did:plc:x&source=nocolon", "source"),
        (
            "subject=did:plc:x&source=app.bsky.graph.follow:subject&limit=0",
            "limit",
        ),
        (
            "subject=did:plc:x&source=app.bsky.graph.follow:subject&limit=101",
            "limit",
        ),
        (
            "subject=did:plc:x&source=app.bsky.graph.follow:subject&cursor=%21%21",
            "cursor",
        ),
        ("source=app.bsky.graph.follow:subject", "subject"),
        (
            "subject=did:plc:x&source=app.bsky.graph.follow:subject&did=nope",
            "did",
        ),
    ] {
        let (status, body) = f
            .server
            .get(&format!("/xrpc/blue.microcosm.links.getBacklinks?{query}"));
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("InvalidRequest")),
            "{query}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains(names),
            "{query}: {body}"
        );
    }
}

/// SQL-defined query methods (queries/*.sql with their lexicons).
#[test]
fn sql_query_methods_answer_with_bound_parameters() {
    let (f, _turn) = shared();
    let (server, r) = (&f.server, &f.records);
    let mut answers: Vec<(&str, Value)> = Vec::new();
    let (status, body) =
        server.get("/xrpc/dev.lexview.calendar.getUpcomingEvents?after=2026-01-01T00:00:00.000Z");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"events": [{"uri": r.event["uri"], "did": r.alice, "name": "Rust meetup",
            "startsAt": "2026-12-01T18:00:00.000Z", "going": 1, "interested": 1, "notgoing": 0, "rsvps": 2}]})
    );
    answers.push(("dev.lexview.calendar.getUpcomingEvents", body));
    let (_, body) =
        server.get("/xrpc/dev.lexview.calendar.getUpcomingEvents?after=2027-01-01T00:00:00.000Z");
    assert_eq!(body, json!({"events": []}));
    let (status, body) = server.get("/xrpc/dev.lexview.books.getBookStats");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"books": [{"hiveId": "bk_1", "title": "The Dispossessed", "authors": "Ursula K. Le Guin",
            "readers": 2, "ratings": 2, "averageStars": "7.5", "reviews": 1}]})
    );
    answers.push(("dev.lexview.books.getBookStats", body));
    let (_, body) = server.get("/xrpc/dev.lexview.books.getBookStats?minReviews=2");
    assert_eq!(body, json!({"books": []}));
    for actor in ["alice.test", r.alice.as_str()] {
        let (status, body) = server.get(&format!(
            "/xrpc/dev.lexview.graph.getMutualFollows?actor={actor}"
        ));
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"mutuals": [{"did": r.bob, "handle": "bob.test"}]})
        );
        answers.push(("dev.lexview.graph.getMutualFollows", body));
    }
    let (_, body) = server.get("/xrpc/dev.lexview.graph.getMutualFollows?actor=carol.test");
    assert_eq!(
        body,
        json!({"mutuals": []}),
        "carol follows alice, not back"
    );
    let (status, body) =
        server.get("/xrpc/dev.lexview.graph.getMutualFollows?actor=alice.test'%20OR%201=1%20--");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("InvalidRequest")),
        "{body}"
    );
    assert_valid(&answers);
}

/// Follows a feed's cursors one post (`limit=1`) at a time, at most six
/// pages; the posts and every page.
fn feed_pages(server: &Server, feed: &str) -> (Vec<Value>, Vec<Value>) {
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("/xrpc/app.bsky.feed.getFeedSkeleton?feed={feed}&limit=1");
        if let Some(c) = &cursor {
            q.push_str(&format!(
                "&cursor={}",
                c.replace(' ', "%20").replace(':', "%3A")
            ));
        }
        let (status, body) = server.get(&q);
        assert_eq!(status, 200, "{body}");
        seen.extend(
            body["feed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["post"].clone()),
        );
        cursor = body["cursor"].as_str().map(str::to_string);
        pages.push(body);
        if cursor.is_none() || seen.len() > 5 {
            return (seen, pages);
        }
    }
}

/// The SQL-defined feed (feeds/rust.sql), one post per page, newest first.
#[test]
fn sql_feed_pages_one_post_at_a_time_newest_first() {
    let (f, _turn) = shared();
    let r = &f.records;
    let mut answers: Vec<(&str, Value)> = Vec::new();
    let (status, body) = f.server.get("/xrpc/app.bsky.feed.describeFeedGenerator");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"did": "did:web:localhost", "feeds": [{"uri": FEED_URI}, {"uri": RANKED_URI}]})
    );
    answers.push(("app.bsky.feed.describeFeedGenerator", body));
    let (seen, pages) = feed_pages(&f.server, FEED_URI);
    answers.extend(
        pages
            .into_iter()
            .map(|p| ("app.bsky.feed.getFeedSkeleton", p)),
    );
    assert_eq!(seen, vec![r.rust2["uri"].clone(), r.rust1["uri"].clone()]);
    assert_valid(&answers);
}

/// Full-text search over XRPC: "rust" is a word, so "rustic" does not
/// match; the "Rust meetup" event matches too. Hits are answered from their
/// search documents: the same CID, record and indexing time as the store
/// holds.
#[test]
fn search_records_matches_words_and_answers_from_its_documents() {
    let (f, _turn) = shared();
    let server = &f.server;
    let (status, body) = server.get("/xrpc/dev.lexview.search.searchRecords?q=rust&limit=5");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hitsTotal"], 3, "{body}");
    assert_eq!(
        body["records"][0]["value"]["name"], "Rust meetup",
        "the shortest text ranks first: {body}"
    );
    for r in body["records"].as_array().unwrap() {
        let uri = r["uri"].as_str().unwrap();
        let parts: Vec<&str> = uri.trim_start_matches("at://").split('/').collect();
        let (status, stored) = server.get(&format!(
            "/xrpc/com.atproto.repo.getRecord?repo={}&collection={}&rkey={}",
            parts[0], parts[1], parts[2]
        ));
        assert_eq!(status, 200, "{stored}");
        assert_eq!(
            (&r["cid"], &r["value"]),
            (&stored["cid"], &stored["value"]),
            "{uri}"
        );
        if parts[1] == "app.bsky.feed.post" {
            let gql = server.graphql(&format!(
                r#"{{ appBskyFeedPostByUri(uri: "{uri}") {{ indexedAt }} }}"#
            ));
            let indexed_at = &gql["data"]["appBskyFeedPostByUri"]["indexedAt"];
            assert!(indexed_at.is_string(), "{gql}");
            assert_eq!(&r["indexedAt"], indexed_at, "{uri}");
        }
    }
    assert_valid(&[("dev.lexview.search.searchRecords", body)]);
}

/// searchRecords in one collection, any case, paged; and by one author.
#[test]
fn search_records_pages_and_filters_by_collection_and_author() {
    let (f, _turn) = shared();
    let (server, r) = (&f.server, &f.records);
    let mut answers: Vec<(&str, Value)> = Vec::new();
    let (status, body) = server
        .get("/xrpc/dev.lexview.search.searchRecords?q=RUST&collection=app.bsky.feed.post&limit=1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hitsTotal"], 2, "{body}");
    assert_eq!(
        body["records"][0]["uri"], r.rust1["uri"],
        "the shorter text ranks first: {body}"
    );
    assert_eq!(body["records"][0]["author"]["handle"], "bob.test", "{body}");
    let next = body["cursor"].as_str().expect("a second page").to_string();
    answers.push(("dev.lexview.search.searchRecords", body));
    let (_, body) = server.get(&format!(
        "/xrpc/dev.lexview.search.searchRecords?q=rust&collection=app.bsky.feed.post&limit=1&cursor={next}"
    ));
    assert_eq!(body["records"][0]["uri"], r.rust2["uri"], "{body}");
    assert!(body.get("cursor").is_none(), "{body}");
    answers.push(("dev.lexview.search.searchRecords", body));
    let (_, body) = server.get(
        "/xrpc/dev.lexview.search.searchRecords?q=rust&author=carol.test&collection=app.bsky.feed.post",
    );
    let uris: Vec<&Value> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["uri"])
        .collect();
    assert_eq!(uris, [&r.rust2["uri"]], "{body}");
    answers.push(("dev.lexview.search.searchRecords", body));
    assert_valid(&answers);
}

#[test]
fn search_records_refuses_bad_parameters_by_name() {
    let (f, _turn) = shared();
    for (query, name) in [
        ("limit=5", "q"),
        ("q=rust&limit=0", "limit"),
        ("q=rust&cursor=x", "cursor"),
        ("q=rust&collection=not%20an%20nsid", "collection"),
    ] {
        let (status, body) = f
            .server
            .get(&format!("/xrpc/dev.lexview.search.searchRecords?{query}"));
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("InvalidRequest")),
            "{query}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains(name),
            "{query}: {body}"
        );
    }
}

/// Full-text search over GraphQL: hits typed by their collection.
#[test]
fn graphql_search_returns_typed_hits() {
    let (f, _turn) = shared();
    let r = &f.records;
    let gql = f.server.graphql(
        r#"{ search(query: "Rust", collection: "app.bsky.feed.post") { totalCount
             hits { record { ... on AppBskyFeedPost { uri text author { handle } } } } } }"#,
    );
    assert!(gql.get("errors").is_none(), "{gql}");
    assert_eq!(
        gql["data"]["search"],
        json!({"totalCount": 2, "hits": [
            {"record": {"uri": r.rust1["uri"], "text": "Learning Rust today", "author": {"handle": "bob.test"}}},
            {"record": {"uri": r.rust2["uri"], "text": "rust borrowck is my friend", "author": {"handle": "carol.test"}}}]})
    );
}

/// The saved-search feed (feeds/rust-ranked.json) in rank order; a feed
/// that does not exist is refused.
#[test]
fn saved_search_feed_ranks_its_hits_and_unknown_feeds_are_refused() {
    let (f, _turn) = shared();
    let r = &f.records;
    let (ranked, pages) = feed_pages(&f.server, RANKED_URI);
    assert_eq!(ranked, vec![r.rust1["uri"].clone(), r.rust2["uri"].clone()]);
    let (status, body) = f.server.get(
        "/xrpc/app.bsky.feed.getFeedSkeleton?feed=at://did:web:localhost/app.bsky.feed.generator/nope",
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("UnknownFeed")),
        "{body}"
    );
    let answers: Vec<(&str, Value)> = pages
        .into_iter()
        .map(|p| ("app.bsky.feed.getFeedSkeleton", p))
        .collect();
    assert_valid(&answers);
}

/// getProfile in the official shape, with its counts; an unknown actor is
/// refused.
#[test]
fn bsky_profile_counts_followers_follows_and_posts() {
    let (f, _turn) = shared();
    let (status, profile) = f
        .server
        .get("/xrpc/app.bsky.actor.getProfile?actor=alice.test");
    assert_eq!(status, 200, "{profile}");
    assert_eq!(
        (
            &profile["did"],
            &profile["handle"],
            &profile["displayName"],
            &profile["followersCount"],
            &profile["followsCount"],
            &profile["postsCount"]
        ),
        (
            &json!(f.records.alice),
            &json!("alice.test"),
            &json!("Alice B."),
            &json!(2),
            &json!(1),
            &json!(1)
        ),
        "{profile}"
    );
    let (status, body) = f
        .server
        .get("/xrpc/app.bsky.actor.getProfile?actor=nobody.test");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("InvalidRequest")),
        "{body}"
    );
    assert_valid(&[("app.bsky.actor.getProfile", profile)]);
}

#[test]
fn bsky_followers_and_follows_page_newest_first() {
    let (f, _turn) = shared();
    let (server, r) = (&f.server, &f.records);
    let mut answers: Vec<(&str, Value)> = Vec::new();
    let (status, body) = server.get("/xrpc/app.bsky.graph.getFollowers?actor=alice.test");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["subject"]["handle"], "alice.test");
    let handles: Vec<&Value> = body["followers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["handle"])
        .collect();
    assert_eq!(
        handles,
        [&json!("carol.test"), &json!("bob.test")],
        "newest first: {body}"
    );
    answers.push(("app.bsky.graph.getFollowers", body));
    let (_, body) = server.get("/xrpc/app.bsky.graph.getFollowers?actor=alice.test&limit=1");
    assert_eq!(body["followers"][0]["handle"], "carol.test");
    let (_, next) = server.get(&format!(
        "/xrpc/app.bsky.graph.getFollowers?actor=alice.test&limit=1&cursor={}",
        body["cursor"].as_str().expect("a cursor after a full page")
    ));
    assert_eq!(next["followers"][0]["handle"], "bob.test", "{next}");
    assert!(next.get("cursor").is_none(), "{next}");
    let (_, body) = server.get(&format!("/xrpc/app.bsky.graph.getFollows?actor={}", r.bob));
    assert_eq!(body["subject"]["did"], json!(r.bob));
    assert_eq!(body["follows"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["follows"][0]["did"], json!(r.alice));
    answers.push(("app.bsky.graph.getFollows", body));
    assert_valid(&answers);
}

/// getLikes (of any version, or of one CID) and getRepostedBy.
#[test]
fn bsky_likes_and_reposts_name_their_actors() {
    let (f, _turn) = shared();
    let (server, r) = (&f.server, &f.records);
    let mut answers: Vec<(&str, Value)> = Vec::new();
    let p1 = r.p1["uri"].as_str().unwrap();
    let (status, body) = server.get(&format!("/xrpc/app.bsky.feed.getLikes?uri={p1}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uri"], r.p1["uri"]);
    assert_eq!(
        body["likes"].as_array().unwrap().len(),
        1,
        "carol's like was deleted: {body}"
    );
    assert_eq!(body["likes"][0]["actor"]["handle"], "bob.test");
    assert_eq!(body["likes"][0]["createdAt"], NOW);
    answers.push(("app.bsky.feed.getLikes", body));
    let (_, body) = server.get(&format!(
        "/xrpc/app.bsky.feed.getLikes?uri={p1}&cid={}",
        r.p1["cid"].as_str().unwrap()
    ));
    assert_eq!(body["likes"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["cid"], r.p1["cid"]);
    answers.push(("app.bsky.feed.getLikes", body));
    let (_, body) = server.get(&format!(
        "/xrpc/app.bsky.feed.getLikes?uri={p1}&cid={}",
        r.r1["cid"].as_str().unwrap()
    ));
    assert_eq!(body["likes"], json!([]), "no like of that version: {body}");
    let (_, body) = server.get(&format!("/xrpc/app.bsky.feed.getRepostedBy?uri={p1}"));
    assert_eq!(body["repostedBy"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["repostedBy"][0]["did"], json!(r.carol));
    answers.push(("app.bsky.feed.getRepostedBy", body));
    assert_valid(&answers);
}

/// Post views: getPosts (unknown URIs left out) with every count, and
/// getQuotes (of any version, or of one CID).
#[test]
fn bsky_posts_and_quotes_count_replies_likes_reposts_and_quotes() {
    let (f, _turn) = shared();
    let (server, r) = (&f.server, &f.records);
    let mut answers: Vec<(&str, Value)> = Vec::new();
    let (status, body) = server.get(&format!(
        "/xrpc/app.bsky.feed.getPosts?uris={}&uris={}&uris=at://did:plc:nobody/app.bsky.feed.post/3kzzzzzzzzzzz",
        r.p1["uri"].as_str().unwrap(),
        r.r1["uri"].as_str().unwrap()
    ));
    assert_eq!(status, 200, "{body}");
    let posts = body["posts"].as_array().unwrap();
    assert_eq!(posts.len(), 2, "the unknown URI is left out: {body}");
    assert_eq!(posts[0]["uri"], r.p1["uri"]);
    assert_eq!(posts[1]["uri"], r.r1["uri"]);
    assert_eq!(
        [
            &posts[0]["replyCount"],
            &posts[0]["likeCount"],
            &posts[0]["repostCount"],
            &posts[0]["quoteCount"]
        ],
        [&json!(1), &json!(1), &json!(1), &json!(1)],
        "{body}"
    );
    assert_eq!(posts[0]["author"]["handle"], "alice.test");
    assert_eq!(posts[0]["record"]["text"], "Hello from alice");
    answers.push(("app.bsky.feed.getPosts", body));
    let (_, body) = server.get(&format!(
        "/xrpc/app.bsky.feed.getQuotes?uri={}",
        r.p1["uri"].as_str().unwrap()
    ));
    assert_eq!(body["posts"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["posts"][0]["uri"], r.quote["uri"]);
    answers.push(("app.bsky.feed.getQuotes", body));
    let (_, body) = server.get(&format!(
        "/xrpc/app.bsky.feed.getQuotes?uri={}&cid={}",
        r.p1["uri"].as_str().unwrap(),
        r.r1["cid"].as_str().unwrap()
    ));
    assert_eq!(body["posts"], json!([]), "no quote of that version: {body}");
    assert_valid(&answers);
}

/// getPostThread: a reply with its parent and its replies, cut by depth and
/// parentHeight; an unknown post is NotFound.
#[test]
fn bsky_post_thread_shows_parent_and_replies() {
    let (f, _turn) = shared();
    let (server, r) = (&f.server, &f.records);
    let mut answers: Vec<(&str, Value)> = Vec::new();
    let (status, body) = server.get(&format!(
        "/xrpc/app.bsky.feed.getPostThread?uri={}",
        r.r1["uri"].as_str().unwrap()
    ));
    assert_eq!(status, 200, "{body}");
    let thread = &body["thread"];
    assert_eq!(thread["$type"], "app.bsky.feed.defs#threadViewPost");
    assert_eq!(thread["post"]["uri"], r.r1["uri"]);
    assert_eq!(thread["parent"]["post"]["uri"], r.p1["uri"]);
    assert!(
        thread["parent"].get("parent").is_none(),
        "p1 is the root: {body}"
    );
    assert_eq!(thread["replies"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(thread["replies"][0]["post"]["uri"], r.r2["uri"]);
    answers.push(("app.bsky.feed.getPostThread", body));
    let (_, body) = server.get(&format!(
        "/xrpc/app.bsky.feed.getPostThread?uri={}&depth=0&parentHeight=0",
        r.r1["uri"].as_str().unwrap()
    ));
    assert!(body["thread"].get("parent").is_none(), "{body}");
    assert!(
        body["thread"]["replies"]
            .as_array()
            .is_none_or(|r| r.is_empty()),
        "{body}"
    );
    answers.push(("app.bsky.feed.getPostThread", body));
    let (status, body) =
        server.get("/xrpc/app.bsky.feed.getPostThread?uri=at://did:plc:nobody/app.bsky.feed.post/3kzzzzzzzzzzz");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("NotFound")),
        "{body}"
    );
    assert_valid(&answers);
}

/// getAuthorFeed: posts and reposts newest first, replies with their
/// context; filtered to posts without replies, paged.
#[test]
fn bsky_author_feed_has_reposts_and_reply_context() {
    let (f, _turn) = shared();
    let (server, r) = (&f.server, &f.records);
    let mut answers: Vec<(&str, Value)> = Vec::new();
    let (status, body) = server.get("/xrpc/app.bsky.feed.getAuthorFeed?actor=carol.test");
    assert_eq!(status, 200, "{body}");
    let feed = body["feed"].as_array().unwrap();
    assert_eq!(feed.len(), 5, "{body}");
    assert_eq!(feed[0]["post"]["uri"], r.quote["uri"]);
    assert_eq!(feed[1]["post"]["uri"], r.p1["uri"]);
    assert_eq!(
        feed[1]["reason"]["$type"],
        "app.bsky.feed.defs#reasonRepost"
    );
    assert_eq!(feed[1]["reason"]["by"]["did"], json!(r.carol));
    assert_eq!(feed[4]["post"]["uri"], r.r2["uri"]);
    assert_eq!(feed[4]["reply"]["root"]["uri"], r.p1["uri"]);
    assert_eq!(feed[4]["reply"]["parent"]["uri"], r.r1["uri"]);
    assert_eq!(feed[4]["reply"]["grandparentAuthor"]["did"], json!(r.alice));
    answers.push(("app.bsky.feed.getAuthorFeed", body));
    let (_, body) = server
        .get("/xrpc/app.bsky.feed.getAuthorFeed?actor=carol.test&filter=posts_no_replies&limit=2");
    assert_eq!(body["feed"].as_array().unwrap().len(), 2, "{body}");
    let (_, rest) = server.get(&format!(
        "/xrpc/app.bsky.feed.getAuthorFeed?actor=carol.test&filter=posts_no_replies&cursor={}",
        body["cursor"].as_str().unwrap()
    ));
    assert_eq!(
        rest["feed"].as_array().unwrap().len(),
        2,
        "the reply is filtered out: {rest}"
    );
    answers.push(("app.bsky.feed.getAuthorFeed", rest));
    assert_valid(&answers);
}

/// A GraphQL subscription (graphql-ws) receives a post created through the
/// PDS, filtered by its where; the post that does not match is not
/// delivered. Alone: its two posts would change other tests' counts of
/// posts, so both are deleted again before it asserts anything or lets
/// another test run.
#[test]
fn graphql_subscription_delivers_only_matching_new_posts() {
    use std::io::BufRead;
    let (f, _alone) = alone();
    let (server, bob) = (&f.server, &f.records.bob);
    let ws = server.base.replace("http://", "ws://") + "/graphql";
    let mut sub = std::process::Command::new("node")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/harness/gql-subscribe.mjs"))
        .args([
            ws.as_str(),
            r#"subscription { appBskyFeedPostCreated(where: {text: {contains: "crab"}}) { uri text did } }"#,
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    let mut lines = std::io::BufReader::new(sub.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.contains("ready"), "{ready}");
    let mut pds = f.pds();
    let miss = pds.cmd(post_op(bob, "no match here", NOW, None));
    let crab = pds.cmd(post_op(bob, "a crab walks sideways", NOW, None));
    let event = lines.next();
    let exited = sub.wait().unwrap();
    let mut last = crab["seq"].as_i64().unwrap();
    for post in [&miss, &crab] {
        let gone = pds.cmd(json!({"op": "delete", "did": bob,
            "collection": "app.bsky.feed.post", "rkey": post["rkey"]}));
        last = gone["seq"].as_i64().unwrap();
    }
    drop(pds);
    server.wait_for_cursor(last);
    let event: Value = serde_json::from_str(&event.expect("an event").unwrap()).unwrap();
    assert_eq!(
        event["data"]["appBskyFeedPostCreated"],
        json!({"uri": crab["uri"], "text": "a crab walks sideways", "did": bob}),
        "{event}"
    );
    assert!(exited.success());
}

/// A profile change reaches the cached view. The profile is an account's of
/// its own, read (and so cached) before the change: no other test reads it.
#[test]
fn a_profile_change_reaches_the_cached_view() {
    let (f, _turn) = shared();
    let server = &f.server;
    let put_profile = |did: &str, name: &str| {
        json!({"op": "put", "did": did, "collection": "app.bsky.actor.profile",
            "rkey": "self", "record": {"displayName": name}})
    };
    let (dave, first) = {
        let mut pds = f.pds();
        let dave = pds.create_account("dave.test");
        let first = pds.cmd(put_profile(&dave, "Dave"));
        (dave, first)
    };
    server.wait_for_cursor(first["seq"].as_i64().unwrap());
    let view = format!("/xrpc/app.bsky.actor.getProfile?actor={dave}");
    let (_, cached) = server.get(&view);
    assert_eq!(cached["displayName"], "Dave", "{cached}");
    let changed = f.pds().cmd(put_profile(&dave, "Dave B."));
    server.wait_for_cursor(changed["seq"].as_i64().unwrap());
    let (_, profile) = server.get(&view);
    assert_eq!(profile["displayName"], "Dave B.", "{profile}");
}

#[test]
fn serve_exits_cleanly_on_sigterm() {
    let f = fixture();
    assert!(f.stopped_with.success(), "clean exit on SIGTERM");
}

/// Backlink counts in the stopped store, exact after the delete.
#[test]
fn link_counts_are_exact_after_a_delete() {
    let f = fixture();
    let r = &f.records;
    let count = |target: &Value, collection: &str, path: &str| -> i64 {
        let q = format!(
            "SELECT coalesce(sum(n), 0) AS n FROM link_counts WHERE target = '{}' AND collection = '{collection}' AND path = '{path}'",
            target.as_str().unwrap()
        );
        let out = f.stopped_sql(&q);
        out.lines().nth(2).unwrap().trim().parse().unwrap()
    };
    assert_eq!(count(&r.p1["uri"], "app.bsky.feed.like", ".subject.uri"), 1);
    assert_eq!(
        count(&r.p1["uri"], "app.bsky.feed.post", ".reply.root.uri"),
        2
    );
    assert_eq!(
        count(&r.p1["uri"], "app.bsky.feed.post", ".reply.parent.uri"),
        1
    );
    assert_eq!(
        count(&r.r1["uri"], "app.bsky.feed.post", ".reply.parent.uri"),
        1
    );
    assert_eq!(
        count(&json!(r.alice), "app.bsky.graph.follow", ".subject"),
        2
    );
    assert_eq!(count(&json!(r.bob), "app.bsky.graph.follow", ".subject"), 1);
    assert_eq!(
        count(
            &r.event["uri"],
            "community.lexicon.calendar.rsvp",
            ".subject.uri"
        ),
        2
    );
}

/// The stopped store holds the invalid record in quarantine, with the
/// reason, and every account's handle.
#[test]
fn invalid_records_are_quarantined_and_actors_kept() {
    let f = fixture();
    let out = f.stopped_sql("SELECT collection, reason FROM quarantine");
    assert!(
        out.contains("xyz.statusphere.status") && out.contains("graphemes"),
        "{out}"
    );
    let out = f.stopped_sql("SELECT handle FROM actors ORDER BY handle");
    assert!(
        out.contains("alice.test") && out.contains("bob.test") && out.contains("carol.test"),
        "{out}"
    );
}

/// The hot view caches (post views, reply lists, thread contexts) never
/// answer from before a batch a client has seen committed: a thread read
/// once (and so cached) shows a new reply, a new like and the root author's
/// like as soon as the cursor has passed them, and a deleted reply leaves.
#[test]
fn cached_thread_views_follow_every_committed_change() {
    let mut pds = Pds::start();
    let data = tempfile::tempdir().unwrap();
    let server = start_lexview(&pds, data.path());
    let alice = pds.create_account("alice.test");
    let bob = pds.create_account("bob.test");
    let now = "2026-11-24T12:00:00.000Z";
    let root = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
        "record": {"text": "a thread", "createdAt": now}}),
    );
    let reply = |text: &str| {
        json!({"op": "create", "did": bob, "collection": "app.bsky.feed.post",
            "record": {"text": text, "createdAt": now,
                "reply": {"root": strong_ref(&root), "parent": strong_ref(&root)}}})
    };
    let first = pds.cmd(reply("first"));
    server.wait_for_cursor(first["seq"].as_i64().unwrap());
    let uri = root["uri"].as_str().unwrap();
    let thread = |server: &Server| {
        let (status, body) = server.get(&format!("/xrpc/app.bsky.feed.getPostThread?uri={uri}"));
        assert_eq!(status, 200, "{body}");
        body
    };
    let texts = |t: &Value| -> Vec<String> {
        t["thread"]["replies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["post"]["record"]["text"].as_str().unwrap().to_string())
            .collect()
    };
    // Read twice: the second answer comes from the caches.
    for _ in 0..2 {
        let t = thread(&server);
        assert_eq!(texts(&t), ["first"], "{t}");
        assert_eq!(t["thread"]["post"]["replyCount"], 1, "{t}");
        assert_eq!(t["thread"]["post"]["likeCount"], 0, "{t}");
        assert_eq!(t["thread"]["replies"][0]["threadContext"], json!({}), "{t}");
    }

    // A second reply, a like of the root and the root author's like of the
    // first reply: each visible once the cursor has passed it.
    let second = pds.cmd(reply("second"));
    pds.cmd(
        json!({"op": "create", "did": bob, "collection": "app.bsky.feed.like",
        "record": {"subject": strong_ref(&root), "createdAt": now}}),
    );
    let liked = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.like",
        "record": {"subject": strong_ref(&first), "createdAt": now}}),
    );
    server.wait_for_cursor(liked["seq"].as_i64().unwrap());
    let t = thread(&server);
    assert_eq!(texts(&t), ["first", "second"], "{t}");
    assert_eq!(t["thread"]["post"]["replyCount"], 2, "{t}");
    assert_eq!(t["thread"]["post"]["likeCount"], 1, "{t}");
    assert_eq!(
        t["thread"]["replies"][0]["threadContext"]["rootAuthorLike"], liked["uri"],
        "{t}"
    );
    let (_, posts) = server.get(&format!(
        "/xrpc/app.bsky.feed.getPosts?uris={}",
        first["uri"].as_str().unwrap()
    ));
    assert_eq!(posts["posts"][0]["likeCount"], 1, "{posts}");

    // The second reply deleted: gone from the thread and its count.
    let gone = pds.cmd(
        json!({"op": "delete", "did": bob, "collection": "app.bsky.feed.post",
        "rkey": second["rkey"]}),
    );
    server.wait_for_cursor(gone["seq"].as_i64().unwrap());
    let t = thread(&server);
    assert_eq!(texts(&t), ["first"], "{t}");
    assert_eq!(t["thread"]["post"]["replyCount"], 1, "{t}");
}

/// Threads are read from the search index where it holds the posts (their
/// rows and reply lists, with one statement for all their counts), and yet
/// show every committed change as soon as the cursor has passed it, before
/// the index commits it (about once a second): a new reply, a reply moved
/// to another parent by an update, a deleted reply, and an account that
/// leaves and comes back.
#[test]
fn threads_read_from_the_search_index_follow_every_committed_change() {
    let mut pds = Pds::start();
    let data = tempfile::tempdir().unwrap();
    let server = start_lexview(&pds, data.path());
    let alice = pds.create_account("alice.test");
    let bob = pds.create_account("bob.test");
    let carol = pds.create_account("carol.test");
    let now = "2026-11-24T12:00:00.000Z";
    let post = |did: &str, text: &str, parent: Option<&Value>| {
        let reply = parent.map(|p| json!({"root": strong_ref(p), "parent": strong_ref(p)}));
        post_op(did, text, now, reply)
    };
    let root = pds.cmd(post(&alice, "the root", None));
    let other = pds.cmd(post(&alice, "another root", None));
    let first = pds.cmd(post(&bob, "first", Some(&root)));
    server.wait_for_cursor(first["seq"].as_i64().unwrap());
    let documents = |server: &Server, n: u64| {
        let start = std::time::Instant::now();
        while server.counter("search_documents") < n {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "the search index never committed {n} documents"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let reads = |server: &Server| {
        (
            server.counter("post_index_reads_total{what=\"rows\"}"),
            server.counter("post_index_reads_total{what=\"reply_lists\"}"),
        )
    };
    let thread = |server: &Server, of: &Value| {
        let uri = of["uri"].as_str().unwrap();
        let (status, body) = server.get(&format!("/xrpc/app.bsky.feed.getPostThread?uri={uri}"));
        assert_eq!(status, 200, "{body}");
        let texts: Vec<String> = body["thread"]["replies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["post"]["record"]["text"].as_str().unwrap().to_string())
            .collect();
        (texts, body["thread"]["post"]["replyCount"].clone(), body)
    };
    let mut answers = Vec::new();

    // Once the index has committed the three posts, the thread is read from
    // it (both counters move).
    documents(&server, 3);
    let before = reads(&server);
    let (texts, count, body) = thread(&server, &root);
    assert_eq!(
        (texts, count),
        (vec!["first".to_string()], json!(1)),
        "{body}"
    );
    let after = reads(&server);
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "{before:?} {after:?}"
    );
    answers.push(body);

    // "first" moved under the other root by an update, then a new reply by
    // carol: both seen at once, and still after the index has them.
    let moved = pds.cmd(
        json!({"op": "put", "did": bob, "collection": "app.bsky.feed.post",
        "rkey": first["rkey"], "record": {"text": "first", "createdAt": now,
        "reply": {"root": strong_ref(&other), "parent": strong_ref(&other)}}}),
    );
    let second = pds.cmd(post(&carol, "second", Some(&root)));
    server.wait_for_cursor(second["seq"].as_i64().unwrap());
    assert!(moved["uri"].is_string(), "{moved}");
    for committed in [false, true] {
        if committed {
            // Once the index has them, a follow (any committed app.bsky
            // record) empties the hot caches, and both threads are read
            // from the index again.
            documents(&server, 4);
            let follow = pds.cmd(json!({"op": "create", "did": alice,
                "collection": "app.bsky.graph.follow",
                "record": {"subject": carol, "createdAt": now}}));
            server.wait_for_cursor(follow["seq"].as_i64().unwrap());
        }
        let before = reads(&server);
        let (texts, count, body) = thread(&server, &root);
        assert_eq!(
            (texts, count),
            (vec!["second".to_string()], json!(1)),
            "{body}"
        );
        answers.push(body);
        let (texts, count, body) = thread(&server, &other);
        assert_eq!(
            (texts, count),
            (vec!["first".to_string()], json!(1)),
            "{body}"
        );
        answers.push(body);
        if committed {
            let after = reads(&server);
            assert!(
                after.0 > before.0 && after.1 > before.1,
                "{before:?} {after:?}"
            );
        }
    }

    // Carol's reply deleted: gone at once.
    let gone = pds.cmd(json!({"op": "delete", "did": carol,
        "collection": "app.bsky.feed.post", "rkey": second["rkey"]}));
    server.wait_for_cursor(gone["seq"].as_i64().unwrap());
    // (Carol's repository is empty after it: the commit's proof inverts to
    // the repository with the reply.)
    let (texts, count, body) = thread(&server, &root);
    assert_eq!((texts, count), (Vec::<String>::new(), json!(0)), "{body}");
    answers.push(body);

    // Bob deactivated: his reply leaves the other thread; reactivated, it
    // comes back (once his repository is read again).
    let r = pds.cmd(json!({"op": "deactivate", "did": bob}));
    server.wait_for_cursor(r["seq"].as_i64().unwrap());
    let (texts, _, body) = thread(&server, &other);
    assert_eq!(texts, Vec::<String>::new(), "{body}");
    let r = pds.cmd(json!({"op": "activate", "did": bob}));
    server.wait_for_cursor(r["seq"].as_i64().unwrap());
    let start = std::time::Instant::now();
    loop {
        let (texts, count, body) = thread(&server, &other);
        if texts == ["first"] && count == json!(1) {
            answers.push(body);
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "bob's reply never came back: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let answers: Vec<(&str, &Value)> = answers
        .iter()
        .map(|a| ("app.bsky.feed.getPostThread", a))
        .collect();
    common::assert_valid_outputs(&answers);
}
