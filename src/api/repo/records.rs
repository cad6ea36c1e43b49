//! `com.atproto.repo.getRecord` and `listRecords`: any indexed record, as
//! its repository would answer.

use duckdb::params;
use serde_json::{json, Value};

use crate::api::actors::resolve_repo;
use crate::api::params::{parse, required};
use crate::api::{AppState, XrpcError};

pub async fn get_record(
    state: &AppState,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let did = resolve_repo(state, required(&p, "repo")?).await?;
    let (collection, rkey) = (
        required(&p, "collection")?.to_string(),
        required(&p, "rkey")?.to_string(),
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

pub async fn list_records(
    state: &AppState,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let did = resolve_repo(state, required(&p, "repo")?).await?;
    let collection = required(&p, "collection")?.to_string();
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
