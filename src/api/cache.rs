//! View caches: lru caches of hydrated answers (handles here, post views
//! and thread parts in `bsky::cache`) that the writer invalidates after
//! each committed batch.
//!
//! DuckDB replans every parameterised statement that reads a table on every
//! execution (DuckDB 1.5 caches no plan that contains a table scan), so each
//! store query costs 0.2-0.6 ms before it reads a row; a thread or a page
//! of posts made of several such queries is served from these caches when
//! it is asked for again.
//!
//! Staleness: a reader that misses notes the cache's epoch before it queries
//! the store and keeps its answer only if the epoch is unchanged when it is
//! done. The writer bumps the epoch after a batch is committed, so an answer
//! read from a snapshot older than a commit is never stored after the
//! invalidation that commit caused (the writer commits first, then
//! invalidates; a query that began before the commit read the epoch before
//! the bump).

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lru::LruCache;

/// An lru cache whose entries are dropped whole (or by key) when the store
/// changes; see the module docs for the epoch rule.
pub struct ViewCache<K: Hash + Eq, V> {
    inner: Mutex<Inner<K, V>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Inner<K: Hash + Eq, V> {
    epoch: u64,
    /// `None` when the cache is disabled (capacity 0).
    lru: Option<LruCache<K, V>>,
}

impl<K: Hash + Eq + Clone, V: Clone> ViewCache<K, V> {
    /// A cache of at most `capacity` entries; 0 disables it (every lookup
    /// misses, nothing is stored).
    pub fn new(capacity: usize) -> Self {
        ViewCache {
            inner: Mutex::new(Inner {
                epoch: 0,
                lru: NonZeroUsize::new(capacity).map(LruCache::new),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        // A panic while holding the lock cannot leave an entry half written
        // (LruCache's operations do not call back into user code).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch to hand back to [`ViewCache::put_all`]: read it before the
    /// store is queried.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Whether `key` is cached (not counted as a hit or a miss, and not
    /// made more recent); false when the cache is off.
    pub fn holds(&self, key: &K) -> bool {
        self.lock().lru.as_ref().is_some_and(|l| l.contains(key))
    }

    /// Whether the cache keeps anything (its capacity is not 0).
    pub fn enabled(&self) -> bool {
        self.lock().lru.is_some()
    }

    /// The cached values of `keys` and the keys that missed (each once, in
    /// order), with the epoch to store the missing ones under.
    pub fn get_many<'k>(&self, keys: impl IntoIterator<Item = &'k K>) -> Lookup<K, V>
    where
        K: 'k,
    {
        let mut inner = self.lock();
        let epoch = inner.epoch;
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for k in keys {
            if found.contains_key(k) || missing.contains(k) {
                continue;
            }
            match inner.lru.as_mut().and_then(|l| l.get(k)) {
                Some(v) => {
                    found.insert(k.clone(), v.clone());
                }
                None => missing.push(k.clone()),
            }
        }
        drop(inner);
        self.hits.fetch_add(found.len() as u64, Ordering::Relaxed);
        self.misses
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        Lookup {
            found,
            missing,
            epoch,
        }
    }

    /// Stores `entries` if no invalidation happened since `epoch` was read.
    pub fn put_all(&self, epoch: u64, entries: impl IntoIterator<Item = (K, V)>) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        if let Some(lru) = inner.lru.as_mut() {
            for (k, v) in entries {
                lru.put(k, v);
            }
        }
    }

    /// Drops every entry.
    pub fn clear(&self) {
        drop(self.take());
    }

    /// Empties the cache and returns what it held (if anything), for the
    /// caller to free where readers and the writer do not wait for it.
    pub fn take(&self) -> Option<LruCache<K, V>> {
        let mut inner = self.lock();
        inner.epoch += 1;
        match inner.lru.as_mut() {
            Some(lru) if !lru.is_empty() => {
                let cap = lru.cap();
                Some(std::mem::replace(lru, LruCache::new(cap)))
            }
            _ => None,
        }
    }

    /// Drops the entries of `keys`; a no-op (not even an epoch bump) when
    /// `keys` is empty.
    pub fn remove<'k>(&self, keys: impl IntoIterator<Item = &'k K>)
    where
        K: 'k,
    {
        let mut keys = keys.into_iter().peekable();
        if keys.peek().is_none() {
            return;
        }
        let mut inner = self.lock();
        inner.epoch += 1;
        if let Some(lru) = inner.lru.as_mut() {
            for k in keys {
                lru.pop(k);
            }
        }
    }

    /// (hits, misses) since the start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().lru.as_ref().map_or(0, LruCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What [`ViewCache::get_many`] found.
pub struct Lookup<K, V> {
    pub found: HashMap<K, V>,
    pub missing: Vec<K>,
    pub epoch: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_read_before_an_invalidation_is_not_stored() {
        let cache: ViewCache<String, i32> = ViewCache::new(10);
        let k = "a".to_string();
        let miss = cache.get_many([&k]);
        assert_eq!(miss.missing, vec![k.clone()]);
        // The writer commits and invalidates while the reader queries.
        cache.clear();
        cache.put_all(miss.epoch, [(k.clone(), 1)]);
        assert!(cache.get_many([&k]).found.is_empty(), "stale answer kept");
        // A reader that starts after the invalidation stores its answer.
        let miss = cache.get_many([&k]);
        cache.put_all(miss.epoch, [(k.clone(), 2)]);
        assert_eq!(cache.get_many([&k]).found[&k], 2);
        // Removing by key drops the entry and bumps the epoch too.
        let before = cache.epoch();
        cache.remove([&k]);
        assert!(cache.get_many([&k]).found.is_empty());
        cache.put_all(before, [(k.clone(), 3)]);
        assert!(cache.get_many([&k]).found.is_empty(), "stale answer kept");
        // An empty removal changes nothing.
        let e = cache.epoch();
        cache.remove(std::iter::empty::<&String>());
        assert_eq!(cache.epoch(), e);
        assert_eq!(cache.stats(), (1, 5));
    }

    #[test]
    fn a_disabled_cache_stores_nothing_and_the_lru_bound_holds() {
        let off: ViewCache<u32, u32> = ViewCache::new(0);
        let l = off.get_many([&1]);
        off.put_all(l.epoch, [(1, 1)]);
        assert!(off.get_many([&1]).found.is_empty());
        let small: ViewCache<u32, u32> = ViewCache::new(2);
        let e = small.epoch();
        small.put_all(e, [(1, 1), (2, 2), (3, 3)]);
        assert_eq!(small.len(), 2);
        let l = small.get_many([&1, &2, &3, &3]);
        assert_eq!(l.missing, vec![1]);
        assert_eq!(l.found.len(), 2);
    }
}
