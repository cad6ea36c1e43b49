//! Full-text search with tantivy: which record fields are searched, the
//! tokenizer, the on-disk index under `<data>/search/`, the indexer thread that
//! follows the writer's commits, and queries.
//!
//! The index is derived from DuckDB and never authoritative, and
//! `lexview reindex --search` rebuilds the whole index from the store. Each
//! document stores the record as it was indexed (CID, author, JSON, indexing
//! time), so a hit is answered without reading the store; the records that
//! changed after the searched snapshot was committed (see [`Recent`]) are read
//! from `records` instead, so a record deleted or updated in the store is never
//! answered from an older document.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, STORED, STRING,
};
use tantivy::tokenizer::{AsciiFoldingFilter, LowerCaser, TextAnalyzer, Token, TokenStream};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};

use crate::index::event::{Change, IndexEvent};
use crate::lexicon::{Catalog, Field as LexField};

mod count;
pub use count::CountStats;

/// How often pending changes are committed: an event is searchable within
/// about this long (plus the reader reload, well under a millisecond).
pub const COMMIT_EVERY: Duration = Duration::from_millis(500);

/// Matches are counted exactly up to this many; a search with more reports
/// this many (as Elasticsearch's `track_total_hits` does by default, and as
/// Bluesky's `searchPosts` allows: "may be rounded/truncated"). Counting
/// every match of two common words walks both posting lists to their end,
/// which cost more than finding the best hits on the load benchmark.
pub const COUNTED_UP_TO: usize = 10_000;

/// The deepest page a search reaches: hits past this many are not listed
/// (tantivy reserves room for offset + limit hits up front, so an offset
/// from a request must be bounded).
pub const MAX_OFFSET: usize = 10_000;

/// The most hits one page lists.
pub const MAX_LIMIT: usize = 100;

/// The name the tokenizer is registered under in the index.
const TOKENIZER: &str = "lexview";

/// Bumped when the document layout changes; an index of another version is
/// rebuilt from the store at start. 3: every record of a covered collection
/// has a document (with no text when it has none), and posts' replies are
/// indexed by their parent (`reply_parent`), for thread views.
const LAYOUT_VERSION: u32 = 3;

/// Search errors.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("search index: {0}")]
    Io(#[from] std::io::Error),
    #[error("search index: {0}")]
    Store(#[from] duckdb::Error),
    #[error("search config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("a search page is at most {MAX_LIMIT} hits, at most {MAX_OFFSET} deep")]
    PageTooDeep,
}

pub type Result<T> = std::result::Result<T, SearchError>;

// ---- which fields are searched ----

/// Per-field overrides from the search config file (JSON):
/// `{"fields": {"<collection>": {"<property>": true | false}}}`; `true` adds a
/// string property the defaults leave out, `false` removes one they pick.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    #[serde(default)]
    pub fields: BTreeMap<String, BTreeMap<String, bool>>,
}

impl SearchConfig {
    /// Reads the config; a missing file is the empty config.
    pub fn load(path: &Path) -> Result<SearchConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| SearchError::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SearchConfig::default()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The searched properties of each record collection.
#[derive(Debug, Clone, Default)]
pub struct SearchFields {
    by_collection: BTreeMap<String, Vec<String>>,
    /// The link by which one collection's documents are also indexed
    /// (`reply_parent`), if any.
    parent: Option<ParentLink>,
}

/// A link by which the documents of one collection are also indexed: their
/// parent, for thread views (the app.bsky room names posts' `reply.parent.uri`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLink {
    pub collection: String,
    /// The link's path as the links index writes it (`.reply.parent.uri`).
    pub path: String,
}

impl ParentLink {
    /// The parent `record` (of `collection`) links to, if it is of the
    /// linked collection and has one.
    fn of(&self, collection: &str, record: &Value) -> Option<String> {
        if collection != self.collection {
            return None;
        }
        let pointer = self.path.replace('.', "/");
        record.pointer(&pointer)?.as_str().map(str::to_string)
    }
}

/// A string property is free text by default when it has no format, no
/// enum/const/knownValues, and is long: at least 100 graphemes or 1000 bytes
/// allowed, or no length limit at all.
fn is_free_text(field: &LexField) -> bool {
    let LexField::String(s) = field else {
        return false;
    };
    let closed = s.format.is_some()
        || s.enumeration.is_some()
        || s.konst.is_some()
        || s.known_values.is_some();
    let long = match (s.max_graphemes, s.max_length) {
        (None, None) => true,
        (g, l) => g.is_some_and(|g| g >= 100) || l.is_some_and(|l| l >= 1000),
    };
    !closed && long
}

impl SearchFields {
    /// Also indexes `parent.collection`'s documents by `parent.path`.
    pub fn with_parent(mut self, parent: ParentLink) -> SearchFields {
        self.parent = Some(parent);
        self
    }

    /// The parent of `record` (of `collection`) by the parent link.
    fn parent_of(&self, collection: &str, record: &Value) -> Option<String> {
        self.parent.as_ref()?.of(collection, record)
    }

    /// Picks the free-text properties of every record type, then applies the
    /// config's overrides (which may only name string properties).
    pub fn new(catalog: &Catalog, config: &SearchConfig) -> SearchFields {
        let mut by_collection = BTreeMap::new();
        for rt in catalog.records() {
            let Some(schema) = catalog.record_schema(&rt.nsid) else {
                continue;
            };
            let overrides = config.fields.get(&rt.nsid);
            let picked: Vec<String> = schema
                .properties
                .iter()
                .filter(|(name, field)| {
                    let is_string = matches!(field, LexField::String(_));
                    match overrides.and_then(|o| o.get(name.as_str())) {
                        Some(choice) => *choice && is_string,
                        None => is_free_text(field),
                    }
                })
                .map(|(name, _)| name.clone())
                .collect();
            if !picked.is_empty() {
                by_collection.insert(rt.nsid.clone(), picked);
            }
        }
        for (collection, fields) in &config.fields {
            for name in fields.keys() {
                if !by_collection
                    .get(collection)
                    .is_some_and(|v| v.contains(name))
                    && fields[name]
                {
                    tracing::warn!(
                        collection,
                        field = name,
                        "search config names a field that is not a string property of a loaded record type; ignored"
                    );
                }
            }
        }
        SearchFields {
            by_collection,
            parent: None,
        }
    }

    /// Whether records of `collection` have searched fields.
    pub fn covers(&self, collection: &str) -> bool {
        self.by_collection.contains_key(collection)
    }

    /// The collections with searched fields, and those fields.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.by_collection
            .iter()
            .map(|(c, f)| (c.as_str(), f.as_slice()))
    }

    /// The searched text of a record, or None when it has none.
    pub fn text_of(&self, collection: &str, record: &Value) -> Option<String> {
        let fields = self.by_collection.get(collection)?;
        let parts: Vec<&str> = fields
            .iter()
            .filter_map(|f| record.get(f).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .collect();
        (!parts.is_empty()).then(|| parts.join("\n"))
    }
}

// ---- the tokenizer ----

/// Words for alphabetic scripts, overlapping character bigrams for CJK.
///
/// Written by hand because tantivy's tokenizers split on non-alphanumeric
/// characters, which leaves a whole Japanese sentence as one token, and the
/// dictionary-based Japanese tokenizers (lindera) ship tens of megabytes of
/// dictionary. Bigrams over runs of Han, Hiragana, Katakana and Hangul are the
/// usual dictionary-free approach (Lucene's CJKBigramFilter): a query matches a
/// text that contains its characters in order. A run of one character is
/// indexed as itself. Lower-casing and folding (ü -> u, ß -> ss) are tantivy's
/// filters, applied after this.
#[derive(Clone, Default)]
pub struct WordsAndBigrams;

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF     // Hiragana, Katakana
        | 0x31F0..=0x31FF   // Katakana phonetic extensions
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xAC00..=0xD7AF   // Hangul syllables
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0xFF66..=0xFF9F   // half-width Katakana
        | 0x20000..=0x2FA1F // CJK extensions B and beyond
    )
}

/// Tokens of `text` (before lower-casing and folding).
fn split_tokens(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut push = |from: usize, to: usize| {
        tokens.push(Token {
            offset_from: from,
            offset_to: to,
            position: tokens.len(),
            text: text[from..to].to_string(),
            position_length: 1,
        })
    };
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        if is_cjk(c) {
            let start = i;
            while i < chars.len() && is_cjk(chars[i].1) {
                i += 1;
            }
            if i - start == 1 {
                push(chars[start].0, end_of(start + 1));
            } else {
                for pair in chars[start..i].windows(2) {
                    push(pair[0].0, pair[1].0 + pair[1].1.len_utf8());
                }
            }
        } else if c.is_alphanumeric() {
            let start = i;
            while i < chars.len() && chars[i].1.is_alphanumeric() && !is_cjk(chars[i].1) {
                i += 1;
            }
            push(chars[start].0, end_of(i));
        } else {
            i += 1;
        }
    }
    tokens
}

pub struct VecTokenStream {
    tokens: Vec<Token>,
    next: usize,
}

impl TokenStream for VecTokenStream {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }
    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }
    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

impl tantivy::tokenizer::Tokenizer for WordsAndBigrams {
    type TokenStream<'a> = VecTokenStream;
    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        VecTokenStream {
            tokens: split_tokens(text),
            next: 0,
        }
    }
}

/// The analyzer used for documents and queries alike.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(WordsAndBigrams)
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// The terms `text` is indexed (or searched) as.
pub fn terms(text: &str) -> Vec<String> {
    let mut a = analyzer();
    let mut stream = a.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

// ---- the index ----

struct Fields {
    uri: Field,
    did: Field,
    collection: Field,
    text: Field,
    /// Microseconds since the epoch: the record's `createdAt` when it is a
    /// valid time not in the future, else when it was indexed.
    time: Field,
    cid: Field,
    record: Field,
    indexed_us: Field,
    /// A post's `reply.parent.uri` (indexed, not stored).
    reply_parent: Field,
}

/// What searches run against: a committed state of the index and the last
/// batch it holds (see [`Recent`]).
struct Snapshot {
    searcher: Searcher,
    seq: u64,
}

/// The records and accounts changed by recent batches, so that a hit whose
/// document may be older than the store is read from the store.
///
/// The writer notes each committed batch here ([`SearchIndex::note`]) before
/// it moves its cursor on, under the next sequence number; the indexer marks
/// a batch applied once its changes are staged, and each index commit
/// publishes a [`Snapshot`] holding every batch applied before it. A hit is
/// answered from its document only when neither its URI nor its author was
/// noted after the snapshot it was found in. Entries are dropped once every
/// snapshot still in use holds them: `retired` keeps the snapshots replaced
/// while a search may still hold them (an `Arc` with other owners).
#[derive(Default)]
struct Recent {
    seq: u64,
    uris: HashMap<String, u64>,
    dids: HashMap<String, u64>,
    /// The last batch in which an account came (back) into view: its
    /// records' documents are added again by the indexer, so a snapshot
    /// older than that may miss replies in its reply lists.
    reactivated: u64,
    retired: Vec<Arc<Snapshot>>,
    /// Set when staging a batch failed: the index may then miss changes the
    /// store holds, so every hit is read from the store until a restart
    /// (which catches the index up from the last commit's covered time).
    degraded: bool,
}

impl Recent {
    /// Whether a document found in a snapshot holding batches up to `seq`
    /// still stores the record as the store has it.
    fn current(&self, uri: &str, did: &str, seq: u64) -> bool {
        !self.degraded
            && self.uris.get(uri).is_none_or(|s| *s <= seq)
            && self.dids.get(did).is_none_or(|s| *s <= seq)
    }

    /// Whether the replies that a snapshot holding batches up to `seq`
    /// indexes under `parent` are all of the store's: no reply to it was
    /// written since (`note` marks a new reply's parent), and no account
    /// came back into view since. A reply deleted or changed since is still
    /// listed; its own document is not current, so readers check its row.
    fn replies_current(&self, parent: &str, seq: u64) -> bool {
        !self.degraded && self.reactivated <= seq && self.uris.get(parent).is_none_or(|s| *s <= seq)
    }
}

/// One change to the search index.
#[derive(Debug, Clone)]
pub enum SearchChange {
    Put {
        uri: String,
        did: String,
        collection: String,
        text: String,
        time_us: i64,
        cid: String,
        /// The record's JSON as the store holds it.
        record: String,
        /// When the store indexed it (its `indexed_at`).
        indexed_us: i64,
        /// A post's `reply.parent.uri`.
        parent: Option<String>,
    },
    Delete {
        uri: String,
    },
}

/// A search request.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub text: String,
    pub collection: Option<String>,
    /// Only records by this DID.
    pub author: Option<String>,
    pub limit: usize,
    pub offset: usize,
    /// Weigh newer records up (see [`recency_factor`]).
    pub recency: bool,
}

/// One hit, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub uri: String,
    pub score: f32,
    /// The record as its document stores it; `None` when the record or its
    /// account changed after the searched snapshot was committed (or the
    /// index missed a change), so the caller must read it from the store.
    pub stored: Option<StoredRecord>,
}

/// A record as a search document stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub cid: String,
    pub did: String,
    /// The record's JSON as the store holds it.
    pub record: String,
    /// The store's `indexed_at`, in microseconds since the epoch.
    pub indexed_us: i64,
}

/// The search index on disk.
pub struct SearchIndex {
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    dir: PathBuf,
    current: Mutex<Arc<Snapshot>>,
    recent: Mutex<Recent>,
    /// The last batch staged in the writer (see [`Recent`]).
    applied: std::sync::atomic::AtomicU64,
    /// Counts matches (with its cache of common terms' bitsets).
    counter: count::Counter,
    lookups: LookupCounts,
    /// The collections every record of which the index holds: filled from
    /// the store while covered, and covered ever since (a collection newly
    /// covered by a lexicon reload is indexed from the next event on).
    /// Recorded with each commit; a start that covers a collection not in
    /// it rebuilds the index.
    complete: Mutex<BTreeSet<String>>,
    /// Committed batches waiting for the indexer thread.
    queued: std::sync::atomic::AtomicU64,
}

/// Committed batches that may wait for the indexer thread; the writer
/// waits for room beyond them (backpressure instead of memory).
const QUEUE: usize = 64;

/// What a commit records about the store: every record indexed in DuckDB
/// before `covered_us` is in this index.
#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    layout: u32,
    covered_us: i64,
    #[serde(default)]
    complete: BTreeSet<String>,
}

fn schema() -> Schema {
    let mut b = Schema::builder();
    b.add_text_field("uri", STRING | STORED);
    b.add_text_field("did", STRING | STORED);
    b.add_text_field("collection", STRING);
    b.add_text_field(
        "text",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        ),
    );
    b.add_i64_field("time", FAST);
    b.add_text_field("cid", STORED);
    b.add_text_field("record", STORED);
    b.add_i64_field("indexed_us", STORED);
    b.add_text_field("reply_parent", STRING);
    b.build()
}

/// The search index directory inside `--data`.
pub fn index_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("search")
}

impl SearchIndex {
    /// Opens the index under `dir`, creating it if needed. Returns the index
    /// and whether it must be filled from the store: true when it was created
    /// now or was of another layout (then it is emptied first).
    pub fn open(dir: &Path) -> Result<(SearchIndex, Option<i64>)> {
        std::fs::create_dir_all(dir)?;
        let schema = schema();
        let existing = tantivy::directory::MmapDirectory::open(dir)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut index = match Index::open_or_create(existing, schema.clone()) {
            Ok(index) => index,
            Err(e) => {
                tracing::warn!(
                    "search index at {} unusable ({e}); rebuilding",
                    dir.display()
                );
                std::fs::remove_dir_all(dir)?;
                std::fs::create_dir_all(dir)?;
                Index::create_in_dir(dir, schema.clone())?
            }
        };
        index.tokenizers().register(TOKENIZER, analyzer());
        let payload = index
            .load_metas()?
            .payload
            .and_then(|p| serde_json::from_str::<Payload>(&p).ok())
            .filter(|p| p.layout == LAYOUT_VERSION);
        let covered = payload.as_ref().map(|p| p.covered_us);
        let complete = payload.map(|p| p.complete).unwrap_or_default();
        // 50 MB of indexing memory on one thread: the other core is ingest's.
        let writer: IndexWriter = index.writer_with_num_threads(1, 50_000_000)?;
        if covered.is_none() {
            writer.delete_all_documents()?;
        }
        let f = |name: &str| schema.get_field(name).expect("field of schema()");
        let fields = Fields {
            uri: f("uri"),
            did: f("did"),
            collection: f("collection"),
            text: f("text"),
            time: f("time"),
            cid: f("cid"),
            record: f("record"),
            indexed_us: f("indexed_us"),
            reply_parent: f("reply_parent"),
        };
        index.set_default_multithread_executor()?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let current = Mutex::new(Arc::new(Snapshot {
            searcher: reader.searcher(),
            seq: 0,
        }));
        Ok((
            SearchIndex {
                reader,
                writer: Mutex::new(writer),
                fields,
                dir: dir.to_path_buf(),
                current,
                recent: Mutex::default(),
                applied: Default::default(),
                counter: count::Counter::new(),
                lookups: LookupCounts::default(),
                complete: Mutex::new(complete),
                queued: Default::default(),
            },
            covered,
        ))
    }

    /// Committed batches waiting for the indexer thread (at most `QUEUE`).
    pub fn queued(&self) -> u64 {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where the index lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stages changes; they become visible at the next [`commit`](Self::commit).
    pub fn apply(&self, changes: &[SearchChange]) -> Result<()> {
        let writer = self.writer.lock().expect("search writer lock");
        for change in changes {
            match change {
                SearchChange::Put {
                    uri,
                    did,
                    collection,
                    text,
                    time_us,
                    cid,
                    record,
                    indexed_us,
                    parent,
                } => {
                    writer.delete_term(Term::from_field_text(self.fields.uri, uri));
                    let mut doc = TantivyDocument::default();
                    doc.add_text(self.fields.uri, uri);
                    doc.add_text(self.fields.did, did);
                    doc.add_text(self.fields.collection, collection);
                    doc.add_text(self.fields.text, text);
                    doc.add_i64(self.fields.time, *time_us);
                    doc.add_text(self.fields.cid, cid);
                    doc.add_text(self.fields.record, record);
                    doc.add_i64(self.fields.indexed_us, *indexed_us);
                    if let Some(parent) = parent {
                        doc.add_text(self.fields.reply_parent, parent);
                    }
                    writer.add_document(doc)?;
                }
                SearchChange::Delete { uri } => {
                    writer.delete_term(Term::from_field_text(self.fields.uri, uri));
                }
            }
        }
        Ok(())
    }

    /// Removes every document of one author (staged).
    pub fn delete_author(&self, did: &str) -> Result<()> {
        self.writer
            .lock()
            .expect("search writer lock")
            .delete_term(Term::from_field_text(self.fields.did, did));
        Ok(())
    }

    /// Empties the index (staged; visible at the next commit).
    pub fn clear(&self) -> Result<()> {
        self.writer
            .lock()
            .expect("search writer lock")
            .delete_all_documents()?;
        Ok(())
    }

    /// Commits staged changes, recording that the store is covered up to
    /// `covered_us`, and makes them visible to searches.
    pub fn commit(&self, covered_us: i64) -> Result<()> {
        // Every batch marked applied before the commit is in it.
        let seq = self.applied.load(std::sync::atomic::Ordering::SeqCst);
        {
            let mut writer = self.writer.lock().expect("search writer lock");
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(
                &serde_json::to_string(&Payload {
                    layout: LAYOUT_VERSION,
                    covered_us,
                    complete: self.lock_complete().clone(),
                })
                .expect("payload serialises"),
            );
            prepared.commit()?;
        }
        self.publish(seq)
    }

    /// Makes the last commit visible to searches as holding batches up to
    /// `seq`, and forgets the changes every snapshot in use holds.
    fn publish(&self, seq: u64) -> Result<()> {
        self.reader.reload()?;
        let snapshot = Arc::new(Snapshot {
            searcher: self.reader.searcher(),
            seq,
        });
        self.counter.keep_segments_of(&snapshot.searcher);
        let old = std::mem::replace(&mut *self.lock_current(), snapshot);
        let mut recent = self.lock_recent();
        recent.retired.push(old);
        // A search clones the current snapshot under its lock, so once it is
        // replaced only searches that already hold it can own it.
        recent.retired.retain(|s| Arc::strong_count(s) > 1);
        let floor = recent.retired.iter().map(|s| s.seq).fold(seq, u64::min);
        recent.uris.retain(|_, s| *s > floor);
        recent.dids.retain(|_, s| *s > floor);
        Ok(())
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Arc<Snapshot>> {
        // Replacing an Arc cannot be left half done by a panic.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_complete(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A set's retain or assignment leaves it whole if a panic unwinds.
        self.complete.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        // Map inserts and removals leave the maps whole if a panic unwinds.
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes the records a batch committed to the store changes, and the
    /// accounts whose records it moved out of view (false) or back (true),
    /// under the next sequence number, which it returns. Called by the
    /// writer before it moves its cursor past the batch (see [`Recent`]).
    pub fn note(
        &self,
        fields: &SearchFields,
        batch: &[IndexEvent],
        moved: &[(String, bool)],
    ) -> u64 {
        let mut recent = self.lock_recent();
        recent.seq += 1;
        let seq = recent.seq;
        for (did, active) in moved {
            recent.dids.insert(did.clone(), seq);
            if *active {
                recent.reactivated = seq;
            }
        }
        for ev in batch {
            for change in &ev.changes {
                match change {
                    Change::Put(w) if !fields.covers(&w.collection) => {}
                    Change::Delete { collection, .. } if !fields.covers(collection) => {}
                    Change::Invalid(q) if !fields.covers(&q.collection) => {}
                    Change::Put(_) | Change::Delete { .. } | Change::Invalid(_) => {
                        if let Some(uri) = change.record_uri() {
                            recent.uris.insert(uri.into_owned(), seq);
                        }
                        // A new reply changes its parent's reply list.
                        let parent = match (change, &fields.parent) {
                            (Change::Put(w), Some(p)) if w.collection == p.collection => {
                                w.links.iter().find(|l| l.path == p.path)
                            }
                            _ => None,
                        };
                        if let Some(parent) = parent {
                            recent.uris.insert(parent.target.clone(), seq);
                        }
                    }
                    _ => {}
                }
            }
        }
        seq
    }

    /// Records that the changes of batch `seq` are staged in the writer (they
    /// are in the next commit), or that staging them failed.
    fn applied(&self, seq: u64, ok: bool) {
        if !ok {
            self.lock_recent().degraded = true;
        }
        self.applied
            .fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
    }

    /// Removes (staged) the document of every URI that `keep` rejects, and
    /// returns how many live documents that removes. Walks the URI terms of
    /// every searchable segment: a term whose documents are all deleted
    /// already is left alone.
    fn drop_unless(&self, keep: impl Fn(&str) -> bool) -> Result<u64> {
        use tantivy::{DocSet, TERMINATED};
        let searcher = self.reader.searcher();
        let writer = self.writer.lock().expect("search writer lock");
        let mut dropped = 0u64;
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(self.fields.uri)?;
            let mut terms = inverted.terms().stream()?;
            while terms.advance() {
                let Ok(uri) = std::str::from_utf8(terms.key()) else {
                    continue;
                };
                if keep(uri) {
                    continue;
                }
                let mut postings = inverted
                    .read_postings_from_terminfo(terms.value(), IndexRecordOption::Basic)?;
                let mut live = false;
                while postings.doc() != TERMINATED {
                    if !segment.is_deleted(postings.doc()) {
                        live = true;
                        break;
                    }
                    postings.advance();
                }
                if live {
                    writer.delete_term(Term::from_field_text(self.fields.uri, uri));
                    dropped += 1;
                }
            }
        }
        Ok(dropped)
    }

    /// Whether a batch failed to stage since the index was opened (see
    /// [`Recent`]).
    fn degraded(&self) -> bool {
        self.lock_recent().degraded
    }

    /// Merges every segment into one (after a full build, so that a query
    /// visits one segment, with one top-hits threshold, instead of many).
    pub fn merge_all(&self) -> Result<()> {
        let ids = {
            let mut writer = self.writer.lock().expect("search writer lock");
            let ids = writer.index().searchable_segment_ids()?;
            if ids.len() > 1 {
                tracing::info!(
                    segments = ids.len(),
                    "search index: merging segments into one"
                );
                // A merge the writer's merge policy started on its own
                // holds some of these segments until it ends (tantivy then
                // refuses the request); asked again, with the segments
                // there are then, after it has.
                let mut ids = ids.clone();
                let mut tries = 0;
                while let Err(e) = writer.merge(&ids).wait() {
                    tries += 1;
                    if tries == 120 {
                        return Err(e.into());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    ids = writer.index().searchable_segment_ids()?;
                    if ids.len() < 2 {
                        break;
                    }
                }
            }
            writer.garbage_collect_files().wait()?;
            ids
        };
        if ids.len() > 1 {
            self.publish(self.applied.load(std::sync::atomic::Ordering::SeqCst))?;
        }
        Ok(())
    }

    /// Number of documents visible to searches.
    pub fn len(&self) -> u64 {
        self.lock_current().searcher.num_docs()
    }

    /// Number of segments visible to searches.
    pub fn segments(&self) -> usize {
        self.lock_current().searcher.segment_readers().len()
    }

    /// How match counting went (for `/metrics`).
    pub fn count_stats(&self) -> CountStats {
        self.counter.stats()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs a query: every term of the text must occur (BM25 ranks the
    /// matches), optionally within one collection or by one author, and
    /// optionally weighted towards recent records. Returns one page of hits
    /// and the number of matches, up to [`COUNTED_UP_TO`].
    pub fn search(&self, q: &SearchQuery) -> Result<(Vec<Hit>, usize)> {
        if q.offset > MAX_OFFSET || q.limit > MAX_LIMIT {
            return Err(SearchError::PageTooDeep);
        }
        // Every clause a term that must occur: the words, then the filters.
        let mut must: Vec<(Term, IndexRecordOption)> = Vec::new();
        for t in terms(&q.text) {
            let term = Term::from_field_text(self.fields.text, &t);
            if !must.iter().any(|(m, _)| *m == term) {
                must.push((term, IndexRecordOption::WithFreqs));
            }
        }
        if must.is_empty() {
            return Ok((Vec::new(), 0));
        }
        for (field, value) in [
            (self.fields.collection, &q.collection),
            (self.fields.did, &q.author),
        ] {
            if let Some(v) = value {
                must.push((Term::from_field_text(field, v), IndexRecordOption::Basic));
            }
        }
        let query = BooleanQuery::new(
            must.iter()
                .map(|(term, option)| {
                    let clause: Box<dyn Query> = Box::new(TermQuery::new(term.clone(), *option));
                    (Occur::Must, clause)
                })
                .collect(),
        );
        let snapshot = self.lock_current().clone();
        let searcher = &snapshot.searcher;
        let limit = q.limit.max(1);
        let top = TopDocs::with_limit(limit).and_offset(q.offset);
        let (docs, total): (Vec<(f32, tantivy::DocAddress)>, usize) = if q.recency {
            let now = chrono::Utc::now().timestamp_micros();
            let collector = top.tweak_score(move |segment: &tantivy::SegmentReader| {
                let times = segment
                    .fast_fields()
                    .i64("time")
                    .expect("time is a fast field")
                    .first_or_default_col(0);
                move |doc: tantivy::DocId, score: tantivy::Score| {
                    score * recency_factor(now, times.get_val(doc))
                }
            });
            let (docs, total) = searcher.search(&query, &(collector, Count))?;
            (docs, total.min(COUNTED_UP_TO))
        } else {
            // Top hits alone, so that tantivy prunes with block-max scores
            // (Block-WAND, for an intersection too; a (TopDocs, Count)
            // pair scores every match), then a count that does not score
            // (count.rs).
            let docs = searcher.search(&query, &top.order_by_score())?;
            let terms: Vec<Term> = must.into_iter().map(|(term, _)| term).collect();
            let total = self.counter.count_up_to(&terms, searcher, COUNTED_UP_TO)?;
            (docs, total)
        };
        let mut found = Vec::with_capacity(docs.len());
        for (score, address) in docs {
            let Some((uri, stored)) = self.read_doc(searcher, address)? else {
                continue;
            };
            found.push(Hit { uri, score, stored });
        }
        let recent = self.lock_recent();
        for hit in &mut found {
            let current = hit
                .stored
                .as_ref()
                .is_some_and(|s| recent.current(&hit.uri, &s.did, snapshot.seq));
            if !current {
                hit.stored = None;
            }
        }
        Ok((found, total))
    }
}

impl SearchIndex {
    /// A document's URI and stored record (None where a field is missing).
    fn read_doc(
        &self,
        searcher: &Searcher,
        address: tantivy::DocAddress,
    ) -> Result<Option<(String, Option<StoredRecord>)>> {
        let doc: TantivyDocument = searcher.doc(address)?;
        let text = |f: Field| {
            doc.get_first(f)
                .and_then(|v| tantivy::schema::Value::as_str(&v))
                .map(str::to_string)
        };
        let Some(uri) = text(self.fields.uri) else {
            return Ok(None);
        };
        let indexed_us = doc
            .get_first(self.fields.indexed_us)
            .and_then(|v| tantivy::schema::Value::as_i64(&v));
        let stored = match (
            text(self.fields.cid),
            text(self.fields.did),
            text(self.fields.record),
            indexed_us,
        ) {
            (Some(cid), Some(did), Some(record), Some(indexed_us)) => Some(StoredRecord {
                cid,
                did,
                record,
                indexed_us,
            }),
            _ => None,
        };
        Ok(Some((uri, stored)))
    }

    /// The live documents of `term` in a snapshot.
    fn live_docs(searcher: &Searcher, term: &Term) -> Result<Vec<tantivy::DocAddress>> {
        use tantivy::{DocSet, TERMINATED};
        let mut out = Vec::new();
        for (ord, segment) in searcher.segment_readers().iter().enumerate() {
            let inverted = segment.inverted_index(term.field())?;
            let Some(mut postings) = inverted.read_postings(term, IndexRecordOption::Basic)? else {
                continue;
            };
            while postings.doc() != TERMINATED {
                if !segment.is_deleted(postings.doc()) {
                    out.push(tantivy::DocAddress::new(ord as u32, postings.doc()));
                }
                postings.advance();
            }
        }
        Ok(out)
    }

    /// The records of `uris` as the current snapshot stores them, for those
    /// whose document is current (neither the record nor its account changed
    /// since the snapshot; see [`Recent`]). A URI left out must be read
    /// from the store: it may be missing, changed, or have no document.
    /// Used for post views, a point lookup each instead of a DuckDB
    /// statement.
    pub fn stored_records(&self, uris: &[String]) -> Result<HashMap<String, StoredRecord>> {
        let snapshot = self.lock_current().clone();
        let mut out = HashMap::new();
        for uri in uris {
            let term = Term::from_field_text(self.fields.uri, uri);
            // One live document per URI (a put deletes the URI's older one).
            if let Some(address) = Self::live_docs(&snapshot.searcher, &term)?.pop() {
                if let Some((found, Some(stored))) = self.read_doc(&snapshot.searcher, address)? {
                    out.insert(found, stored);
                }
            }
        }
        let recent = self.lock_recent();
        out.retain(|uri, s| recent.current(uri, &s.did, snapshot.seq));
        self.lookups
            .records
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// The URIs of the posts that reply to each of `parents`, as the current
    /// snapshot indexes them, for the parents whose list is current (see
    /// `Recent::replies_current`); a parent left out must be read from the
    /// store. A listed reply may have been deleted or changed since: its
    /// row, read as current, tells.
    pub fn replies(&self, parents: &[String]) -> Result<HashMap<String, Vec<String>>> {
        let snapshot = self.lock_current().clone();
        let wanted: Vec<&String> = {
            let recent = self.lock_recent();
            parents
                .iter()
                .filter(|p| recent.replies_current(p, snapshot.seq))
                .collect()
        };
        let mut out = HashMap::new();
        for parent in wanted {
            let term = Term::from_field_text(self.fields.reply_parent, parent);
            let mut replies = Vec::new();
            for address in Self::live_docs(&snapshot.searcher, &term)? {
                if let Some((uri, _)) = self.read_doc(&snapshot.searcher, address)? {
                    replies.push(uri);
                }
            }
            out.insert(parent.clone(), replies);
        }
        self.lookups
            .reply_lists
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }

    /// Post rows and reply lists answered from the index
    /// (`lexview_post_index_reads_total` in `/metrics`).
    pub fn lookup_counts(&self) -> (u64, u64) {
        (
            self.lookups.records.load(Ordering::Relaxed),
            self.lookups.reply_lists.load(Ordering::Relaxed),
        )
    }
}

/// See [`SearchIndex::lookup_counts`].
#[derive(Default)]
struct LookupCounts {
    records: std::sync::atomic::AtomicU64,
    reply_lists: std::sync::atomic::AtomicU64,
}

/// The recency weight: 1 for a record from now, halving every 7 days of age
/// down to a floor of 0.5, so a much better text match still wins over a
/// newer, weaker one.
pub fn recency_factor(now_us: i64, time_us: i64) -> f32 {
    const HALF_LIFE_US: f64 = 7.0 * 24.0 * 3600.0 * 1e6;
    let age = (now_us - time_us).max(0) as f64;
    (0.5 + 0.5 * (-age / HALF_LIFE_US).exp2()) as f32
}

/// The time a record is ranked by: its `createdAt` when valid and not in the
/// future, else `indexed_us`.
pub fn record_time(created_at: Option<&str>, indexed_us: i64) -> i64 {
    created_at
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.timestamp_micros())
        .filter(|t| *t <= chrono::Utc::now().timestamp_micros())
        .unwrap_or(indexed_us)
}

// ---- following the writer ----

/// The search changes of a committed batch, for the collections `fields`
/// covers; `indexed_us` is when the store indexed the batch.
pub fn changes_of(
    fields: &SearchFields,
    batch: &[IndexEvent],
    indexed_us: i64,
) -> Vec<SearchChange> {
    let mut out = Vec::new();
    for ev in batch {
        for change in &ev.changes {
            match change {
                Change::Put(w) if fields.covers(&w.collection) => {
                    let record: Value = match serde_json::from_str(&w.json) {
                        Ok(v) => v,
                        Err(_) => continue,
                    };
                    // A record with no text still has a document (thread
                    // views read posts and reply lists from the index).
                    out.push(SearchChange::Put {
                        uri: w.uri.clone(),
                        did: w.did.clone(),
                        collection: w.collection.clone(),
                        text: fields.text_of(&w.collection, &record).unwrap_or_default(),
                        time_us: record_time(w.created_at.as_deref(), indexed_us),
                        cid: w.cid.clone(),
                        record: w.json.clone(),
                        indexed_us,
                        parent: fields.parent_of(&w.collection, &record),
                    })
                }
                Change::Delete { collection, .. } if fields.covers(collection) => {
                    out.extend(change.record_uri().map(|u| SearchChange::Delete {
                        uri: u.into_owned(),
                    }))
                }
                Change::Invalid(q) if fields.covers(&q.collection) => {
                    out.extend(change.record_uri().map(|u| SearchChange::Delete {
                        uri: u.into_owned(),
                    }))
                }
                _ => {}
            }
        }
    }
    out
}

/// A committed batch for the indexer thread, stamped when the writer handed
/// it over: every record of this batch was indexed in DuckDB before `sent_us`,
/// and every record of a later batch after it.
pub struct Committed {
    pub sent_us: i64,
    /// The store's `indexed_at` of the batch's records.
    pub indexed_us: i64,
    /// Its number in [`SearchIndex::note`]'s sequence.
    pub seq: u64,
    /// Accounts whose records the batch moved out of view (false) or back
    /// (true): `ApplyStats::accounts_moved`.
    pub accounts: Vec<(String, bool)>,
    pub batch: Vec<IndexEvent>,
}

/// The indexer thread: turns committed batches into search changes, applies
/// them, and commits at most every [`COMMIT_EVERY`] (at once after an idle
/// spell), so a record is searchable within about a second of its commit.
/// Ends, after a last commit, when every sender is gone.
pub fn spawn_indexer(
    index: Arc<SearchIndex>,
    fields: Arc<arc_swap::ArcSwap<SearchFields>>,
    readers: Arc<crate::index::store::ReadPool>,
    rx: mpsc::Receiver<Committed>,
    covered_at_start: i64,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("lexview-search".into())
        .spawn(move || {
            let mut dirty = false;
            let mut covered = covered_at_start;
            let mut last_commit = Instant::now() - COMMIT_EVERY;
            loop {
                let wait = if dirty {
                    COMMIT_EVERY.saturating_sub(last_commit.elapsed())
                } else {
                    Duration::from_secs(3600)
                };
                let done = match rx.recv_timeout(wait) {
                    Ok(c) => {
                        let _ = index.queued.fetch_update(
                            std::sync::atomic::Ordering::Relaxed,
                            std::sync::atomic::Ordering::Relaxed,
                            |n| n.checked_sub(1),
                        );
                        let fields = fields.load();
                        let changes = changes_of(&fields, &c.batch, c.indexed_us);
                        let accounts = &c.accounts;
                        let applied = index.apply(&changes).and_then(|()| {
                            // An account that went out of view leaves the
                            // index; one that came back is read from the store,
                            // which already holds its records again.
                            for (did, active) in accounts {
                                index.delete_author(did)?;
                                if *active {
                                    readers
                                        .with_blocking(|conn| {
                                            Ok(stage_from_store(
                                                &index,
                                                &fields,
                                                conn,
                                                None,
                                                Some(did),
                                            ))
                                        })
                                        .map_err(|e| {
                                            SearchError::Io(std::io::Error::other(e.to_string()))
                                        })??;
                                }
                            }
                            Ok(())
                        });
                        index.applied(c.seq, applied.is_ok());
                        // After a failed batch the covered time stays where
                        // it was, so a restart re-reads everything since.
                        match applied {
                            Ok(()) if !index.degraded() => covered = c.sent_us,
                            Ok(()) => {}
                            Err(e) => tracing::error!(
                                "search index: {e}; hits are read from the store until a restart"
                            ),
                        }
                        dirty |= !changes.is_empty() || !accounts.is_empty();
                        false
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => false,
                    Err(mpsc::RecvTimeoutError::Disconnected) => true,
                };
                if dirty && (done || last_commit.elapsed() >= COMMIT_EVERY) {
                    match index.commit(covered) {
                        Ok(()) => dirty = false,
                        Err(e) => tracing::error!("search commit: {e}"),
                    }
                    last_commit = Instant::now();
                }
                if done {
                    return;
                }
            }
        })
}

/// Fills the index from the store: every record of a covered collection
/// indexed at or after `since_us` (all of them when None; when Some, the
/// documents of records no longer in the store are also removed), then
/// commits.
/// Progress is logged every 100k records. Returns how many were indexed.
pub fn fill_from_store(
    index: &SearchIndex,
    fields: &SearchFields,
    conn: &duckdb::Connection,
    since_us: Option<i64>,
) -> Result<u64> {
    let started = chrono::Utc::now().timestamp_micros();
    let n = stage_from_store(index, fields, conn, since_us, None)?;
    if since_us.is_some() {
        drop_records_not_in_store(index, fields, conn)?;
    }
    // Every covered collection is whole now (a catch-up is only run when
    // the index held every record of each before: `Search::start`).
    *index.lock_complete() = fields.iter().map(|(c, _)| c.to_string()).collect();
    index.commit(started)?;
    if since_us.is_none() {
        index.merge_all()?;
    }
    Ok(n)
}

/// Removes from the index the documents of records the store no longer
/// holds in `records` (deleted, or of an account out of view). A restart's
/// catch-up re-reads what the store indexed since the last index commit,
/// but a delete leaves no row to re-read: one that the index missed (a
/// crash between the store's commit and the index's, or a store changed by
/// `lexview backfill` while `serve` was not running) would otherwise be
/// answered from its stored document. The store's URIs are held as
/// [`UriKeys`](crate::index::event::UriKeys), 16 bytes each, as a
/// repository snapshot holds the URIs it keeps. Staged: visible at the
/// next commit.
fn drop_records_not_in_store(
    index: &SearchIndex,
    fields: &SearchFields,
    conn: &duckdb::Connection,
) -> Result<u64> {
    use duckdb::arrow::array::{Array, StringArray};
    let collections: Vec<&str> = fields.iter().map(|(c, _)| c).collect();
    let clock = Instant::now();
    let mut stmt = conn
        .prepare("SELECT uri FROM records WHERE list_contains(string_split(?, ' '), collection)")?;
    // Arrow batches: a third of the time of reading 2M strings row by row.
    let mut held = crate::index::event::UriKeys::default();
    for batch in stmt.query_arrow([collections.join(" ")])? {
        let uris = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| SearchError::Io(std::io::Error::other("uri column not UTF-8")))?;
        for uri in uris.iter().flatten() {
            held.insert(uri);
        }
    }
    let held = held.seal();
    let read_ms = clock.elapsed().as_millis() as u64;
    let dropped = index.drop_unless(|uri| held.contains(uri))?;
    tracing::info!(
        documents = dropped,
        store_ms = read_ms,
        index_ms = clock.elapsed().as_millis() as u64 - read_ms,
        "search index: checked against the store; documents of records it no longer holds removed"
    );
    Ok(dropped)
}

/// Stages the records of covered collections indexed at or after `since_us`
/// (all when None), optionally of one author only, without committing.
fn stage_from_store(
    index: &SearchIndex,
    fields: &SearchFields,
    conn: &duckdb::Connection,
    since_us: Option<i64>,
    author: Option<&str>,
) -> Result<u64> {
    let collections: Vec<&str> = fields.iter().map(|(c, _)| c).collect();
    if collections.is_empty() {
        return Ok(0);
    }
    let total: i64 = conn.query_row(
        "SELECT count(*) FROM records
             WHERE list_contains(string_split(?, ' '), collection)
               AND (?::BIGINT IS NULL OR epoch_us(indexed_at) >= ?)
               AND (?::VARCHAR IS NULL OR did = ?)",
        duckdb::params![collections.join(" "), since_us, since_us, author, author],
        |r| r.get(0),
    )?;
    let mut stmt = conn.prepare(
        "SELECT uri, did, collection, record::VARCHAR, created_at, epoch_us(indexed_at), cid
             FROM records
             WHERE list_contains(string_split(?, ' '), collection)
               AND (?::BIGINT IS NULL OR epoch_us(indexed_at) >= ?)
               AND (?::VARCHAR IS NULL OR did = ?)",
    )?;
    let mut rows = stmt.query(duckdb::params![
        collections.join(" "),
        since_us,
        since_us,
        author,
        author
    ])?;
    let clock = Instant::now();
    let mut n = 0u64;
    let mut pending = Vec::with_capacity(1024);
    while let Some(r) = rows.next()? {
        let get = |i| r.get::<_, Option<String>>(i);
        let (uri, did, collection, json, created_at) =
            (get(0)?, get(1)?, get(2)?, get(3)?, get(4)?);
        let indexed_us: i64 = r.get(5)?;
        let (Some(uri), Some(did), Some(collection), Some(json), Some(cid)) =
            (uri, did, collection, json, get(6)?)
        else {
            continue;
        };
        let Ok(record) = serde_json::from_str::<Value>(&json) else {
            continue;
        };
        pending.push(SearchChange::Put {
            text: fields.text_of(&collection, &record).unwrap_or_default(),
            parent: fields.parent_of(&collection, &record),
            uri,
            did,
            collection,
            time_us: record_time(created_at.as_deref(), indexed_us),
            cid,
            record: json,
            indexed_us,
        });
        n += 1;
        if pending.len() == 1024 {
            index.apply(&pending)?;
            pending.clear();
        }
        if n.is_multiple_of(100_000) {
            let rate = n as f64 / clock.elapsed().as_secs_f64().max(1e-9);
            let eta = (total as f64 - n as f64).max(0.0) / rate.max(1.0);
            tracing::info!(
                done = n,
                total,
                records_per_s = rate as u64,
                eta_s = eta as u64,
                "search index: filling from the store"
            );
        }
    }
    index.apply(&pending)?;
    Ok(n)
}

// ---- the service ----

/// Search as `serve` runs it: the index, the searched fields (swapped on
/// reload) and the channel from the writer to the indexer thread.
pub struct Search {
    pub index: Arc<SearchIndex>,
    pub fields: Arc<arc_swap::ArcSwap<SearchFields>>,
    tx: Mutex<Option<mpsc::SyncSender<Committed>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Re-indexed on start-up before the covered time, against clock steps.
const CATCH_UP_MARGIN_US: i64 = 5_000_000;

impl Search {
    /// Opens the index under `data_dir`, brings it up to date with the store
    /// (all of it when new, else what was indexed since its last commit), and
    /// starts the indexer thread. Call before the writer starts.
    pub fn start(
        data_dir: &Path,
        fields: SearchFields,
        readers: Arc<crate::index::store::ReadPool>,
    ) -> Result<Arc<Search>> {
        let (index, covered) = SearchIndex::open(&index_dir(data_dir))?;
        // A collection covered now that the index does not hold whole (the
        // search config or the lexicons changed): everything is re-read.
        let whole = {
            let complete = index.lock_complete();
            fields.iter().all(|(c, _)| complete.contains(c))
        };
        if covered.is_some() && !whole {
            tracing::info!("search index: the searched collections changed; rebuilding");
            index.clear()?;
        }
        let since = covered.filter(|_| whole).map(|c| c - CATCH_UP_MARGIN_US);
        let clock = Instant::now();
        let n = readers
            .with_blocking(|c| Ok(fill_from_store(&index, &fields, c, since)))
            .map_err(|e| SearchError::Io(std::io::Error::other(e.to_string())))??;
        tracing::info!(
            records = n,
            docs = index.len(),
            full = since.is_none(),
            ms = clock.elapsed().as_millis() as u64,
            "search index up to date with the store"
        );
        let index = Arc::new(index);
        let fields = Arc::new(arc_swap::ArcSwap::from_pointee(fields));
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let started = chrono::Utc::now().timestamp_micros();
        let thread = spawn_indexer(index.clone(), fields.clone(), readers.clone(), rx, started)?;
        Ok(Arc::new(Search {
            index,
            fields,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Hands the searched part of a committed batch to the indexer thread,
    /// after noting what it changes (see [`Recent`]). Called by the writer
    /// after each commit, before its cursor moves on and before its next
    /// batch; `indexed_us` is the batch's `indexed_at` in the store, and
    /// `accounts_moved` its `ApplyStats::accounts_moved` (an account event
    /// that moved no records changes nothing here: the indexer neither drops
    /// nor re-reads that account's documents).
    pub fn on_commit(
        &self,
        batch: &[IndexEvent],
        indexed_us: i64,
        accounts_moved: &[(String, bool)],
    ) {
        let fields = self.fields.load();
        let seq = self.index.note(&fields, batch, accounts_moved);
        let covered = |c: &Change| match c {
            Change::Put(w) => fields.covers(&w.collection),
            Change::Delete { collection, .. } => fields.covers(collection),
            Change::Invalid(q) => fields.covers(&q.collection),
            Change::Account { .. }
            | Change::Identity { .. }
            | Change::HandleChecked { .. }
            | Change::Resync { .. }
            | Change::Snapshot { .. } => false,
        };
        let picked: Vec<IndexEvent> = batch
            .iter()
            .filter(|ev| ev.changes.iter().any(covered))
            .map(|ev| IndexEvent {
                changes: ev.changes.iter().filter(|c| covered(c)).cloned().collect(),
                ..Default::default()
            })
            .collect();
        let sent_us = chrono::Utc::now().timestamp_micros();
        if let Some(tx) = self.tx.lock().expect("search tx lock").as_ref() {
            // Sent even when empty: it moves the covered time forward.
            // Waits while the indexer is `QUEUE` batches behind.
            self.index
                .queued
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = tx.send(Committed {
                sent_us,
                indexed_us,
                seq,
                batch: picked,
                accounts: accounts_moved.to_vec(),
            });
        }
    }

    /// Swaps the searched fields (a lexicon reload). Collections newly
    /// covered are indexed from the next event on, so the index then lacks
    /// their older records; once posts stop being covered, thread views
    /// stop reading them from the index until a restart refills it.
    pub fn set_fields(&self, fields: SearchFields) {
        self.index
            .lock_complete()
            .retain(|collection| fields.covers(collection));
        self.fields.store(Arc::new(fields));
    }

    /// The index, when thread views may read the parent-linked collection's
    /// records and reply lists from it: it holds every record of it that the
    /// store does (see `SearchIndex::complete`).
    pub fn threaded(&self) -> Option<&SearchIndex> {
        let fields = self.fields.load();
        let collection = &fields.parent.as_ref()?.collection;
        (self.index.lock_complete().contains(collection) && fields.covers(collection))
            .then_some(&*self.index)
    }

    /// Stops the indexer after a last commit (once the writer has drained).
    pub fn close(&self) {
        self.tx.lock().expect("search tx lock").take();
        if let Some(t) = self.thread.lock().expect("search thread lock").take() {
            let _ = t.join();
        }
    }
}

/// `lexview reindex --search`: empties the index under `data_dir` and fills
/// it from the store. The store is opened for writing, so this fails clearly
/// while `lexview serve` holds it.
pub fn reindex(data_dir: &Path, fields: &SearchFields) -> anyhow::Result<u64> {
    let store = crate::index::store::Store::open(data_dir)?;
    let (index, _) = SearchIndex::open(&index_dir(data_dir))?;
    index.clear()?;
    let clock = Instant::now();
    let n = store
        .readers()
        .with_blocking(|c| Ok(fill_from_store(&index, fields, c, None)))??;
    tracing::info!(
        records = n,
        docs = index.len(),
        secs = clock.elapsed().as_secs_f64(),
        "search index rebuilt"
    );
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercased_and_folded() {
        assert_eq!(terms("Hello, World! Don't"), ["hello", "world", "don", "t"]);
        assert_eq!(terms("Müller aß Straße"), ["muller", "ass", "strasse"]);
    }

    #[test]
    fn cjk_runs_become_bigrams() {
        assert_eq!(terms("東京タワー"), ["東京", "京タ", "タワ", "ワー"]);
        assert_eq!(terms("Rustの勉強"), ["rust", "の勉", "勉強"]);
        assert_eq!(terms("猫"), ["猫"]);
        assert_eq!(terms("今日は、晴れ"), ["今日", "日は", "晴れ"]);
    }

    const DID: &str = "did:plc:alice";
    const POSTS: &str = "app.bsky.feed.post";

    fn uri(rkey: &str) -> String {
        format!("at://{DID}/{POSTS}/{rkey}")
    }

    fn put(rkey: &str, text: &str) -> SearchChange {
        SearchChange::Put {
            uri: uri(rkey),
            did: DID.into(),
            collection: POSTS.into(),
            text: text.into(),
            time_us: 1,
            cid: format!("cid-{rkey}-{text}"),
            record: serde_json::json!({ "text": text }).to_string(),
            indexed_us: 1_700_000_000_000_000,
            parent: None,
        }
    }

    /// A reply by `did` to `parent`, as the writer hands it over.
    fn reply_write(did: &str, rkey: &str, parent: &str) -> Vec<IndexEvent> {
        let strong = serde_json::json!({"uri": parent, "cid": "bafy"});
        let record = serde_json::json!({"text": "", "reply": {"root": strong, "parent": strong}});
        let mut w = crate::index::event::testing::put(did, POSTS, rkey, record);
        let Change::Put(write) = &mut w.changes[0] else {
            unreachable!("put() makes a put")
        };
        write.links.retain(|l| l.path == ".reply.parent.uri");
        assert_eq!(write.links.len(), 1, "the reply's parent link");
        vec![w]
    }

    /// Stages and commits the search changes of `batch` as the indexer does.
    fn index_batch(index: &SearchIndex, fields: &SearchFields, batch: &[IndexEvent], at: i64) {
        let seq = index.note(fields, batch, &[]);
        index.apply(&changes_of(fields, batch, at)).unwrap();
        index.applied(seq, true);
        index.commit(at).unwrap();
    }

    #[test]
    fn post_rows_and_reply_lists_are_read_only_where_current() {
        let dir = tempfile::tempdir().unwrap();
        let (index, _) = SearchIndex::open(dir.path()).unwrap();
        let fields = posts_searched();
        let (bob, carol) = ("did:plc:bob", "did:plc:carol");
        let root = uri("root");
        let by = |did: &str, rkey: &str| format!("at://{did}/{POSTS}/{rkey}");
        // A root post (with no text: it still has a document) and two replies.
        let mut first =
            crate::index::event::testing::put(DID, POSTS, "root", serde_json::json!({"text": ""}));
        first
            .changes
            .extend(reply_write(bob, "r1", &root).remove(0).changes);
        first
            .changes
            .extend(reply_write(carol, "r2", &root).remove(0).changes);
        index_batch(&index, &fields, &[first], 10);
        let rows = index
            .stored_records(&[root.clone(), by(bob, "r1"), uri("nope")])
            .unwrap();
        assert_eq!(rows.len(), 2, "the missing post is left to the store");
        assert_eq!(rows[&by(bob, "r1")].did, bob);
        let replies = |index: &SearchIndex| {
            index
                .replies(std::slice::from_ref(&root))
                .unwrap()
                .remove(&root)
                .map(|mut l| {
                    l.sort();
                    l
                })
        };
        assert_eq!(replies(&index), Some(vec![by(bob, "r1"), by(carol, "r2")]));
        assert_eq!(
            index.replies(&[by(bob, "r1")]).unwrap()[&by(bob, "r1")],
            Vec::<String>::new()
        );

        // A new reply, noted but not yet in a snapshot: the root's list is
        // not current (nor is the new reply's row); once committed it is.
        let batch = reply_write(bob, "r3", &root);
        let seq = index.note(&fields, &batch, &[]);
        assert_eq!(replies(&index), None);
        assert!(index
            .stored_records(std::slice::from_ref(&root))
            .unwrap()
            .is_empty());
        index.apply(&changes_of(&fields, &batch, 11)).unwrap();
        index.applied(seq, true);
        index.commit(11).unwrap();
        assert_eq!(
            replies(&index),
            Some(vec![by(bob, "r1"), by(bob, "r3"), by(carol, "r2")])
        );

        // A deleted reply stays listed until the next snapshot, but its row
        // is not current: readers drop it.
        let gone = vec![IndexEvent {
            changes: vec![Change::Delete {
                did: carol.into(),
                collection: POSTS.into(),
                rkey: "r2".into(),
                rev: "3l".into(),
            }],
            ..Default::default()
        }];
        let seq = index.note(&fields, &gone, &[]);
        assert!(replies(&index).unwrap().contains(&by(carol, "r2")));
        assert!(index.stored_records(&[by(carol, "r2")]).unwrap().is_empty());
        index.apply(&changes_of(&fields, &gone, 12)).unwrap();
        index.applied(seq, true);
        index.commit(12).unwrap();
        assert_eq!(replies(&index), Some(vec![by(bob, "r1"), by(bob, "r3")]));

        // An account event that moved no records (an active account said
        // active again) changes nothing; an account coming back into view
        // does: its replies are indexed again by the indexer, so no older
        // snapshot's list is current.
        let back = vec![IndexEvent {
            changes: vec![Change::Account {
                did: carol.into(),
                active: true,
                status: None,
            }],
            ..Default::default()
        }];
        let seq = index.note(&fields, &back, &[]);
        assert!(replies(&index).is_some());
        index.applied(seq, true);
        let seq = index.note(&fields, &back, &[(carol.to_string(), true)]);
        assert_eq!(replies(&index), None);
        assert_eq!(
            index.stored_records(&[by(bob, "r1")]).unwrap().len(),
            1,
            "other accounts' rows stay current"
        );
        index.applied(seq, true);
        index.commit(13).unwrap();
        assert!(replies(&index).is_some());

        // After a failed batch nothing is read from the index.
        index.applied(index.note(&fields, &[], &[]), false);
        assert_eq!(replies(&index), None);
        assert!(index.stored_records(&[by(bob, "r1")]).unwrap().is_empty());
    }

    fn deleted(rkey: &str) -> Vec<IndexEvent> {
        vec![IndexEvent {
            changes: vec![Change::Delete {
                did: DID.into(),
                collection: POSTS.into(),
                rkey: rkey.into(),
                rev: "3l".into(),
            }],
            ..Default::default()
        }]
    }

    fn posts_searched() -> SearchFields {
        SearchFields {
            by_collection: BTreeMap::from([(POSTS.to_string(), vec!["text".to_string()])]),
            parent: Some(ParentLink {
                collection: POSTS.into(),
                path: ".reply.parent.uri".into(),
            }),
        }
    }

    /// The hit of `rkey` for `text`: Some(whether its document answers).
    fn answered(index: &SearchIndex, text: &str, rkey: &str) -> Option<bool> {
        let q = SearchQuery {
            text: text.into(),
            limit: 10,
            ..Default::default()
        };
        let (hits, _) = index.search(&q).unwrap();
        hits.iter()
            .find(|h| h.uri == uri(rkey))
            .map(|h| h.stored.is_some())
    }

    #[test]
    fn a_changed_record_is_read_from_the_store_until_every_snapshot_in_use_holds_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let (index, _) = SearchIndex::open(dir.path()).unwrap();
        let fields = posts_searched();
        // Batch 1 puts two posts; once committed, their documents answer.
        let seq = index.note(&fields, &[], &[]);
        index
            .apply(&[put("a", "river walk"), put("b", "river boat")])
            .unwrap();
        index.applied(seq, true);
        index.commit(1).unwrap();
        assert_eq!(answered(&index, "river", "a"), Some(true));
        let (hits, _) = index
            .search(&SearchQuery {
                text: "boat".into(),
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        let stored = hits[0].stored.clone().unwrap();
        assert_eq!(stored.cid, "cid-b-river boat");
        assert_eq!(stored.did, DID);
        assert_eq!(stored.record, r#"{"text":"river boat"}"#);
        assert_eq!(stored.indexed_us, 1_700_000_000_000_000);

        // A search holds the current snapshot while the store deletes "a"
        // (batch 2): from then on "a" is not answered from its document.
        let held = index.lock_current().clone();
        let seq = index.note(&fields, &deleted("a"), &[]);
        assert_eq!(answered(&index, "river", "a"), Some(false));
        assert_eq!(answered(&index, "river", "b"), Some(true));
        index
            .apply(&[SearchChange::Delete { uri: uri("a") }])
            .unwrap();
        index.applied(seq, true);
        index.commit(2).unwrap();
        assert_eq!(
            answered(&index, "river", "a"),
            None,
            "gone from the new snapshot"
        );
        // The held snapshot still has the document: the change is kept for it.
        assert!(!index.lock_recent().current(&uri("a"), DID, held.seq));
        drop(held);
        // The next commit forgets it: no snapshot in use lacks the change.
        index.commit(3).unwrap();
        assert!(index.lock_recent().uris.is_empty());

        // An account moved out of view covers every record of its DID.
        index.note(
            &fields,
            &[IndexEvent {
                changes: vec![Change::Account {
                    did: DID.into(),
                    active: false,
                    status: Some("deactivated".into()),
                }],
                ..Default::default()
            }],
            &[(DID.to_string(), false)],
        );
        assert_eq!(answered(&index, "river", "b"), Some(false));
    }

    #[test]
    fn matches_are_counted_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (index, _) = SearchIndex::open(dir.path()).unwrap();
        let docs: Vec<SearchChange> = (0..30)
            .map(|i| {
                put(
                    &format!("p{i}"),
                    if i % 3 == 0 { "red fox" } else { "red hen" },
                )
            })
            .collect();
        index.apply(&docs).unwrap();
        index
            .apply(&[SearchChange::Delete { uri: uri("p0") }])
            .unwrap();
        index.commit(1).unwrap();
        let searcher = index.lock_current().searcher.clone();
        let count = |terms: &[&str], cap: usize| {
            let terms: Vec<Term> = terms
                .iter()
                .map(|t| Term::from_field_text(index.fields.text, t))
                .collect();
            index.counter.count_up_to(&terms, &searcher, cap).unwrap()
        };
        // p0 is deleted: 9 foxes and 29 reds remain.
        assert_eq!(count(&["red", "fox"], 100), 9);
        assert_eq!(count(&["red"], 100), 29);
        assert_eq!(count(&["red"], 29), 29);
        assert_eq!(count(&["red"], 5), 5);
        assert_eq!(count(&["owl"], 5), 0);
    }

    #[test]
    fn after_a_failed_batch_every_hit_is_read_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (index, _) = SearchIndex::open(dir.path()).unwrap();
        index.apply(&[put("a", "lantern")]).unwrap();
        index.applied(1, true);
        index.commit(1).unwrap();
        assert_eq!(answered(&index, "lantern", "a"), Some(true));
        index.applied(2, false);
        index.commit(2).unwrap();
        assert_eq!(answered(&index, "lantern", "a"), Some(false));
    }

    #[test]
    fn recency_halves_at_most() {
        let now = 1_000_000_000_000_000;
        assert!((recency_factor(now, now) - 1.0).abs() < 1e-6);
        let week = 7 * 24 * 3600 * 1_000_000;
        assert!((recency_factor(now, now - week) - 0.75).abs() < 1e-6);
        assert!(recency_factor(now, 0) >= 0.5);
    }
}
