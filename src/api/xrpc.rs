//! `GET /xrpc/{nsid}`: parameters checked against the method's lexicon, then
//! dispatched to the method's handler.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use duckdb::params;
use serde_json::{json, Value};

use super::params::{parse, Params};
use super::{backlinks, feeds, posts, search, views};
use super::{AppState, XrpcError};
use crate::metrics::Metrics;
use crate::syntax::is_valid_did;

/// Dispatches a query method.
pub async fn dispatch(
    State(state): State<AppState>,
    Path(nsid): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    Metrics::inc(&state.metrics.xrpc_requests_total);
    let result = match nsid.as_str() {
        "com.atproto.repo.getRecord" => get_record(&state, &nsid, &pairs).await,
        "com.atproto.repo.listRecords" => list_records(&state, &nsid, &pairs).await,
        "blue.microcosm.links.getBacklinks" => {
            backlinks::get_backlinks(&state, &nsid, &pairs).await
        }
        "blue.microcosm.links.getBacklinksCount" => {
            backlinks::get_backlinks_count(&state, &nsid, &pairs).await
        }
        "blue.microcosm.links.getBacklinkDids" => {
            backlinks::get_backlink_dids(&state, &nsid, &pairs).await
        }
        "app.bsky.actor.getProfile" => views::get_profile(&state, &nsid, &pairs).await,
        "app.bsky.graph.getFollowers" => views::get_followers(&state, &nsid, &pairs).await,
        "app.bsky.graph.getFollows" => views::get_follows(&state, &nsid, &pairs).await,
        "app.bsky.feed.getLikes" => views::get_likes(&state, &nsid, &pairs).await,
        "app.bsky.feed.getRepostedBy" => views::get_reposted_by(&state, &nsid, &pairs).await,
        "app.bsky.feed.getPosts" => posts::get_posts(&state, &nsid, &pairs).await,
        "app.bsky.feed.getQuotes" => posts::get_quotes(&state, &nsid, &pairs).await,
        "app.bsky.feed.getPostThread" => posts::get_post_thread(&state, &nsid, &pairs).await,
        "app.bsky.feed.getAuthorFeed" => posts::get_author_feed(&state, &nsid, &pairs).await,
        "app.bsky.feed.describeFeedGenerator" => feeds::describe(&state, &nsid, &pairs).await,
        "app.bsky.feed.getFeedSkeleton" => feeds::skeleton(&state, &nsid, &pairs).await,
        "dev.lexview.search.searchRecords" => search::search_records(&state, &nsid, &pairs).await,
        other => {
            let queries = state.queries();
            match queries.get(other) {
                Some(method) => super::queries::run(&state, method, &pairs).await,
                None => Err(XrpcError::not_implemented(&nsid)),
            }
        }
    };
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            Metrics::inc(&state.metrics.xrpc_errors_total);
            e.into_response()
        }
    }
}

/// No procedures are served: this is a read-only AppView.
pub async fn dispatch_post(State(state): State<AppState>, Path(nsid): Path<String>) -> Response {
    Metrics::inc(&state.metrics.xrpc_errors_total);
    XrpcError::not_implemented(&nsid).into_response()
}

/// The DID for an at-identifier: a DID as is, a handle through the actors table.
pub(crate) async fn resolve_repo(state: &AppState, repo: &str) -> Result<String, XrpcError> {
    if is_valid_did(repo) {
        return Ok(repo.to_string());
    }
    let handle = repo.to_string();
    let found = state
        .readers
        .with(move |c| did_for_handle(c, &handle))
        .await?;
    found.ok_or_else(|| XrpcError::invalid_request(format!("Could not find repo: {repo}")))
}

/// The DID whose current handle is `handle` (case-insensitive), if any.
pub(crate) fn did_for_handle(
    c: &duckdb::Connection,
    handle: &str,
) -> duckdb::Result<Option<String>> {
    let mut stmt = c.prepare_cached("SELECT did FROM actors WHERE lower(handle) = ? LIMIT 1")?;
    let mut rows = stmt.query(params![handle.to_ascii_lowercase()])?;
    match rows.next()? {
        Some(r) => Ok(Some(r.get(0)?)),
        None => Ok(None),
    }
}

fn required<'a>(p: &'a Params, name: &str) -> &'a str {
    p.str(name)
        .expect("required by the lexicon, checked by params::parse")
}

async fn get_record(
    state: &AppState,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let did = resolve_repo(state, required(&p, "repo")).await?;
    let (collection, rkey) = (
        required(&p, "collection").to_string(),
        required(&p, "rkey").to_string(),
    );
    let uri = format!("at://{did}/{collection}/{rkey}");
    let wanted_cid = p.str("cid").map(str::to_string);
    let key = uri.clone();
    let row = state
        .readers
        .with(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT cid, record::VARCHAR FROM records WHERE uri = ?")?;
            let mut rows = stmt.query(params![key])?;
            Ok(match rows.next()? {
                Some(r) => Some((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                None => None,
            })
        })
        .await?;
    match row {
        Some((cid, record)) if wanted_cid.as_ref().is_none_or(|w| *w == cid) => {
            Ok(json!({ "uri": uri, "cid": cid, "value": parse_json(&record)? }))
        }
        _ => Err(XrpcError::named(
            "RecordNotFound",
            format!("Could not locate record: {uri}"),
        )),
    }
}

async fn list_records(
    state: &AppState,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let did = resolve_repo(state, required(&p, "repo")).await?;
    let collection = required(&p, "collection").to_string();
    let limit = p.int("limit").unwrap_or(50);
    let reverse = p.bool("reverse").unwrap_or(false);
    let cursor = p.str("cursor").map(str::to_string);
    let rows = state
        .readers
        .with(move |c| {
            // Default order is rkey descending (newest TID first), as the PDS lists.
            let (cmp, order) = if reverse { (">", "ASC") } else { ("<", "DESC") };
            let sql = format!(
                "SELECT uri, cid, record::VARCHAR, rkey FROM records
                 WHERE did = ? AND collection = ? AND (?::VARCHAR IS NULL OR rkey {cmp} ?)
                 ORDER BY rkey {order} LIMIT ?"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![did, collection, cursor, cursor, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            rows.collect::<duckdb::Result<Vec<_>>>()
        })
        .await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.3.clone()))
        .flatten();
    let records = rows
        .into_iter()
        .map(|(uri, cid, record, _)| {
            Ok(json!({ "uri": uri, "cid": cid, "value": parse_json(&record)? }))
        })
        .collect::<Result<Vec<_>, XrpcError>>()?;
    let mut out = json!({ "records": records });
    if let Some(c) = next {
        out["cursor"] = Value::String(c);
    }
    Ok(out)
}

fn parse_json(s: &str) -> Result<Value, XrpcError> {
    serde_json::from_str(s)
        .map_err(|e| XrpcError::internal(format!("stored record is not JSON: {e}")))
}
