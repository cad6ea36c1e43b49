//! Bluesky post views with the official shapes: `app.bsky.feed.getPosts`,
//! `getQuotes`, `getPostThread` and `getAuthorFeed`.
//!
//! A `postView` carries the stored record, its author (a `profileViewBasic`
//! from the profile cache) and its reply, repost, like and quote counts from
//! the exact `link_counts`. Quotes are posts whose `.embed.record.uri`
//! (app.bsky.embed.record) or `.embed.record.record.uri`
//! (app.bsky.embed.recordWithMedia) points at the post.
//!
//! Embeds are shown as the AppView shows them (`embeds.rs`), and so are
//! blocks, post gates and thread gates (`gates.rs`).
//!
//! `getAuthorFeed?includePins=true` leads the first page with the author's
//! pinned post, as the AppView does.
//!
//! Not yet: viewer state, labels (always `[]`), reply ranking (replies come
//! oldest first).

use std::collections::HashMap;

use duckdb::params;
use serde_json::{json, Value};

use super::actors::{is_strong_ref, profile_views};
use super::gates;
use super::lookups::PostPart;
use super::Bsky;
use crate::api::cache::Lookup;
use crate::api::page::{cut_page, decode_cursor, encode_cursor};
use crate::api::params::{parse, Params};
use crate::api::XrpcError;

pub(super) const POST: &str = "app.bsky.feed.post";
/// How views show times (a DuckDB `strftime` format, quoted for SQL).
pub(super) const DATETIME: &str = "'%Y-%m-%dT%H:%M:%S.%gZ'";

/// [`DATETIME`] for a time read from the search index (microseconds).
fn view_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The posts among `uris` whose current rows the search index holds (see
/// `SearchIndex::stored_records`), as the store would give them; none when
/// the server runs without the index, or the index does not hold every
/// post. A failed read of the index leaves every row to the store.
fn indexed_posts(state: &Bsky, uris: &[String]) -> HashMap<String, super::lookups::PostRow> {
    let Some(index) = state.search.as_ref().and_then(|s| s.threaded()) else {
        return HashMap::new();
    };
    let posts: Vec<String> = uris
        .iter()
        .filter(|u| crate::index::event::collection_of(u) == Some(POST))
        .cloned()
        .collect();
    match index.stored_records(&posts) {
        Ok(found) => found
            .into_iter()
            .map(|(uri, s)| {
                let row = super::lookups::PostRow {
                    cid: s.cid,
                    did: s.did,
                    record: s.record,
                    indexed_at: view_time(s.indexed_us),
                };
                (uri, row)
            })
            .collect(),
        Err(e) => {
            tracing::warn!("post rows from the search index: {e}; reading the store");
            HashMap::new()
        }
    }
}

/// A `profileViewBasic` from a `profileView` (the fields basic does not have
/// are left out).
fn basic(view: &Value) -> Value {
    let mut v = view.clone();
    if let Value::Object(o) = &mut v {
        o.remove("description");
        o.remove("indexedAt");
        o.remove("pronouns");
    }
    v
}

/// `postView`s for the given URIs (missing or non-post URIs are absent),
/// from the hot view cache where it has them.
pub(crate) async fn post_views(
    state: &Bsky,
    uris: &[String],
) -> Result<HashMap<String, Value>, XrpcError> {
    post_views_with(state, uris, None).await
}

/// As [`post_views`], for the posts of a thread level whose replies are
/// read next, in a thread whose root is by `root_author`: the posts read
/// from the store come with their direct replies and `root_author`'s likes
/// of them, which go to the hot caches that [`replies_of`] and
/// [`add_thread_context`] read.
async fn thread_post_views(
    state: &Bsky,
    uris: &[String],
    root_author: &str,
) -> Result<HashMap<String, Value>, XrpcError> {
    post_views_with(state, uris, Some(root_author)).await
}

async fn post_views_with(
    state: &Bsky,
    uris: &[String],
    thread: Option<&str>,
) -> Result<HashMap<String, Value>, XrpcError> {
    let Lookup {
        found,
        missing,
        epoch,
    } = state.views.hot.posts.get_many(uris);
    let mut out: HashMap<String, Value> = found
        .into_iter()
        .filter_map(|(uri, view)| Some((uri, view?)))
        .collect();
    if !missing.is_empty() {
        let fresh = post_views_at(state, &missing, 0, thread).await?;
        // Kept only if no batch was committed since the lookup (cache.rs).
        state.views.hot.posts.put_all(
            epoch,
            missing.into_iter().map(|uri| {
                let view = fresh.get(&uri).cloned();
                (uri, view)
            }),
        );
        out.extend(fresh);
    }
    Ok(out)
}

/// `postView`s shown at `depth`: 0 for the posts of an answer, 1 for posts
/// they quote, 2 for posts those quote. Embeds are shown down to depth 1, so
/// the quoted posts are fetched one level deeper (at most two more queries).
/// With `thread` (a thread root's author), the posts' direct replies and
/// that author's likes of them are read in the same statement and stored
/// in the hot caches ([`thread_post_views`]).
/// Long on purpose: one pass that reads a set of posts and everything their
/// views show, batched per kind; the reads are functions of their own.
async fn post_views_at(
    state: &Bsky,
    uris: &[String],
    depth: u8,
    thread: Option<&str>,
) -> Result<HashMap<String, Value>, XrpcError> {
    if uris.is_empty() {
        return Ok(HashMap::new());
    }
    // Read before the store is (cache.rs).
    let replies_epoch = state.views.hot.replies.epoch();
    let likes_epoch = state.views.hot.root_likes.epoch();
    let PostParts {
        found,
        counted,
        mut replies,
        root_likes,
    } = read_post_parts(state, uris, thread).await?;
    if let Some(root_author) = thread {
        for list in replies.values_mut() {
            oldest_first(list);
        }
        state.views.hot.replies.put_all(replies_epoch, replies);
        state.views.hot.root_likes.put_all(
            likes_epoch,
            found.iter().map(|(uri, _)| {
                let like = root_likes.get(uri).cloned();
                ((root_author.to_string(), uri.clone()), like)
            }),
        );
    }
    // [replies, reposts, likes, quotes] by post.
    let mut tallies: HashMap<String, [i64; 4]> = HashMap::new();
    for (target, (collection, path, n)) in counted {
        let slot = match (collection.as_str(), path.as_str()) {
            (POST, ".reply.parent.uri") => 0,
            ("app.bsky.feed.repost", ".subject.uri") => 1,
            ("app.bsky.feed.like", ".subject.uri") => 2,
            (POST, ".embed.record.uri" | ".embed.record.record.uri") => 3,
            _ => continue,
        };
        tallies.entry(target).or_default()[slot] += n;
    }
    let rows: Vec<_> = found
        .into_iter()
        .map(|(uri, row)| {
            let counts = tallies.get(&uri).copied().unwrap_or_default();
            (uri, row.cid, row.did, row.record, row.indexed_at, counts)
        })
        .collect();
    let authors: Vec<String> = rows.iter().map(|r| r.2.clone()).collect();
    let profiles = profile_views(state, &authors).await?;
    let mut parsed: Vec<ParsedPost> = Vec::with_capacity(rows.len());
    for (uri, cid, did, record, indexed_at, counts) in rows {
        let record: Value = serde_json::from_str(&record)
            .map_err(|e| XrpcError::internal(format!("stored record is not JSON: {e}")))?;
        parsed.push((uri, cid, did, record, indexed_at, counts));
    }
    // Derived once per post: the record its embed quotes (when embeds are
    // shown at this depth) and the root of its thread.
    let show_embeds = depth < 2;
    let embedded: Vec<Option<&str>> = parsed
        .iter()
        .map(|p| {
            p.3.get("embed")
                .filter(|_| show_embeds)
                .and_then(super::embeds::embedded_record)
        })
        .collect();
    let roots: HashMap<&str, &str> = parsed
        .iter()
        .map(|p| (p.0.as_str(), gates::root_of(&p.0, &p.3)))
        .collect();
    // The posts that these posts' embeds quote, one level deeper.
    let wanted: Vec<String> = parsed
        .iter()
        .filter(|_| show_embeds)
        .filter_map(|p| super::embeds::quoted_post(p.3.get("embed")?))
        .map(str::to_string)
        .collect();
    let quoted = Box::pin(post_views_at(state, &wanted, depth + 1, None)).await?;
    // Blocks and post gates between the quoting posts and what they quote.
    let quoting: Vec<(&Value, &str, &str)> = parsed
        .iter()
        .zip(&embedded)
        .filter_map(|(p, e)| Some((&p.3, p.0.as_str(), (*e)?)))
        .collect();
    let (blocks, detached) = if quoting.is_empty() {
        Default::default()
    } else {
        let pairs: Vec<(String, String)> = quoting
            .iter()
            .map(|(_, uri, quoted)| (uri.to_string(), quoted.to_string()))
            .collect();
        (
            gates::post_blocks(
                state,
                quoting.iter().map(|(record, uri, _)| (*uri, *record)),
            )
            .await?,
            gates::detached_quotes(state, &pairs).await?,
        )
    };
    let (threadgates, gated_counts) = reply_gates(state, &parsed, &roots).await?;
    let mut out = HashMap::new();
    for (uri, cid, did, record, indexed_at, [replies, reposts, likes, quotes]) in parsed {
        let replies = replies - gated_counts.get(&uri).copied().unwrap_or(0);
        let threadgate = threadgates
            .get(&uri)
            .filter(|_| record.get("reply").is_none())
            .map(gates::Threadgate::view);
        let gate = super::embeds::QuoteState {
            blocked: blocks.get(&uri).is_some_and(|b| b.embed),
            detached: detached.get(&uri).copied(),
        };
        let embed = record.get("embed").filter(|_| show_embeds).and_then(|e| {
            super::embeds::embed_view(&state.views.media, &did, e, &quoted, depth + 1, gate)
        });
        let mut view = json!({
            "uri": uri,
            "cid": cid,
            "author": basic(&profiles[&did]),
            "record": record,
            "replyCount": replies,
            "repostCount": reposts,
            "likeCount": likes,
            "quoteCount": quotes,
            "indexedAt": indexed_at,
            "labels": [],
        });
        if let Some(embed) = embed {
            view["embed"] = embed;
        }
        if let Some(threadgate) = threadgate {
            view["threadgate"] = threadgate;
        }
        out.insert(uri, view);
    }
    Ok(out)
}

/// A post being viewed: URI, CID, author DID, record, indexing time and
/// [replies, reposts, likes, quotes].
type ParsedPost = (String, String, String, Value, String, [i64; 4]);

/// What the lookups give for a set of posts: their rows, their
/// `link_counts` rows, and with a thread root's author, their direct replies
/// (whole for the posts the store read) and that author's likes of them.
struct PostParts {
    found: Vec<(String, super::lookups::PostRow)>,
    counted: Vec<(String, super::lookups::CountRow)>,
    replies: HashMap<String, Vec<String>>,
    root_likes: HashMap<String, String>,
}

/// Reads the parts of `uris`' post views (see [`PostParts`]).
async fn read_post_parts(
    state: &Bsky,
    uris: &[String],
    thread: Option<&str>,
) -> Result<PostParts, XrpcError> {
    // Rows the search index holds leave only their counts (and the root
    // author's likes) to the store: a point lookup in the index each, and a
    // statement without the records branch, whose planning and compressed
    // string fetches are most of a cold thread's cost.
    let indexed = indexed_posts(state, uris);
    let rest: Vec<String> = uris
        .iter()
        .filter(|u| !indexed.contains_key(*u))
        .cloned()
        .collect();
    // The root author's DID rides along as a key of its own (a DID, not an
    // AT-URI: `lookups::post_parts` tells them apart).
    let with_root = |uris: Vec<String>| -> Vec<String> {
        uris.into_iter().chain(thread.map(str::to_string)).collect()
    };
    // The posts and their counts in one lookup shared with concurrent
    // requests (`lookups.rs`); the counts are summed here (one statement
    // that joined and aggregated them took 1.5 ms for one post against
    // 0.65 ms for the two).
    let from_store = async {
        if rest.is_empty() {
            return Ok(Vec::new());
        }
        match thread {
            Some(_) => {
                state
                    .views
                    .lookups
                    .thread_posts
                    .get(with_root(rest.clone()))
                    .await
            }
            None => state.views.lookups.posts.get(rest.clone()).await,
        }
    };
    let counts_of_indexed = async {
        if indexed.is_empty() {
            return Ok(Vec::new());
        }
        state
            .views
            .lookups
            .counts
            .get(with_root(indexed.keys().cloned().collect()))
            .await
    };
    let (stored, counts) = tokio::try_join!(from_store, counts_of_indexed)?;
    let mut found = Vec::new();
    let mut counted = Vec::new();
    let mut replies: HashMap<String, Vec<String>> = HashMap::new();
    if thread.is_some() {
        // The store's reply lists are whole for the posts it read (rows
        // from the index come without theirs: `replies_of` reads them).
        for (uri, part) in &stored {
            if matches!(part, PostPart::Row(_)) {
                replies.entry(uri.clone()).or_default();
            }
        }
    }
    let mut root_likes: HashMap<String, String> = HashMap::new();
    let parts = indexed
        .into_iter()
        .map(|(uri, row)| (uri, PostPart::Row(row)))
        .chain(stored)
        .chain(counts);
    for (uri, part) in parts {
        match part {
            PostPart::Row(row) => found.push((uri, row)),
            PostPart::Count(count) => counted.push((uri, count)),
            PostPart::Reply(reply) => replies.entry(uri).or_default().push(reply),
            // Likes by other threads' root authors come with a shared
            // statement; the first like by URI, should there be two.
            PostPart::Like { liker, like } if Some(liker.as_str()) == thread => {
                match root_likes.get_mut(&uri) {
                    Some(l) if *l <= like => {}
                    Some(l) => *l = like,
                    None => {
                        root_likes.insert(uri, like);
                    }
                }
            }
            PostPart::Like { .. } => {}
        }
    }
    Ok(PostParts {
        found,
        counted,
        replies,
        root_likes,
    })
}

/// Thread gates of the posts' roots, and per post the direct replies its
/// root's gate does not allow (not counted, as the AppView counts them).
async fn reply_gates(
    state: &Bsky,
    parsed: &[ParsedPost],
    roots: &HashMap<&str, &str>,
) -> Result<(HashMap<String, gates::Threadgate>, HashMap<String, i64>), XrpcError> {
    // Thread gates: shown on root posts; replies a gate does not allow are
    // not counted (as the AppView counts them).
    let threadgates = gates::threadgates(state, roots.values().copied()).await?;
    let limited: Vec<&str> = parsed
        .iter()
        .filter(|p| p.5[0] > 0 && threadgates.contains_key(roots[p.0.as_str()]))
        .map(|p| p.0.as_str())
        .collect();
    let mut gated_counts: HashMap<String, i64> = HashMap::new();
    if !limited.is_empty() {
        let direct = gates::links_to(state, limited, POST, ".reply.parent.uri").await?;
        let pairs: Vec<(String, String)> = direct
            .iter()
            .map(|l| (l.source_uri.clone(), roots[l.target.as_str()].to_string()))
            .collect();
        let gated = gates::gated_replies(state, &pairs, &threadgates).await?;
        for l in direct.iter().filter(|l| gated.contains(&l.source_uri)) {
            *gated_counts.entry(l.target.clone()).or_default() += 1;
        }
    }
    Ok((threadgates, gated_counts))
}

fn not_found(uri: &str) -> Value {
    json!({"$type": "app.bsky.feed.defs#notFoundPost", "uri": uri, "notFound": true})
}

fn typed(mut view: Value, t: &str) -> Value {
    view["$type"] = json!(t);
    view
}

pub async fn get_posts(
    state: &Bsky,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let uris: Vec<String> =
        p.0.get("uris")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
    let views = post_views(state, &uris).await?;
    // In the order asked for; posts not in the index are left out.
    let posts: Vec<Value> = uris.iter().filter_map(|u| views.get(u).cloned()).collect();
    Ok(json!({ "posts": posts }))
}

pub async fn get_quotes(
    state: &Bsky,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let uri = p.str("uri").unwrap_or_default().to_string();
    let cid = p.str("cid").map(str::to_string);
    let limit = p.int("limit").unwrap_or(50);
    let after = decode_cursor(p.str("cursor"))?;
    let target = uri.clone();
    let mut rows = state
        .readers
        .with(move |c| {
            let (ck, cd) = after.unzip();
            let mut stmt = c.prepare_cached(
                "SELECT uri, did, rkey FROM (
                   SELECT r.uri, r.did, r.rkey, r.record FROM links_to(?) l JOIN records r ON r.uri = l.source_uri
                   WHERE l.source_collection = 'app.bsky.feed.post'
                     AND l.path IN ('.embed.record.uri', '.embed.record.record.uri'))
                 WHERE (?::VARCHAR IS NULL
                        OR coalesce(record ->> '/embed/record/cid', record ->> '/embed/record/record/cid') = ?)
                   AND (?::VARCHAR IS NULL OR rkey < ? OR (rkey = ? AND did < ?))
                 ORDER BY rkey DESC, did DESC LIMIT ?",
            )?;
            let rows = stmt.query_map(params![target, cid, cid, ck, ck, ck, cd, limit + 1], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?;
            rows.collect::<duckdb::Result<Vec<_>>>()
        })
        .await?;
    let next = cut_page(&mut rows, limit, |(_, did, rkey)| encode_cursor(rkey, did));
    let uris: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let views = post_views(state, &uris).await?;
    let posts: Vec<Value> = uris.iter().filter_map(|u| views.get(u).cloned()).collect();
    let mut out = json!({ "uri": uri, "posts": posts });
    if let Some(c) = p.str("cid") {
        out["cid"] = json!(c);
    }
    if let Some(c) = next {
        out["cursor"] = json!(c);
    }
    Ok(out)
}

/// The post `did`'s profile pins (`pinnedPost`, a valid strongRef to one of
/// `did`'s own records), if any.
async fn pinned_post(state: &Bsky, did: &str) -> Result<Option<String>, XrpcError> {
    let profile = format!("at://{did}/app.bsky.actor.profile/self");
    let rows = gates::records_at(state, [profile.as_str()], "app.bsky.actor.profile").await?;
    Ok(rows
        .into_iter()
        .find_map(|(_, _, record)| record.get("pinnedPost").cloned())
        .filter(is_strong_ref)
        .and_then(|p| p["uri"].as_str().map(str::to_string))
        .filter(|uri| crate::index::event::did_of(uri) == did))
}

/// The reply parent URI of a post record, if it is a reply.
fn parent_of(post: &Value) -> Option<String> {
    post.pointer("/record/reply/parent/uri")?
        .as_str()
        .map(str::to_string)
}

pub async fn get_post_thread(
    state: &Bsky,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p = parse(&state.catalog(), nsid, pairs)?;
    let uri = p.str("uri").unwrap_or_default().to_string();
    let depth = p.int("depth").unwrap_or(6);
    let parent_height = p.int("parentHeight").unwrap_or(80);
    // The anchor's author is its thread root's when the anchor is a root
    // (a guess for a reply, whose root is known once its record is read:
    // then `add_thread_context` reads the root author's like itself).
    let anchor_author = crate::index::event::did_of(&uri).to_string();
    prefetch_thread(state, &uri, depth, parent_height).await?;
    let anchor = thread_post_views(state, std::slice::from_ref(&uri), &anchor_author)
        .await?
        .remove(&uri)
        .ok_or_else(|| XrpcError::named("NotFound", format!("Post not found: {uri}")))?;

    let ThreadBelow {
        children,
        views,
        prefetched,
    } = replies_below(state, &uri, &anchor, depth, parent_height).await?;
    // Replies whose author and their parent's author block each other are
    // left out (with what hangs below them).
    let blocks =
        gates::post_blocks(state, views.iter().map(|(u, v)| (u.as_str(), &v["record"]))).await?;
    // Replies their thread's gate does not allow are left out; an anchor
    // that is one is shown alone. The thread root's gate, shown beside the
    // thread, comes from the same lookup.
    let replies = gates::reply_roots(
        views
            .iter()
            .map(|(u, v)| (u.as_str(), &v["record"]))
            .chain([(uri.as_str(), &anchor["record"])]),
    );
    let root = gates::root_of(&uri, &anchor["record"]);
    let threadgates =
        gates::threadgates(state, replies.iter().map(|(_, r)| r.as_str()).chain([root])).await?;
    let gated = gates::gated_replies(state, &replies, &threadgates).await?;
    let threadgate = threadgates.get(root).map(gates::Threadgate::view);
    let answer = |thread: Value| match &threadgate {
        Some(gate) => json!({ "thread": thread, "threadgate": gate }),
        None => json!({ "thread": thread }),
    };
    if gated.contains(&uri) {
        let mut thread =
            json!({"$type": "app.bsky.feed.defs#threadViewPost", "post": anchor.clone()});
        add_thread_context(state, &anchor, &mut thread).await?;
        return Ok(answer(thread));
    }
    let mut thread = reply_tree(
        &uri,
        anchor.clone(),
        depth,
        &children,
        &views,
        &blocks,
        &gated,
    );

    let parent = parent_chain(state, &anchor, parent_height, prefetched).await?;
    if let Some(parent) = parent {
        thread["parent"] = parent;
    }
    add_thread_context(state, &anchor, &mut thread).await?;
    Ok(answer(thread))
}

/// A thread's replies below the anchor, level by level down to `depth`
/// (each post's direct replies in `children`, their views in `views`), and
/// the anchor's parent and root (up to `parent_height`) read along.
struct ThreadBelow {
    children: HashMap<String, Vec<String>>,
    views: HashMap<String, Value>,
    /// Views of the anchor's ancestors, read with the replies.
    prefetched: HashMap<String, Value>,
}

/// Reads [`ThreadBelow`] for the thread view of `uri` (whose view is
/// `anchor`). Only posts whose (exact) reply count says they have replies
/// are looked up, which saves the query of the last, empty level.
async fn replies_below(
    state: &Bsky,
    uri: &str,
    anchor: &Value,
    depth: i64,
    parent_height: i64,
) -> Result<ThreadBelow, XrpcError> {
    let has_replies = |view: &Value| view["replyCount"].as_i64().unwrap_or(0) > 0;
    let root_author =
        crate::index::event::did_of(gates::root_of(uri, &anchor["record"])).to_string();
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    let mut views: HashMap<String, Value> = HashMap::new();
    let mut level: Vec<String> = if has_replies(anchor) {
        vec![uri.to_string()]
    } else {
        Vec::new()
    };
    // The anchor's parent and its thread's root (which the anchor's record
    // names) are read with the first level of replies, or together when
    // there are none: for a reply to a reply of the root, one round of
    // store queries instead of three.
    let mut ancestors: Vec<String> = Vec::new();
    if parent_height > 0 {
        if let Some(parent) = parent_of(anchor) {
            let root = anchor
                .pointer("/record/reply/root/uri")
                .and_then(Value::as_str)
                .filter(|r| *r != parent && *r != uri && parent_height > 1)
                .map(str::to_string);
            ancestors.push(parent);
            ancestors.extend(root);
        }
    }
    let mut prefetched: HashMap<String, Value> = HashMap::new();
    for d in 0..depth {
        if level.is_empty() {
            break;
        }
        let replies = replies_of(state, &level).await?;
        let next: Vec<String> = level
            .iter()
            .flat_map(|parent| replies[parent].iter().cloned())
            .collect();
        children.extend(replies);
        let extra: Vec<String> = std::mem::take(&mut ancestors)
            .into_iter()
            .filter(|a| !next.contains(a))
            .collect();
        let fetch: Vec<String> = next.iter().chain(&extra).cloned().collect();
        // The replies of this level's posts are read with them when there
        // is a next level to show.
        let mut next_views = if d + 1 < depth {
            thread_post_views(state, &fetch, &root_author).await?
        } else {
            post_views(state, &fetch).await?
        };
        for a in extra {
            if let Some(v) = next_views.remove(&a) {
                prefetched.insert(a, v);
            }
        }
        level = next
            .into_iter()
            .filter(|u| next_views.get(u).is_some_and(has_replies))
            .collect();
        views.extend(next_views);
    }
    if ancestors.len() > 1 {
        // No replies were read: the parent and the root in one round.
        prefetched.extend(post_views(state, &ancestors).await?);
    }
    Ok(ThreadBelow {
        children,
        views,
        prefetched,
    })
}

/// A reply tree node: `view` and, while `left` levels remain, its replies
/// (minus those blocked from their parent or not allowed by their gate).
fn reply_tree(
    uri: &str,
    view: Value,
    left: i64,
    children: &HashMap<String, Vec<String>>,
    views: &HashMap<String, Value>,
    blocks: &HashMap<String, gates::PostBlocks>,
    gated: &std::collections::HashSet<String>,
) -> Value {
    let mut node = json!({"$type": "app.bsky.feed.defs#threadViewPost", "post": view});
    if left > 0 {
        let replies: Vec<Value> = children
            .get(uri)
            .into_iter()
            .flatten()
            .filter(|c| !blocks.get(*c).is_some_and(|b| b.parent) && !gated.contains(*c))
            .filter_map(|c| {
                // A reply listed under a parent it no longer names (an
                // update since the search index's snapshot) is left out.
                views
                    .get(c)
                    .filter(|v| {
                        v.pointer("/record/reply/parent/uri")
                            .and_then(Value::as_str)
                            == Some(uri)
                    })
                    .map(|v| reply_tree(c, v.clone(), left - 1, children, views, blocks, gated))
            })
            .collect();
        node["replies"] = Value::Array(replies);
    }
    node
}

/// The anchor's parents, up to `parent_height`, nested (the nearest parent
/// holds the next one up): a missing one is a notFoundPost, one whose
/// author and its child's block each other a blockedPost (and the chain
/// ends there).
async fn parent_chain(
    state: &Bsky,
    anchor: &Value,
    parent_height: i64,
    mut prefetched: HashMap<String, Value>,
) -> Result<Option<Value>, XrpcError> {
    let mut chain = Vec::new();
    let mut child = anchor.clone();
    while let Some(parent) = parent_of(&child) {
        if chain.len() as i64 >= parent_height {
            break;
        }
        let child_uri = child["uri"].as_str().unwrap_or_default().to_string();
        let blocked = gates::post_blocks(state, [(child_uri.as_str(), &child["record"])])
            .await?
            .get(&child_uri)
            .is_some_and(|b| b.parent);
        if blocked {
            chain.push(gates::blocked_post(&parent));
            break;
        }
        let view = match prefetched.remove(&parent) {
            Some(v) => Some(v),
            None => post_views(state, std::slice::from_ref(&parent))
                .await?
                .remove(&parent),
        };
        match view {
            Some(v) => {
                chain.push(typed(
                    json!({"post": v.clone()}),
                    "app.bsky.feed.defs#threadViewPost",
                ));
                child = v;
            }
            None => {
                chain.push(not_found(&parent));
                break;
            }
        }
    }
    Ok(chain.into_iter().rev().reduce(|upper, mut lower| {
        lower["parent"] = upper;
        lower
    }))
}

/// At most this many posts of a thread are read ahead by [`prefetch_thread`].
const PREFETCH_MAX: usize = 200;

/// Reads a thread's posts from the search index ahead of their views (the
/// anchor's replies down to `depth`, its parents up to `parent_height`), so
/// that all their views are made together, with one statement for their
/// counts and the root author's likes (`post_views_at`), instead of a round
/// of statements per level; [`get_post_thread`] then finds them in the hot
/// caches. It stops where the index has no current row or reply list (what
/// is left is read level by level as before), and does nothing for a
/// thread already cached, or when the hot caches are off or the server runs
/// without the index.
async fn prefetch_thread(
    state: &Bsky,
    uri: &str,
    depth: i64,
    parent_height: i64,
) -> Result<(), XrpcError> {
    let Some(index) = state.search.as_ref().and_then(|s| s.threaded()) else {
        return Ok(());
    };
    let uri = uri.to_string();
    if !state.views.hot.replies.enabled() || state.views.hot.posts.holds(&uri) {
        return Ok(());
    }
    let index_error = |e: crate::index::search::SearchError| {
        tracing::warn!("reading a thread ahead from the search index: {e}");
    };
    let record_of = |uri: &String| -> Option<Value> {
        let mut rows = index
            .stored_records(std::slice::from_ref(uri))
            .map_err(index_error)
            .ok()?;
        serde_json::from_str(&rows.remove(uri)?.record).ok()
    };
    // Noted before the index is read (cache.rs).
    let replies_epoch = state.views.hot.replies.epoch();
    let Some(anchor) = record_of(&uri) else {
        return Ok(());
    };
    let root_author = crate::index::event::did_of(gates::root_of(&uri, &anchor)).to_string();
    let mut posts = vec![uri.clone()];
    let mut child = anchor;
    for _ in 0..parent_height.min(PREFETCH_MAX as i64 / 2) {
        let Some(parent) = child
            .pointer("/reply/parent/uri")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            break;
        };
        let Some(record) = record_of(&parent) else {
            break;
        };
        posts.push(parent);
        child = record;
    }
    let mut level = vec![uri];
    let mut lists: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..depth {
        let Ok(found) = index.replies(&level).map_err(index_error) else {
            break;
        };
        let next: Vec<String> = level
            .iter()
            .filter_map(|p| found.get(p))
            .flatten()
            .cloned()
            .collect();
        lists.extend(found);
        if next.is_empty() || posts.len() + next.len() > PREFETCH_MAX {
            break;
        }
        posts.extend(next.iter().cloned());
        level = next;
    }
    for list in lists.values_mut() {
        oldest_first(list);
    }
    state.views.hot.replies.put_all(replies_epoch, lists);
    thread_post_views(state, &posts, &root_author).await?;
    Ok(())
}

/// The direct replies of each of `parents` (every parent a key), oldest
/// first (by record key, then URI), from the hot view cache where it has
/// them and one query for the rest.
async fn replies_of(
    state: &Bsky,
    parents: &[String],
) -> Result<HashMap<String, Vec<String>>, XrpcError> {
    let Lookup {
        mut found,
        missing,
        epoch,
    } = state.views.hot.replies.get_many(parents);
    if missing.is_empty() {
        return Ok(found);
    }
    // The search index's lists where they are current, the store's for the
    // rest.
    let mut fresh: HashMap<String, Vec<String>> =
        match state.search.as_ref().and_then(|s| s.threaded()) {
            Some(index) => index.replies(&missing).unwrap_or_else(|e| {
                tracing::warn!("reply lists from the search index: {e}; reading the store");
                HashMap::new()
            }),
            None => HashMap::new(),
        };
    let missing: Vec<String> = missing
        .into_iter()
        .filter(|p| !fresh.contains_key(p))
        .collect();
    let links = if missing.is_empty() {
        Vec::new()
    } else {
        state.views.lookups.replies.get(missing.clone()).await?
    };
    fresh.extend(missing.iter().map(|p| (p.clone(), Vec::new())));
    for (parent, reply) in links {
        if let Some(list) = fresh.get_mut(&parent) {
            list.push(reply);
        }
    }
    for list in fresh.values_mut() {
        oldest_first(list);
    }
    state
        .views
        .hot
        .replies
        .put_all(epoch, fresh.iter().map(|(k, v)| (k.clone(), v.clone())));
    found.extend(fresh);
    Ok(found)
}

/// Sorts replies oldest first: by record key (a TID), then URI.
fn oldest_first(replies: &mut [String]) {
    fn rkey(uri: &str) -> &str {
        uri.rsplit('/').next().unwrap_or_default()
    }
    replies.sort_by(|a, b| rkey(a).cmp(rkey(b)).then_with(|| a.cmp(b)));
}

/// Sets every `threadViewPost`'s `threadContext`: `rootAuthorLike`, the
/// like of the thread root's author on that post, where there is one.
async fn add_thread_context(
    state: &Bsky,
    anchor: &Value,
    thread: &mut Value,
) -> Result<(), XrpcError> {
    const NODE: &str = "app.bsky.feed.defs#threadViewPost";
    // Only posts with likes can have the root author's: the views' exact
    // like counts spare the lookup for the rest (often all of them).
    fn collect(v: &Value, out: &mut Vec<String>) {
        if v["$type"] != NODE {
            return;
        }
        let liked = v.pointer("/post/likeCount").and_then(Value::as_i64) > Some(0);
        if let Some(u) = v
            .pointer("/post/uri")
            .and_then(Value::as_str)
            .filter(|_| liked)
        {
            out.push(u.to_string());
        }
        collect(&v["parent"], out);
        for r in v["replies"].as_array().into_iter().flatten() {
            collect(r, out);
        }
    }
    fn set(v: &mut Value, likes: &HashMap<String, String>) {
        if v["$type"] != NODE {
            return;
        }
        let uri = v
            .pointer("/post/uri")
            .and_then(Value::as_str)
            .unwrap_or_default();
        v["threadContext"] = match likes.get(uri) {
            Some(like) => json!({ "rootAuthorLike": like }),
            None => json!({}),
        };
        if let Some(p) = v.get_mut("parent") {
            set(p, likes);
        }
        for r in v
            .get_mut("replies")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            set(r, likes);
        }
    }
    let root = anchor
        .pointer("/record/reply/root/uri")
        .or_else(|| anchor.get("uri"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let root_author = crate::index::event::did_of(root).to_string();
    let mut uris = Vec::new();
    collect(thread, &mut uris);
    let keys: Vec<(String, String)> = uris.into_iter().map(|u| (root_author.clone(), u)).collect();
    let Lookup {
        found,
        missing,
        epoch,
    } = state.views.hot.root_likes.get_many(&keys);
    let mut likes: HashMap<String, String> = found
        .into_iter()
        .filter_map(|((_, post), like)| Some((post, like?)))
        .collect();
    if missing.is_empty() {
        set(thread, &likes);
        return Ok(());
    }
    let wanted: Vec<String> = missing
        .iter()
        .map(|(did, post)| super::lookups::liker_key(did, post))
        .collect();
    // The first like by URI, should the author have liked twice.
    let mut fresh: HashMap<String, String> = HashMap::new();
    for (key, like) in state.views.lookups.likes_by.get(wanted).await? {
        let Some((_, post)) = super::lookups::liker_key_parts(&key) else {
            continue;
        };
        match fresh.get_mut(post) {
            Some(l) if *l <= like => {}
            Some(l) => *l = like,
            None => {
                fresh.insert(post.to_string(), like);
            }
        }
    }
    state.views.hot.root_likes.put_all(
        epoch,
        missing.into_iter().map(|key| {
            let like = fresh.get(&key.1).cloned();
            (key, like)
        }),
    );
    likes.extend(fresh);
    set(thread, &likes);
    Ok(())
}

pub async fn get_author_feed(
    state: &Bsky,
    nsid: &str,
    pairs: &[(String, String)],
) -> Result<Value, XrpcError> {
    let p: Params = parse(&state.catalog(), nsid, pairs)?;
    let did = crate::api::actors::resolve_repo(state, p.str("actor").unwrap_or_default()).await?;
    let limit = p.int("limit").unwrap_or(50);
    let filter = p.str("filter").unwrap_or("posts_with_replies").to_string();
    let after = decode_cursor(p.str("cursor"))?;
    // The pinned post leads the first page when asked for (as the AppView
    // does: whatever the filter, and only the author's own post).
    let pins = p.bool("includePins").unwrap_or(false) && after.is_none();
    let pinned = if pins {
        pinned_post(state, &did).await?
    } else {
        None
    };
    // The author's posts and reposts, newest first by record key.
    let mut rows = author_rows(state, &did, filter, after, limit).await?;
    let next = cut_page(&mut rows, limit, |(_, _, rkey, _, _, _)| {
        encode_cursor(rkey, &did)
    });
    // Hydrate the posts, the reposted posts and every reply's root and parent.
    let mut wanted: Vec<String> = pinned.iter().cloned().collect();
    for (uri, collection, _, subject, _, _) in &rows {
        match (collection.as_str(), subject) {
            ("app.bsky.feed.repost", Some(s)) => wanted.push(s.clone()),
            _ => wanted.push(uri.clone()),
        }
    }
    let mut views = post_views(state, &wanted).await?;
    let mut refs = Vec::new();
    for v in views.values() {
        for key in ["/record/reply/root/uri", "/record/reply/parent/uri"] {
            if let Some(u) = v.pointer(key).and_then(Value::as_str) {
                refs.push(u.to_string());
            }
        }
    }
    views.extend(post_views(state, &refs).await?);
    let blocks =
        gates::post_blocks(state, views.iter().map(|(u, v)| (u.as_str(), &v["record"]))).await?;
    // A reply its thread's gate does not allow is shown without its context.
    let gated =
        gates::gated_posts(state, views.iter().map(|(u, v)| (u.as_str(), &v["record"]))).await?;
    let reposter = profile_views(state, std::slice::from_ref(&did)).await?;
    let mut feed = Vec::new();
    // Each item: the post shown, and why (pinned, reposted, or none).
    let pin = pinned.as_ref().map(|uri| {
        let reason = json!({ "$type": "app.bsky.feed.defs#reasonPin" });
        (uri, Some(reason))
    });
    let listed = rows
        .iter()
        .filter_map(|(uri, collection, _, subject, indexed_at, cid)| {
            if collection != "app.bsky.feed.repost" {
                return Some((uri, None));
            }
            let reason = json!({
                "$type": "app.bsky.feed.defs#reasonRepost",
                "by": basic(&reposter[&did]),
                "uri": uri,
                "cid": cid,
                "indexedAt": indexed_at,
            });
            Some((subject.as_ref()?, Some(reason)))
        })
        // The pinned post is not shown again below it (nor reposts of it).
        .filter(|(post_uri, _)| pinned.as_ref() != Some(*post_uri));
    for (post_uri, reason) in pin.into_iter().chain(listed) {
        let Some(post) = views.get(post_uri).cloned() else {
            continue;
        };
        let mut item = json!({ "post": post });
        if !gated.contains(post_uri) {
            if let Some(reply) = reply_context(&post, post_uri, &views, &blocks) {
                item["reply"] = reply;
            }
        }
        if let Some(reason) = reason {
            item["reason"] = reason;
        }
        feed.push(item);
    }
    let mut out = json!({ "feed": feed });
    if let Some(c) = next {
        out["cursor"] = json!(c);
    }
    Ok(out)
}

/// A row of an author feed: URI, collection, rkey, the reposted post's URI
/// (for a repost), indexing time and CID.
type AuthorRow = (String, String, String, Option<String>, String, String);

/// The author's posts and reposts that `filter` keeps, newest first by
/// record key, after `after`: `limit` + 1 of them (the one more says
/// whether there is a next page).
async fn author_rows(
    state: &Bsky,
    did: &str,
    filter: String,
    after: Option<(String, String)>,
    limit: i64,
) -> Result<Vec<AuthorRow>, XrpcError> {
    let key = did.to_string();
    Ok(state
        .readers
        .with(move |c| {
            let (ck, _) = after.unzip();
            // The filter is one of a fixed set of SQL conditions (an unknown
            // value filters nothing), chosen here so that the common one
            // reads no record JSON.
            let wanted = match filter.as_str() {
                "posts_no_replies" => {
                    "collection = 'app.bsky.feed.repost' OR (record -> 'reply') IS NULL"
                }
                "posts_with_media" => {
                    "collection = 'app.bsky.feed.post'
                     AND (record ->> '/embed/$type') IN ('app.bsky.embed.images', 'app.bsky.embed.video',
                                                         'app.bsky.embed.recordWithMedia')"
                }
                "posts_with_video" => {
                    "collection = 'app.bsky.feed.post'
                     AND ((record ->> '/embed/$type') = 'app.bsky.embed.video'
                          OR (record ->> '/embed/media/$type') = 'app.bsky.embed.video')"
                }
                "posts_and_author_threads" => {
                    "collection = 'app.bsky.feed.repost' OR (record -> 'reply') IS NULL
                     OR split_part(record ->> '/reply/root/uri', '/', 3) = did"
                }
                _ => "true",
            };
            // Two steps: the page's keys from the narrow columns of the
            // author's rows (scattered through the table, each fetched on
            // its own), sorted here (DuckDB's top-N over an index scan costs
            // several times the scan), then the wide columns of that page.
            let after = if ck.is_some() { "AND rkey < ?" } else { "" };
            let mut stmt = c.prepare_cached(&format!(
                "SELECT rkey, uri FROM records_by(?)
                 WHERE collection IN ('app.bsky.feed.post', 'app.bsky.feed.repost') AND ({wanted})
                   {after}"
            ))?;
            let mut values = vec![key];
            values.extend(ck);
            let mut keys = stmt
                .query_map(duckdb::params_from_iter(values.iter()), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?
                .collect::<duckdb::Result<Vec<_>>>()?;
            keys.sort_unstable_by(|a, b| b.cmp(a));
            keys.truncate(limit as usize + 1);
            let page = keys
                .into_iter()
                .map(|(_, uri)| uri)
                .collect::<Vec<_>>()
                .join(" ");
            let mut stmt = c.prepare_cached(&format!(
                "SELECT uri, collection, rkey, record ->> '/subject/uri', strftime(indexed_at, {DATETIME}), cid
                 FROM records_at(?) ORDER BY rkey DESC"
            ))?;
            let rows = stmt.query_map(params![page], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?;
            rows.collect::<duckdb::Result<Vec<_>>>()
        })
        .await?)
}

/// The reply context of a feed item whose post is a reply: its root and
/// parent (a blockedPost where blocks stand between them and the post, for
/// the root also between it and the parent), and the grandparent's author.
fn reply_context(
    post: &Value,
    post_uri: &str,
    views: &HashMap<String, Value>,
    blocks: &HashMap<String, gates::PostBlocks>,
) -> Option<Value> {
    let blocked =
        |uri: &str, pick: fn(&gates::PostBlocks) -> bool| blocks.get(uri).is_some_and(pick);
    let root = post
        .pointer("/record/reply/root/uri")
        .and_then(Value::as_str)?;
    let parent = post
        .pointer("/record/reply/parent/uri")
        .and_then(Value::as_str)?;
    let view = |u: &str, is_blocked: bool| match views.get(u) {
        Some(_) if is_blocked => gates::blocked_post(u),
        Some(v) => typed(v.clone(), "app.bsky.feed.defs#postView"),
        None => not_found(u),
    };
    let parent_blocked = blocked(post_uri, |b| b.parent);
    let root_blocked = blocked(post_uri, |b| b.root) || blocked(parent, |b| b.root);
    let mut reply = json!({
        "root": view(root, root_blocked),
        "parent": view(parent, parent_blocked),
    });
    if let Some(gp) = views
        .get(parent)
        .filter(|_| !parent_blocked)
        .and_then(|pv| pv.pointer("/record/reply/parent/uri"))
        .and_then(Value::as_str)
        .and_then(|gp| views.get(gp))
    {
        reply["grandparentAuthor"] = gp["author"].clone();
    }
    Some(reply)
}
