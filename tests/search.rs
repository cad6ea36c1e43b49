//! Full-text search: exact result sets in English, German and Japanese, after
//! updates and deletes, through the path `serve` uses (the store's commit, then
//! `Search::on_commit` and the indexer thread's timed commit), and the same
//! sets after `lexview reindex --search` rebuilds the index from DuckDB.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use lexview::index::event::{Change, IndexEvent, RecordWrite};
use lexview::index::search::{Search, SearchFields, SearchQuery};
use lexview::index::store::Store;
use lexview::lexicon::Catalog;
use serde_json::json;

const CID: &str = "bafyreigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
const ALICE: &str = "did:plc:alice000000000000000000";
const BOB: &str = "did:plc:bob00000000000000000000";

fn post(did: &str, rkey: &str, text: &str, created_at: &str) -> Change {
    Change::Put(RecordWrite::new(
        did.into(),
        "app.bsky.feed.post".into(),
        rkey.into(),
        CID.into(),
        "3m2".into(),
        json!({"$type": "app.bsky.feed.post", "text": text, "createdAt": created_at}),
    ))
}

fn event_(did: &str, rkey: &str, name: &str, description: &str) -> Change {
    Change::Put(RecordWrite::new(
        did.into(),
        "community.lexicon.calendar.event".into(),
        rkey.into(),
        CID.into(),
        "3m2".into(),
        json!({"$type": "community.lexicon.calendar.event", "name": name,
               "description": description, "createdAt": "2026-01-01T00:00:00Z"}),
    ))
}

fn delete(did: &str, collection: &str, rkey: &str) -> Change {
    Change::Delete {
        did: did.into(),
        collection: collection.into(),
        rkey: rkey.into(),
        rev: "3m3".into(),
    }
}

fn batch(seq: i64, changes: Vec<Change>) -> Vec<IndexEvent> {
    vec![IndexEvent {
        source: "test".into(),
        cursor: Some(seq),
        time: None,
        changes,
    }]
}

fn catalog() -> Catalog {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    let (catalog, errors) = Catalog::load_dir(&dir).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    catalog
}

/// The searched fields as `lexview serve` sets them (the repository's
/// search.json, posts also indexed by their parent).
fn fields(catalog: &Catalog) -> SearchFields {
    lexview::cli::search_fields(
        catalog,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("search.json"),
    )
    .unwrap()
}

fn uri(did: &str, collection: &str, rkey: &str) -> String {
    format!("at://{did}/{collection}/{rkey}")
}

fn p(rkey: &str) -> String {
    let did = if rkey.starts_with('b') { BOB } else { ALICE };
    uri(did, "app.bsky.feed.post", rkey)
}

/// Every hit of `text`, best first.
fn hits(search: &Search, text: &str) -> Vec<lexview::index::search::Hit> {
    let q = SearchQuery {
        text: text.into(),
        limit: 100,
        ..Default::default()
    };
    search.index.search(&q).unwrap().0
}

/// The URIs that `text` finds (optionally in one collection / by one author).
fn found(
    search: &Search,
    text: &str,
    collection: Option<&str>,
    author: Option<&str>,
) -> BTreeSet<String> {
    let (hits, total) = search
        .index
        .search(&SearchQuery {
            text: text.into(),
            collection: collection.map(str::to_string),
            author: author.map(str::to_string),
            limit: 100,
            offset: 0,
            recency: false,
        })
        .unwrap();
    assert_eq!(hits.len(), total, "{text}: one page holds every hit");
    hits.into_iter().map(|h| h.uri).collect()
}

fn set(uris: &[String]) -> BTreeSet<String> {
    uris.iter().cloned().collect()
}

/// Applies a batch as `serve` does: the store's transaction, then search.
fn apply(store: &mut Store, search: &Search, batch: Vec<IndexEvent>) {
    let stats = store.apply(&batch).unwrap();
    search.on_commit(&batch, stats.indexed_us, &stats.accounts_moved);
}

/// Waits until `text` finds `want`; panics after a generous bound (CI machines
/// are slow; the ~1 s latency itself is a benchmark figure, not a test).
fn eventually(search: &Search, text: &str, want: BTreeSet<String>) {
    let start = Instant::now();
    loop {
        let got = found(search, text, None, None);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{text}: got {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The expected answers once every change below has been applied.
fn check_final_state(search: &Search) {
    // English: every word must match; case does not matter.
    assert_eq!(found(search, "lazy", None, None), set(&[p("a2")]));
    assert_eq!(
        found(search, "quick FOX", None, None),
        set(&[]),
        "a1 was deleted"
    );
    assert_eq!(
        found(search, "coffee", None, None),
        set(&[p("a2"), p("b1")])
    );
    assert_eq!(found(search, "coffee", None, Some(BOB)), set(&[p("b1")]));
    assert_eq!(found(search, "dog", None, None), set(&[]));
    // German: umlauts and ß fold, so either spelling finds them.
    assert_eq!(found(search, "Müller", None, None), set(&[p("a3")]));
    assert_eq!(
        found(search, "muller brotchen", None, None),
        set(&[p("a3")])
    );
    assert_eq!(found(search, "Straße", None, None), set(&[p("a3")]));
    assert_eq!(found(search, "strassenbahn", None, None), set(&[p("a4")]));
    assert_eq!(found(search, "Brücke", None, None), set(&[p("a4")]));
    // Japanese: bigrams, so a word matches inside unsegmented text.
    assert_eq!(found(search, "東京", None, None), set(&[p("a5")]));
    assert_eq!(found(search, "東京タワー", None, None), set(&[p("a5")]));
    assert_eq!(found(search, "大阪", None, None), set(&[p("a7")]));
    assert_eq!(found(search, "寿司", None, None), set(&[p("a7")]));
    assert_eq!(found(search, "紅葉", None, None), set(&[p("a6")]));
    assert_eq!(found(search, "京都の紅葉", None, None), set(&[p("a6")]));
    // Other record types and the collection filter.
    let meetup = uri(ALICE, "community.lexicon.calendar.event", "e1");
    assert_eq!(
        found(search, "Rust Meetup Berlin", None, None),
        set(std::slice::from_ref(&meetup))
    );
    assert_eq!(
        found(
            search,
            "kaffee",
            Some("community.lexicon.calendar.event"),
            None
        ),
        set(&[meetup])
    );
    assert_eq!(
        found(search, "kaffee", Some("app.bsky.feed.post"), None),
        set(&[])
    );
    // Nothing to match.
    assert_eq!(found(search, "  ,;!  ", None, None), set(&[]));
}

#[test]
fn english_german_and_japanese_after_updates_and_deletes_then_after_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog();
    let mut store = Store::open(dir.path()).unwrap();
    let search = Search::start(dir.path(), fields(&catalog), store.readers()).unwrap();
    let t = "2026-01-01T00:00:00Z";
    apply(
        &mut store,
        &search,
        batch(
            1,
            vec![
                post(
                    ALICE,
                    "a1",
                    "The quick brown fox jumps over the lazy dog",
                    t,
                ),
                post(ALICE, "a2", "A lazy afternoon with coffee", t),
                post(ALICE, "a3", "Müller kauft Brötchen in der Straße", t),
                post(ALICE, "a4", "Die Straßenbahn fährt über die Brücke", t),
                post(ALICE, "a5", "東京タワーに行きました", t),
                post(ALICE, "a6", "京都の紅葉はきれいです", t),
                post(ALICE, "a7", "東京で寿司を食べた", t),
                post(BOB, "b1", "Coffee first, then code", t),
                event_(ALICE, "e1", "Rust Meetup Berlin", "Vorträge und Kaffee"),
            ],
        ),
    );
    eventually(&search, "東京", set(&[p("a5"), p("a7")]));
    assert_eq!(found(&search, "lazy", None, None), set(&[p("a1"), p("a2")]));
    assert_eq!(found(&search, "lazy dog", None, None), set(&[p("a1")]));

    // An update replaces the old text; a delete removes the record.
    apply(
        &mut store,
        &search,
        batch(2, vec![post(ALICE, "a7", "大阪で寿司を食べた", t)]),
    );
    apply(
        &mut store,
        &search,
        batch(3, vec![delete(ALICE, "app.bsky.feed.post", "a1")]),
    );
    // Until the index commits these changes, neither record is answered
    // from its old document: the hit must be read from the store, where
    // the deleted record is gone and the updated one is new (whichever
    // snapshot the search ran on).
    for h in hits(&search, "lazy") {
        assert!(h.uri != p("a1") || h.stored.is_none(), "{h:?}");
    }
    for h in hits(&search, "寿司") {
        let old = h.stored.as_ref().is_some_and(|s| s.record.contains("東京"));
        assert!(h.uri != p("a7") || !old, "{h:?}");
    }
    eventually(&search, "lazy", set(&[p("a2")]));
    eventually(&search, "東京", set(&[p("a5")]));
    // Once committed, hits are answered from their documents again.
    let h = hits(&search, "大阪").pop().expect("a7");
    let stored = h.stored.expect("the committed document answers");
    assert!(stored.record.contains("大阪で寿司を食べた"), "{stored:?}");
    assert_eq!(stored.did, ALICE);
    check_final_state(&search);
    search.close();
    drop(search);
    drop(store);

    // The rebuilt index gives the same answers.
    let n = lexview::index::search::reindex(dir.path(), &fields(&catalog)).unwrap();
    assert_eq!(n, 8, "8 searchable records remain in the store");
    let store = Store::open(dir.path()).unwrap();
    let search = Search::start(dir.path(), fields(&catalog), store.readers()).unwrap();
    assert_eq!(search.index.len(), 8);
    check_final_state(&search);
    search.close();
}

#[test]
fn recency_ranks_the_newer_of_two_close_matches_first() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog();
    let mut store = Store::open(dir.path()).unwrap();
    let search = Search::start(dir.path(), fields(&catalog), store.readers()).unwrap();
    let now = chrono::Utc::now();
    let old = (now - chrono::Duration::days(60)).to_rfc3339();
    let new = (now - chrono::Duration::hours(1)).to_rfc3339();
    // The old post is the better BM25 match (the shorter text).
    apply(
        &mut store,
        &search,
        batch(
            1,
            vec![
                post(ALICE, "a1", "atproto news", &old),
                post(ALICE, "a2", "atproto news today", &new),
            ],
        ),
    );
    eventually(&search, "atproto", set(&[p("a1"), p("a2")]));
    let order = |recency| {
        let (hits, _) = search
            .index
            .search(&SearchQuery {
                text: "atproto".into(),
                limit: 10,
                recency,
                ..Default::default()
            })
            .unwrap();
        hits.into_iter().map(|h| h.uri).collect::<Vec<_>>()
    };
    assert_eq!(order(false), [p("a1"), p("a2")]);
    assert_eq!(order(true), [p("a2"), p("a1")]);
    search.close();
}

#[test]
fn a_restart_catches_up_with_what_the_store_committed() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog();
    {
        let mut store = Store::open(dir.path()).unwrap();
        let search = Search::start(dir.path(), fields(&catalog), store.readers()).unwrap();
        apply(
            &mut store,
            &search,
            batch(
                1,
                vec![post(ALICE, "a1", "first post", "2026-01-01T00:00:00Z")],
            ),
        );
        eventually(&search, "first", set(&[p("a1")]));
        search.close();
        // Committed to the store, never handed to search (a crash in between).
        store
            .apply(&batch(
                2,
                vec![post(ALICE, "a2", "second post", "2026-01-01T00:00:00Z")],
            ))
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let search = Search::start(dir.path(), fields(&catalog), store.readers()).unwrap();
    assert_eq!(found(&search, "post", None, None), set(&[p("a1"), p("a2")]));
    search.close();
}

#[test]
fn a_restart_drops_what_the_store_deleted_or_hid_while_search_missed_it() {
    // Documents store their records, so a hit is answered without the store;
    // a delete or an account change that search never saw (a crash between
    // the store's commit and the index's, or `lexview backfill` writing the
    // store while `serve` was down) must not be answered after a restart.
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog();
    let t = "2026-01-01T00:00:00Z";
    {
        let mut store = Store::open(dir.path()).unwrap();
        let search = Search::start(dir.path(), fields(&catalog), store.readers()).unwrap();
        apply(
            &mut store,
            &search,
            batch(
                1,
                vec![
                    post(ALICE, "a1", "gone soon", t),
                    post(ALICE, "a2", "stays here", t),
                    post(BOB, "b1", "hidden soon", t),
                ],
            ),
        );
        eventually(&search, "soon", set(&[p("a1"), p("b1")]));
        search.close();
        store
            .apply(&batch(
                2,
                vec![
                    delete(ALICE, "app.bsky.feed.post", "a1"),
                    Change::Account {
                        did: BOB.into(),
                        active: false,
                        status: Some("takendown".into()),
                    },
                ],
            ))
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let search = Search::start(dir.path(), fields(&catalog), store.readers()).unwrap();
    assert_eq!(found(&search, "soon", None, None), set(&[]));
    assert_eq!(found(&search, "here", None, None), set(&[p("a2")]));
    assert_eq!(search.index.len(), 1);
    search.close();
}

#[test]
fn an_account_out_of_view_leaves_search_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog();
    let mut store = Store::open(dir.path()).unwrap();
    let search = Search::start(dir.path(), fields(&catalog), store.readers()).unwrap();
    let account = |active, status: Option<&str>| {
        vec![Change::Account {
            did: ALICE.into(),
            active,
            status: status.map(str::to_string),
        }]
    };
    let t = "2026-01-01T00:00:00Z";
    apply(
        &mut store,
        &search,
        batch(
            1,
            vec![
                post(ALICE, "a1", "Bergwanderung im Herbst", t),
                post(BOB, "b1", "Herbst in Tokyo", t),
            ],
        ),
    );
    eventually(&search, "herbst", set(&[p("a1"), p("b1")]));
    apply(
        &mut store,
        &search,
        batch(2, account(false, Some("deactivated"))),
    );
    eventually(&search, "herbst", set(&[p("b1")]));
    apply(&mut store, &search, batch(3, account(true, None)));
    eventually(&search, "herbst", set(&[p("a1"), p("b1")]));
    apply(
        &mut store,
        &search,
        batch(4, account(false, Some("deleted"))),
    );
    eventually(&search, "herbst", set(&[p("b1")]));
    search.close();
}

/// A start whose searched fields cover a collection the index does not
/// hold whole (the search config changed) rebuilds the index: records the
/// store committed long before the index's last commit are found too. Post
/// views read posts from the index only while it holds every post: a
/// reload that stops searching posts ends that until a restart.
#[test]
fn a_start_that_searches_another_collection_rebuilds_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog();
    let config = dir.path().join("no-events.json");
    std::fs::write(
        &config,
        r#"{"fields": {"community.lexicon.calendar.event": {"name": false, "description": false}}}"#,
    )
    .unwrap();
    let without_events = || lexview::cli::search_fields(&catalog, &config).unwrap();
    {
        let mut store = Store::open(dir.path()).unwrap();
        let search = Search::start(dir.path(), without_events(), store.readers()).unwrap();
        assert!(search.threaded().is_some());
        apply(
            &mut store,
            &search,
            batch(
                1,
                vec![
                    post(ALICE, "a1", "first post", "2026-01-01T00:00:00Z"),
                    event_(ALICE, "e1", "river festival", "boats"),
                ],
            ),
        );
        eventually(&search, "first", set(&[p("a1")]));
        assert!(found(&search, "river", None, None).is_empty());
        // The index's last commit well after the event (a restart re-reads
        // five seconds before it).
        std::thread::sleep(Duration::from_secs(6));
        apply(
            &mut store,
            &search,
            batch(
                2,
                vec![post(ALICE, "a2", "second post", "2026-01-01T00:00:00Z")],
            ),
        );
        eventually(&search, "second", set(&[p("a2")]));
        search.close();
    }
    let store = Store::open(dir.path()).unwrap();
    let search = Search::start(dir.path(), fields(&catalog), store.readers()).unwrap();
    assert_eq!(
        found(&search, "river", None, None),
        set(&[uri(ALICE, "community.lexicon.calendar.event", "e1")])
    );
    assert_eq!(found(&search, "post", None, None), set(&[p("a1"), p("a2")]));
    assert!(search.threaded().is_some());
    // A reload that stops searching posts, then one that searches them
    // again: the posts written in between were never indexed.
    let no_posts = dir.path().join("no-posts.json");
    std::fs::write(
        &no_posts,
        r#"{"fields": {"app.bsky.feed.post": {"text": false}}}"#,
    )
    .unwrap();
    search.set_fields(lexview::cli::search_fields(&catalog, &no_posts).unwrap());
    assert!(search.threaded().is_none());
    search.set_fields(fields(&catalog));
    assert!(
        search.threaded().is_none(),
        "until a restart rebuilds the index"
    );
    search.close();
}
