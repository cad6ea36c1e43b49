//! Constellation-compatible backlinks: `blue.microcosm.links.getBacklinks`,
//! `getBacklinksCount` and `getBacklinkDids`, answered from the generic
//! `links` index and the exact `link_counts`.
//!
//! Parameters are checked against the published lexicons (bundled in
//! `lexicons/blue/microcosm/links/`). Where Constellation's server and its
//! lexicon disagree, the lexicon wins: `limit` defaults to 16 and is at most
//! 100 (the server defaults to 100 and allows 1000). `cursor` and `reverse`,
//! which the server accepts but the lexicon does not list, are accepted too.
//!
//! Order: newest first by the linking record's key (TIDs sort by time), then
//! by DID, so pages are stable while new links arrive.

use duckdb::params;
use serde_json::{json, Value};

use crate::api::page::{cut_page, decode_cursor, encode_cursor};
use crate::api::params::parse;
use crate::api::{AppState, XrpcError};
use crate::syntax::is_valid_nsid;

/// `source` is `collection:path`, the path without its leading dot.
fn split_source(source: &str) -> Result<(String, String), XrpcError> {
    match source.split_once(':') {
        Some((collection, path)) if is_valid_nsid(collection) && !path.is_empty() => {
            Ok((collection.to_string(), format!(".{path}")))
        }
        _ => Err(XrpcError::invalid_request(format!(
            "Error: Params/source must be 'collection:path' (e.g. 'app.bsky.feed.like:subject.uri'), got {source:?}"
        ))),
    }
}

/// Extra parameters Constellation's server accepts beyond its lexicon.
fn extra<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn reverse_param(pairs: &[(String, String)]) -> Result<bool, XrpcError> {
    match extra(pairs, "reverse") {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(XrpcError::invalid_request(
            "Error: Params/reverse must be a boolean",
        )),
    }
}

/// The keyset condition for a page after `cursor`, in the given order.
fn keyset(reverse: bool) -> &'static str {
    if reverse {
        "(?::VARCHAR IS NULL OR rkey > ? OR (rkey = ? AND source_did > ?))"
    } else {
        "(?::VARCHAR IS NULL OR rkey < ? OR (rkey = ? AND source_did < ?))"
    }
}

pub async fn get_backlinks(
    state: &AppState,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let subject = p.str("subject").unwrap_or_default().to_string();
    let (collection, path) = split_source(p.str("source").unwrap_or_default())?;
    let limit = p.int("limit").unwrap_or(16);
    let reverse = reverse_param(pairs)?;
    let after = decode_cursor(extra(pairs, "cursor"))?;
    // DIDs are checked against the did format, so none contains a space.
    let source_collection = collection.clone();
    let dids: Option<String> = p.0.get("did").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    });
    let (rows, total) = state
        .readers
        .with(move |c| {
            // links_to: the index lookup by target (schema/006).
            let filter = "source_collection = ? AND path = ?
                 AND (?::VARCHAR IS NULL OR list_contains(string_split(?::VARCHAR, ' '), source_did))";
            let total: i64 = c.query_row(
                &format!("SELECT count(*) FROM links_to(?) WHERE {filter}"),
                params![subject, collection, path, dids, dids],
                |r| r.get(0),
            )?;
            let order = if reverse { "ASC" } else { "DESC" };
            let sql = format!(
                "SELECT source_did, rkey FROM (
                   SELECT source_did, split_part(source_uri, '/', 5) AS rkey FROM links_to(?) WHERE {filter})
                 WHERE {} ORDER BY rkey {order}, source_did {order} LIMIT ?",
                keyset(reverse)
            );
            let (ck, cd) = after.unzip();
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(
                    params![subject, collection, path, dids, dids, ck, ck, ck, cd, limit + 1],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )?
                .collect::<duckdb::Result<Vec<_>>>()?;
            Ok((rows, total))
        })
        .await?;
    let collection = source_collection;
    let mut rows = rows;
    let next = cut_page(&mut rows, limit, |(did, rkey)| encode_cursor(rkey, did));
    let records: Vec<Value> = rows
        .iter()
        .map(|(did, rkey)| json!({"did": did, "collection": collection, "rkey": rkey}))
        .collect();
    let mut out = json!({ "total": total, "records": records });
    if let Some(c) = next {
        out["cursor"] = Value::String(c);
    }
    Ok(out)
}

pub async fn get_backlinks_count(
    state: &AppState,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let subject = p.str("subject").unwrap_or_default().to_string();
    let (collection, path) = split_source(p.str("source").unwrap_or_default())?;
    let total: i64 = state
        .readers
        .with(move |c| {
            c.prepare_cached(
                "SELECT coalesce(sum(n), 0)::BIGINT FROM counts_of(?)
                 WHERE collection = ? AND path = ?",
            )?
            .query_row(params![subject, collection, path], |r| r.get(0))
        })
        .await?;
    Ok(json!({ "total": total }))
}

pub async fn get_backlink_dids(
    state: &AppState,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let subject = p.str("subject").unwrap_or_default().to_string();
    let (collection, path) = split_source(p.str("source").unwrap_or_default())?;
    let limit = p.int("limit").unwrap_or(16);
    let after = decode_cursor(extra(pairs, "cursor"))?;
    let (rows, total) = state
        .readers
        .with(move |c| {
            let total: i64 = c.query_row(
                "SELECT count(DISTINCT source_did) FROM links_to(?)
                 WHERE source_collection = ? AND path = ?",
                params![subject, collection, path],
                |r| r.get(0),
            )?;
            // Each DID at the position of its newest link.
            let sql = format!(
                "SELECT source_did, rkey FROM (
                   SELECT source_did, max(split_part(source_uri, '/', 5)) AS rkey FROM links_to(?)
                   WHERE source_collection = ? AND path = ? GROUP BY source_did)
                 WHERE {} ORDER BY rkey DESC, source_did DESC LIMIT ?",
                keyset(false)
            );
            let (ck, cd) = after.unzip();
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(
                    params![subject, collection, path, ck, ck, ck, cd, limit + 1],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )?
                .collect::<duckdb::Result<Vec<_>>>()?;
            Ok((rows, total))
        })
        .await?;
    let mut rows = rows;
    let next = cut_page(&mut rows, limit, |(did, rkey)| encode_cursor(rkey, did));
    let dids: Vec<&str> = rows.iter().map(|(d, _)| d.as_str()).collect();
    let mut out = json!({ "total": total, "linking_dids": dids });
    if let Some(c) = next {
        out["cursor"] = Value::String(c);
    }
    Ok(out)
}
