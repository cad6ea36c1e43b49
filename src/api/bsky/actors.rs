//! Bluesky app views with the official response shapes, hydrated from the
//! index: `app.bsky.actor.getProfile`, `app.bsky.graph.getFollowers`,
//! `getFollows`, `app.bsky.feed.getLikes`, `getRepostedBy`.
//!
//! Actors are hydrated from `actors` (handle) and their `app.bsky.actor.profile/self`
//! record, through an lru cache of profile views that the writer invalidates
//! for every DID whose profile, handle or status a committed batch touched.
//! Lists are ordered newest first by the linking record's key (TIDs sort by
//! time) and paged with the same opaque cursor as the backlinks.
//!
//! Not yet: viewer state (no auth), labels (always empty), `associated`,
//! verification.

use std::collections::HashMap;

use duckdb::params;
use serde_json::{json, Value};

use super::lookups::ProfileRow;
use super::Bsky;
use crate::api::actors::account_visible;
use crate::api::cache::{Lookup, ViewCache};
use crate::api::page::{cut_page, decode_cursor, encode_cursor};
use crate::api::params::{parse, Params};
use crate::api::XrpcError;
use crate::index::event::{Change, IndexEvent};
use crate::syntax::is_valid_handle;

const PROFILE: &str = "app.bsky.actor.profile";

/// Where avatars and banners are served from (Bluesky's CDN URL scheme).
const IMAGE_CDN: &str = "https://cdn.bsky.app/img";

/// Hydrated `profileView`s by DID.
pub struct ProfileCache(pub(crate) ViewCache<String, Value>);

impl Default for ProfileCache {
    fn default() -> Self {
        ProfileCache(ViewCache::new(50_000))
    }
}

impl ProfileCache {
    /// Forgets every DID whose profile record, handle or status `batch` changed.
    pub fn invalidate(&self, batch: &[IndexEvent]) {
        let mut dids: Vec<&String> = Vec::new();
        for ev in batch {
            for change in &ev.changes {
                let did = match change {
                    Change::Put(w) if w.collection == PROFILE => &w.did,
                    Change::Delete {
                        did, collection, ..
                    } if collection == PROFILE => did,
                    Change::Invalid(q) if q.collection == PROFILE => &q.did,
                    Change::Identity { did, .. }
                    | Change::HandleChecked { did, .. }
                    | Change::Account { did, .. } => did,
                    _ => continue,
                };
                dids.push(did);
            }
        }
        self.0.remove(dids);
    }
}

/// `profileView`s for `dids` (each DID once), from the cache or one query.
pub(crate) async fn profile_views(
    state: &Bsky,
    dids: &[String],
) -> Result<HashMap<String, Value>, XrpcError> {
    let Lookup {
        found: mut out,
        missing,
        epoch,
    } = state.views.profiles.0.get_many(dids);
    if missing.is_empty() {
        return Ok(out);
    }
    // Shared with concurrent requests (`lookups.rs`).
    let mut rows: HashMap<String, ProfileRow> = state
        .views
        .lookups
        .profiles
        .get(missing.clone())
        .await?
        .into_iter()
        .collect();
    let mut fresh = Vec::with_capacity(missing.len());
    for did in missing {
        let ProfileRow { handle, record } = rows.remove(&did).unwrap_or_default();
        let (record, indexed_at) = record.unzip();
        let record: Option<Value> = record.and_then(|r| serde_json::from_str(&r).ok());
        let view = profile_view(&did, handle.as_deref(), record.as_ref(), indexed_at);
        fresh.push((did.clone(), view.clone()));
        out.insert(did, view);
    }
    // Kept only if no batch was committed since the lookup (cache.rs).
    state.views.profiles.0.put_all(epoch, fresh);
    Ok(out)
}

fn profile_view(
    did: &str,
    handle: Option<&str>,
    profile: Option<&Value>,
    indexed_at: Option<String>,
) -> Value {
    let handle = handle
        .filter(|h| is_valid_handle(h))
        .unwrap_or("handle.invalid");
    let mut v = json!({ "did": did, "handle": handle, "labels": [] });
    if let Some(p) = profile {
        for key in ["displayName", "description", "pronouns", "createdAt"] {
            if let Some(s) = p.get(key).and_then(Value::as_str) {
                v[key] = json!(s);
            }
        }
        if let Some(cid) = blob_cid(p.get("avatar")) {
            v["avatar"] = json!(format!("{IMAGE_CDN}/avatar/plain/{did}/{cid}@jpeg"));
        }
        if let Some(at) = indexed_at {
            v["indexedAt"] = json!(at);
        }
    }
    v
}

fn blob_cid(blob: Option<&Value>) -> Option<&str> {
    blob?.get("ref")?.get("$link")?.as_str()
}

/// The DID for an at-identifier parameter.
async fn actor_did(state: &Bsky, p: &Params) -> Result<String, XrpcError> {
    let actor = p.str("actor").unwrap_or_default();
    crate::api::actors::resolve_repo(state, actor).await
}

pub async fn get_profile(
    state: &Bsky,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let did = actor_did(state, &p).await.map_err(|_| {
        XrpcError::invalid_request(format!(
            "Profile not found: {}",
            p.str("actor").unwrap_or_default()
        ))
    })?;
    account_visible(state, &did).await?;
    let views = profile_views(state, std::slice::from_ref(&did)).await?;
    let mut view = views.get(&did).cloned().unwrap_or(Value::Null);
    let key = did.clone();
    let (followers, follows, posts, banner, pinned) = state
        .readers
        .with(move |c| {
            c.query_row(
                "SELECT
                   (SELECT coalesce(sum(n), 0)::BIGINT FROM counts_of($1)
                     WHERE collection = 'app.bsky.graph.follow' AND path = '.subject'),
                   (SELECT count(*) FROM records_by($1) WHERE collection = 'app.bsky.graph.follow'),
                   (SELECT count(*) FROM records_by($1) WHERE collection = 'app.bsky.feed.post'),
                   (SELECT record ->> '/banner/ref/$link' FROM records
                     WHERE uri = 'at://' || $1 || '/app.bsky.actor.profile/self'),
                   (SELECT (record -> 'pinnedPost')::VARCHAR FROM records
                     WHERE uri = 'at://' || $1 || '/app.bsky.actor.profile/self')",
                params![key],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                },
            )
        })
        .await?;
    view["followersCount"] = json!(followers);
    view["followsCount"] = json!(follows);
    view["postsCount"] = json!(posts);
    if let Some(cid) = banner {
        view["banner"] = json!(format!("{IMAGE_CDN}/banner/plain/{did}/{cid}@jpeg"));
    }
    // The pinned post's strong reference, when it is a valid one (the
    // AppView shows it whoever's post it names).
    if let Some(pin) = pinned
        .and_then(|p| serde_json::from_str::<Value>(&p).ok())
        .filter(is_strong_ref)
    {
        view["pinnedPost"] = pin;
    }
    Ok(view)
}

/// A `com.atproto.repo.strongRef`: an AT-URI and a CID.
pub(crate) fn is_strong_ref(v: &Value) -> bool {
    let field = |k: &str| v.get(k).and_then(Value::as_str);
    field("uri").is_some_and(crate::syntax::is_valid_at_uri)
        && field("cid").is_some_and(crate::syntax::is_valid_cid_string)
}

// Each list query takes the key, the cursor (rkey three times, then DID) and
// the limit, and returns did, rkey, createdAt, indexedAt, newest first.

const FOLLOWERS_SQL: &str = "
    SELECT did, rkey, NULL, NULL FROM (
      SELECT source_did AS did, split_part(source_uri, '/', 5) AS rkey FROM links_to(?)
      WHERE source_collection = 'app.bsky.graph.follow' AND path = '.subject')
    WHERE (?::VARCHAR IS NULL OR rkey < ? OR (rkey = ? AND did < ?))
    ORDER BY rkey DESC, did DESC LIMIT ?";

const FOLLOWS_SQL: &str = "
    SELECT did, rkey, NULL, NULL FROM (
      SELECT record ->> 'subject' AS did, rkey FROM records_by(?)
      WHERE collection = 'app.bsky.graph.follow')
    WHERE did IS NOT NULL AND (?::VARCHAR IS NULL OR rkey < ? OR (rkey = ? AND did < ?))
    ORDER BY rkey DESC, did DESC LIMIT ?";

/// Likes or reposts of a subject: bound are the subject URI, the source
/// collection and the wanted subject CID (twice; NULL for any version).
const SUBJECT_SQL: &str = "
    SELECT l.source_did AS did, split_part(l.source_uri, '/', 5) AS rkey,
           r.created_at, strftime(r.indexed_at, '%Y-%m-%dT%H:%M:%S.%gZ')
    FROM links_to(?) l JOIN records r ON r.uri = l.source_uri
    WHERE l.source_collection = ? AND l.path = '.subject.uri'
      AND (?::VARCHAR IS NULL OR (r.record -> 'subject' ->> 'cid') = ?)
      AND (?::VARCHAR IS NULL OR split_part(l.source_uri, '/', 5) < ?
           OR (split_part(l.source_uri, '/', 5) = ? AND l.source_did < ?))
    ORDER BY rkey DESC, did DESC LIMIT ?";

/// One page of (did, rkey, createdAt, indexedAt) rows with the next cursor
/// and the hydrated actors.
struct Page {
    rows: Vec<(String, String, Option<String>, Option<String>)>,
    cursor: Option<String>,
    views: HashMap<String, Value>,
}

async fn page(
    state: &Bsky,
    p: &Params,
    sql: &'static str,
    keys: Vec<Option<String>>,
) -> Result<Page, XrpcError> {
    let limit = p.int("limit").unwrap_or(50);
    let after = decode_cursor(p.str("cursor"))?;
    let mut rows = state
        .readers
        .with(move |c| {
            let (ck, cd) = after.unzip();
            let mut values: Vec<Box<dyn duckdb::ToSql>> = Vec::new();
            for k in keys {
                values.push(Box::new(k));
            }
            values.push(Box::new(ck.clone()));
            values.push(Box::new(ck.clone()));
            values.push(Box::new(ck));
            values.push(Box::new(cd));
            values.push(Box::new(limit + 1));
            let mut stmt = c.prepare_cached(sql)?;
            let rows = stmt.query_map(duckdb::params_from_iter(values.iter()), |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })?;
            rows.collect::<duckdb::Result<Vec<_>>>()
        })
        .await?;
    let cursor = cut_page(&mut rows, limit, |(did, rkey, ..)| encode_cursor(rkey, did));
    let dids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let views = profile_views(state, &dids).await?;
    Ok(Page {
        rows,
        cursor,
        views,
    })
}

fn with_cursor(mut out: Value, cursor: Option<String>) -> Value {
    if let Some(c) = cursor {
        out["cursor"] = json!(c);
    }
    out
}

async fn graph_list(
    state: &Bsky,
    nsid: &str,
    pairs: &[(String, String)],
    sql: &'static str,
    field: &str,
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let subject = actor_did(state, &p).await?;
    let page = page(state, &p, sql, vec![Some(subject.clone())]).await?;
    let subject_view = profile_views(state, std::slice::from_ref(&subject)).await?;
    let list: Vec<Value> = page.rows.iter().map(|r| page.views[&r.0].clone()).collect();
    let mut out = json!({ "subject": subject_view[&subject] });
    out[field] = Value::Array(list);
    Ok(with_cursor(out, page.cursor))
}

pub async fn get_followers(
    state: &Bsky,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    graph_list(state, nsid, pairs, FOLLOWERS_SQL, "followers").await
}

pub async fn get_follows(
    state: &Bsky,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    graph_list(state, nsid, pairs, FOLLOWS_SQL, "follows").await
}

/// Likes or reposts of `uri`, only those of version `cid` when it is given.
async fn subject_list(
    state: &Bsky,
    p: &Params,
    collection: &str,
) -> Result<(String, Page), XrpcError> {
    let uri = p.str("uri").unwrap_or_default().to_string();
    let cid = p.str("cid").map(str::to_string);
    let keys = vec![
        Some(uri.clone()),
        Some(collection.to_string()),
        cid.clone(),
        cid,
    ];
    let page = page(state, p, SUBJECT_SQL, keys).await?;
    Ok((uri, page))
}

pub async fn get_likes(
    state: &Bsky,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let (uri, page) = subject_list(state, &p, "app.bsky.feed.like").await?;
    let likes: Vec<Value> = page
        .rows
        .iter()
        .map(|(did, _, created, indexed)| {
            let indexed = indexed.clone().unwrap_or_default();
            json!({
                "indexedAt": indexed,
                "createdAt": created.clone().unwrap_or_else(|| indexed.clone()),
                "actor": page.views[did],
            })
        })
        .collect();
    let mut out = json!({ "uri": uri, "likes": likes });
    if let Some(cid) = p.str("cid") {
        out["cid"] = json!(cid);
    }
    Ok(with_cursor(out, page.cursor))
}

pub async fn get_reposted_by(
    state: &Bsky,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let (uri, page) = subject_list(state, &p, "app.bsky.feed.repost").await?;
    let list: Vec<Value> = page.rows.iter().map(|r| page.views[&r.0].clone()).collect();
    let mut out = json!({ "uri": uri, "repostedBy": list });
    if let Some(cid) = p.str("cid") {
        out["cid"] = json!(cid);
    }
    Ok(with_cursor(out, page.cursor))
}
