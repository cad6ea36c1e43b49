//! The storage boundary: what ingestion asks the index to do. The decoder
//! turns wire events into these; the writer only ever sees these.

use serde_json::Value;

/// A backlink: `path` inside a record points at `target` (an AT-URI or DID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub path: String,
    pub target: String,
}

/// The DID an AT-URI (or a DID, or `did#fragment`) belongs to.
pub fn did_of(target: &str) -> &str {
    let t = target.strip_prefix("at://").unwrap_or(target);
    t.split(['/', '#']).next().unwrap_or(t)
}

/// The collection of an AT-URI (`at://did/collection/rkey`), if it names one.
pub fn collection_of(uri: &str) -> Option<&str> {
    uri.strip_prefix("at://")?
        .split('/')
        .nth(1)
        .filter(|c| !c.is_empty())
}

/// A record version to index. Built by [`RecordWrite::new`], which does the
/// per-record string work (URI, JSON text, links) on the ingest thread so the
/// single writer only moves prepared values into DuckDB. The decoded value is
/// dropped there too: freeing its tree on the thread that allocated it is much
/// cheaper than on the writer's.
#[derive(Debug, Clone)]
pub struct RecordWrite {
    pub uri: String,
    pub did: String,
    pub collection: String,
    pub rkey: String,
    pub cid: String,
    pub rev: String,
    /// The record in the data model's JSON form, as stored.
    pub json: String,
    /// The record's own `createdAt`, when it has one.
    pub created_at: Option<String>,
    pub links: Vec<Link>,
    /// The op was an update of an existing record (a create otherwise).
    pub update: bool,
}

impl RecordWrite {
    /// The record parsed back from its stored JSON.
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.json).expect("RecordWrite::new wrote this JSON")
    }

    pub fn new(
        did: String,
        collection: String,
        rkey: String,
        cid: String,
        rev: String,
        record: Value,
    ) -> RecordWrite {
        let uri = format!("at://{did}/{collection}/{rkey}");
        let json = record.to_string();
        let created_at = record
            .get("createdAt")
            .and_then(Value::as_str)
            .map(str::to_string);
        let links = super::links::extract_links(&record);
        RecordWrite {
            uri,
            did,
            collection,
            rkey,
            cid,
            rev,
            json,
            created_at,
            links,
            update: false,
        }
    }
}

/// A record that failed decoding or validation.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub did: String,
    pub collection: String,
    pub rkey: String,
    pub cid: Option<String>,
    pub rev: String,
    pub reason: String,
    pub record: Option<Value>,
}

/// The AT-URIs a snapshot keeps, as 128-bit keys ([`uri_key`]) in a sorted
/// vector: 16 bytes a record instead of the URI, so a repository of millions
/// of records is kept in tens of megabytes.
#[derive(Debug, Default, Clone)]
pub struct UriKeys(Vec<u128>);

impl UriKeys {
    pub fn insert(&mut self, uri: &str) {
        self.0.push(uri_key(uri));
    }

    /// Sorts the keys for [`UriKeys::contains`]; call once, when complete.
    pub fn seal(mut self) -> UriKeys {
        self.0.sort_unstable();
        self.0.dedup();
        self.0.shrink_to_fit();
        self
    }

    /// Whether `uri` is kept (after [`UriKeys::seal`]).
    pub fn contains(&self, uri: &str) -> bool {
        self.0.binary_search(&uri_key(uri)).is_ok()
    }
}

/// A 128-bit key of an AT-URI: two independently seeded 64-bit foldhash
/// values (a collision, which would keep a record the repository lacks, has
/// a chance of about n^2 / 2^129).
pub fn uri_key(uri: &str) -> u128 {
    use std::hash::BuildHasher;
    let a = foldhash::quality::FixedState::with_seed(0x6c65_7876_6965_7731).hash_one(uri);
    let b = foldhash::quality::FixedState::with_seed(0x9e37_79b9_7f4a_7c15).hash_one(uri);
    (u128::from(a) << 64) | u128::from(b)
}

/// One change to the index.
#[derive(Debug, Clone)]
pub enum Change {
    /// Create or replace a record.
    Put(RecordWrite),
    /// Remove a record and its links.
    Delete {
        did: String,
        collection: String,
        rkey: String,
        rev: String,
    },
    /// A record that is not valid: the old version (if any) is removed and the
    /// new one kept aside with its reason.
    Invalid(Quarantined),
    /// A DID's handle (re)asserted.
    Identity { did: String, handle: Option<String> },
    /// A DID's hosting status.
    Account {
        did: String,
        active: bool,
        status: Option<String>,
    },
    /// The result of checking `handle` for `did` both ways (the DID document
    /// claims it, and it resolves to the DID); applies only while `handle`
    /// is still the DID's claimed handle.
    HandleChecked {
        did: String,
        handle: String,
        valid: bool,
    },
    /// The repository of `did` must be fetched again (`getRepo`) and applied
    /// as a snapshot; kept in `resyncs` until a [`Change::Snapshot`] for it.
    Resync { did: String, reason: String },
    /// The end of a repository snapshot at `rev`: every record of `did` the
    /// index holds (including those written earlier in the same batch) that
    /// is not in `keep` is deleted. The snapshot's records come as `Put`s
    /// before it (possibly in earlier batches). `keep` is `None` once
    /// `Store::expand_snapshots` has turned it into explicit `Delete`s
    /// placed before it (so that search and subscribers see them).
    Snapshot {
        did: String,
        rev: String,
        keep: Option<std::sync::Arc<UriKeys>>,
    },
}

impl Change {
    /// The AT-URI of the record this change touches, if it touches one.
    pub fn record_uri(&self) -> Option<std::borrow::Cow<'_, str>> {
        let (did, collection, rkey) = match self {
            Change::Put(w) => return Some(std::borrow::Cow::Borrowed(&w.uri)),
            Change::Delete {
                did,
                collection,
                rkey,
                ..
            } => (did, collection, rkey),
            Change::Invalid(q) => (&q.did, &q.collection, &q.rkey),
            _ => return None,
        };
        Some(std::borrow::Cow::Owned(format!(
            "at://{did}/{collection}/{rkey}"
        )))
    }
}

/// Everything one source event asks for, with the source position after it.
#[derive(Debug, Clone, Default)]
pub struct IndexEvent {
    pub source: String,
    /// The cursor to store once this event is applied (seq or time_us).
    pub cursor: Option<i64>,
    /// The event's own `time`, for lag reporting.
    pub time: Option<String>,
    pub changes: Vec<Change>,
}

/// Events for the crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Change, IndexEvent, RecordWrite};

    /// The CID every test record carries.
    pub const CID: &str = "bafyreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy";

    /// An event that puts one record.
    pub fn put(did: &str, collection: &str, rkey: &str, record: serde_json::Value) -> IndexEvent {
        let w = RecordWrite::new(
            did.into(),
            collection.into(),
            rkey.into(),
            CID.into(),
            "3k".into(),
            record,
        );
        IndexEvent {
            source: "test".into(),
            changes: vec![Change::Put(w)],
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UriKeys;

    #[test]
    fn uri_keys_find_every_member_and_no_other() {
        for n in [0usize, 1, 2, 63, 64, 65, 1000, 200_000] {
            let uri = |i: usize| format!("at://did:plc:test/app.bsky.feed.like/{i:013}");
            let mut keys = UriKeys::default();
            for i in 0..n {
                keys.insert(&uri(2 * i));
            }
            let keys = keys.seal();
            for i in 0..n {
                assert!(keys.contains(&uri(2 * i)), "member {i} of {n}");
                assert!(!keys.contains(&uri(2 * i + 1)), "non-member {i} of {n}");
            }
        }
    }
}
