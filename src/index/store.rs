//! The DuckDB store: migrations, the batch apply that keeps records, links,
//! counts, actors and the cursor consistent in one transaction, and read
//! connections for the API.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use duckdb::types::{TimeUnit, Value as DbValue};
use duckdb::{params, Connection};
use indexmap::IndexMap;

use super::event::{Change, IndexEvent, Link, Quarantined, RecordWrite};

/// Migrations, in order. The files live in `schema/`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "001_init.sql", include_str!("../../schema/001_init.sql")),
    (
        2,
        "002_hidden.sql",
        include_str!("../../schema/002_hidden.sql"),
    ),
    (
        3,
        "003_backfill.sql",
        include_str!("../../schema/003_backfill.sql"),
    ),
    (
        4,
        "004_resync.sql",
        include_str!("../../schema/004_resync.sql"),
    ),
    (
        5,
        "005_handles.sql",
        include_str!("../../schema/005_handles.sql"),
    ),
    (
        6,
        "006_lookup_indexes.sql",
        include_str!("../../schema/006_lookup_indexes.sql"),
    ),
    (
        7,
        "007_column_compression.sql",
        include_str!("../../schema/007_column_compression.sql"),
    ),
    (
        8,
        "008_handle_index.sql",
        include_str!("../../schema/008_handle_index.sql"),
    ),
];

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DuckDB: {0}")]
    Db(#[from] duckdb::Error),
    #[error(
        "the store at {path} is locked by another process (is `lexview serve` running?): {message}"
    )]
    Locked { path: PathBuf, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The latest identity (handle) and account (active, status) seen for a DID in a batch.
type ActorUpdate<'a> = (Option<Option<&'a str>>, Option<(bool, Option<&'a str>)>);

/// A hash map with a fast non-cryptographic hasher, for per-batch bookkeeping
/// whose keys come from the batch itself.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What one committed batch did, for metrics.
#[derive(Debug, Default, Clone)]
pub struct ApplyStats {
    /// The `indexed_at` of the records it wrote, in microseconds.
    pub indexed_us: i64,
    pub events: usize,
    pub puts: usize,
    pub deletes: usize,
    pub invalid: usize,
    pub links: usize,
    /// Records moved out of view (accounts deactivated) and back.
    pub hidden: usize,
    pub restored: usize,
    /// Records removed with their deleted accounts.
    pub purged: usize,
    /// Records removed because a repository snapshot no longer had them.
    pub deletes_by_snapshot: usize,
    /// Accounts whose records this batch moved out of view (false: hidden
    /// or purged) or back into it (true), in order. An account event that
    /// leaves an account as it was (an active account said active again)
    /// moves nothing and is not here.
    pub accounts_moved: Vec<(String, bool)>,
}

/// Which way [`Store::move_account`] moves an account's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    Hide,
    Restore,
}

/// A batch sorted for applying: the final change of every record it
/// touches (later changes win), account updates, handle checks, resyncs
/// asked for and snapshots applied (in batch order), and the cursors.
struct Sorted<'a> {
    /// Every record change with its URI, in batch order.
    changes: Vec<(Cow<'a, str>, &'a Change)>,
    /// Which of `changes` are the last of their record.
    finals: Vec<usize>,
    actors: IndexMap<&'a str, ActorUpdate<'a>>,
    handle_checks: Vec<(&'a str, &'a str, bool)>,
    resyncs: Vec<(&'a str, Option<&'a str>, &'a str)>,
    cursors: HashMap<&'a str, (i64, Option<&'a str>)>,
}

impl<'a> Sorted<'a> {
    /// `snapshot_deletes` holds one list of deletes per snapshot of
    /// `events` that keeps a set (see `Store::snapshot_deletes`).
    fn of(
        events: &'a [IndexEvent],
        snapshot_deletes: &'a [Vec<Change>],
        stats: &mut ApplyStats,
    ) -> Sorted<'a> {
        let mut snapshots = snapshot_deletes.iter();
        let mut resyncs = Vec::new();
        let mut handle_checks = Vec::new();
        let mut changes: Vec<(Cow<'a, str>, &'a Change)> = Vec::new();
        let mut actors: IndexMap<&str, ActorUpdate> = IndexMap::new();
        let mut cursors = HashMap::new();
        for ev in events {
            for change in &ev.changes {
                match change {
                    Change::Resync { did, reason } => {
                        resyncs.push((did.as_str(), Some(reason.as_str()), ""))
                    }
                    Change::HandleChecked { did, handle, valid } => {
                        handle_checks.push((did.as_str(), handle.as_str(), *valid))
                    }
                    Change::Snapshot { did, rev, keep } => {
                        if keep.is_some() {
                            let deletes = snapshots.next().expect("one list per snapshot");
                            for d in deletes {
                                changes.push((d.record_uri().expect("a delete"), d));
                            }
                            stats.deletes_by_snapshot += deletes.len();
                        }
                        resyncs.push((did.as_str(), None, rev.as_str()));
                    }
                    Change::Identity { did, handle } => {
                        actors.entry(did).or_default().0 = Some(handle.as_deref())
                    }
                    Change::Account {
                        did,
                        active,
                        status,
                    } => actors.entry(did).or_default().1 = Some((*active, status.as_deref())),
                    other => changes.push((other.record_uri().expect("record change"), other)),
                }
            }
            if let Some(c) = ev.cursor {
                cursors.insert(ev.source.as_str(), (c, ev.time.as_deref()));
            }
        }
        let mut last: FastMap<&str, usize> = FastMap::default();
        last.reserve(changes.len());
        for (i, (uri, _)) in changes.iter().enumerate() {
            last.insert(uri, i);
        }
        let finals = changes
            .iter()
            .enumerate()
            .filter(|(i, (uri, _))| last[uri.as_ref()] == *i)
            .map(|(i, _)| i)
            .collect();
        Sorted {
            changes,
            finals,
            actors,
            handle_checks,
            resyncs,
            cursors,
        }
    }

    /// The final change of every record, with its URI.
    fn finals(&self) -> Vec<(&str, &Change)> {
        self.finals
            .iter()
            .map(|&i| (self.changes[i].0.as_ref(), self.changes[i].1))
            .collect()
    }
}

/// The on-disk store. Owns the single writing connection; hands out read
/// connections (clones of the same database instance) to the API.
pub struct Store {
    conn: Connection,
    readers: Arc<ReadPool>,
    /// Every record URI (`[uri]`) the store may hold: all of `records` at
    /// open, plus every URI written since. A URI it lacks is certainly not
    /// stored, so a create of it needs no remove pass.
    seen: MaybeHeld,
    /// Every `link_counts` key (`[target, collection, path]`) the table may
    /// hold: all of it at open, plus every key written since (by a batch or
    /// an account's restore). A positive delta of a key it lacks creates the
    /// row with a plain append; only the others need the upsert, whose
    /// conflict handling took ~30% of a batch's apply (260-340 ms of a
    /// 150k-event batch in bench (b)). A key missing for a stored one would
    /// fail the batch's commit on the primary key, so every writer of
    /// `link_counts` adds its keys.
    count_keys: MaybeHeld,
}

/// A set that answers "certainly not" or "maybe": 64-bit hashes of the keys
/// put in, never taken out, so it only errs towards "maybe" (a key since
/// removed from the store, or a collision), which costs a lookup that finds
/// nothing, never a missed one. ~16 bytes per key. The store keeps two
/// (`Store::seen`, `Store::count_keys`); the API's `GateFilter` two more.
#[derive(Default)]
pub(crate) struct MaybeHeld {
    hashes: std::collections::HashSet<u64, foldhash::fast::FixedState>,
    hasher: foldhash::fast::RandomState,
}

impl MaybeHeld {
    fn hash(&self, key: impl std::hash::Hash) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }
    pub(crate) fn may_hold(&self, key: impl std::hash::Hash) -> bool {
        self.hashes.contains(&self.hash(key))
    }
    pub(crate) fn insert(&mut self, key: impl std::hash::Hash) {
        let h = self.hash(key);
        self.hashes.insert(h);
    }
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }
    /// Inserts, for every row `sql` returns, its first `N` (text) columns
    /// as one key, `[&str; N]`.
    fn load<const N: usize>(
        &mut self,
        conn: &Connection,
        sql: &str,
        params: &[&dyn duckdb::ToSql],
    ) -> duckdb::Result<()> {
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query(params)?;
        while let Some(r) = rows.next()? {
            let mut key = [""; N];
            for (i, k) in key.iter_mut().enumerate() {
                *k = r.get_ref(i)?.as_str().map_err(duckdb::Error::from)?;
            }
            self.insert(key);
        }
        Ok(())
    }
}

/// Settings of each connection (they are per session in DuckDB). A join or
/// IN with up to `dynamic_or_filter_threshold` keys becomes an IN filter on
/// the scan, which the URI and DID indexes (schema/006) answer; above it
/// (DuckDB's default is 50) the scan reads the whole table: a page of 51
/// posts took 500 ms on 5M records instead of a few.
const SESSION_SETTINGS: &str = "SET dynamic_or_filter_threshold = 1000;";

/// Prepared statements a read connection keeps (duckdb-rs keeps 16): the
/// point lookups alone have one statement per count of keys up to
/// [`IN_LIST_MAX`] for each kind of row, and a statement dropped from the
/// cache is parsed and bound again at its next use.
const READER_STATEMENTS: usize = 256;

/// Up to this many keys are looked up with a list of parameters, which
/// DuckDB plans faster than the list macros (`records_at` and the like
/// split one string): for one URI 0.47 ms against 0.71 (records) and 0.19
/// against 0.58 (counts), for ten 0.78 against 0.83 and 0.61 against 0.71;
/// at fifty the macros were faster.
const IN_LIST_MAX: usize = 16;

/// A FROM item with the rows of `table` whose `column` is one of `keys`,
/// and its parameters: `IN (?, ...)` for a few keys, else the list macro
/// `list_macro` over the keys joined by spaces (AT-URIs and DIDs contain
/// none). `OFFSET 0` keeps the caller's other filters out of the scan, as
/// DuckDB uses an index only for a scan with one filter.
pub fn rows_with(
    table: &str,
    column: &str,
    list_macro: &str,
    keys: &[String],
) -> (String, Vec<String>) {
    if keys.len() <= IN_LIST_MAX {
        let marks = vec!["?"; keys.len()].join(", ");
        (
            format!("(SELECT * FROM {table} WHERE {column} IN ({marks}) OFFSET 0)"),
            keys.to_vec(),
        )
    } else {
        (format!("{list_macro}(?)"), vec![keys.join(" ")])
    }
}

/// The statement of [`handles_of`]: one lookup through `actors`' primary
/// key for a space-separated list of DIDs (DIDs contain no spaces).
pub const HANDLES_OF: &str = "SELECT did, handle FROM actors
     WHERE did IN (SELECT unnest(string_split(?, ' '))) AND handle IS NOT NULL";

/// The handles of `dids` that `actors` knows, by DID. Views read handles
/// with this instead of a subquery per row: DuckDB decorrelates `(SELECT
/// handle FROM actors WHERE did = r.did)` into a hash join that scans all
/// of `actors` (128 ms for 25 records with 2M actors, against 1.5 ms for
/// the records and 0.46 ms for this lookup).
pub fn handles_of<'a>(
    c: &Connection,
    dids: impl IntoIterator<Item = &'a str>,
) -> duckdb::Result<HashMap<String, String>> {
    let mut list: Vec<&str> = dids.into_iter().collect();
    list.sort_unstable();
    list.dedup();
    if list.is_empty() {
        return Ok(HashMap::new());
    }
    let mut stmt = c.prepare_cached(HANDLES_OF)?;
    let rows = stmt.query_map(params![list.join(" ")], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// A small pool of read connections, each used by one blocking task at a time.
pub struct ReadPool {
    base: Mutex<Connection>,
    idle: Mutex<Vec<Connection>>,
    /// Uses of a read connection (`lexview_store_reads_total`).
    reads: std::sync::atomic::AtomicU64,
}

impl ReadPool {
    /// Runs `f` with a read connection on the blocking thread pool.
    ///
    /// If the caller stops waiting (a request that timed out, a client that
    /// went away), the statement running for it is interrupted: the work
    /// does not go on holding a connection and a core for nobody.
    pub async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> duckdb::Result<T> + Send + 'static,
    ) -> Result<T> {
        /// The running statement's interrupt handle, while it runs; on drop
        /// (the caller stopped waiting) the statement is interrupted.
        type Running = Arc<Mutex<Option<Arc<duckdb::InterruptHandle>>>>;
        struct InterruptOnDrop(Running);
        impl Drop for InterruptOnDrop {
            fn drop(&mut self) {
                if let Some(h) = self.0.lock().expect("running lock").take() {
                    h.interrupt();
                }
            }
        }
        let running: Running = Arc::default();
        let guard = InterruptOnDrop(running.clone());
        let pool = self.clone();
        // The connection is taken on the blocking thread: opening one may
        // wait on the database, which must not hold up the async workers.
        let out = tokio::task::spawn_blocking(move || -> Result<T> {
            let conn = pool.take()?;
            *running.lock().expect("running lock") = Some(conn.interrupt_handle());
            let out = f(&conn);
            running.lock().expect("running lock").take();
            pool.give_back(conn);
            Ok(out?)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        drop(guard);
        out
    }

    /// How many times a read connection was used (each use runs one or a
    /// few statements): what batching is measured by.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` with a read connection on the current thread.
    pub fn with_blocking<T>(&self, f: impl FnOnce(&Connection) -> duckdb::Result<T>) -> Result<T> {
        let conn = self.take()?;
        let out = f(&conn);
        self.give_back(conn);
        Ok(out?)
    }

    /// An idle connection, or a new one; counted as a use.
    fn take(&self) -> Result<Connection> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(match self.idle.lock().expect("pool lock").pop() {
            Some(c) => c,
            None => {
                let c = self.base.lock().expect("pool lock").try_clone()?;
                c.execute_batch(SESSION_SETTINGS)?;
                c.set_prepared_statement_cache_capacity(READER_STATEMENTS);
                c
            }
        })
    }

    fn give_back(&self, conn: Connection) {
        self.idle.lock().expect("pool lock").push(conn);
    }
}

/// The storage format of a new store file (an existing file keeps the
/// format it was created with). DuckDB's default is still v1.0.0's, in which
/// every checkpoint converts each ART index to the old layout and writes all
/// of it again, so checkpoints grow with the store; from v1.1.0 on only the
/// index buffers changed since the last checkpoint are written. Measured
/// interleaved on the development machine, v1.0.0 -> v1.5.0: backfill of 2M
/// records 66-73k -> 87-90k records/s, the generated million 63.8/62.7k ->
/// 73.9/67.0k events/s (a slow stretch). v1.2.0 rather than v1.5.0: from
/// v1.3.0 strings are compressed with DICT_FSST, which made ingest 5-10%
/// faster again (backfill 95.0/95.3k -> 100.1/100.5k records/s, the generated
/// million 75.5/79.7k -> 86.1/86.0k) but the page queries that fetch scattered
/// record rows ~30% slower (on the 5M load store, getAuthorFeed saturated at
/// 36-38/s against 50-51/s, the GraphQL page at 59-62/s against 81-86/s;
/// v1.2.0 read as fast as v1.0.0). Files in this format open in DuckDB 1.2
/// or later (the CLI included).
pub const STORAGE_VERSION: &str = "v1.2.0";

/// Logs a hint when the store was created in an older storage format.
fn report_storage_version(conn: &Connection) {
    let version: duckdb::Result<String> = conn.query_row(
        "SELECT tags['storage_version'] FROM duckdb_databases() WHERE database_name = current_database()",
        [],
        |r| r.get(0),
    );
    match version {
        Ok(v) if v.as_str() < STORAGE_VERSION => tracing::info!(
            storage_version = %v,
            "the store was created in an older DuckDB storage format, in which checkpoints rewrite \
             whole indexes; a store rebuilt from scratch (`lexview backfill` into a new --data) \
             uses {STORAGE_VERSION}"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "storage version not read"),
    }
}

/// The store's database file inside `--data`.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("lexview.duckdb")
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir` and applies migrations.
    pub fn open(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir)?;
        let path = db_path(data_dir);
        let config =
            duckdb::Config::default().with("storage_compatibility_version", STORAGE_VERSION)?;
        let conn = Connection::open_with_flags(&path, config).map_err(|e| lock_error(&path, e))?;
        migrate(&conn)?;
        report_storage_version(&conn);
        // One DuckDB worker thread: ingest decoding runs on the other core.
        // A 64 MB WAL between checkpoints: with the default 16 MB the writer
        // checkpointed every few batches; with 1 GB the checkpoint was only
        // deferred (5 s of FSST compression per million events at close, and a
        // long WAL replay after a crash). Measured with the checkpoint inside
        // the benchmark, 64 MB with 130k-event batches was the best setting.
        conn.execute_batch("SET threads = 1; SET checkpoint_threshold = '64MB';")?;
        conn.execute_batch(SESSION_SETTINGS)?;
        conn.execute_batch(
            "CREATE TEMP TABLE batch_uris (uri VARCHAR);
             CREATE TEMP TABLE count_deltas (target VARCHAR, collection VARCHAR, path VARCHAR, n BIGINT);",
        )?;
        let readers = Arc::new(ReadPool {
            base: Mutex::new(conn.try_clone()?),
            idle: Mutex::new(Vec::new()),
            reads: Default::default(),
        });
        let mut seen = MaybeHeld::default();
        seen.load::<1>(&conn, "SELECT uri FROM records", &[])?;
        let mut count_keys = MaybeHeld::default();
        count_keys.load::<3>(
            &conn,
            "SELECT target, collection, path FROM link_counts",
            &[],
        )?;
        Ok(Store {
            conn,
            readers,
            seen,
            count_keys,
        })
    }

    /// Folds the write-ahead log into the database file now (DuckDB otherwise
    /// does it when the WAL passes `checkpoint_threshold`, and at close).
    pub fn checkpoint(&self) -> Result<()> {
        Ok(self.conn.execute_batch("CHECKPOINT")?)
    }

    /// DuckDB's memory limit (`SET memory_limit`, e.g. "256MB"); DuckDB's
    /// default is 80% of RAM.
    pub fn set_memory_limit(&self, limit: &str) -> Result<()> {
        self.conn
            .execute("SET memory_limit = ?", params![limit])
            .map(|_| ())
            .map_err(StoreError::from)
    }

    /// DuckDB's own memory by component (`duckdb_memory()`), largest first,
    /// for the benchmark's report.
    pub fn memory_report(&self) -> Result<Vec<(String, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT tag, memory_usage_bytes FROM duckdb_memory()
             WHERE memory_usage_bytes > 0 ORDER BY memory_usage_bytes DESC",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<duckdb::Result<_>>()?)
    }

    /// Read connections for the API.
    pub fn readers(&self) -> Arc<ReadPool> {
        self.readers.clone()
    }

    /// The stored cursor of a source.
    pub fn cursor(&self, source: &str) -> Result<Option<i64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT cursor FROM cursors WHERE source = ?")?;
        let mut rows = stmt.query(params![source])?;
        Ok(match rows.next()? {
            Some(row) => Some(row.get(0)?),
            None => None,
        })
    }

    /// Applies a batch of events in one transaction: records, links, counts,
    /// quarantine, actors and the cursor of every source in the batch. Either
    /// all of it is durable or none of it is.
    pub fn apply(&mut self, events: &[IndexEvent]) -> Result<ApplyStats> {
        self.apply_with(events, |_| Ok(()))
    }

    /// As [`Store::apply`], with `extra` run in the same transaction (e.g. a
    /// backfill's bookkeeping).
    pub fn apply_with(
        &mut self,
        events: &[IndexEvent],
        extra: impl FnOnce(&Connection) -> duckdb::Result<()>,
    ) -> Result<ApplyStats> {
        self.conn.execute_batch("BEGIN TRANSACTION")?;
        let result = self
            .apply_in_txn(events)
            .and_then(|stats| Ok(extra(&self.conn).map(|()| stats)?));
        let clock = std::time::Instant::now();
        let result = finish_transaction(&self.conn, result);
        tracing::debug!(commit_ms = clock.elapsed().as_millis(), "batch committed");
        result
    }

    fn apply_in_txn(&mut self, events: &[IndexEvent]) -> Result<ApplyStats> {
        let mut stats = ApplyStats {
            events: events.len(),
            ..Default::default()
        };
        let clock = std::time::Instant::now();
        let snapshot_deletes = self.snapshot_deletes(events)?;
        let sorted = Sorted::of(events, &snapshot_deletes, &mut stats);
        let finals = sorted.finals();
        stats.indexed_us = chrono::Utc::now().timestamp_micros();
        let now = DbValue::Timestamp(TimeUnit::Microsecond, stats.indexed_us);
        let mut timing = [0u128; 5];
        timing[0] = clock.elapsed().as_millis();
        if !finals.is_empty() {
            // Old versions go; their links come back from the DELETE, so the
            // count deltas are computed here rather than by joining `links` again.
            let removed = self.remove_old_versions(&finals)?;
            timing[1] = clock.elapsed().as_millis();
            let mut deltas: FastMap<(&str, &str, &str), i64> = FastMap::default();
            for (target, collection, path) in &removed {
                *deltas.entry((target, collection, path)).or_default() -= 1;
            }
            self.append_finals(&finals, &now, &mut deltas, &mut stats)?;
            timing[2] = clock.elapsed().as_millis();
            self.apply_count_deltas(deltas)?;
            timing[3] = clock.elapsed().as_millis();
        }
        for (did, update) in &sorted.actors {
            self.apply_actor(did, update, &now, &mut stats)?;
        }
        self.apply_bookkeeping(&sorted, &now)?;
        timing[4] = clock.elapsed().as_millis();
        tracing::debug!(
            records = finals.len(),
            prepare_ms = timing[0],
            remove_ms = timing[1],
            append_ms = timing[2],
            counts_ms = timing[3],
            total_ms = timing[4],
            "batch applied"
        );
        Ok(stats)
    }

    /// Removes the stored versions of `finals`' records and their links;
    /// returns the removed links as (target, collection, path).
    fn remove_old_versions(
        &mut self,
        finals: &[(&str, &Change)],
    ) -> Result<Vec<(String, String, String)>> {
        // Only URIs the store may hold need their old version removed.
        let mut removable = 0;
        {
            let mut app = self.conn.appender("batch_uris")?;
            for (uri, _) in finals {
                if self.seen.may_hold([uri]) {
                    app.append_row(params![uri])?;
                    removable += 1;
                }
            }
        }
        let mut removed: Vec<(String, String, String)> = Vec::new();
        if removable > 0 {
            let mut stmt = self.conn.prepare(
                "DELETE FROM links WHERE source_uri IN (SELECT uri FROM batch_uris)
                 RETURNING target, source_collection, path",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                removed.push((r.get(0)?, r.get(1)?, r.get(2)?));
            }
            self.conn.execute_batch(
                "DELETE FROM records WHERE uri IN (SELECT uri FROM batch_uris);
                 DELETE FROM batch_uris;",
            )?;
        }
        Ok(removed)
    }

    /// Appends the new versions (records, links, quarantine) of `finals`,
    /// adding their links to `deltas`.
    fn append_finals<'a>(
        &mut self,
        finals: &[(&'a str, &'a Change)],
        now: &DbValue,
        deltas: &mut FastMap<(&'a str, &'a str, &'a str), i64>,
        stats: &mut ApplyStats,
    ) -> Result<()> {
        let mut records = self.conn.appender("records")?;
        let mut links = self.conn.appender("links")?;
        let mut quarantine = self.conn.appender("quarantine")?;
        for (uri, change) in finals {
            match change {
                Change::Put(w) => {
                    // Before the commit: if it fails, "maybe held" is still true enough.
                    self.seen.insert([uri]);
                    append_record(&mut records, w, now)?;
                    for link in &w.links {
                        append_link(&mut links, w, link)?;
                        *deltas
                            .entry((&link.target, &w.collection, &link.path))
                            .or_default() += 1;
                    }
                    stats.puts += 1;
                    stats.links += w.links.len();
                }
                Change::Delete { .. } => stats.deletes += 1,
                Change::Invalid(q) => {
                    append_quarantine(&mut quarantine, uri, q, now)?;
                    stats.invalid += 1;
                }
                _ => unreachable!("only record changes are in finals"),
            }
        }
        // Explicitly: an appender's flush on drop drops its error.
        records.flush()?;
        links.flush()?;
        quarantine.flush()?;
        Ok(())
    }

    /// Applies the link count changes of a batch.
    fn apply_count_deltas(&mut self, mut deltas: FastMap<(&str, &str, &str), i64>) -> Result<()> {
        deltas.retain(|_, n| *n != 0);
        if deltas.is_empty() {
            return Ok(());
        }
        // Keys the table certainly lacks are appended; the rest upserted.
        let mut upserts = 0;
        {
            let mut fresh = self.conn.appender("link_counts")?;
            let mut app = self.conn.appender("count_deltas")?;
            for ((target, collection, path), n) in &deltas {
                let key = [*target, *collection, *path];
                if *n > 0 && !self.count_keys.may_hold(key) {
                    fresh.append_row(params![target, collection, path, n])?;
                    // Before the commit: if it fails, "maybe held" is still true enough.
                    self.count_keys.insert(key);
                } else {
                    // Held already (a negative delta's key has links counted).
                    app.append_row(params![target, collection, path, n])?;
                    upserts += 1;
                }
            }
            fresh.flush()?;
            app.flush()?;
        }
        if upserts > 0 {
            self.conn.execute_batch(
                "INSERT INTO link_counts (target, collection, path, n)
                   SELECT target, collection, path, n FROM count_deltas
                   ON CONFLICT DO UPDATE SET n = link_counts.n + excluded.n;
                 DELETE FROM count_deltas;",
            )?;
        }
        if deltas.values().any(|n| *n < 0) {
            self.conn
                .execute_batch("DELETE FROM link_counts WHERE n <= 0")?;
        }
        Ok(())
    }

    /// An account's new handle and status; a status change moves its
    /// records out of view (or back), and a deletion purges them.
    fn apply_actor(
        &mut self,
        did: &str,
        (identity, account): &ActorUpdate,
        now: &DbValue,
        stats: &mut ApplyStats,
    ) -> Result<()> {
        let was_active: Option<bool> = self
            .conn
            .query_row(
                "SELECT active FROM actors WHERE did = ?",
                params![did],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                duckdb::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        self.conn.execute(
            "INSERT INTO actors (did, handle, active, status, updated_at) VALUES (?, ?, true, NULL, ?)
             ON CONFLICT DO NOTHING",
            params![did, identity.flatten(), now],
        )?;
        if let Some(handle) = identity {
            // Shown as claimed until the handle is checked (if it is).
            self.conn.execute(
                "UPDATE actors SET handle = ?, claimed_handle = ?, handle_checked_at = NULL,
                   updated_at = ? WHERE did = ?",
                params![handle, handle, now, did],
            )?;
        }
        if let Some((active, status)) = account {
            self.conn.execute(
                "UPDATE actors SET active = ?, status = ?, updated_at = ? WHERE did = ?",
                params![active, status, now, did],
            )?;
            let was_active = was_active.unwrap_or(true);
            if *status == Some("deleted") {
                stats.purged += self.purge_account(did)?;
                stats.accounts_moved.push((did.to_string(), false));
            } else if was_active && !active {
                stats.hidden += self.move_account(did, Move::Hide)?;
                stats.accounts_moved.push((did.to_string(), false));
            } else if !was_active && *active {
                stats.restored += self.move_account(did, Move::Restore)?;
                stats.accounts_moved.push((did.to_string(), true));
            }
        }
        Ok(())
    }

    /// Handle checks, resync requests and snapshots done, and the sources'
    /// cursors.
    fn apply_bookkeeping(&mut self, sorted: &Sorted<'_>, now: &DbValue) -> Result<()> {
        // A check of a handle the DID has since replaced changes nothing.
        for (did, handle, valid) in &sorted.handle_checks {
            self.conn.execute(
                "UPDATE actors SET handle = CASE WHEN ? THEN claimed_handle ELSE 'handle.invalid' END,
                   handle_checked_at = ? WHERE did = ? AND claimed_handle = ?",
                params![valid, now, did, handle],
            )?;
        }
        for (did, reason, rev) in &sorted.resyncs {
            match reason {
                Some(reason) => self.conn.execute(
                    "INSERT INTO resyncs (did, reason, requested_at) VALUES (?, ?, ?)
                     ON CONFLICT DO UPDATE SET reason = excluded.reason, requested_at = excluded.requested_at",
                    params![did, reason, now],
                )?,
                None => {
                    self.conn
                        .execute("DELETE FROM resyncs WHERE did = ?", params![did])?;
                    self.conn.execute(
                        "INSERT INTO backfill_repos (did, rev, done_at) VALUES (?, ?, ?)
                         ON CONFLICT DO UPDATE SET rev = excluded.rev, done_at = excluded.done_at",
                        params![did, rev, now],
                    )?
                }
            };
        }
        for (source, (cursor, time)) in &sorted.cursors {
            self.conn.execute(
                "INSERT INTO cursors (source, cursor, event_time, updated_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT DO UPDATE SET cursor = excluded.cursor, event_time = excluded.event_time,
                   updated_at = excluded.updated_at",
                params![source, cursor, time, now],
            )?;
        }
        Ok(())
    }
}

impl Store {
    /// Turns every `Snapshot` in `events` into explicit `Delete`s placed
    /// before it (its `keep` becomes `None`), so that what reads the batch
    /// after the commit (search, subscriptions, caches) sees them. Idempotent.
    pub fn expand_snapshots(&self, events: &mut [IndexEvent]) -> Result<usize> {
        let lists = self.snapshot_deletes(events)?;
        if lists.is_empty() {
            return Ok(0);
        }
        tracing::debug!(
            snapshots = lists.len(),
            deletes = lists.iter().map(Vec::len).sum::<usize>(),
            "snapshots expanded"
        );
        let mut lists = lists.into_iter();
        let mut n = 0;
        for ev in events.iter_mut() {
            if !ev
                .changes
                .iter()
                .any(|c| matches!(c, Change::Snapshot { keep: Some(_), .. }))
            {
                continue;
            }
            let mut out = Vec::with_capacity(ev.changes.len());
            for mut change in std::mem::take(&mut ev.changes) {
                if let Change::Snapshot { keep, .. } = &mut change {
                    if keep.take().is_some() {
                        let deletes = lists.next().expect("one list per snapshot");
                        n += deletes.len();
                        out.extend(deletes);
                    }
                }
                out.push(change);
            }
            ev.changes = out;
        }
        Ok(n)
    }

    /// For each `Snapshot` in `events` that still has its `keep`, in order: deletes for the records of
    /// its DID that the store holds or that the batch wrote before it, and
    /// that it does not keep.
    fn snapshot_deletes(&self, events: &[IndexEvent]) -> Result<Vec<Vec<Change>>> {
        let mut out = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            for (j, change) in ev.changes.iter().enumerate() {
                let Change::Snapshot {
                    did,
                    rev,
                    keep: Some(keep),
                } = change
                else {
                    continue;
                };
                // Only what the snapshot lacks is kept in memory: the rows
                // are checked as they stream by (a repository of millions
                // of records held as a set of keys cost ~150 bytes each).
                // One URI buffer for every row (this runs once per stored
                // record of the DID).
                let mut uri = String::new();
                let mut lacks = |collection: &str, rkey: &str| {
                    uri.clear();
                    uri.push_str("at://");
                    uri.push_str(did);
                    uri.push('/');
                    uri.push_str(collection);
                    uri.push('/');
                    uri.push_str(rkey);
                    !keep.contains(&uri)
                };
                let mut deletes: indexmap::IndexSet<(String, String)> = Default::default();
                let mut stmt = self
                    .conn
                    .prepare_cached("SELECT collection, rkey FROM records WHERE did = ?")?;
                let mut rows = stmt.query(params![did])?;
                while let Some(row) = rows.next()? {
                    let text = |i| row.get_ref(i)?.as_str().map_err(duckdb::Error::from);
                    let (collection, rkey) = (text(0)?, text(1)?);
                    if lacks(collection, rkey) {
                        deletes.insert((collection.to_owned(), rkey.to_owned()));
                    }
                }
                // Records the batch wrote before the snapshot, not in the
                // store yet.
                let earlier = events[..i]
                    .iter()
                    .flat_map(|e| e.changes.iter())
                    .chain(ev.changes[..j].iter());
                for c in earlier {
                    if let Change::Put(w) = c {
                        if w.did == *did && lacks(&w.collection, &w.rkey) {
                            deletes.insert((w.collection.clone(), w.rkey.clone()));
                        }
                    }
                }
                out.push(
                    deletes
                        .into_iter()
                        .map(|(collection, rkey)| Change::Delete {
                            did: did.clone(),
                            collection,
                            rkey,
                            rev: rev.clone(),
                        })
                        .collect(),
                );
            }
        }
        Ok(out)
    }

    /// Moves every record and link of `did` out of view (or back), keeping
    /// `link_counts` exact: the moved links are subtracted (or added). On a
    /// restore, a hidden version of a URI that was written again meanwhile
    /// is dropped: the visible one is newer. Returns the records moved.
    fn move_account(&mut self, did: &str, way: Move) -> Result<usize> {
        let (from_records, to_records, from_links, to_links, sign) = match way {
            Move::Hide => ("records", "hidden_records", "links", "hidden_links", -1),
            Move::Restore => ("hidden_records", "records", "hidden_links", "links", 1),
        };
        if way == Move::Restore {
            self.conn.execute(
                "DELETE FROM hidden_links WHERE source_did = $1
                   AND source_uri IN (SELECT uri FROM records WHERE did = $1)",
                params![did],
            )?;
            self.conn.execute(
                "DELETE FROM hidden_records WHERE did = $1
                   AND uri IN (SELECT uri FROM records WHERE did = $1)",
                params![did],
            )?;
        }
        self.shift_counts(from_links, did, sign)?;
        self.conn.execute(
            &format!("INSERT INTO {to_links} SELECT * FROM {from_links} WHERE source_did = ?"),
            params![did],
        )?;
        self.conn.execute(
            &format!("DELETE FROM {from_links} WHERE source_did = ?"),
            params![did],
        )?;
        self.conn.execute(
            &format!("INSERT INTO {to_records} SELECT * FROM {from_records} WHERE did = ?"),
            params![did],
        )?;
        let moved = self.conn.execute(
            &format!("DELETE FROM {from_records} WHERE did = ?"),
            params![did],
        )?;
        tracing::info!(did, records = moved, ?way, "account records moved");
        Ok(moved)
    }

    /// Adds `sign` times the links of `did` in `links_table` to `link_counts`
    /// (dropping rows that reach zero).
    fn shift_counts(&mut self, links_table: &str, did: &str, sign: i64) -> Result<()> {
        self.conn.execute(
            &format!(
                "INSERT INTO link_counts (target, collection, path, n)
                   SELECT target, source_collection, path, {sign} * count(*) FROM {links_table}
                   WHERE source_did = ? GROUP BY ALL
                 ON CONFLICT DO UPDATE SET n = link_counts.n + excluded.n"
            ),
            params![did],
        )?;
        if sign > 0 {
            // Keys this may have created (see `Store::count_keys`).
            self.count_keys.load::<3>(
                &self.conn,
                &format!(
                    "SELECT DISTINCT target, source_collection, path FROM {links_table}
                     WHERE source_did = ?"
                ),
                &[&did],
            )?;
        }
        self.conn
            .execute_batch("DELETE FROM link_counts WHERE n <= 0")?;
        Ok(())
    }

    /// Removes every record and link of a deleted account, visible or hidden,
    /// and its visible links from `link_counts`. Returns the records removed.
    fn purge_account(&mut self, did: &str) -> Result<usize> {
        self.shift_counts("links", did, -1)?;
        let mut purged = 0;
        for (table, column) in [
            ("links", "source_did"),
            ("hidden_links", "source_did"),
            ("records", "did"),
            ("hidden_records", "did"),
            ("quarantine", "did"),
        ] {
            let n = self.conn.execute(
                &format!("DELETE FROM {table} WHERE {column} = ?"),
                params![did],
            )?;
            if table.ends_with("records") {
                purged += n;
            }
        }
        tracing::info!(did, records = purged, "deleted account purged");
        Ok(purged)
    }
}

fn append_record(app: &mut duckdb::Appender, w: &RecordWrite, now: &DbValue) -> duckdb::Result<()> {
    app.append_row(params![
        w.uri,
        w.did,
        w.collection,
        w.rkey,
        w.cid,
        w.rev,
        w.json,
        w.created_at,
        now
    ])
}

fn append_link(app: &mut duckdb::Appender, w: &RecordWrite, link: &Link) -> duckdb::Result<()> {
    app.append_row(params![w.uri, w.did, w.collection, link.path, link.target])
}

fn append_quarantine(
    app: &mut duckdb::Appender,
    uri: &str,
    q: &Quarantined,
    now: &DbValue,
) -> duckdb::Result<()> {
    let record = q.record.as_ref().map(|r| r.to_string());
    app.append_row(params![
        uri,
        q.did,
        q.collection,
        q.rkey,
        q.cid,
        q.rev,
        q.reason,
        record,
        now
    ])
}

/// Commits the open transaction if `result` is Ok, rolls it back otherwise.
fn finish_transaction<T>(conn: &Connection, result: Result<T>) -> Result<T> {
    match result {
        Ok(v) => {
            conn.execute_batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)",
    )?;
    let current: i64 = conn.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    for (version, name, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        // Some build indexes over every row: minutes on a large store.
        tracing::info!(version, name, "applying migration");
        let started = std::time::Instant::now();
        conn.execute_batch("BEGIN TRANSACTION")?;
        let applied = conn.execute_batch(sql).and_then(|_| {
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                params![version, name],
            )
        });
        finish_transaction(conn, applied.map_err(StoreError::from))?;
        tracing::info!(
            version,
            name,
            secs = started.elapsed().as_secs_f64(),
            "applied migration"
        );
    }
    Ok(())
}

fn lock_error(path: &Path, e: duckdb::Error) -> StoreError {
    let message = e.to_string();
    if message.contains("lock") {
        StoreError::Locked {
            path: path.to_path_buf(),
            message,
        }
    } else {
        StoreError::Db(e)
    }
}

/// Opens the store for a one-off command (`lexview sql`), with a clear error
/// when a running server holds it.
pub fn open_for_query(data_dir: &Path) -> Result<Connection> {
    open_existing(data_dir, duckdb::AccessMode::ReadWrite)
}

/// Opens the store read-only (`lexview export`): several such readers may
/// share it, though not with a running server.
pub fn open_read_only(data_dir: &Path) -> Result<Connection> {
    open_existing(data_dir, duckdb::AccessMode::ReadOnly)
}

fn open_existing(data_dir: &Path, mode: duckdb::AccessMode) -> Result<Connection> {
    let path = db_path(data_dir);
    if !path.exists() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no store at {} (run `lexview serve` first, or pass --data)",
                path.display()
            ),
        )));
    }
    let config = duckdb::Config::default().access_mode(mode)?;
    let conn = Connection::open_with_flags(&path, config).map_err(|e| lock_error(&path, e))?;
    conn.execute_batch(SESSION_SETTINGS)?;
    Ok(conn)
}
