//! `dev.lexview.search.searchRecords`: full-text search (see `crate::search`)
//! over XRPC, and the hydration of hits from the store that GraphQL's
//! `search` and saved-search feeds share.

use std::sync::Arc;

use serde_json::{json, Value};

use super::graphql::{records_by_uri, RecordRow};
use super::params::parse;
use super::xrpc::resolve_repo;
use super::{AppState, XrpcError};
use crate::index::store::ReadPool;
use crate::search::{Search, SearchQuery};

/// Runs `q` and loads the hits' records, best first, with their scores.
/// Hits whose record is no longer in the store (deleted since the last
/// search commit) are dropped. Returns the page and the total number of
/// matches.
pub async fn run(
    search: &Arc<Search>,
    readers: &Arc<ReadPool>,
    q: SearchQuery,
) -> Result<(Vec<(f32, RecordRow)>, usize), XrpcError> {
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
    let uris: Vec<String> = hits.iter().map(|h| h.uri.clone()).collect();
    let rows = readers
        .with(move |c| records_by_uri(c, uris.iter().map(String::as_str)))
        .await?;
    let mut by_uri: std::collections::HashMap<String, RecordRow> =
        rows.into_iter().map(|r| (r.uri.clone(), r)).collect();
    let found = hits
        .into_iter()
        .filter_map(|h| Some((h.score, by_uri.remove(&h.uri)?)))
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
        .map(|(_, f)| {
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
