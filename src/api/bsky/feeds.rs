//! A feed generator: `app.bsky.feed.describeFeedGenerator` and
//! `app.bsky.feed.getFeedSkeleton` for feeds defined by SQL files.
//!
//! Each `feeds/<rkey>.sql` is the feed
//! `at://<publisher>/app.bsky.feed.generator/<rkey>`. The file is one SELECT
//! that may use `$limit` and `$cursor` (NULL on the first page), both bound,
//! never spliced, and returns the columns `post` (an AT-URI), `cursor` (the
//! row's position; the last row's becomes the next page's `$cursor`) and
//! optionally `feedContext`. Each `feeds/<rkey>.json` is a saved search:
//! `{"query": "...", "collection": "app.bsky.feed.post", "recency": true}`
//! (collection and recency optional), answered from the full-text index, best
//! match first. Answers are checked against the official lexicon's output
//! schema before they are sent.

use std::collections::BTreeMap;
use std::path::Path;

use indexmap::IndexMap;
use serde_json::{json, Value};

use super::Bsky;
use crate::api::params::parse;
use crate::api::repo::queries::{
    check_answer, output_schema, rows, sql_files, wrap_checked, QueryFileError,
};
use crate::api::XrpcError;
use crate::index::store::ReadPool;
use crate::lexicon::{Catalog, Field};
use crate::syntax::is_valid_record_key;

const GENERATOR: &str = "app.bsky.feed.generator";
const DESCRIBE: &str = "app.bsky.feed.describeFeedGenerator";
const SKELETON: &str = "app.bsky.feed.getFeedSkeleton";

/// The feeds this server generates.
#[derive(Debug, Default)]
pub struct Feeds {
    /// The feed generator service's DID (`describeFeedGenerator`'s `did`).
    pub service_did: String,
    /// The repo whose `app.bsky.feed.generator` records name the feeds.
    pub publisher: String,
    feeds: BTreeMap<String, Feed>,
    /// The output schemas of the two methods, compiled at load.
    outputs: BTreeMap<&'static str, Field>,
}

#[derive(Debug)]
enum Feed {
    /// An SQL file, wrapped to return JSON rows.
    Sql { wrapped: String },
    /// A saved search.
    Search(SavedSearch),
}

/// A `feeds/<rkey>.json` file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedSearch {
    query: String,
    #[serde(default = "default_feed_collection")]
    collection: String,
    #[serde(default)]
    recency: bool,
}

fn default_feed_collection() -> String {
    "app.bsky.feed.post".to_string()
}

impl Feeds {
    /// The AT-URIs of the feeds, in rkey order.
    pub fn uris(&self) -> Vec<String> {
        self.feeds
            .keys()
            .map(|rkey| format!("at://{}/{GENERATOR}/{rkey}", self.publisher))
            .collect()
    }
}

/// Loads every `*.sql` in `dir` (a missing directory holds no feeds).
pub fn load(
    dir: &Path,
    service_did: &str,
    publisher: &str,
    catalog: &Catalog,
    readers: &ReadPool,
) -> (Feeds, Vec<QueryFileError>) {
    let mut feeds = Feeds {
        service_did: service_did.to_string(),
        publisher: publisher.to_string(),
        feeds: BTreeMap::new(),
        outputs: [DESCRIBE, SKELETON]
            .into_iter()
            .filter_map(|nsid| Some((nsid, output_schema(catalog, nsid).ok()?)))
            .collect(),
    };
    let mut errors = Vec::new();
    let allowed = ["limit".to_string(), "cursor".to_string()];
    for path in sql_files(dir) {
        let rkey = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let loaded = if is_valid_record_key(&rkey) {
            std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| wrap_checked(readers, &text, &allowed))
        } else {
            Err(format!("{rkey:?} is not a valid record key for a feed"))
        };
        match loaded {
            Ok(wrapped) => {
                feeds.feeds.insert(rkey, Feed::Sql { wrapped });
            }
            Err(message) => errors.push(QueryFileError { path, message }),
        }
    }
    for path in crate::api::repo::queries::files_with_extension(dir, "json") {
        let rkey = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let loaded = if !is_valid_record_key(&rkey) {
            Err(format!("{rkey:?} is not a valid record key for a feed"))
        } else if feeds.feeds.contains_key(&rkey) {
            Err(format!("feed {rkey:?} is defined twice (.sql and .json)"))
        } else {
            std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    serde_json::from_str::<SavedSearch>(&text).map_err(|e| e.to_string())
                })
                .and_then(|s| {
                    if crate::index::search::terms(&s.query).is_empty() {
                        Err("the saved search's query has no words".to_string())
                    } else if !crate::syntax::is_valid_nsid(&s.collection) {
                        Err(format!("collection {:?} is not an NSID", s.collection))
                    } else {
                        Ok(s)
                    }
                })
        };
        match loaded {
            Ok(search) => {
                feeds.feeds.insert(rkey, Feed::Search(search));
            }
            Err(message) => errors.push(QueryFileError { path, message }),
        }
    }
    (feeds, errors)
}

pub async fn describe(
    state: &Bsky,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    parse(&state.catalog(), nsid, pairs)?;
    let generator = state
        .generation()
        .part::<Feeds>()
        .ok_or_else(|| XrpcError::not_implemented(nsid))?;
    let feeds: Vec<Value> = generator
        .uris()
        .into_iter()
        .map(|uri| json!({ "uri": uri }))
        .collect();
    let out = json!({ "did": generator.service_did, "feeds": feeds });
    check_output(state, generator, nsid, &out)?;
    Ok(out)
}

pub async fn skeleton(
    state: &Bsky,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let uri = p.str("feed").unwrap_or_default();
    let unknown = || XrpcError::named("UnknownFeed", format!("Unknown feed: {uri}"));
    let rest = uri.strip_prefix("at://").ok_or_else(unknown)?;
    let mut parts = rest.splitn(3, '/');
    let (Some(did), Some(collection), Some(rkey)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(unknown());
    };
    let generator = state
        .generation()
        .part::<Feeds>()
        .ok_or_else(|| XrpcError::not_implemented(nsid))?;
    let feed = (did == generator.publisher && collection == GENERATOR)
        .then(|| generator.feeds.get(rkey))
        .flatten()
        .ok_or_else(unknown)?;
    let limit = p.int("limit").unwrap_or(50);
    let wrapped = match feed {
        Feed::Sql { wrapped } => wrapped.clone(),
        Feed::Search(saved) => {
            let out = search_skeleton(state, nsid, saved, limit, p.str("cursor")).await?;
            check_output(state, generator, nsid, &out)?;
            return Ok(out);
        }
    };
    let mut values = IndexMap::new();
    values.insert("limit".to_string(), json!(limit));
    if let Some(c) = p.str("cursor") {
        values.insert("cursor".to_string(), json!(c));
    }
    let rows = rows(&state.readers, wrapped, values).await?;
    let mut items = Vec::with_capacity(rows.len());
    let mut last_cursor = None;
    for row in &rows {
        let post = row.get("post").and_then(Value::as_str);
        let cursor = row.get("cursor").and_then(Value::as_str);
        let (Some(post), Some(cursor)) = (post, cursor) else {
            return Err(XrpcError::internal(format!(
                "feed {rkey}: every row needs string columns `post` and `cursor`, got {row}"
            )));
        };
        let mut item = json!({ "post": post });
        if let Some(ctx) = row.get("feedContext").and_then(Value::as_str) {
            item["feedContext"] = json!(ctx);
        }
        items.push(item);
        last_cursor = Some(cursor.to_string());
    }
    let mut out = json!({ "feed": items });
    if rows.len() as i64 >= limit {
        if let Some(c) = last_cursor {
            out["cursor"] = json!(c);
        }
    }
    check_output(state, generator, nsid, &out)?;
    Ok(out)
}

/// A page of a saved-search feed; the cursor is the offset of the next page.
async fn search_skeleton(
    state: &Bsky,
    nsid: &str,
    saved: &SavedSearch,
    limit: i64,
    cursor: Option<&str>,
) -> Result<Value, XrpcError> {
    let search = crate::api::repo::search::service(state, nsid)?;
    let offset = crate::api::repo::search::page_offset(cursor, "feed")?;
    let q = crate::index::search::SearchQuery {
        text: saved.query.clone(),
        collection: Some(saved.collection.clone()),
        author: None,
        limit: limit as usize,
        offset,
        recency: saved.recency,
    };
    let (found, total) = crate::api::repo::search::run(&search, &state.readers, q).await?;
    let items: Vec<Value> = found
        .iter()
        .map(|(_, f)| json!({ "post": f.uri }))
        .collect();
    let mut out = json!({ "feed": items });
    if offset + (limit as usize) < total {
        out["cursor"] = json!((offset + limit as usize).to_string());
    }
    Ok(out)
}

/// Checks an answer against the method's lexicon output schema.
fn check_output(state: &Bsky, feeds: &Feeds, nsid: &str, out: &Value) -> Result<(), XrpcError> {
    let schema = feeds
        .outputs
        .get(nsid)
        .ok_or_else(|| XrpcError::internal(format!("no output schema for {nsid}")))?;
    check_answer(&state.catalog(), nsid, schema, out)
}
