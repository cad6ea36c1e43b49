//! `lexview export`: the production recording indexed, exported as Parquet
//! and CSV, and read back: every row equals the store's, the manifest names
//! the tables and the cursor, and bad input gets a clear error.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::server::{bin, Server};

const FRAMES: &str = "tests/fixtures/jetstream/frames.bin";
const LAST_SEQ: i64 = 31527015471;

fn indexed_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let replay = format!("replay:{}", root.join(FRAMES).display());
    // All app.bsky lexicons, so that every kind of record is in the store.
    let server = Server::start(
        &[&replay],
        dir.path(),
        &root.join("tests/fixtures/lexicons"),
    );
    server.wait_for_cursor(LAST_SEQ);
    assert!(server.stop().success());
    dir
}

fn export(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args([
            "export",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(extra)
        .env("LEXVIEW_LOG", "warn")
        .output()
        .expect("run export")
}

/// Rows of `store_sql` (over the attached store `s`) that are not in
/// `file_sql` and the other way round.
fn differences(conn: &duckdb::Connection, store_sql: &str, file_sql: &str) -> (i64, i64) {
    let count = |a: &str, b: &str| -> i64 {
        conn.query_row(
            &format!("SELECT count(*) FROM (({a}) EXCEPT ALL ({b}))"),
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    (count(store_sql, file_sql), count(file_sql, store_sql))
}

fn rows(conn: &duckdb::Connection, sql: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM ({sql})"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn export_writes_every_row_of_the_store_and_a_manifest() {
    let data = indexed_store();
    let out = tempfile::tempdir().unwrap();
    let parquet = out.path().join("parquet");
    let run = export(data.path(), &parquet, &[]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("records: "), "{stdout}");

    let conn = duckdb::Connection::open_in_memory().unwrap();
    conn.execute_batch(&format!(
        "ATTACH '{}' AS s (READ_ONLY)",
        lexview::index::store::db_path(data.path()).display()
    ))
    .unwrap();
    let p = parquet.display();
    let columns = "uri, did, collection, rkey, cid, rev, record::VARCHAR, created_at, indexed_at";
    let store_records = format!("SELECT {columns} FROM s.records");
    let file_records = format!(
        "SELECT {columns} FROM read_parquet('{p}/records/*/*.parquet', hive_partitioning = true)"
    );
    assert!(rows(&conn, &store_records) > 100);
    assert_eq!(differences(&conn, &store_records, &file_records), (0, 0));
    assert_eq!(
        differences(
            &conn,
            "SELECT * FROM s.links",
            &format!("SELECT * FROM '{p}/links.parquet'")
        ),
        (0, 0)
    );
    assert_eq!(
        differences(
            &conn,
            "SELECT * FROM s.link_counts",
            &format!("SELECT * FROM '{p}/link_counts.parquet'")
        ),
        (0, 0)
    );
    assert_eq!(
        differences(
            &conn,
            "SELECT * FROM s.actors",
            &format!("SELECT * FROM '{p}/actors.parquet'")
        ),
        (0, 0)
    );
    // One directory per collection.
    let collections = rows(&conn, "SELECT DISTINCT collection FROM s.records");
    let dirs = std::fs::read_dir(parquet.join("records")).unwrap().count() as i64;
    assert_eq!(dirs, collections);

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(parquet.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["cursors"][0]["cursor"], LAST_SEQ);
    let records = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "records")
        .unwrap();
    assert_eq!(
        records["rows"].as_i64().unwrap(),
        rows(&conn, &store_records)
    );

    // One collection, as CSV: only its records, links and counts.
    let csv = out.path().join("csv");
    let run = export(
        data.path(),
        &csv,
        &["--format", "csv", "--collection", "app.bsky.feed.like"],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let c = csv.display();
    let likes = rows(
        &conn,
        "SELECT * FROM s.records WHERE collection = 'app.bsky.feed.like'",
    );
    assert!(likes > 0);
    assert_eq!(
        rows(
            &conn,
            &format!("SELECT * FROM read_csv('{c}/records/*/*.csv', hive_partitioning = true)")
        ),
        likes
    );
    assert_eq!(
        rows(&conn, &format!("SELECT * FROM read_csv('{c}/links.csv') WHERE source_collection <> 'app.bsky.feed.like'")),
        0
    );
    assert_eq!(
        rows(&conn, &format!("SELECT * FROM read_csv('{c}/links.csv')")),
        rows(
            &conn,
            "SELECT * FROM s.links WHERE source_collection = 'app.bsky.feed.like'"
        )
    );

    // Bad input: a directory that is not empty, a collection that is not an NSID, no store.
    let again = export(data.path(), &parquet, &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));
    let bad = export(
        data.path(),
        &out.path().join("x"),
        &["--collection", "likes'; DROP TABLE records; --"],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not an NSID"));
    let none = export(&out.path().join("no-store"), &out.path().join("y"), &[]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no store at"));
}
