//! `lexview export`: the store's public tables as Parquet (or CSV) files,
//! for DuckDB, Spark, Trino or any lakehouse, and for copying to an object
//! store with whatever tool the user has.
//!
//! Written in one read transaction, so every file shows the store at the
//! same instant, and `manifest.json` names the source cursors of that
//! instant (where a consumer's next export or live subscription takes
//! over). Records are partitioned by collection (Hive style:
//! `records/collection=app.bsky.feed.post/data_0.parquet`); links, link
//! counts, actors and the quarantine are one file each. Records and links of
//! inactive accounts (`hidden_*`) are not exported: their owners have taken
//! them out of view. Internal state (cursors, resyncs, backfill progress)
//! stays in the store.

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet, zstd-compressed.
    Parquet,
    /// CSV with a header row.
    Csv,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
        }
    }

    fn options(self) -> &'static str {
        match self {
            Format::Parquet => "FORMAT parquet, COMPRESSION zstd",
            Format::Csv => "FORMAT csv, HEADER true",
        }
    }
}

/// What was exported: per table, its rows (in the order written).
#[derive(Debug)]
pub struct Exported {
    pub tables: Vec<(&'static str, u64)>,
}

/// A SQL string literal (single quotes doubled).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs `lexview export`: exports the store under `data` into `out` and
/// prints a line per table.
pub fn run(data: &Path, out: &Path, format: Format, collections: &[String]) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let done = export(data, out, format, collections)?;
    for (table, rows) in &done.tables {
        println!("{table}: {rows} rows");
    }
    println!(
        "exported to {} in {:.1} s (manifest.json lists the tables and the source cursors)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Exports the store under `data` into `out`.
/// Long on purpose: one read transaction, one `COPY` per table in order;
/// keeping them together keeps the transaction's extent in view.
pub fn export(
    data: &Path,
    out: &Path,
    format: Format,
    collections: &[String],
) -> anyhow::Result<Exported> {
    for c in collections {
        if !crate::syntax::is_valid_nsid(c) {
            bail!("--collection {c:?} is not an NSID");
        }
    }
    let conn = crate::index::store::open_read_only(data)?;
    if out.exists() {
        let mut entries =
            std::fs::read_dir(out).with_context(|| format!("cannot read {}", out.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty: export into a new or empty directory",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let out = out
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", out.display()))?;
    // NSIDs are checked above, so they are safe as SQL literals.
    let only = |column: &str| {
        if collections.is_empty() {
            "true".to_string()
        } else {
            let list: Vec<String> = collections.iter().map(|c| literal(c)).collect();
            format!("{column} IN ({})", list.join(", "))
        }
    };
    let ext = format.extension();
    let options = format.options();
    let file = |name: &str| literal(&out.join(format!("{name}.{ext}")).to_string_lossy());
    let records_dir = literal(&out.join("records").to_string_lossy());
    let steps: Vec<(&'static str, String)> = vec![
        (
            "records",
            format!(
                "COPY (SELECT * FROM records WHERE {} ORDER BY collection, did, rkey)
                 TO {records_dir} ({options}, PARTITION_BY (collection))",
                only("collection")
            ),
        ),
        (
            "links",
            format!(
                "COPY (SELECT * FROM links WHERE {} ORDER BY target, source_uri, path)
                 TO {} ({options})",
                only("source_collection"),
                file("links")
            ),
        ),
        (
            "link_counts",
            format!(
                "COPY (SELECT * FROM link_counts WHERE {} ORDER BY ALL) TO {} ({options})",
                only("collection"),
                file("link_counts")
            ),
        ),
        (
            "actors",
            format!(
                "COPY (SELECT * FROM actors ORDER BY did) TO {} ({options})",
                file("actors")
            ),
        ),
        (
            "quarantine",
            format!(
                "COPY (SELECT * FROM quarantine WHERE {} ORDER BY uri, seen_at) TO {} ({options})",
                only("collection"),
                file("quarantine")
            ),
        ),
    ];
    // One transaction: every file shows the same snapshot.
    conn.execute_batch("BEGIN TRANSACTION")?;
    let mut tables = Vec::new();
    for (table, sql) in &steps {
        let t = std::time::Instant::now();
        // COPY answers with the number of rows written.
        let rows: u64 = conn
            .query_row(sql, [], |r| r.get::<_, i64>(0))
            .with_context(|| format!("exporting {table}"))? as u64;
        tracing::info!(table, rows, ms = t.elapsed().as_millis() as u64, "exported");
        tables.push((*table, rows));
    }
    let cursors: Vec<serde_json::Value> = {
        let mut stmt =
            conn.prepare("SELECT source, cursor, event_time FROM cursors ORDER BY source")?;
        let rows = stmt.query_map([], |r| {
            Ok(json!({
                "source": r.get::<_, String>(0)?,
                "cursor": r.get::<_, i64>(1)?,
                "eventTime": r.get::<_, Option<String>>(2)?,
            }))
        })?;
        rows.collect::<duckdb::Result<_>>()?
    };
    conn.execute_batch("COMMIT")?;
    let manifest = json!({
        "exportedAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "format": ext,
        "collections": if collections.is_empty() { json!("all") } else { json!(collections) },
        "tables": tables.iter().map(|(t, n)| json!({
            "name": t,
            "rows": n,
            "path": if *t == "records" { format!("records/collection=*/*.{ext}") } else { format!("{t}.{ext}") },
        })).collect::<Vec<_>>(),
        "cursors": cursors,
    });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )
    .context("writing manifest.json")?;
    Ok(Exported { tables })
}
