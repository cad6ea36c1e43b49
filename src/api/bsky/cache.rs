//! The hot caches of the app.bsky views: post views, reply lists and
//! thread contexts.

use crate::api::cache::ViewCache;

/// The hot views of Bluesky's post methods, all dropped after every committed
/// batch that changed an `app.bsky.*` record or an account: a post view
/// depends on its record, its counts, its author's profile and handle, what
/// it quotes and the gates, follows, lists and blocks around it, which a
/// batch can change in too many ways to track per key. Records of other
/// collections never reach a post view (a quoted record that is not a post
/// is a `viewNotFound`), so a batch of only those keeps the caches.
/// Under a live firehose (a batch every 200 ms or so) this keeps what is
/// read many times a second: the threads and posts everyone is looking at.
pub struct HotViews {
    /// `postView`s (as `posts::post_views` builds them) by post URI; `None`
    /// for a URI that is not an indexed post.
    pub posts: ViewCache<String, Option<serde_json::Value>>,
    /// The direct replies of a post, oldest first, by the post's URI.
    pub replies: ViewCache<String, Vec<String>>,
    /// `rootAuthorLike`: the like by (thread root's author DID) of (post URI).
    pub root_likes: ViewCache<(String, String), Option<String>>,
}

impl HotViews {
    /// Caches of `posts` post views (0 disables all three), `posts` reply
    /// lists and `posts` thread-context entries.
    pub fn new(posts: usize) -> HotViews {
        HotViews {
            posts: ViewCache::new(posts),
            replies: ViewCache::new(posts),
            root_likes: ViewCache::new(posts),
        }
    }

    /// Called with each committed batch (on the writer's task): the caches
    /// are emptied at once and their entries freed on another thread, so
    /// the writer does not spend milliseconds dropping thousands of views.
    pub fn on_commit(&self, batch: &[crate::index::event::IndexEvent]) {
        use crate::index::event::Change;
        let bsky = |collection: &str| collection.starts_with("app.bsky.");
        let touches = |change: &Change| match change {
            Change::Put(w) => bsky(&w.collection),
            Change::Delete { collection, .. } => bsky(collection),
            Change::Invalid(q) => bsky(&q.collection),
            // Identity, handle, account status, resync and snapshot changes.
            _ => true,
        };
        if batch.iter().flat_map(|ev| &ev.changes).any(touches) {
            let old = (
                self.posts.take(),
                self.replies.take(),
                self.root_likes.take(),
            );
            if old.0.is_some() || old.1.is_some() || old.2.is_some() {
                // Should no thread start, the closure (and the views) is
                // dropped right here instead.
                let _ = std::thread::Builder::new()
                    .name("lexview-cache-free".into())
                    .spawn(move || drop(old));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_batches_that_touch_bluesky_records_or_accounts_clear_the_hot_views() {
        use crate::index::event::{Change, IndexEvent};
        let delete = |collection: &str| IndexEvent {
            changes: vec![Change::Delete {
                did: "did:plc:a".into(),
                collection: collection.into(),
                rkey: "3k".into(),
                rev: "3k".into(),
            }],
            ..Default::default()
        };
        let hot = HotViews::new(10);
        let fill = |hot: &HotViews| {
            let e = hot.posts.epoch();
            hot.posts.put_all(e, [("at://x".to_string(), None)]);
            assert_eq!(hot.posts.len(), 1);
        };
        fill(&hot);
        hot.on_commit(&[IndexEvent::default()]);
        hot.on_commit(&[delete("community.lexicon.calendar.rsvp")]);
        assert_eq!(hot.posts.len(), 1, "kept for other collections");
        hot.on_commit(&[delete("app.bsky.feed.like")]);
        assert_eq!(hot.posts.len(), 0);
        fill(&hot);
        let account = IndexEvent {
            changes: vec![Change::Identity {
                did: "did:plc:a".into(),
                handle: None,
            }],
            ..Default::default()
        };
        hot.on_commit(&[delete("xyz.statusphere.status"), account]);
        assert_eq!(hot.posts.len(), 0);
    }
}
