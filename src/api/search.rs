//! `dev.lexview.search.searchRecords`: full-text search (see `crate::search`)
//! over XRPC, and the hydration of hits from the store that GraphQL's
//! `search` and saved-search feeds share.

use std::sync::Arc;

use duckdb::params;
use serde_json::{json, Value};

use super::params::parse;
use super::xrpc::resolve_repo;
use super::{AppState, XrpcError};
use crate::index::store::ReadPool;
use crate::search::{Search, SearchQuery};

/// A hit with its record, as stored.
#[derive(Debug, Clone)]
pub struct Found {
    pub uri: String,
    pub cid: String,
    pub did: String,
    pub handle: Option<String>,
    pub record: Value,
    pub indexed_at: String,
    pub score: f32,
}

/// Runs `q` and loads the hits' records, best first. Hits whose record is no
/// longer in the store (deleted since the last search commit) are dropped.
/// Returns the page and the total number of matches.
pub async fn run(
    search: &Arc<Search>,
    readers: &Arc<ReadPool>,
    q: SearchQuery,
) -> Result<(Vec<Found>, usize), XrpcError> {
    let index = search.index.clone();
    let (hits, total) = tokio::task::spawn_blocking(move || index.search(&q))
        .await
        .map_err(|e| XrpcError::internal(e.to_string()))?
        .map_err(|e| {
            tracing::error!("search failed: {e}");
            XrpcError::internal("search failed")
        })?;
    if hits.is_empty() {
        return Ok((Vec::new(), total));
    }
    // AT-URIs contain no spaces.
    let list = hits
        .iter()
        .map(|h| h.uri.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let mut rows = readers
        .with(move |c| {
            let mut stmt = c.prepare(
                "SELECT r.uri, r.cid, r.did, (SELECT handle FROM actors a WHERE a.did = r.did),
                        r.record::VARCHAR, strftime(r.indexed_at, '%Y-%m-%dT%H:%M:%S.%fZ')
                 FROM records r WHERE r.uri IN (SELECT unnest(string_split(?, ' ')))",
            )?;
            let rows = stmt.query_map(params![list], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ),
                ))
            })?;
            rows.collect::<duckdb::Result<std::collections::HashMap<_, _>>>()
        })
        .await?;
    let found = hits
        .into_iter()
        .filter_map(|h| {
            let (cid, did, handle, record, indexed_at) = rows.remove(&h.uri)?;
            Some(Found {
                uri: h.uri,
                cid,
                did,
                handle,
                record: serde_json::from_str(&record).ok()?,
                indexed_at,
                score: h.score,
            })
        })
        .collect();
    Ok((found, total))
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
    let offset = match p.str("cursor") {
        None => 0,
        Some(c) => c.parse::<usize>().map_err(|_| {
            XrpcError::invalid_request("Error: cursor is not a cursor of this method")
        })?,
    };
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
    let records: Vec<Value> = found
        .into_iter()
        .map(|f| {
            let mut author = json!({ "did": f.did });
            if let Some(h) = f.handle {
                author["handle"] = Value::String(h);
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
