//! The point lookups that post views, threads and profiles make, shared by
//! concurrent requests (`index/batch.rs`): under load one statement answers
//! the lookups of every request waiting for the same kind of row.

use std::sync::Arc;

use crate::index::batch::Batcher;
use crate::index::store::{handles_of, rows_with, ReadPool};

use super::posts::{DATETIME, POST};

/// A post's stored row: CID, author DID, record JSON and indexing time
/// (formatted as the views show it).
#[derive(Clone)]
pub struct PostRow {
    pub cid: String,
    pub did: String,
    pub record: String,
    pub indexed_at: String,
}

/// One row of `link_counts` for a target: (collection, path, count).
pub type CountRow = (String, String, i64);

/// A row of [`Lookups::posts`]: the post's stored row or one of its
/// `link_counts` rows.
#[derive(Clone)]
pub enum PostPart {
    Row(PostRow),
    Count(CountRow),
    /// A direct reply to the post (from [`Lookups::thread_posts`] only).
    Reply(String),
}

/// What a profile view is made of: the handle `actors` knows and the
/// profile record with its indexing time, either of which may be missing.
#[derive(Clone, Default)]
pub struct ProfileRow {
    pub handle: Option<String>,
    pub record: Option<(String, String)>,
}

pub struct Lookups {
    /// Posts by URI (rows of other collections are left out) with their
    /// `link_counts` of likes, reposts, replies and quotes: both in one
    /// statement (`UNION ALL` of two index lookups), so one planning.
    pub posts: Batcher<PostPart>,
    /// As `posts`, with each post's direct replies too (a thread's levels:
    /// the replies of one level are read with its posts, not by a
    /// statement of their own).
    pub thread_posts: Batcher<PostPart>,
    /// The direct replies of posts: reply URIs by parent URI.
    pub replies: Batcher<String>,
    /// Handles and profile records by DID.
    pub profiles: Batcher<ProfileRow>,
    /// Handles alone by DID (search hits' authors).
    pub handles: Batcher<String>,
    /// The likes of a post by one account (a thread root's author):
    /// like URIs by [`liker_key`].
    pub likes_by: Batcher<String>,
}

/// The key of [`Lookups::likes_by`]: the liker's DID and the post's URI
/// (neither contains a space).
pub fn liker_key(did: &str, post: &str) -> String {
    format!("{did} {post}")
}

/// The liker's DID and the post's URI of a [`liker_key`].
pub fn liker_key_parts(key: &str) -> Option<(&str, &str)> {
    key.split_once(' ')
}

impl Lookups {
    /// Starts their workers (on the current tokio runtime).
    pub fn new(readers: &Arc<ReadPool>) -> Lookups {
        Lookups {
            posts: Batcher::new("posts", readers.clone(), posts),
            thread_posts: Batcher::new("thread_posts", readers.clone(), thread_posts),
            replies: Batcher::new("replies", readers.clone(), replies),
            profiles: Batcher::new("profiles", readers.clone(), profiles),
            handles: Batcher::new("handles", readers.clone(), handles),
            likes_by: Batcher::new("likes_by", readers.clone(), likes_by),
        }
    }

    /// Every batcher, for `/metrics`.
    pub fn each(&self) -> [(&'static str, &crate::index::batch::BatchCounts); 6] {
        [
            (self.posts.name(), self.posts.counts()),
            (self.thread_posts.name(), self.thread_posts.counts()),
            (self.replies.name(), self.replies.counts()),
            (self.profiles.name(), self.profiles.counts()),
            (self.handles.name(), self.handles.counts()),
            (self.likes_by.name(), self.likes_by.counts()),
        ]
    }
}

fn posts(c: &duckdb::Connection, uris: &[String]) -> duckdb::Result<Vec<(String, PostPart)>> {
    post_parts(c, uris, false)
}

fn thread_posts(
    c: &duckdb::Connection,
    uris: &[String],
) -> duckdb::Result<Vec<(String, PostPart)>> {
    post_parts(c, uris, true)
}

/// The rows of [`Lookups::posts`], or of [`Lookups::thread_posts`] when
/// `with_replies`: one statement, a `UNION ALL` of index lookups, each
/// branch's rows told apart by which of its columns are set.
fn post_parts(
    c: &duckdb::Connection,
    uris: &[String],
    with_replies: bool,
) -> duckdb::Result<Vec<(String, PostPart)>> {
    let (records, mut keys) = rows_with("records", "uri", "records_at", uris);
    let (counts, count_keys) = rows_with("link_counts", "target", "counts_of_any", uris);
    keys.extend(count_keys);
    let replies = if with_replies {
        let (links, link_keys) = rows_with("links", "target", "links_to_any", uris);
        keys.extend(link_keys);
        format!(
            "UNION ALL
             SELECT target, NULL, NULL, NULL, NULL, NULL, NULL, NULL, source_uri FROM {links}
             WHERE source_collection = '{POST}' AND path = '.reply.parent.uri'"
        )
    } else {
        String::new()
    };
    let mut stmt = c.prepare_cached(&format!(
        "SELECT uri, cid, did, record::VARCHAR, strftime(indexed_at, {DATETIME}),
                NULL::VARCHAR, NULL::VARCHAR, NULL::BIGINT, NULL::VARCHAR
         FROM {records} WHERE collection = '{POST}'
         UNION ALL
         SELECT target, NULL, NULL, NULL, NULL, collection, path, n, NULL FROM {counts}
         WHERE collection IN ('{POST}', 'app.bsky.feed.repost', 'app.bsky.feed.like')
         {replies}"
    ))?;
    let rows = stmt.query_map(duckdb::params_from_iter(keys.iter()), |r| {
        let part = if let Some(cid) = r.get::<_, Option<String>>(1)? {
            PostPart::Row(PostRow {
                cid,
                did: r.get(2)?,
                record: r.get(3)?,
                indexed_at: r.get(4)?,
            })
        } else if let Some(reply) = r.get::<_, Option<String>>(8)? {
            PostPart::Reply(reply)
        } else {
            PostPart::Count((r.get(5)?, r.get(6)?, r.get(7)?))
        };
        Ok((r.get(0)?, part))
    })?;
    rows.collect()
}

fn replies(c: &duckdb::Connection, parents: &[String]) -> duckdb::Result<Vec<(String, String)>> {
    let links = super::gates::link_rows(c, parents, POST, ".reply.parent.uri")?;
    Ok(links
        .into_iter()
        .map(|l| (l.target, l.source_uri))
        .collect())
}

fn handles(c: &duckdb::Connection, dids: &[String]) -> duckdb::Result<Vec<(String, String)>> {
    Ok(handles_of(c, dids.iter().map(String::as_str))?
        .into_iter()
        .collect())
}

/// Two index lookups (joining the DID list with `records` would scan it).
fn profiles(c: &duckdb::Connection, dids: &[String]) -> duckdb::Result<Vec<(String, ProfileRow)>> {
    let mut out: std::collections::HashMap<String, ProfileRow> =
        handles_of(c, dids.iter().map(String::as_str))?
            .into_iter()
            .map(|(did, handle)| {
                let row = ProfileRow {
                    handle: Some(handle),
                    record: None,
                };
                (did, row)
            })
            .collect();
    // DIDs contain no spaces (they are checked before they get here).
    let uris = dids
        .iter()
        .map(|d| format!("at://{d}/app.bsky.actor.profile/self"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut stmt = c.prepare_cached(&format!(
        "SELECT did, record::VARCHAR, strftime(indexed_at, {DATETIME}) FROM records_at(?)"
    ))?;
    let mut rows = stmt.query(duckdb::params![uris])?;
    while let Some(r) = rows.next()? {
        out.entry(r.get(0)?).or_default().record = Some((r.get(1)?, r.get(2)?));
    }
    Ok(out.into_iter().collect())
}

/// The links of the posts' likes, filtered to the likers asked for by a
/// list (a scalar test, so the plan stays one index scan).
fn likes_by(c: &duckdb::Connection, keys: &[String]) -> duckdb::Result<Vec<(String, String)>> {
    let mut posts: Vec<String> = Vec::new();
    let mut likers: Vec<&str> = Vec::new();
    let mut wanted: std::collections::HashSet<(&str, &str)> = Default::default();
    for key in keys {
        if let Some((did, post)) = liker_key_parts(key) {
            posts.push(post.to_string());
            likers.push(did);
            wanted.insert((did, post));
        }
    }
    posts.sort_unstable();
    posts.dedup();
    likers.sort_unstable();
    likers.dedup();
    let (links, mut params) = rows_with("links", "target", "links_to_any", &posts);
    params.push(likers.join(" "));
    let mut stmt = c.prepare_cached(&format!(
        "SELECT source_did, target, source_uri FROM {links}
         WHERE source_collection = 'app.bsky.feed.like' AND path = '.subject.uri'
           AND list_contains(string_split(?, ' '), source_did)"
    ))?;
    let mut out = Vec::new();
    let mut rows = stmt.query(duckdb::params_from_iter(params.iter()))?;
    while let Some(r) = rows.next()? {
        let did = r.get_ref(0)?.as_str().map_err(duckdb::Error::from)?;
        let post = r.get_ref(1)?.as_str().map_err(duckdb::Error::from)?;
        // A batch of several threads asks each post for its own root's
        // author only.
        if wanted.contains(&(did, post)) {
            out.push((liker_key(did, post), r.get(2)?));
        }
    }
    Ok(out)
}
