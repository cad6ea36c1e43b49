//! Blocks and post gates in post views, as the Bluesky AppView applies them
//! when no viewer is signed in.
//!
//! - **Third-party blocks** (`app.bsky.graph.block`, either way between two
//!   accounts): a reply whose author and its parent's author block each
//!   other is left out of the parent's replies, and the parent is shown to
//!   it as a `blockedPost`; the same for the root in a feed's reply context;
//!   a quote of a blocked author's record is a `viewBlocked`.
//! - **Post gates** (`app.bsky.feed.postgate`): a quote the quoted post's
//!   author detached (`detachedEmbeddingUris`), or a quote by someone else of
//!   a post whose gate has a `disableRule`, is a `viewDetached`.
//!
//! The AppView decides `disableRule` when it indexes the quote; lexview
//! decides when it answers, so a gate added after a quote detaches it here
//! and not there. Blocks through lists (`listblock`) are not applied: lists
//! are not indexed by the bundled lexicons. Both look links up by their
//! target, so a check costs as many rows as there are links to the DIDs or
//! posts involved.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::Bsky;
use crate::api::XrpcError;
use crate::index::event::did_of;
use crate::index::store::{rows_with, MaybeHeld};

const BLOCK: &str = "app.bsky.graph.block";
const POST: &str = "app.bsky.feed.post";

/// Which posts may have a thread or post gate, and which pairs of accounts
/// may block one another: 64-bit hashes of the URIs of posts a gate record
/// has named, and of the (unordered) DID pairs a block record has joined,
/// since the store began (loaded at start, then fed by every committed batch). Entries are
/// never removed, so a miss proves there is nothing to look up, and a hit
/// (or a hash collision) only costs the lookup that would otherwise always
/// run: most posts have no gate and most accounts no block, and each lookup
/// is a store query.
pub struct GateFilter {
    /// `[post URI]`
    gated: std::sync::RwLock<MaybeHeld>,
    /// `pair(a, b)`
    blocking: std::sync::RwLock<MaybeHeld>,
}

const THREADGATE: &str = "app.bsky.feed.threadgate";
const POSTGATE: &str = "app.bsky.feed.postgate";

/// The key of two accounts, whichever blocks the other.
fn pair<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// The URI of the record of `collection` (a gate, or the post itself) that
/// shares the post `post`'s DID and record key: gates name their post by
/// record key.
fn sibling(post: &str, collection: &str) -> String {
    let rkey = post.rsplit('/').next().unwrap_or_default();
    format!("at://{}/{collection}/{rkey}", did_of(post))
}

impl GateFilter {
    /// Everything the store holds (two column scans).
    pub fn load(conn: &duckdb::Connection) -> duckdb::Result<GateFilter> {
        let mut gated = MaybeHeld::default();
        let mut stmt = conn.prepare(&format!(
            "SELECT uri FROM records WHERE collection IN ('{THREADGATE}', '{POSTGATE}')"
        ))?;
        for uri in stmt.query_map([], |r| r.get::<_, String>(0))? {
            gated.insert([sibling(&uri?, POST).as_str()]);
        }
        let mut blocking = MaybeHeld::default();
        let mut stmt = conn.prepare(&format!(
            "SELECT source_did, target FROM links WHERE source_collection = '{BLOCK}' AND path = '.subject'"
        ))?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
            let (a, b) = row?;
            blocking.insert(pair(&a, &b));
        }
        Ok(GateFilter {
            gated: std::sync::RwLock::new(gated),
            blocking: std::sync::RwLock::new(blocking),
        })
    }

    /// Notes the gates and blocks of a committed batch.
    pub fn on_commit(&self, batch: &[crate::index::event::IndexEvent]) {
        use crate::index::event::Change;
        let (mut gated, mut blocking) = (Vec::new(), Vec::new());
        for ev in batch {
            for change in &ev.changes {
                let Change::Put(w) = change else { continue };
                match w.collection.as_str() {
                    THREADGATE | POSTGATE => gated.push(sibling(&w.uri, POST)),
                    BLOCK => {
                        for l in w.links.iter().filter(|l| l.path == ".subject") {
                            blocking.push(pair(&w.did, &l.target));
                        }
                    }
                    _ => {}
                }
            }
        }
        if !gated.is_empty() {
            let mut set = self.gated.write().expect("gate filter lock");
            gated.iter().for_each(|uri| set.insert([uri.as_str()]));
        }
        if !blocking.is_empty() {
            let mut set = self.blocking.write().expect("gate filter lock");
            blocking.into_iter().for_each(|p| set.insert(p));
        }
    }

    /// How many gated posts and blocking pairs it holds.
    pub fn sizes(&self) -> (usize, usize) {
        (
            self.gated.read().expect("gate filter lock").len(),
            self.blocking.read().expect("gate filter lock").len(),
        )
    }

    /// Whether the post `uri` may have a thread or post gate.
    pub fn may_be_gated(&self, uri: &str) -> bool {
        self.gated.read().expect("gate filter lock").may_hold([uri])
    }

    /// Whether `a` and `b` may block one another.
    pub fn may_block(&self, a: &str, b: &str) -> bool {
        self.blocking
            .read()
            .expect("gate filter lock")
            .may_hold(pair(a, b))
    }
}

/// A row of `links`: `source_uri` (by `source_did`) points at `target`.
pub(crate) struct LinkRow {
    pub target: String,
    pub source_uri: String,
    pub source_did: String,
}

/// The links of records of `collection` at `path` to any of `targets`
/// (AT-URIs or DIDs), through the `links(target)` index.
pub(crate) async fn links_to(
    state: &Bsky,
    targets: impl IntoIterator<Item = &str>,
    collection: &'static str,
    path: &'static str,
) -> Result<Vec<LinkRow>, XrpcError> {
    let targets: Vec<String> = targets.into_iter().map(str::to_string).collect();
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    Ok(state
        .readers
        .with(move |c| link_rows(c, &targets, collection, path))
        .await?)
}

/// [`links_to`] on a read connection (the shared replies lookup runs it
/// too).
pub(crate) fn link_rows(
    c: &duckdb::Connection,
    targets: &[String],
    collection: &str,
    path: &str,
) -> duckdb::Result<Vec<LinkRow>> {
    let (links, mut keys) = rows_with("links", "target", "links_to_any", targets);
    keys.extend([collection.to_string(), path.to_string()]);
    let mut stmt = c.prepare_cached(&format!(
        "SELECT target, source_uri, source_did FROM {links}
         WHERE source_collection = ? AND path = ?"
    ))?;
    let rows = stmt.query_map(duckdb::params_from_iter(keys.iter()), |r| {
        Ok(LinkRow {
            target: r.get(0)?,
            source_uri: r.get(1)?,
            source_did: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// The records of `collection` at these URIs: (URI, CID, record), through
/// the `records(uri)` index.
pub(crate) async fn records_at(
    state: &Bsky,
    uris: impl IntoIterator<Item = &str>,
    collection: &'static str,
) -> Result<Vec<(String, String, Value)>, XrpcError> {
    let uris: Vec<String> = uris.into_iter().map(str::to_string).collect();
    if uris.is_empty() {
        return Ok(Vec::new());
    }
    let (records, mut keys) = rows_with("records", "uri", "records_at", &uris);
    keys.push(collection.to_string());
    let rows: Vec<(String, String, String)> = state
        .readers
        .with(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT uri, cid, record::VARCHAR FROM {records} WHERE collection = ?"
            ))?;
            let rows = stmt.query_map(duckdb::params_from_iter(keys.iter()), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<duckdb::Result<Vec<_>>>()
        })
        .await?;
    rows.into_iter()
        .map(|(uri, cid, json)| {
            let record = serde_json::from_str(&json)
                .map_err(|e| XrpcError::internal(format!("stored record is not JSON: {e}")))?;
            Ok((uri, cid, record))
        })
        .collect()
}

/// Which relations of a post cross a block between their authors.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PostBlocks {
    pub parent: bool,
    pub root: bool,
    pub embed: bool,
}

/// For each post (URI, record), whether its author and the authors of its
/// reply parent, reply root and embedded record block each other. One query
/// for all of them; none when no post has another author to check.
pub(crate) async fn post_blocks<'a>(
    state: &Bsky,
    posts: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> Result<HashMap<String, PostBlocks>, XrpcError> {
    // Per post: the (author, other author) pair of its parent, root and
    // embed, where they differ.
    type Pair = Option<(String, String)>;
    let mut pairs: Vec<(String, [Pair; 3])> = Vec::new();
    let mut dids: HashSet<String> = HashSet::new();
    for (uri, record) in posts {
        let author = did_of(uri);
        let other = |target: Option<&str>| {
            let other = did_of(target?);
            (other != author && !other.is_empty() && state.views.gates.may_block(author, other))
                .then(|| (author.to_string(), other.to_string()))
        };
        let relations = [
            other(record.pointer("/reply/parent/uri").and_then(Value::as_str)),
            other(record.pointer("/reply/root/uri").and_then(Value::as_str)),
            other(record.get("embed").and_then(super::embeds::embedded_record)),
        ];
        for (a, b) in relations.iter().flatten() {
            dids.insert(a.clone());
            dids.insert(b.clone());
        }
        pairs.push((uri.to_string(), relations));
    }
    if dids.is_empty() {
        return Ok(HashMap::new());
    }
    let blocks: HashSet<(String, String)> =
        links_to(state, dids.iter().map(String::as_str), BLOCK, ".subject")
            .await?
            .into_iter()
            .map(|l| (l.source_did, l.target))
            .collect();
    let blocked = |pair: &Pair| {
        pair.as_ref().is_some_and(|(a, b)| {
            blocks.contains(&(a.clone(), b.clone())) || blocks.contains(&(b.clone(), a.clone()))
        })
    };
    Ok(pairs
        .into_iter()
        .map(|(uri, [parent, root, embed])| {
            let b = PostBlocks {
                parent: blocked(&parent),
                root: blocked(&root),
                embed: blocked(&embed),
            };
            (uri, b)
        })
        .collect())
}

/// How a quoted post's gate detaches a quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detached {
    /// The gate's `disableRule` forbids quotes by others (the AppView checks
    /// this before it looks for the quoted post).
    Disabled,
    /// The quote is in the gate's `detachedEmbeddingUris`.
    Listed,
}

/// The quotes among `quotes` (quoting post URI, quoted post URI) that the
/// quoted post's gate detaches, by quoting post URI.
pub(crate) async fn detached_quotes(
    state: &Bsky,
    quotes: &[(String, String)],
) -> Result<HashMap<String, Detached>, XrpcError> {
    let gate_uri = |quoted: &str| sibling(quoted, POSTGATE);
    let gates: Vec<String> = quotes
        .iter()
        .filter(|(_, quoted)| {
            crate::index::event::collection_of(quoted) == Some(POST)
                && state.views.gates.may_be_gated(quoted)
        })
        .map(|(_, quoted)| gate_uri(quoted))
        .collect();
    let records: HashMap<String, Value> =
        records_at(state, gates.iter().map(String::as_str), POSTGATE)
            .await?
            .into_iter()
            .map(|(uri, _, record)| (uri, record))
            .collect();
    let mut detached = HashMap::new();
    for (quoting, quoted) in quotes {
        let Some(gate) = records.get(&gate_uri(quoted)) else {
            continue;
        };
        let listed = gate["detachedEmbeddingUris"]
            .as_array()
            .is_some_and(|uris| uris.iter().any(|u| u == quoting.as_str()));
        let disabled = did_of(quoting) != did_of(quoted)
            && gate["embeddingRules"].as_array().is_some_and(|rules| {
                rules
                    .iter()
                    .any(|r| r["$type"] == "app.bsky.feed.postgate#disableRule")
            });
        if disabled {
            detached.insert(quoting.clone(), Detached::Disabled);
        } else if listed {
            detached.insert(quoting.clone(), Detached::Listed);
        }
    }
    Ok(detached)
}

/// `app.bsky.feed.defs#blockedPost` for the post `uri`.
pub(crate) fn blocked_post(uri: &str) -> Value {
    json!({
        "$type": "app.bsky.feed.defs#blockedPost",
        "uri": uri,
        "blocked": true,
        "author": {"did": did_of(uri)},
    })
}

/// A thread root's `app.bsky.feed.threadgate` record.
#[derive(Debug, Clone)]
pub(crate) struct Threadgate {
    pub uri: String,
    pub cid: String,
    pub record: Value,
}

impl Threadgate {
    /// The `threadgateView` shown on the root post. `lists` (views of the
    /// lists a `listRule` names) stays empty: lists are not indexed by the
    /// bundled lexicons, and the AppView leaves out lists it cannot show.
    pub fn view(&self) -> Value {
        json!({"uri": self.uri, "cid": self.cid, "record": self.record, "lists": []})
    }

    /// Whether the gate limits replies at all (`allow` unset: anyone may
    /// reply; an empty `allow`: nobody but the author).
    fn limits(&self) -> bool {
        self.record.get("allow").is_some_and(|a| !a.is_null())
    }

    fn rules(&self) -> impl Iterator<Item = &Value> {
        self.record["allow"].as_array().into_iter().flatten()
    }

    fn has(&self, rule: &str) -> bool {
        self.rules().any(|r| r["$type"] == rule)
    }
}

const MENTION_RULE: &str = "app.bsky.feed.threadgate#mentionRule";
const FOLLOWER_RULE: &str = "app.bsky.feed.threadgate#followerRule";
const FOLLOWING_RULE: &str = "app.bsky.feed.threadgate#followingRule";
const LIST_RULE: &str = "app.bsky.feed.threadgate#listRule";

/// The root of the thread a post (URI, record) is in: its `reply.root`, or
/// itself.
pub(crate) fn root_of<'a>(uri: &'a str, record: &'a Value) -> &'a str {
    record
        .pointer("/reply/root/uri")
        .and_then(Value::as_str)
        .unwrap_or(uri)
}

/// The threadgates of these thread roots, by root URI (one query).
pub(crate) async fn threadgates<'a>(
    state: &Bsky,
    roots: impl IntoIterator<Item = &'a str>,
) -> Result<HashMap<String, Threadgate>, XrpcError> {
    let mut by_gate: HashMap<String, String> = HashMap::new();
    for root in roots {
        if crate::index::event::collection_of(root) != Some(POST)
            || !state.views.gates.may_be_gated(root)
        {
            continue;
        }
        by_gate.insert(sibling(root, THREADGATE), root.to_string());
    }
    let rows = records_at(state, by_gate.keys().map(String::as_str), THREADGATE).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(uri, cid, record)| {
            let root = by_gate.get(&uri)?.clone();
            Some((root, Threadgate { uri, cid, record }))
        })
        .collect())
}

/// The replies among `replies` (reply URI, thread root URI) that their
/// thread's gate does not allow, as the AppView decides (`violatesThreadGate`):
/// the root's author may always reply; otherwise a reply needs a rule that
/// lets its author in: mentioned in the root post (`mentionRule`), following
/// the root's author (`followerRule`), followed by them (`followingRule`), or
/// on a list the gate names (`listRule`, through `app.bsky.graph.listitem`
/// records). The AppView decides when it indexes the reply, lexview when it
/// answers: a follow or gate changed since gives another answer here.
pub(crate) async fn gated_replies(
    state: &Bsky,
    replies: &[(String, String)],
    gates: &HashMap<String, Threadgate>,
) -> Result<HashSet<String>, XrpcError> {
    // The replies under a gate that limits replies, by someone else than
    // the root's author.
    let open: Vec<(&str, &str, &str, &Threadgate)> = replies
        .iter()
        .filter_map(|(reply, root)| {
            let gate = gates.get(root).filter(|g| g.limits())?;
            let (replier, owner) = (did_of(reply), did_of(root));
            (replier != owner).then_some((reply.as_str(), replier, root.as_str(), gate))
        })
        .collect();
    if open.is_empty() {
        return Ok(HashSet::new());
    }
    // Root records, for mentions.
    let mention_roots: Vec<&str> = open
        .iter()
        .filter(|o| o.3.has(MENTION_RULE))
        .map(|o| o.2)
        .collect();
    let roots: HashMap<String, Value> = records_at(state, mention_roots, POST)
        .await?
        .into_iter()
        .map(|(uri, _, record)| (uri, record))
        .collect();
    // Follows between repliers and roots' authors, either way.
    let follow_dids: HashSet<&str> = open
        .iter()
        .filter(|o| o.3.has(FOLLOWER_RULE) || o.3.has(FOLLOWING_RULE))
        .flat_map(|o| [o.1, did_of(o.2)])
        .collect();
    let follows: HashSet<(String, String)> =
        links_to(state, follow_dids, "app.bsky.graph.follow", ".subject")
            .await?
            .into_iter()
            .map(|l| (l.source_did, l.target))
            .collect();
    // List memberships of repliers under list rules: (list URI, member).
    let list_members: Vec<&str> = open
        .iter()
        .filter(|o| o.3.has(LIST_RULE))
        .map(|o| o.1)
        .collect();
    // The repliers' list items, then their lists (two index lookups: a
    // join with `records` would scan it).
    const LISTITEM: &str = "app.bsky.graph.listitem";
    let items = links_to(state, list_members, LISTITEM, ".subject").await?;
    let memberships: HashSet<(String, String)> =
        records_at(state, items.iter().map(|l| l.source_uri.as_str()), LISTITEM)
            .await?
            .into_iter()
            .filter_map(|(_, _, item)| {
                Some((
                    item["list"].as_str()?.to_string(),
                    item["subject"].as_str()?.to_string(),
                ))
            })
            .collect();
    let mut gated = HashSet::new();
    for (reply, replier, root, gate) in open {
        let owner = did_of(root);
        let mentioned = gate.has(MENTION_RULE)
            && roots.get(root).is_some_and(|r| {
                r["facets"].as_array().into_iter().flatten().any(|f| {
                    f["features"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|feature| {
                            feature["$type"] == "app.bsky.richtext.facet#mention"
                                && feature["did"] == replier
                        })
                })
            });
        let follower =
            gate.has(FOLLOWER_RULE) && follows.contains(&(replier.to_string(), owner.to_string()));
        let following =
            gate.has(FOLLOWING_RULE) && follows.contains(&(owner.to_string(), replier.to_string()));
        let listed = gate.rules().any(|r| {
            r["$type"] == LIST_RULE
                && r["list"]
                    .as_str()
                    .is_some_and(|l| memberships.contains(&(l.to_string(), replier.to_string())))
        });
        if !(mentioned || follower || following || listed) {
            gated.insert(reply.to_string());
        }
    }
    Ok(gated)
}

/// The replies among `posts` (URI, record), with their threads' roots, as
/// [`gated_replies`] takes them.
pub(crate) fn reply_roots<'a>(
    posts: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> Vec<(String, String)> {
    posts
        .into_iter()
        .filter(|(_, record)| record.get("reply").is_some())
        .map(|(uri, record)| (uri.to_string(), root_of(uri, record).to_string()))
        .collect()
}

/// The posts among `posts` (URI, record) that are replies their thread's
/// gate does not allow.
pub(crate) async fn gated_posts<'a>(
    state: &Bsky,
    posts: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> Result<HashSet<String>, XrpcError> {
    let replies = reply_roots(posts);
    let gates = threadgates(state, replies.iter().map(|(_, root)| root.as_str())).await?;
    gated_replies(state, &replies, &gates).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::event::testing::put;
    use crate::index::store::Store;

    #[test]
    fn the_filter_knows_every_gate_and_block_stored_or_committed() {
        let (alice, bob, carol, dave) = (
            "did:plc:alice",
            "did:plc:bob",
            "did:plc:carol",
            "did:plc:dave",
        );
        let at = "2026-01-01T00:00:00.000Z";
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store
            .apply(&[
                put(
                    alice,
                    THREADGATE,
                    "3kgate",
                    json!({"post": format!("at://{alice}/{POST}/3kgate"), "createdAt": at}),
                ),
                put(
                    bob,
                    BLOCK,
                    "3kblock",
                    json!({"subject": carol, "createdAt": at}),
                ),
            ])
            .unwrap();
        let filter = store.readers().with_blocking(GateFilter::load).unwrap();
        assert!(filter.may_be_gated(&format!("at://{alice}/{POST}/3kgate")));
        assert!(!filter.may_be_gated(&format!("at://{alice}/{POST}/3kother")));
        assert!(filter.may_block(bob, carol) && filter.may_block(carol, bob));
        assert!(!filter.may_block(bob, alice) && !filter.may_block(carol, dave));
        // Committed after the load.
        filter.on_commit(&[
            put(
                dave,
                POSTGATE,
                "3kpost",
                json!({"post": format!("at://{dave}/{POST}/3kpost"), "createdAt": at}),
            ),
            put(
                alice,
                BLOCK,
                "3kb2",
                json!({"subject": dave, "createdAt": at}),
            ),
        ]);
        assert!(filter.may_be_gated(&format!("at://{dave}/{POST}/3kpost")));
        assert!(filter.may_block(dave, alice));
        assert!(!filter.may_block(dave, bob));
    }
}
