//! The DuckDB store: records, links and counts stay exact through creates,
//! updates, deletes and replays of the same events.

mod common;

use lexview::index::event::{did_of, Change, IndexEvent, Link, RecordWrite};
use lexview::index::store::Store;
use serde_json::json;

fn like(did: &str, rkey: &str, subject: &str) -> Change {
    let record = json!({"$type": "app.bsky.feed.like", "subject": {"uri": subject, "cid": "bafyreigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"}, "createdAt": "2026-01-01T00:00:00Z"});
    Change::Put(RecordWrite::new(
        did.into(),
        "app.bsky.feed.like".into(),
        rkey.into(),
        "bafyreigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi".into(),
        "3m2".into(),
        record,
    ))
}

fn event(seq: i64, changes: Vec<Change>) -> IndexEvent {
    IndexEvent {
        source: "test".into(),
        cursor: Some(seq),
        time: None,
        changes,
    }
}

fn count(store: &Store, target: &str) -> i64 {
    store
        .readers()
        .with_blocking(|c| {
            c.query_row(
                "SELECT coalesce(sum(n), 0)::BIGINT FROM link_counts WHERE target = ? AND collection = 'app.bsky.feed.like' AND path = '.subject.uri'",
                [target],
                |r| r.get(0),
            )
        })
        .unwrap()
}

fn records(store: &Store) -> i64 {
    store
        .readers()
        .with_blocking(|c| c.query_row("SELECT count(*) FROM records", [], |r| r.get(0)))
        .unwrap()
}

const POST: &str = "at://did:plc:aaaa/app.bsky.feed.post/3kpost";
const POST2: &str = "at://did:plc:aaaa/app.bsky.feed.post/3kpost2";

#[test]
fn counts_follow_creates_updates_and_deletes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store
        .apply(&[event(
            1,
            vec![like("did:plc:b", "1", POST), like("did:plc:c", "1", POST)],
        )])
        .unwrap();
    assert_eq!(count(&store, POST), 2);
    // Same batch: a create and its delete cancel out.
    store
        .apply(&[
            event(2, vec![like("did:plc:d", "1", POST)]),
            event(
                3,
                vec![Change::Delete {
                    did: "did:plc:d".into(),
                    collection: "app.bsky.feed.like".into(),
                    rkey: "1".into(),
                    rev: "3m3".into(),
                }],
            ),
        ])
        .unwrap();
    assert_eq!(count(&store, POST), 2);
    // An update moves the like to another post.
    store
        .apply(&[event(4, vec![like("did:plc:b", "1", POST2)])])
        .unwrap();
    assert_eq!((count(&store, POST), count(&store, POST2)), (1, 1));
    // Replaying already-applied events changes nothing.
    store
        .apply(&[
            event(4, vec![like("did:plc:b", "1", POST2)]),
            event(1, vec![like("did:plc:c", "1", POST)]),
        ])
        .unwrap();
    assert_eq!((count(&store, POST), count(&store, POST2)), (1, 1));
    assert_eq!(records(&store), 2);
    store
        .apply(&[event(
            5,
            vec![Change::Delete {
                did: "did:plc:c".into(),
                collection: "app.bsky.feed.like".into(),
                rkey: "1".into(),
                rev: "3m5".into(),
            }],
        )])
        .unwrap();
    assert_eq!(count(&store, POST), 0);
    assert_eq!(store.cursor("test").unwrap(), Some(5));
    let rows: i64 = store
        .readers()
        .with_blocking(|c| {
            c.query_row("SELECT count(*) FROM link_counts WHERE n <= 0", [], |r| {
                r.get(0)
            })
        })
        .unwrap();
    assert_eq!(rows, 0, "no zero or negative counts are kept");
    let differ: i64 = store
        .readers()
        .with_blocking(|c| {
            c.query_row(
                "SELECT count(*) FROM (SELECT target, source_collection AS collection, path, count(*) AS n FROM links GROUP BY ALL) a
                 FULL JOIN link_counts b USING (target, collection, path) WHERE a.n IS DISTINCT FROM b.n",
                [],
                |r| r.get(0),
            )
        })
        .unwrap();
    assert_eq!(differ, 0, "link_counts equals a recount of links");
}

#[test]
fn links_have_paths_and_their_targets_name_their_dids() {
    let record = json!({"text": "hi", "reply": {"root": {"uri": POST, "cid": "x"}, "parent": {"uri": POST2, "cid": "y"}},
        "facets": [{"features": [{"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:zzzz"}]}]});
    let links = lexview::index::links::extract_links(&record);
    assert_eq!(
        links,
        vec![
            Link {
                path: ".reply.root.uri".into(),
                target: POST.into()
            },
            Link {
                path: ".reply.parent.uri".into(),
                target: POST2.into()
            },
            Link {
                path: ".facets[].features[app.bsky.richtext.facet#mention].did".into(),
                target: "did:plc:zzzz".into()
            },
        ]
    );
    assert_eq!(did_of(&links[0].target), "did:plc:aaaa");
    assert_eq!(did_of(&links[2].target), "did:plc:zzzz");
}

#[test]
fn the_cursor_commits_with_the_data_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(dir.path()).unwrap();
        store
            .apply(&[event(7, vec![like("did:plc:b", "1", POST)])])
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.cursor("test").unwrap(), Some(7));
    assert_eq!(count(&store, POST), 1);
}

#[test]
fn the_production_corpus_indexes() {
    let catalog = common::catalog("lexicons");
    let ingestor = lexview::ingest::Ingestor::new(catalog, Default::default());
    let events: Vec<IndexEvent> = common::frames("jetstream/frames.bin")
        .iter()
        .map(|f| match ingestor.process("prod", f).unwrap() {
            lexview::ingest::Outcome::Event(e) => e,
            o => panic!("{o:?}"),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let stats = store.apply(&events).unwrap();
    assert_eq!(stats.events, 150);
    // 105 likes + 17 posts + 15 reposts + 6 follows + 1 block-less status = puts; blocks and
    // wild collections are not in the official set's bundled records here.
    let n: i64 = store
        .readers()
        .with_blocking(|c| c.query_row("SELECT count(*) FROM records", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(n as usize, stats.puts);
    let actors: i64 = store
        .readers()
        .with_blocking(|c| c.query_row("SELECT count(*) FROM actors", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(actors, 1);
}

#[test]
fn a_create_replayed_after_a_reopen_is_not_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = Store::open(dir.path()).unwrap();
        store
            .apply(&[event(1, vec![like("did:plc:b", "1", POST)])])
            .unwrap();
    }
    // A new process: the same create arrives again (a rewind, a second source).
    let mut store = Store::open(dir.path()).unwrap();
    store
        .apply(&[event(2, vec![like("did:plc:b", "1", POST)])])
        .unwrap();
    assert_eq!(count(&store, POST), 1);
    assert_eq!(records(&store), 1);
    // And in the same process once more.
    store
        .apply(&[event(3, vec![like("did:plc:b", "1", POST)])])
        .unwrap();
    assert_eq!(count(&store, POST), 1);
    assert_eq!(records(&store), 1);
}

fn account(did: &str, active: bool, status: Option<&str>) -> Change {
    Change::Account {
        did: did.into(),
        active,
        status: status.map(str::to_string),
    }
}

/// Every `link_counts` row equals a recount of `links`, and no count is left
/// for links that are gone.
fn assert_counts_match_links(store: &Store) {
    let diff: i64 = store
        .readers()
        .with_blocking(|c| {
            c.query_row(
                "SELECT count(*) FROM (
                   (SELECT target, collection, path, n FROM link_counts
                    EXCEPT SELECT target, source_collection, path, count(*) FROM links GROUP BY ALL)
                   UNION ALL
                   (SELECT target, source_collection, path, count(*) FROM links GROUP BY ALL
                    EXCEPT SELECT target, collection, path, n FROM link_counts))",
                [],
                |r| r.get(0),
            )
        })
        .unwrap();
    assert_eq!(diff, 0, "link_counts differs from a recount of links");
}

fn hidden(store: &Store) -> i64 {
    store
        .readers()
        .with_blocking(|c| c.query_row("SELECT count(*) FROM hidden_records", [], |r| r.get(0)))
        .unwrap()
}

#[test]
fn deactivation_hides_reactivation_restores_and_deletion_purges_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let (alice, carol) = ("did:plc:alice", "did:plc:carol");
    let moved = |did: &str, back: bool| vec![(did.to_string(), back)];
    let stats = store
        .apply(&[event(
            1,
            vec![
                account(alice, true, None),
                like(alice, "l1", POST),
                like(alice, "l2", POST2),
                like(carol, "l3", POST),
            ],
        )])
        .unwrap();
    // An account that is (and was) active moves nothing.
    assert_eq!(stats.accounts_moved, []);
    assert_eq!(
        (count(&store, POST), count(&store, POST2), records(&store)),
        (2, 1, 3)
    );

    // Deactivated: alice's likes leave every answer and count.
    let stats = store
        .apply(&[event(2, vec![account(alice, false, Some("deactivated"))])])
        .unwrap();
    assert_eq!(stats.hidden, 2);
    assert_eq!(stats.accounts_moved, moved(alice, false));
    assert_eq!(
        (count(&store, POST), count(&store, POST2), records(&store)),
        (1, 0, 1)
    );
    assert_eq!(hidden(&store), 2);
    assert_counts_match_links(&store);
    // The same status again moves nothing.
    let stats = store
        .apply(&[event(3, vec![account(alice, false, Some("deactivated"))])])
        .unwrap();
    assert_eq!(stats.accounts_moved, []);
    assert_eq!((count(&store, POST), hidden(&store)), (1, 2));

    // Reactivated: they come back, counted once.
    let stats = store
        .apply(&[event(4, vec![account(alice, true, None)])])
        .unwrap();
    assert_eq!(stats.restored, 2);
    assert_eq!(stats.accounts_moved, moved(alice, true));
    assert_eq!(
        (count(&store, POST), count(&store, POST2), records(&store)),
        (2, 1, 3)
    );
    assert_eq!(hidden(&store), 0);
    assert_counts_match_links(&store);

    // Taken down, then deleted: everything of alice's is gone for good.
    store
        .apply(&[event(5, vec![account(alice, false, Some("takendown"))])])
        .unwrap();
    let stats = store
        .apply(&[event(6, vec![account(alice, false, Some("deleted"))])])
        .unwrap();
    assert_eq!(stats.purged, 2);
    assert_eq!(stats.accounts_moved, moved(alice, false));
    assert_eq!(
        (count(&store, POST), count(&store, POST2), records(&store)),
        (1, 0, 1)
    );
    assert_eq!(hidden(&store), 0);
    assert_counts_match_links(&store);

    // Deleting a visible account purges it and its counts in one step.
    let stats = store
        .apply(&[event(7, vec![account(carol, false, Some("deleted"))])])
        .unwrap();
    assert_eq!(stats.purged, 1);
    assert_eq!((count(&store, POST), records(&store)), (0, 0));
    assert_counts_match_links(&store);
}

/// The scan types of a query's executed plan (EXPLAIN ANALYZE), bound to `param`.
fn scans(store: &Store, sql: &str, param: &str) -> Vec<String> {
    let plan: Vec<String> = store
        .readers()
        .with_blocking(|c| {
            let mut stmt = c.prepare(&format!("EXPLAIN ANALYZE {sql}"))?;
            let rows = stmt.query_map([param], |r| r.get::<_, String>(1))?;
            rows.collect()
        })
        .unwrap();
    // Boxes stand side by side: take every "Type: … Scan" on a line.
    plan.join("\n")
        .split("Type: ")
        .skip(1)
        .filter_map(|t| t.find("Scan").map(|end| t[..end + 4].trim().to_string()))
        .collect()
}

/// Point lookups must reach the ART indexes of migration 6 (through the
/// lookup macros), also for lists longer than DuckDB's default of 50 keys:
/// a sequential scan here costs a full pass over the table per request.
#[test]
fn lookups_use_the_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let post = |i: usize| {
        format!(
            "at://did:plc:author{:018}/app.bsky.feed.post/3k{i:011}",
            i % 7
        )
    };
    let changes: Vec<Change> = (0..3000)
        .map(|i| {
            like(
                &format!("did:plc:liker{:019}", i % 300),
                &format!("3l{i:011}"),
                &post(i),
            )
        })
        .collect();
    store.apply(&[event(1, changes)]).unwrap();
    let likes: Vec<String> = (0..120)
        .map(|i| {
            format!(
                "at://did:plc:liker{:019}/app.bsky.feed.like/3l{i:011}",
                i % 300
            )
        })
        .collect();
    let posts: Vec<String> = (0..120).map(post).collect();
    // Handles of 300 actors, looked up by the views per page of records.
    let liker = |i: usize| format!("did:plc:liker{i:019}");
    let identities: Vec<Change> = (0..300)
        .map(|i| Change::Identity {
            did: liker(i),
            handle: Some(format!("liker{i}.test")),
        })
        .collect();
    store.apply(&[event(2, identities)]).unwrap();
    let dids: Vec<String> = (0..60).map(liker).collect();
    let handles = store
        .readers()
        .with_blocking(|c| {
            lexview::index::store::handles_of(
                c,
                dids.iter().map(String::as_str).chain(["did:plc:unknown"]),
            )
        })
        .unwrap();
    assert_eq!(handles.len(), 60);
    assert_eq!(handles[&liker(7)], "liker7.test");
    let cases = [
        (lexview::index::store::HANDLES_OF, dids.join(" ")),
        // Handle to DID, as `xrpc::did_for_handle` and GraphQL's `author` ask.
        (
            "SELECT did FROM actors WHERE lower(handle) = ? LIMIT 1",
            "liker7.test".to_string(),
        ),
        (
            "SELECT coalesce((SELECT did FROM actors WHERE lower(handle) = lower(?) LIMIT 1), 'x')",
            "Liker7.Test".to_string(),
        ),
        ("SELECT uri FROM records WHERE uri = ?", likes[0].clone()),
        ("SELECT uri, record FROM records_at(?)", likes[..60].join(" ")),
        ("SELECT uri FROM records_by(?) WHERE collection = 'app.bsky.feed.like'", "did:plc:liker0000000000000000007".to_string()),
        ("SELECT source_uri FROM links_to(?) WHERE path = '.subject.uri'", posts[0].clone()),
        ("SELECT source_uri FROM links_to_any(?) WHERE path = '.subject.uri'", posts[..60].join(" ")),
        ("SELECT n FROM counts_of(?) WHERE collection = 'app.bsky.feed.like'", posts[0].clone()),
        ("SELECT n FROM counts_of_any(?) WHERE collection = 'app.bsky.feed.like'", posts[..60].join(" ")),
        // A join whose build side has more than 50 keys.
        (
            "SELECT r.uri FROM (SELECT unnest(string_split(?, ' ')) AS u) w JOIN records r ON r.uri = w.u",
            likes[..60].join(" "),
        ),
    ];
    for (sql, param) in cases {
        let scans = scans(&store, sql, &param);
        assert!(
            scans.iter().any(|s| s == "Index Scan")
                && !scans.iter().any(|s| s == "Sequential Scan"),
            "{sql}: {scans:?}"
        );
    }
}

#[test]
fn a_new_store_uses_the_newer_storage_format_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let storage_version = || {
        let conn = lexview::index::store::open_read_only(dir.path()).unwrap();
        conn.query_row(
            "SELECT tags['storage_version'] FROM duckdb_databases() WHERE database_name = current_database()",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap()
    };
    {
        let mut store = Store::open(dir.path()).unwrap();
        store
            .apply(&[event(
                1,
                vec![like(
                    "did:plc:a",
                    "3k1",
                    "at://did:plc:b/app.bsky.feed.post/p",
                )],
            )])
            .unwrap();
        store.checkpoint().unwrap();
    }
    // Not DuckDB's default (v1.0.0), whose checkpoints rewrite whole indexes.
    assert_eq!(
        storage_version(),
        format!("{}+", lexview::index::store::STORAGE_VERSION)
    );
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(records(&store), 1);
    assert_eq!(count(&store, "at://did:plc:b/app.bsky.feed.post/p"), 1);
}

/// New count keys are appended without the upsert when the store cannot hold
/// them; keys that only a reactivation brings back (after a reopen, while
/// the account was hidden) must be known as held, or the next like of the
/// same post would fail the batch on link_counts' primary key.
#[test]
fn counts_stay_exact_when_a_restore_brings_keys_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = ("did:plc:likera", "did:plc:likerb");
    {
        let mut store = Store::open(dir.path()).unwrap();
        store
            .apply(&[event(1, vec![like(a, "3l1", POST)])])
            .unwrap();
        store
            .apply(&[event(2, vec![account(a, false, Some("deactivated"))])])
            .unwrap();
        assert_eq!(count(&store, POST), 0);
    }
    let mut store = Store::open(dir.path()).unwrap();
    store
        .apply(&[event(3, vec![account(a, true, None)])])
        .unwrap();
    assert_eq!(count(&store, POST), 1);
    // The same key, the same batch as a brand-new key.
    store
        .apply(&[event(4, vec![like(b, "3l2", POST), like(b, "3l3", POST2)])])
        .unwrap();
    assert_eq!(count(&store, POST), 2);
    assert_eq!(count(&store, POST2), 1);
    assert_counts_match_links(&store);
    // And after another reopen, keys loaded from the table.
    drop(store);
    let mut store = Store::open(dir.path()).unwrap();
    store
        .apply(&[event(5, vec![like(a, "3l4", POST2)])])
        .unwrap();
    assert_eq!(count(&store, POST2), 2);
    assert_counts_match_links(&store);
}

/// A store made before migration 7 (records and links with DuckDB's own
/// compression choice, links with `target_did`) keeps every row, hidden ones
/// included, and its lookup indexes through the rebuild, and hiding and
/// restoring an account still moves its links (`SELECT *` between `links`
/// and `hidden_links` needs the same columns in both).
#[test]
fn migration_7_rebuilds_records_and_links_and_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = duckdb::Connection::open_with_flags(
            dir.path().join("lexview.duckdb"),
            duckdb::Config::default()
                .with(
                    "storage_compatibility_version",
                    lexview::index::store::STORAGE_VERSION,
                )
                .unwrap(),
        )
        .unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,
               applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)",
        )
        .unwrap();
        for (version, sql) in [
            include_str!("../schema/001_init.sql"),
            include_str!("../schema/002_hidden.sql"),
            include_str!("../schema/003_backfill.sql"),
            include_str!("../schema/004_resync.sql"),
            include_str!("../schema/005_handles.sql"),
            include_str!("../schema/006_lookup_indexes.sql"),
        ]
        .iter()
        .enumerate()
        {
            conn.execute_batch(sql).unwrap();
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, 'old')",
                [version as i64 + 1],
            )
            .unwrap();
        }
        // Two likes of one post by b and c, and one by h (hidden: moved out
        // with its link, and its count taken off, as the writer does).
        let cid = "bafyreigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
        for (table, links, did) in [
            ("records", "links", "did:plc:b"),
            ("records", "links", "did:plc:c"),
            ("hidden_records", "hidden_links", "did:plc:h"),
        ] {
            let uri = format!("at://{did}/app.bsky.feed.like/3k1");
            conn.execute(
                &format!(
                    "INSERT INTO {table} VALUES (?, ?, 'app.bsky.feed.like', '3k1', ?, '3m2', ?,
                       '2026-01-01T00:00:00Z', TIMESTAMP '2026-01-01 00:00:00')"
                ),
                duckdb::params![
                    uri,
                    did,
                    cid,
                    json!({"subject": {"uri": POST, "cid": cid}}).to_string()
                ],
            )
            .unwrap();
            conn.execute(
                &format!(
                    "INSERT INTO {links} VALUES (?, ?, 'app.bsky.feed.like', '.subject.uri', ?, 'did:plc:aaaa')"
                ),
                duckdb::params![uri, did, POST],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO link_counts VALUES (?, 'app.bsky.feed.like', '.subject.uri', 2)",
            [POST],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO actors (did, active, status, updated_at) VALUES ('did:plc:h', false, 'deactivated', TIMESTAMP '2026-01-01 00:00:00')",
            [],
        )
        .unwrap();
    }
    let mut store = Store::open(dir.path()).unwrap();
    let (columns, indexes, hidden) = store
        .readers()
        .with_blocking(|c| {
            let columns: Vec<String> = c
                .prepare("SELECT column_name FROM duckdb_columns() WHERE table_name = 'links' ORDER BY column_index")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let indexes: Vec<String> = c
                .prepare("SELECT index_name FROM duckdb_indexes() ORDER BY index_name")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let hidden: i64 = c.query_row(
                "SELECT count(*) FROM hidden_links WHERE source_did = 'did:plc:h'",
                [],
                |r| r.get(0),
            )?;
            Ok((columns, indexes, hidden))
        })
        .unwrap();
    assert_eq!(
        columns,
        [
            "source_uri",
            "source_did",
            "source_collection",
            "path",
            "target"
        ]
    );
    for index in [
        "link_counts_target",
        "links_target",
        "records_did",
        "records_uri",
    ] {
        assert!(indexes.iter().any(|i| i == index), "{index}: {indexes:?}");
    }
    assert_eq!((records(&store), count(&store, POST), hidden), (2, 2, 1));
    // h comes back: its record, link and count with it; then c leaves.
    let account = |seq, did: &str, active: bool| {
        event(
            seq,
            vec![Change::Account {
                did: did.into(),
                active,
                status: (!active).then(|| "deactivated".to_string()),
            }],
        )
    };
    store.apply(&[account(1, "did:plc:h", true)]).unwrap();
    assert_eq!((records(&store), count(&store, POST)), (3, 3));
    store.apply(&[account(2, "did:plc:c", false)]).unwrap();
    assert_eq!((records(&store), count(&store, POST)), (2, 2));
    // New rows go in with the rebuilt tables' columns.
    store
        .apply(&[event(3, vec![like("did:plc:d", "3k1", POST)])])
        .unwrap();
    store.checkpoint().unwrap();
    assert_eq!((records(&store), count(&store, POST)), (3, 3));
}
