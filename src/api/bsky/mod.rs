//! Bluesky's own app: the `app.bsky` views with the official response
//! shapes (profiles, follower and like lists, posts, threads, author feeds,
//! quotes), the gates and blocks they honour, embeds, and lexview's feed
//! generator. This room may use everything of the generic API; the generic
//! API knows nothing of it.

pub mod actors;
pub mod cache;
pub mod embeds;
pub mod feeds;
pub mod gates;
pub mod lookups;
pub mod posts;

use std::ops::Deref;
use std::sync::Arc;

use super::xrpc::{Handler, MethodFuture, Methods};
use super::{AppState, Extension};
use crate::index::event::IndexEvent;
use crate::index::store::ReadPool;

/// Posts are also indexed by the post they reply to, so that threads read
/// reply lists (and posts) from the search index.
pub fn thread_parent() -> crate::index::search::ParentLink {
    crate::index::search::ParentLink {
        collection: posts::POST.to_string(),
        path: ".reply.parent.uri".to_string(),
    }
}

/// What the app.bsky views keep besides the generic state: caches, the gate
/// and block filter, shared lookups and media URLs.
pub struct Views {
    pub profiles: actors::ProfileCache,
    /// Hot post views, reply lists and thread contexts.
    pub hot: cache::HotViews,
    /// Where embed views point for images and videos.
    pub media: embeds::MediaUrls,
    /// Which posts may have gates and which accounts may block: lookups
    /// run only on a hit.
    pub gates: gates::GateFilter,
    /// Point lookups shared by concurrent requests.
    pub lookups: lookups::Lookups,
}

impl Views {
    /// Loads the gate and block filter from the store (before the writer
    /// starts, so no committed gate or block is missed).
    pub fn load(
        readers: &Arc<ReadPool>,
        post_cache: usize,
        media: embeds::MediaUrls,
    ) -> Result<Views, crate::index::store::StoreError> {
        Ok(Views {
            profiles: actors::ProfileCache::default(),
            hot: cache::HotViews::new(post_cache),
            media,
            gates: readers.with_blocking(gates::GateFilter::load)?,
            lookups: lookups::Lookups::new(readers),
        })
    }

    /// Called with each committed batch, on the writer's task.
    pub fn on_commit(&self, batch: &[IndexEvent]) {
        self.profiles.invalidate(batch);
        self.hot.on_commit(batch);
        self.gates.on_commit(batch);
    }

    /// The XRPC methods of this room, for the dispatch table.
    pub fn methods(self: &Arc<Views>, m: &mut Methods) {
        let views = self.clone();
        let add = |m: &mut Methods,
                   nsid: &'static str,
                   f: fn(Bsky, String, Vec<(String, String)>) -> MethodFuture| {
            let views = views.clone();
            let handler: Handler = Arc::new(move |state, nsid, pairs| {
                f(
                    Bsky {
                        app: state,
                        views: views.clone(),
                    },
                    nsid,
                    pairs,
                )
            });
            m.add(nsid, handler);
        };
        macro_rules! method {
            ($f:path) => {
                |b: Bsky, nsid: String, pairs: Vec<(String, String)>| -> MethodFuture {
                    Box::pin(async move { $f(&b, &nsid, &pairs).await })
                }
            };
        }
        add(m, "app.bsky.actor.getProfile", method!(actors::get_profile));
        add(
            m,
            "app.bsky.graph.getFollowers",
            method!(actors::get_followers),
        );
        add(m, "app.bsky.graph.getFollows", method!(actors::get_follows));
        add(m, "app.bsky.feed.getLikes", method!(actors::get_likes));
        add(
            m,
            "app.bsky.feed.getRepostedBy",
            method!(actors::get_reposted_by),
        );
        add(m, "app.bsky.feed.getPosts", method!(posts::get_posts));
        add(m, "app.bsky.feed.getQuotes", method!(posts::get_quotes));
        add(
            m,
            "app.bsky.feed.getPostThread",
            method!(posts::get_post_thread),
        );
        add(
            m,
            "app.bsky.feed.getAuthorFeed",
            method!(posts::get_author_feed),
        );
        add(
            m,
            "app.bsky.feed.describeFeedGenerator",
            method!(feeds::describe),
        );
        add(m, "app.bsky.feed.getFeedSkeleton", method!(feeds::skeleton));
    }
}

impl Extension for Views {
    fn view_caches(&self) -> Vec<(&'static str, (u64, u64), usize)> {
        vec![
            ("posts", self.hot.posts.stats(), self.hot.posts.len()),
            ("replies", self.hot.replies.stats(), self.hot.replies.len()),
            (
                "root_likes",
                self.hot.root_likes.stats(),
                self.hot.root_likes.len(),
            ),
            ("profiles", self.profiles.0.stats(), self.profiles.0.len()),
        ]
    }

    fn render_metrics(&self, out: &mut String) {
        // Shared point lookups: requests per statement is the batching factor.
        type Pick = fn(&crate::index::batch::BatchCounts) -> &std::sync::atomic::AtomicU64;
        let lookup_families: [(&str, &str, Pick); 2] = [
            (
                "lookup_statements_total",
                "Statements run by a shared point lookup (posts with their counts, thread_posts, counts, replies, profiles, likes_by).",
                |c| &c.statements,
            ),
            (
                "lookup_requests_total",
                "Requests those statements answered (several when requests arrive together).",
                |c| &c.requests,
            ),
        ];
        for (name, help, pick) in lookup_families {
            out.push_str(&format!(
                "# HELP lexview_{name} {help}\n# TYPE lexview_{name} counter\n"
            ));
            for (kind, counts) in self.lookups.each() {
                let v = pick(counts).load(std::sync::atomic::Ordering::Relaxed);
                out.push_str(&format!("lexview_{name}{{lookup=\"{kind}\"}} {v}\n"));
            }
        }
    }
}

/// A request to an app.bsky method: the generic state (through `Deref`)
/// and this room's own.
pub struct Bsky {
    app: AppState,
    pub views: Arc<Views>,
}

impl Deref for Bsky {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.app
    }
}

impl Bsky {
    pub fn app(&self) -> &AppState {
        &self.app
    }
}
