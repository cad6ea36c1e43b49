//! Counting a search's matches, up to [`super::COUNTED_UP_TO`].
//!
//! A search's clauses are terms that must all occur (words, a collection,
//! an author). Where one of them is rare in a segment, its postings drive
//! a walk of the intersection (each match visited once, the other terms'
//! lists skipped forward), which costs about as much as that term's
//! documents. Where every clause is common, that walk visits tens of
//! thousands of documents before it reaches the cap (on the load
//! benchmark's store, a third of a search's CPU time). Those segments are
//! counted from bitsets of the terms instead (one bit per document of the
//! segment): the bitsets are ANDed a 64-bit word at a time and the set
//! bits counted, skipping deleted documents.
//!
//! A term's bitset is built once from its postings and kept in an LRU
//! cache keyed by segment and term (a segment never changes; deletes are
//! applied at count time from the searcher's own alive bitset), as Lucene's
//! `LRUQueryCache` keeps the document sets of frequent clauses per segment.
//! tantivy has no such cache, hence this module.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tantivy::index::SegmentId;
use tantivy::query::{BooleanQuery, EnableScoring, Query, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocSet, Searcher, SegmentReader, Term, TERMINATED};

use super::Result;

/// Bytes of term bitsets kept: a bitset takes one bit per document of its
/// segment (282 KB for the load benchmark's 2.26M posts, so about 230 of
/// them).
const BITSET_BYTES: usize = 64 << 20;

/// A segment is counted from bitsets when its least common clause occurs
/// in at least one document in this many and in at least [`DENSE_MIN`]:
/// the walk would then visit more documents than the ANDs have words.
const DENSE_SHARE: u32 = 256;
const DENSE_MIN: u32 = 4096;

/// Counts matches (see the module documentation).
pub(super) struct Counter {
    cache: Mutex<Cache>,
    /// Segments counted from bitsets and by walking (`/metrics`).
    from_bitsets: AtomicU64,
    walked: AtomicU64,
    /// The least document frequency counted from bitsets ([`DENSE_MIN`];
    /// tests lower it).
    dense_min: u32,
}

struct Cache {
    bitsets: lru::LruCache<(SegmentId, Term), Arc<[u64]>>,
    bytes: usize,
}

impl Counter {
    pub(super) fn new() -> Counter {
        Counter::with_dense_min(DENSE_MIN)
    }

    fn with_dense_min(dense_min: u32) -> Counter {
        Counter {
            cache: Mutex::new(Cache {
                bitsets: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            from_bitsets: AtomicU64::new(0),
            walked: AtomicU64::new(0),
            dense_min,
        }
    }

    /// The number of live documents of `searcher` that contain every one of
    /// `terms`, or `cap` if more.
    pub(super) fn count_up_to(
        &self,
        terms: &[Term],
        searcher: &Searcher,
        cap: usize,
    ) -> Result<usize> {
        // The intersection that segments with a rare term walk, built once
        // the first of them needs it.
        let mut weight = None;
        let mut n = 0;
        for segment in searcher.segment_readers() {
            let mut least = u32::MAX;
            for term in terms {
                least = least.min(segment.inverted_index(term.field())?.doc_freq(term)?);
            }
            if least == 0 {
                continue;
            }
            let dense = !terms.is_empty()
                && least >= self.dense_min
                && least >= segment.max_doc() / DENSE_SHARE;
            n += if dense {
                self.from_bitsets.fetch_add(1, Ordering::Relaxed);
                self.count_dense(segment, terms, cap - n)?
            } else {
                self.walked.fetch_add(1, Ordering::Relaxed);
                let weight = match &mut weight {
                    Some(w) => w,
                    None => {
                        let query = BooleanQuery::intersection(
                            terms
                                .iter()
                                .map(|t| {
                                    let q = TermQuery::new(t.clone(), IndexRecordOption::Basic);
                                    Box::new(q) as Box<dyn Query>
                                })
                                .collect(),
                        );
                        weight
                            .insert(query.weight(EnableScoring::disabled_from_searcher(searcher))?)
                    }
                };
                walk(weight.as_ref(), segment, cap - n)?
            };
            if n >= cap {
                return Ok(cap);
            }
        }
        Ok(n)
    }

    /// The live documents of `segment` holding every one of `terms` (not
    /// empty), up to `cap`, from the terms' bitsets.
    fn count_dense(&self, segment: &SegmentReader, terms: &[Term], cap: usize) -> Result<usize> {
        let sets = terms
            .iter()
            .map(|t| self.bitset(segment, t))
            .collect::<Result<Vec<_>>>()?;
        let (first, rest) = sets.split_first().expect("at least one term");
        let alive = segment.alive_bitset();
        let mut n = 0;
        for (w, word) in first.iter().enumerate() {
            let mut both = rest.iter().fold(*word, |acc, s| acc & s[w]);
            if both == 0 {
                continue;
            }
            match alive {
                None => n += both.count_ones() as usize,
                Some(alive) => {
                    while both != 0 {
                        let doc = (w * 64) as u32 + both.trailing_zeros();
                        if alive.is_alive(doc) {
                            n += 1;
                        }
                        both &= both - 1;
                    }
                }
            }
            if n >= cap {
                return Ok(cap);
            }
        }
        Ok(n)
    }

    /// The bitset of the documents of `segment` that hold `term` (deleted
    /// ones included), from the cache or built from the postings.
    fn bitset(&self, segment: &SegmentReader, term: &Term) -> Result<Arc<[u64]>> {
        let key = (segment.segment_id(), term.clone());
        if let Some(bits) = self.lock().bitsets.get(&key) {
            return Ok(bits.clone());
        }
        // Built outside the lock: two searches may build the same bitset
        // at once, and the second one replaces the first.
        let mut bits = vec![0u64; (segment.max_doc() as usize).div_ceil(64)];
        let postings = segment
            .inverted_index(term.field())?
            .read_postings(term, IndexRecordOption::Basic)?;
        if let Some(mut postings) = postings {
            let mut doc = postings.doc();
            while doc != TERMINATED {
                bits[doc as usize / 64] |= 1 << (doc % 64);
                doc = postings.advance();
            }
        }
        let bits: Arc<[u64]> = bits.into();
        let mut cache = self.lock();
        cache.bytes += bits.len() * 8;
        if let Some(old) = cache.bitsets.put(key, bits.clone()) {
            cache.bytes -= old.len() * 8;
        }
        while cache.bytes > BITSET_BYTES {
            match cache.bitsets.pop_lru() {
                Some((_, old)) => cache.bytes -= old.len() * 8,
                None => break,
            }
        }
        Ok(bits)
    }

    /// Drops the bitsets of segments that `searcher` no longer has (merged
    /// away), so they do not hold memory until they age out.
    pub(super) fn keep_segments_of(&self, searcher: &Searcher) {
        let live: Vec<SegmentId> = searcher
            .segment_readers()
            .iter()
            .map(|s| s.segment_id())
            .collect();
        let mut cache = self.lock();
        let gone: Vec<(SegmentId, Term)> = cache
            .bitsets
            .iter()
            .filter(|((segment, _), _)| !live.contains(segment))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some(old) = cache.bitsets.pop(&key) {
                cache.bytes -= old.len() * 8;
            }
        }
    }

    /// What `/metrics` shows: (segments counted from bitsets, segments
    /// walked, bitsets held, their bytes).
    pub(super) fn stats(&self) -> CountStats {
        let cache = self.lock();
        CountStats {
            segments_from_bitsets: self.from_bitsets.load(Ordering::Relaxed),
            segments_walked: self.walked.load(Ordering::Relaxed),
            bitsets: cache.bitsets.len(),
            bitset_bytes: cache.bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The map and its byte count are updated together, with no panic
        // possible between the two.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How counting went since the server started (see [`Counter::stats`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CountStats {
    pub segments_from_bitsets: u64,
    pub segments_walked: u64,
    pub bitsets: usize,
    pub bitset_bytes: usize,
}

/// The live documents of `segment` that `weight` matches, up to `cap`: the
/// matches are walked one by one (leapfrogging the terms' postings) and the
/// walk stops at `cap`. tantivy's own count walks them all.
fn walk(weight: &dyn tantivy::query::Weight, segment: &SegmentReader, cap: usize) -> Result<usize> {
    let mut docs = weight.scorer(segment, 1.0)?;
    let alive = segment.alive_bitset();
    let mut n = 0;
    let mut doc = docs.doc();
    while doc != TERMINATED {
        if alive.is_none_or(|a| a.is_alive(doc)) {
            n += 1;
            if n == cap {
                break;
            }
        }
        doc = docs.advance();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::schema::{Schema, STRING};
    use tantivy::{doc, Index, IndexWriter};

    #[test]
    fn bitsets_and_walks_count_the_same_live_matches() {
        let mut schema = Schema::builder();
        let (a, b, c) = (
            schema.add_text_field("a", STRING),
            schema.add_text_field("b", STRING),
            schema.add_text_field("c", STRING),
        );
        let index = Index::create_in_ram(schema.build());
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        // Two segments of 700 documents; document i holds a=(i mod 2),
        // b=(i mod 3), c=(i mod 5) and an id term.
        let id = |i: u32| Term::from_field_text(a, &format!("id{i}"));
        for i in 0..1400u32 {
            writer
                .add_document(doc!(
                    a => (i % 2).to_string(),
                    a => format!("id{i}"),
                    b => (i % 3).to_string(),
                    c => (i % 5).to_string(),
                ))
                .unwrap();
            if i == 699 {
                writer.commit().unwrap();
            }
        }
        writer.commit().unwrap();
        // Every seventh document deleted, in both segments.
        for i in (0..1400u32).step_by(7) {
            writer.delete_term(id(i));
        }
        writer.commit().unwrap();
        let reader = index.reader().unwrap();
        let searcher = reader.searcher();
        assert_eq!(searcher.segment_readers().len(), 2);
        let term = |f, v: u32| Term::from_field_text(f, &v.to_string());
        let dense = Counter::with_dense_min(1);
        let walked = Counter::with_dense_min(u32::MAX);
        let cases: Vec<Vec<Term>> = vec![
            vec![term(a, 0)],
            vec![term(a, 1), term(b, 2)],
            vec![term(a, 0), term(b, 1), term(c, 4)],
            vec![term(b, 9)],
            vec![term(a, 1), term(c, 7)],
        ];
        for terms in &cases {
            // The expected count, from the definition.
            let holds = |i: u32, t: &Term| {
                let v = t.value().as_str().unwrap().parse::<u32>().unwrap();
                let m = if t.field() == a {
                    2
                } else if t.field() == b {
                    3
                } else {
                    5
                };
                i % m == v
            };
            let expected = (0..1400u32)
                .filter(|i| i % 7 != 0 && terms.iter().all(|t| holds(*i, t)))
                .count();
            for counter in [&dense, &walked] {
                assert_eq!(
                    counter.count_up_to(terms, &searcher, 10_000).unwrap(),
                    expected,
                    "{terms:?}"
                );
                let capped = expected.min(50);
                assert_eq!(counter.count_up_to(terms, &searcher, 50).unwrap(), capped);
            }
            // Again, from the cached bitsets.
            assert_eq!(
                dense.count_up_to(terms, &searcher, 10_000).unwrap(),
                expected
            );
        }
        assert!(dense.lock().bytes > 0);
        assert_eq!(walked.lock().bytes, 0);
        let (d, w) = (dense.stats(), walked.stats());
        assert!(d.segments_from_bitsets > 0 && d.bitsets > 0);
        assert_eq!(
            (w.segments_from_bitsets, w.bitsets, w.bitset_bytes),
            (0, 0, 0)
        );
        assert!(w.segments_walked > 0);
        // Once the segments are merged, their bitsets are let go.
        let ids = index.searchable_segment_ids().unwrap();
        writer.merge(&ids).wait().unwrap();
        reader.reload().unwrap();
        dense.keep_segments_of(&reader.searcher());
        assert_eq!(dense.lock().bytes, 0);
        assert_eq!(dense.lock().bitsets.len(), 0);
    }
}
