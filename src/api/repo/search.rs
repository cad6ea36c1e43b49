//! `dev.lexview.search.searchRecords`: full-text search (see `index::search`)
//! over XRPC, and the hydration of hits from the store that GraphQL's
//! `search` and saved-search feeds share.

use std::sync::Arc;

use serde_json::{json, Value};

use std::collections::HashMap;

use crate::api::actors::resolve_repo;
use crate::api::params::parse;
use crate::api::rows::{attach_handles, records_at_uris, RecordRow};
use crate::api::{AppState, XrpcError};
use crate::index::search::{Hit, Search, SearchQuery, StoredRecord};
use crate::index::store::ReadPool;

/// Runs `q` and returns the hits' records, best first, with their scores
/// (without handles). A hit is answered from its search document unless its
/// record or account changed since the searched snapshot; those are read
/// from the store, and dropped when the store no longer has them. Returns
/// the page and the total number of matches.
pub async fn run(
    search: &Arc<Search>,
    readers: &Arc<ReadPool>,
    q: SearchQuery,
) -> Result<(Vec<(f32, RecordRow)>, usize), XrpcError> {
    let index = search.index.clone();
    let (hits, total) = tokio::task::spawn_blocking(move || index.search(&q))
        .await
        .map_err(|e| XrpcError::internal(e.to_string()))?
        .map_err(|e| match e {
            crate::index::search::SearchError::PageTooDeep => {
                XrpcError::invalid_request(format!("Error: {e}"))
            }
            e => {
                tracing::error!("search failed: {e}");
                XrpcError::internal("search failed")
            }
        })?;
    let stale: Vec<String> = hits
        .iter()
        .filter(|h| h.stored.is_none())
        .map(|h| h.uri.clone())
        .collect();
    let rows = if stale.is_empty() {
        Vec::new()
    } else {
        readers
            .with(move |c| records_at_uris(c, stale.iter().map(String::as_str)))
            .await?
    };
    Ok((merge_hits(hits, rows), total))
}

/// As [`run`] on a connection already held (GraphQL's search), with handles.
pub(crate) fn run_on(
    c: &duckdb::Connection,
    search: &Search,
    q: &SearchQuery,
) -> duckdb::Result<(Vec<(f32, RecordRow)>, usize)> {
    let (hits, total) = search
        .index
        .search(q)
        .map_err(|e| duckdb::Error::ToSqlConversionFailure(Box::new(e)))?;
    let stale = hits
        .iter()
        .filter(|h| h.stored.is_none())
        .map(|h| h.uri.as_str());
    let rows = records_at_uris(c, stale)?;
    let mut found = merge_hits(hits, rows);
    attach_handles(c, found.iter_mut().map(|(_, r)| r))?;
    Ok((found, total))
}

/// The hits in order, each with its stored record or its row of `rows`
/// (read from the store); a hit with neither is gone from the store.
fn merge_hits(hits: Vec<Hit>, rows: Vec<RecordRow>) -> Vec<(f32, RecordRow)> {
    let mut by_uri: HashMap<String, RecordRow> =
        rows.into_iter().map(|r| (r.uri.clone(), r)).collect();
    hits.into_iter()
        .filter_map(|h| {
            let row = match h.stored {
                Some(s) => stored_row(h.uri, s),
                None => by_uri.remove(&h.uri)?,
            };
            Some((h.score, row))
        })
        .collect()
}

/// A record row from a search document, as `records_at_uris` would read it.
fn stored_row(uri: String, s: StoredRecord) -> RecordRow {
    RecordRow {
        rkey: uri.rsplit('/').next().unwrap_or_default().to_string(),
        cid: s.cid,
        did: s.did,
        indexed_at: chrono::DateTime::from_timestamp_micros(s.indexed_us)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string(),
        record: serde_json::from_str(&s.record).unwrap_or(Value::Null),
        uri,
        handle: None,
        counts: Arc::default(),
        targets: Arc::default(),
    }
}

/// The offset a search cursor (issued by this server) stands for; at most
/// `MAX_OFFSET`, so that no request makes the index reserve room for an
/// unbounded number of hits.
pub fn page_offset(cursor: Option<&str>, of: &str) -> Result<usize, XrpcError> {
    let Some(c) = cursor else { return Ok(0) };
    match c.parse::<usize>() {
        Ok(n) if n <= crate::index::search::MAX_OFFSET => Ok(n),
        Ok(_) => Err(XrpcError::invalid_request(format!(
            "Error: cursor is past the last page a search reaches ({} hits)",
            crate::index::search::MAX_OFFSET
        ))),
        Err(_) => Err(XrpcError::invalid_request(format!(
            "Error: cursor is not a cursor of this {of}"
        ))),
    }
}

/// The search service, or the error for a server started without one.
pub fn service(state: &AppState, nsid: &str) -> Result<Arc<Search>, XrpcError> {
    state
        .search
        .clone()
        .ok_or_else(|| XrpcError::not_implemented(nsid))
}

/// `GET /xrpc/dev.lexview.search.searchRecords`.
pub async fn search_records(
    state: &AppState,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let search = service(state, nsid)?;
    let p = parse(&state.catalog(), nsid, pairs)?;
    let limit = p.int("limit").unwrap_or(25) as usize;
    let offset = page_offset(p.str("cursor"), "method")?;
    let author = match p.str("author") {
        Some(a) => Some(resolve_repo(state, a).await?),
        None => None,
    };
    let q = SearchQuery {
        text: p.str("q").unwrap_or_default().to_string(),
        collection: p.str("collection").map(str::to_string),
        author,
        limit,
        offset,
        recency: p.bool("recency").unwrap_or(false),
    };
    let (found, total) = run(&search, &state.readers, q).await?;
    // Verified handles (cached per DID).
    let mut dids: Vec<String> = found.iter().map(|(_, f)| f.did.clone()).collect();
    dids.sort_unstable();
    dids.dedup();
    let handles = state.handles.of(state, &dids).await?;
    let records: Vec<Value> = found
        .into_iter()
        .map(|(_, f)| {
            let mut author = json!({ "did": f.did });
            if let Some(Some(h)) = handles.get(&f.did) {
                author["handle"] = Value::String(h.clone());
            }
            json!({
                "uri": f.uri,
                "cid": f.cid,
                "author": author,
                "value": f.record,
                "indexedAt": f.indexed_at,
            })
        })
        .collect();
    let mut out = json!({ "records": records, "hitsTotal": total });
    if offset + limit < total {
        out["cursor"] = Value::String((offset + limit).to_string());
    }
    Ok(out)
}
