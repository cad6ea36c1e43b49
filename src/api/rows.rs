//! Records as the generic APIs read them: a row per record (URI, CID,
//! author, record JSON, with its author's handle, backlink counts and the
//! records it links to when a caller attaches them), read by URI.

use std::collections::HashMap;
use std::sync::Arc;

use duckdb::params;
use serde_json::Value;

/// Records by URI (the records a page's records link to).
pub type Targets = HashMap<String, RecordRow>;

/// One stored record, as resolvers see it.
#[derive(Debug, Clone)]
pub struct RecordRow {
    pub uri: String,
    pub cid: String,
    pub did: String,
    pub rkey: String,
    pub indexed_at: String,
    pub record: Value,
    /// The author's handle, when known.
    pub handle: Option<String>,
    /// Backlink counts of this record: (source collection, path, n).
    pub counts: Arc<Vec<(String, String, i64)>>,
    /// The records this page's records link to (forward joins).
    pub targets: Arc<Targets>,
}

/// A record row's columns; the author's handle is added by
/// [`attach_handles`] (a subquery per row would scan `actors`).
pub const RECORD_COLUMNS: &str =
    "r.uri, r.cid, r.did, r.rkey, strftime(r.indexed_at, '%Y-%m-%dT%H:%M:%S.%fZ'),
     r.record::VARCHAR";

/// Sets each row's author handle, in one lookup.
pub fn attach_handles<'r>(
    c: &duckdb::Connection,
    rows: impl IntoIterator<Item = &'r mut RecordRow>,
) -> duckdb::Result<()> {
    let rows: Vec<&mut RecordRow> = rows.into_iter().collect();
    let handles = crate::index::store::handles_of(c, rows.iter().map(|r| r.did.as_str()))?;
    for row in rows {
        row.handle = handles.get(&row.did).cloned();
    }
    Ok(())
}

/// The records of `uris` that the store holds, in no particular order.
pub fn records_by_uri<'a>(
    c: &duckdb::Connection,
    uris: impl Iterator<Item = &'a str>,
) -> duckdb::Result<Vec<RecordRow>> {
    let mut rows = records_at_uris(c, uris)?;
    attach_handles(c, rows.iter_mut())?;
    Ok(rows)
}

/// As [`records_by_uri`], without handles.
pub fn records_at_uris<'a>(
    c: &duckdb::Connection,
    uris: impl Iterator<Item = &'a str>,
) -> duckdb::Result<Vec<RecordRow>> {
    // AT-URIs contain no spaces.
    let list = uris.collect::<Vec<_>>().join(" ");
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let mut stmt = c.prepare_cached(&format!("SELECT {RECORD_COLUMNS} FROM records_at(?) r"))?;
    let rows = stmt
        .query_map(params![list], read_row)?
        .collect::<duckdb::Result<Vec<_>>>()?;
    Ok(rows)
}

pub fn read_row(r: &duckdb::Row) -> duckdb::Result<RecordRow> {
    let record: String = r.get(5)?;
    Ok(RecordRow {
        uri: r.get(0)?,
        cid: r.get(1)?,
        did: r.get(2)?,
        rkey: r.get(3)?,
        indexed_at: r.get(4)?,
        record: serde_json::from_str(&record).unwrap_or(Value::Null),
        handle: None,
        counts: Arc::default(),
        targets: Arc::default(),
    })
}
