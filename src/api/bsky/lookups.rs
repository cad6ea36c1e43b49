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
    /// A like of the post by one of the DIDs among the keys (from
    /// [`Lookups::thread_posts`] only).
    Like {
        liker: String,
        like: String,
    },
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
    /// As `posts`, with each post's direct replies and its likes by the
    /// DIDs among the keys (a thread's levels: the replies of one level
    /// and its root author's likes are read with its posts, not by
    /// statements of their own). Keys are post URIs and liker DIDs.
    pub thread_posts: Batcher<PostPart>,
    /// The `link_counts` of posts whose rows came from the search index
    /// (`SearchIndex::stored_records`), with their likes by the DIDs among
    /// the keys (a thread's root author): `Count` and `Like` parts only.
    pub counts: Batcher<PostPart>,
    /// The direct replies of posts: reply URIs by parent URI.
    pub replies: Batcher<String>,
    /// Handles and profile records by DID.
    pub profiles: Batcher<ProfileRow>,
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
            counts: Batcher::new("counts", readers.clone(), counts),
            replies: Batcher::new("replies", readers.clone(), replies),
            profiles: Batcher::new("profiles", readers.clone(), profiles),
            likes_by: Batcher::new("likes_by", readers.clone(), likes_by),
        }
    }

    /// Every batcher, for `/metrics`.
    pub fn each(&self) -> [(&'static str, &crate::index::batch::BatchCounts); 6] {
        [
            (self.posts.name(), self.posts.counts()),
            (self.thread_posts.name(), self.thread_posts.counts()),
            (self.counts.name(), self.counts.counts()),
            (self.replies.name(), self.replies.counts()),
            (self.profiles.name(), self.profiles.counts()),
            (self.likes_by.name(), self.likes_by.counts()),
        ]
    }
}

fn posts(c: &duckdb::Connection, uris: &[String]) -> duckdb::Result<Vec<(String, PostPart)>> {
    post_parts(c, uris, Branches::RowsAndCounts)
}

fn thread_posts(
    c: &duckdb::Connection,
    uris: &[String],
) -> duckdb::Result<Vec<(String, PostPart)>> {
    post_parts(c, uris, Branches::Thread)
}

fn counts(c: &duckdb::Connection, keys: &[String]) -> duckdb::Result<Vec<(String, PostPart)>> {
    post_parts(c, keys, Branches::CountsAndLikes)
}

/// What a [`post_parts`] statement reads.
#[derive(Clone, Copy, PartialEq)]
enum Branches {
    /// Rows and counts ([`Lookups::posts`]).
    RowsAndCounts,
    /// Rows, counts, replies and the likers' likes ([`Lookups::thread_posts`]).
    Thread,
    /// Counts and the likers' likes ([`Lookups::counts`]).
    CountsAndLikes,
}

/// The rows of [`Lookups::posts`], [`Lookups::thread_posts`] or
/// [`Lookups::counts`]: one statement, a `UNION ALL` of index lookups, each
/// branch's rows told apart by which of its columns are set.
fn post_parts(
    c: &duckdb::Connection,
    keys: &[String],
    branches: Branches,
) -> duckdb::Result<Vec<(String, PostPart)>> {
    let thread = branches != Branches::RowsAndCounts;
    // Thread keys are post URIs and liker DIDs.
    let (likers, uris): (Vec<&String>, Vec<&String>) =
        keys.iter().partition(|k| thread && k.starts_with("did:"));
    let uris: Vec<String> = uris.into_iter().cloned().collect();
    if uris.is_empty() {
        return Ok(Vec::new());
    }
    let (counts, mut params) = rows_with("link_counts", "target", "counts_of_any", &uris);
    let rows = if branches == Branches::CountsAndLikes {
        String::new()
    } else {
        let (records, record_keys) = rows_with("records", "uri", "records_at", &uris);
        params.splice(0..0, record_keys);
        format!(
            "SELECT uri, cid, did, record::VARCHAR, strftime(indexed_at, {DATETIME}),
                    NULL::VARCHAR, NULL::VARCHAR, NULL::BIGINT, NULL::VARCHAR, NULL::VARCHAR
             FROM {records} WHERE collection = '{POST}'
             UNION ALL"
        )
    };
    let links = if branches == Branches::CountsAndLikes && likers.is_empty() {
        String::new()
    } else if thread {
        // One scan of the posts' links: their replies, and their likes by
        // the likers asked for (a scalar list test keeps it one index scan).
        let (links, link_keys) = rows_with("links", "target", "links_to_any", &uris);
        params.extend(link_keys);
        params.push(
            likers
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        );
        // Replies come with rows only (thread levels read from the store).
        let replies = if branches == Branches::Thread {
            format!("(source_collection = '{POST}' AND path = '.reply.parent.uri') OR")
        } else {
            String::new()
        };
        format!(
            "UNION ALL
             SELECT target, NULL, NULL, NULL, NULL, NULL, NULL, NULL, source_uri, source_did
             FROM {links}
             WHERE {replies}
                (source_collection = 'app.bsky.feed.like' AND path = '.subject.uri'
                    AND list_contains(string_split(?, ' '), source_did))"
        )
    } else {
        String::new()
    };
    let mut stmt = c.prepare_cached(&format!(
        "{rows}
         SELECT target, NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR,
                collection, path, n, NULL::VARCHAR, NULL::VARCHAR FROM {counts}
         WHERE collection IN ('{POST}', 'app.bsky.feed.repost', 'app.bsky.feed.like')
         {links}"
    ))?;
    let rows = stmt.query_map(duckdb::params_from_iter(params.iter()), |r| {
        let part = if let Some(cid) = r.get::<_, Option<String>>(1)? {
            PostPart::Row(PostRow {
                cid,
                did: r.get(2)?,
                record: r.get(3)?,
                indexed_at: r.get(4)?,
            })
        } else if let Some(source) = r.get::<_, Option<String>>(8)? {
            if crate::index::event::collection_of(&source) == Some("app.bsky.feed.like") {
                PostPart::Like {
                    liker: r.get(9)?,
                    like: source,
                }
            } else {
                PostPart::Reply(source)
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::event::testing::{put, CID};
    use crate::index::store::Store;
    use serde_json::json;

    #[test]
    fn thread_rows_hold_posts_counts_replies_and_only_the_asked_likers_likes() {
        let (alice, bob) = ("did:plc:alice", "did:plc:bob");
        let at = "2026-01-01T00:00:00.000Z";
        let root = format!("at://{alice}/{POST}/3kroot");
        let reply = format!("at://{bob}/{POST}/3kreply");
        let strong = |uri: &str| json!({"uri": uri, "cid": CID});
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store
            .apply(&[
                put(
                    alice,
                    POST,
                    "3kroot",
                    json!({"text": "root", "createdAt": at}),
                ),
                put(
                    bob,
                    POST,
                    "3kreply",
                    json!({"text": "reply", "createdAt": at,
                           "reply": {"root": strong(&root), "parent": strong(&root)}}),
                ),
                put(
                    alice,
                    "app.bsky.feed.like",
                    "3klike",
                    json!({"subject": strong(&reply), "createdAt": at}),
                ),
                put(
                    bob,
                    "app.bsky.feed.like",
                    "3klike",
                    json!({"subject": strong(&root), "createdAt": at}),
                ),
            ])
            .unwrap();
        let parts = |keys: &[&str], branches: Branches| {
            let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            let mut out: Vec<String> = store
                .readers()
                .with_blocking(|c| post_parts(c, &keys, branches))
                .unwrap()
                .into_iter()
                .map(|(key, part)| match part {
                    PostPart::Row(r) => format!("{key} row {}", r.did),
                    PostPart::Count((c, p, n)) => format!("{key} count {c}{p} {n}"),
                    PostPart::Reply(r) => format!("{key} reply {r}"),
                    PostPart::Like { liker, like } => format!("{key} like {liker} {like}"),
                })
                .collect();
            out.sort();
            out
        };
        let like = |did: &str| format!("at://{did}/app.bsky.feed.like/3klike");
        // Alice's likes only: Bob's like of the root is not asked for.
        assert_eq!(
            parts(&[&root, &reply, alice], Branches::Thread),
            [
                format!("{root} count app.bsky.feed.like.subject.uri 1"),
                format!("{root} count {POST}.reply.parent.uri 1"),
                format!("{root} count {POST}.reply.root.uri 1"),
                format!("{root} reply {reply}"),
                format!("{root} row {alice}"),
                format!("{reply} count app.bsky.feed.like.subject.uri 1"),
                format!("{reply} like {alice} {}", like(alice)),
                format!("{reply} row {bob}"),
            ]
        );
        assert!(parts(&[&root, bob], Branches::Thread)
            .contains(&format!("{root} like {bob} {}", like(bob))));
        // Counts and the likers' likes, for rows read from the search index.
        assert_eq!(
            parts(&[&root, &reply, alice], Branches::CountsAndLikes),
            [
                format!("{root} count app.bsky.feed.like.subject.uri 1"),
                format!("{root} count {POST}.reply.parent.uri 1"),
                format!("{root} count {POST}.reply.root.uri 1"),
                format!("{reply} count app.bsky.feed.like.subject.uri 1"),
                format!("{reply} like {alice} {}", like(alice)),
            ]
        );
        assert_eq!(
            parts(&[&reply], Branches::CountsAndLikes),
            [format!("{reply} count app.bsky.feed.like.subject.uri 1")]
        );
        // The plain lookup: rows and counts alone.
        assert_eq!(
            parts(&[&root], Branches::RowsAndCounts),
            [
                format!("{root} count app.bsky.feed.like.subject.uri 1"),
                format!("{root} count {POST}.reply.parent.uri 1"),
                format!("{root} count {POST}.reply.root.uri 1"),
                format!("{root} row {alice}"),
            ]
        );
    }
}
