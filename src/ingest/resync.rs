//! Resync: a repository fetched whole from its PDS (`getRepo`) and applied
//! as a snapshot, after a `#sync` event, a broken commit chain or a
//! reactivation (see `ingestor`), with the live events of that repository
//! held back meanwhile and applied after the snapshot, by rev, so the
//! cut-over has no gap and no double count.
//!
//! [`Router`] runs on the ingest thread and decides, per event, whether it
//! goes to the writer now or waits behind its repository's snapshot; it
//! starts at most `max_in_flight` fetches at a time. The fetches run on
//! [`Workers`] threads (blocking HTTP, like backfill).
//!
//! **Cursor invariant.** A source's cursor handed to the writer never passes
//! an event that is held back: while repositories are in flight, events go
//! out with the cursor each source had when the oldest of them started, and
//! the held-back events themselves go out without one. A restart replays
//! from there (applying is idempotent) and resumes the unfinished resyncs
//! from the `resyncs` table.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use crate::identity::Resolve;
use crate::index::event::{Change, IndexEvent};
use crate::ingest::Ingestor;
use crate::metrics::Metrics;
use crate::net::{Http, NetError, Trust};
use crate::repo::{BlockStore, Repo};

/// A repository read whole, as changes: a `Put` (or `Invalid`) per record
/// of a loaded collection, then the `Snapshot` that removes the rest.
#[derive(Debug)]
pub struct Snapshot {
    pub did: String,
    pub rev: String,
    pub changes: Vec<Change>,
}

/// What a fetch produced.
#[derive(Debug)]
pub enum Fetched {
    /// Some of the repository's records, ahead of the rest (a large
    /// repository is never held whole).
    Part { did: String, changes: Vec<Change> },
    /// The last records and the `Snapshot` that ends the repository.
    Done(Snapshot),
    Failed {
        did: String,
        error: String,
        /// An outage (a directory or host down or slow), not a definite
        /// failure: worth saying once, not at every retry.
        transient: bool,
    },
}

/// Whether a fetch failed for an outage (the DID document or the PDS
/// unavailable now) rather than for what it got.
fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<crate::identity::IdentityError>(),
            Some(crate::identity::IdentityError::Unavailable(_))
        ) || c
            .downcast_ref::<NetError>()
            .is_some_and(NetError::is_transient)
    })
}

/// The changes that make the index hold exactly `repo`'s records of loaded
/// collections, handed to `emit` in chunks of at most `chunk` records (the
/// last one ends with the `Snapshot`), so a large repository is never held
/// as changes whole. With `resolver`, the commit's signature is checked
/// against the DID's key first; every block read is hash-checked. Returns
/// the DID and rev.
pub fn snapshot_chunks<S: BlockStore>(
    ingestor: &Ingestor,
    resolver: Option<&dyn Resolve>,
    repo: &Repo<S>,
    chunk: usize,
    mut emit: impl FnMut(Vec<Change>) -> anyhow::Result<()>,
) -> anyhow::Result<(String, String)> {
    let rev = repo.rev.clone().unwrap_or_default();
    if let Some(resolver) = resolver {
        let Some(rev) = &repo.rev else {
            bail!("{}: legacy (v2) commit, not verified", repo.did);
        };
        let key = resolver.signing_key(&repo.did)?;
        crate::verify::verify_commit(&repo.commit.1, &repo.did, rev, &key)
            .with_context(|| format!("{}: commit does not verify", repo.did))?;
    }
    let mut changes = Vec::with_capacity(chunk.min(4096));
    let mut keep = crate::index::event::UriKeys::default();
    for record in repo.records() {
        let (key, cid) = record?;
        let Some((collection, rkey)) = key.split_once('/') else {
            continue;
        };
        if !ingestor.wants(collection) {
            continue;
        }
        let block = repo.block(&cid)?;
        keep.insert(&format!("at://{}/{key}", repo.did));
        changes.push(ingestor.record_from_block(&repo.did, collection, rkey, &cid, &rev, &block));
        if changes.len() >= chunk {
            emit(std::mem::take(&mut changes))?;
        }
    }
    changes.push(Change::Snapshot {
        did: repo.did.clone(),
        rev: rev.clone(),
        keep: Some(Arc::new(keep.seal())),
    });
    emit(changes)?;
    Ok((repo.did.clone(), rev))
}

/// Runs a fetch, trying a transient failure (a connection error, a
/// timeout, 429, 5xx) again after 1, 2, 4 and 8 s; other failures, and the
/// fifth transient one, are returned.
pub fn with_retries<T>(mut fetch: impl FnMut() -> Result<T, NetError>) -> Result<T, NetError> {
    let mut wait = Duration::from_secs(1);
    for attempt in 0.. {
        match fetch() {
            Err(e) if e.is_transient() && attempt < 4 => {
                tracing::warn!(error = %e, attempt, "retrying");
            }
            other => return other,
        }
        std::thread::sleep(wait);
        wait *= 2;
    }
    unreachable!("the loop returns")
}

/// How long fetching one repository may take, and how large it may be.
pub const REPO_DEADLINE: Duration = Duration::from_secs(600);
pub const REPO_LIMIT: u64 = 4 << 30;

/// Threads that fetch repositories from their PDS.
pub struct Workers {
    jobs: Mutex<Option<std::sync::mpsc::Sender<String>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// What resync workers fetch with and where.
pub struct WorkerSetup {
    /// Fetching threads.
    pub threads: usize,
    /// Of those, at most this many on one PDS host.
    pub per_host: usize,
    /// Finds each repository's PDS (and key, to verify).
    pub resolver: Arc<dyn Resolve>,
    pub ingestor: Arc<Ingestor>,
    /// Check each repository's commit signature.
    pub verify: bool,
    /// Where fetched CARs are written (one file per thread).
    pub tmp: std::path::PathBuf,
    pub http: Http,
}

impl Workers {
    /// Starts the fetching threads; results go to `results`.
    pub fn start(setup: WorkerSetup, results: mpsc::Sender<Fetched>) -> anyhow::Result<Workers> {
        let WorkerSetup {
            threads: n,
            per_host,
            resolver,
            ingestor,
            verify,
            tmp,
            http,
        } = setup;
        std::fs::create_dir_all(&tmp)?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        let gate = Arc::new(HostGate::new(per_host));
        for i in 0..n.max(1) {
            let car = tmp.join(format!("fetch-{i}.car"));
            let (gate, rx, resolver, ingestor, results, http) = (
                gate.clone(),
                rx.clone(),
                resolver.clone(),
                ingestor.clone(),
                results.clone(),
                http.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("lexview-resync-{i}"))
                    .spawn(move || loop {
                        let Ok(did) = rx.lock().expect("resync jobs").recv() else {
                            return;
                        };
                        let job = Job {
                            http: &http,
                            gate: &gate,
                            resolver: resolver.as_ref(),
                            ingestor: &ingestor,
                            verify,
                            car: &car,
                        };
                        let fetched = match job.run(&did, |changes| {
                            let _ = results.blocking_send(Fetched::Part {
                                did: did.clone(),
                                changes,
                            });
                        }) {
                            Ok(s) => Fetched::Done(s),
                            Err(e) => Fetched::Failed {
                                did,
                                transient: is_transient(&e),
                                error: format!("{e:#}"),
                            },
                        };
                        if results.blocking_send(fetched).is_err() {
                            return;
                        }
                    })?,
            );
        }
        Ok(Workers {
            jobs: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
        })
    }

    /// Queues a fetch of `did`'s repository.
    pub fn fetch(&self, did: &str) {
        if let Some(tx) = self.jobs.lock().expect("resync jobs").as_ref() {
            let _ = tx.send(did.to_string());
        }
    }

    /// Stops taking jobs. A fetch under way is not waited for (it may be
    /// retrying a host that is down): its result would be dropped anyway,
    /// and the resync stays pending in the store for the next start.
    pub fn close(&self) {
        self.jobs.lock().expect("resync jobs").take();
        self.threads.lock().expect("resync threads").clear();
    }
}

/// At most `limit` fetches per host at once.
struct HostGate {
    limit: usize,
    busy: Mutex<HashMap<String, usize>>,
    freed: std::sync::Condvar,
}

impl HostGate {
    fn new(limit: usize) -> HostGate {
        HostGate {
            limit: limit.max(1),
            busy: Mutex::new(HashMap::new()),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Runs `f` once fewer than `limit` fetches from `host` are under way.
    fn with<T>(&self, host: &str, f: impl FnOnce() -> T) -> T {
        {
            let mut busy = self.busy.lock().expect("host gate");
            while busy.get(host).copied().unwrap_or(0) >= self.limit {
                busy = self.freed.wait(busy).expect("host gate");
            }
            *busy.entry(host.to_string()).or_default() += 1;
        }
        let out = f();
        let mut busy = self.busy.lock().expect("host gate");
        if let Some(n) = busy.get_mut(host) {
            *n -= 1;
            if *n == 0 {
                busy.remove(host);
            }
        }
        self.freed.notify_all();
        out
    }
}

/// One worker's fetch of one repository.
struct Job<'a> {
    http: &'a Http,
    gate: &'a HostGate,
    resolver: &'a dyn Resolve,
    ingestor: &'a Ingestor,
    verify: bool,
    /// This worker's file for the CAR being fetched.
    car: &'a std::path::Path,
}

/// Records a resync hands over at a time.
const PART_RECORDS: usize = 25_000;

impl Job<'_> {
    /// Streams the repository to disk, then reads it back through the file
    /// index, handing records over in parts; returns the last part.
    fn run(&self, did: &str, mut part: impl FnMut(Vec<Change>)) -> anyhow::Result<Snapshot> {
        let pds = self.resolver.pds_endpoint(did)?;
        let url = format!("{pds}/xrpc/com.atproto.sync.getRepo?did={did}");
        self.gate.with(&pds, || -> anyhow::Result<()> {
            with_retries(|| {
                self.http
                    .get_to_file(&url, Trust::Named, REPO_DEADLINE, REPO_LIMIT, self.car)
            })
            .with_context(|| format!("getRepo {did}"))?;
            Ok(())
        })?;
        let result = (|| {
            let repo = crate::repo::open_repo(self.car)?;
            if repo.did != did {
                bail!("{url} returned the repository of {}", repo.did);
            }
            let mut last = Vec::new();
            let (did, rev) = snapshot_chunks(
                self.ingestor,
                self.verify.then_some(self.resolver),
                &repo,
                PART_RECORDS,
                |changes| {
                    if matches!(changes.last(), Some(Change::Snapshot { .. })) {
                        last = changes;
                    } else {
                        part(changes);
                    }
                    Ok(())
                },
            )?;
            Ok(Snapshot {
                did,
                rev,
                changes: last,
            })
        })();
        let _ = std::fs::remove_file(self.car);
        result
    }
}

/// The DID an event is about, when it is about one.
fn event_did(ev: &IndexEvent) -> Option<&str> {
    ev.changes.first().map(|c| match c {
        Change::Put(w) => w.did.as_str(),
        Change::Delete { did, .. }
        | Change::Identity { did, .. }
        | Change::Account { did, .. }
        | Change::Resync { did, .. }
        | Change::HandleChecked { did, .. }
        | Change::Snapshot { did, .. } => did.as_str(),
        Change::Invalid(q) => q.did.as_str(),
    })
}

/// A source's latest cursor and event time.
type Position = (Option<i64>, Option<String>);

/// The repo rev of a commit event.
fn event_rev(ev: &IndexEvent) -> Option<&str> {
    ev.changes.iter().find_map(|c| match c {
        Change::Put(w) => Some(w.rev.as_str()),
        Change::Delete { rev, .. } => Some(rev.as_str()),
        Change::Invalid(q) => Some(q.rev.as_str()),
        _ => None,
    })
}

struct InFlight {
    /// Each source's cursor when the fetch started.
    start: HashMap<String, Option<i64>>,
    held: Vec<IndexEvent>,
}

/// The ingest side of resyncs: routes events to the writer or holds them
/// behind their repository's snapshot.
pub struct Router {
    max_in_flight: usize,
    queue: VecDeque<String>,
    queued: HashSet<String>,
    in_flight: HashMap<String, InFlight>,
    /// The cursor of the last event routed, per source.
    last: HashMap<String, Position>,
    metrics: Arc<Metrics>,
    done: u64,
    started: std::time::Instant,
    /// Failed repositories, fetched again at their time (backoff doubling
    /// from `retry_base` up to an hour), with their failure counts.
    retries: Vec<(std::time::Instant, String)>,
    failures: HashMap<String, u32>,
    retry_base: Duration,
}

impl Router {
    pub fn new(max_in_flight: usize, metrics: Arc<Metrics>) -> Router {
        Router {
            max_in_flight,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            in_flight: HashMap::new(),
            last: HashMap::new(),
            metrics,
            done: 0,
            started: std::time::Instant::now(),
            retries: Vec::new(),
            failures: HashMap::new(),
            retry_base: Duration::from_secs(10),
        }
    }

    /// The first retry of a failed fetch waits `base` (then 2x, 4x, ... up
    /// to an hour).
    pub fn with_retry_base(mut self, base: Duration) -> Router {
        self.retry_base = base;
        self
    }

    /// When the next failed fetch is due again, if any is waiting.
    pub fn next_retry(&self) -> Option<std::time::Instant> {
        self.retries.iter().map(|(at, _)| *at).min()
    }

    /// Queues the failed fetches whose time has come.
    pub fn requeue_due(&mut self, now: std::time::Instant) {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.retries = later;
        for (_, did) in due {
            self.request(&did);
        }
    }

    /// Repositories queued and not yet started.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is queued or in flight.
    pub fn idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_empty()
    }

    /// Repositories queued, in flight, or waiting to be retried.
    pub fn pending(&self) -> usize {
        self.queue.len() + self.in_flight.len() + self.retries.len()
    }

    /// Asks for a resync of `did` (no-op if one is queued or in flight, or
    /// if resyncs are off: the request stays in the store's `resyncs`).
    pub fn request(&mut self, did: &str) {
        if self.max_in_flight == 0 {
            return;
        }
        if !self.in_flight.contains_key(did) && self.queued.insert(did.to_string()) {
            self.queue.push_back(did.to_string());
        }
    }

    /// Starts queued fetches up to the limit; returns the DIDs to fetch.
    pub fn start_fetches(&mut self) -> Vec<String> {
        let mut started = Vec::new();
        while self.in_flight.len() < self.max_in_flight {
            let Some(did) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&did);
            let start = self
                .last
                .iter()
                .map(|(source, (cursor, _))| (source.clone(), *cursor))
                .collect();
            self.in_flight.insert(
                did.clone(),
                InFlight {
                    start,
                    held: Vec::new(),
                },
            );
            started.push(did);
        }
        started
    }

    /// The cursor `source` may be stored at now: its latest, unless a fetch
    /// in flight started before it (then the cursor at that start, or none).
    fn safe_cursor(&self, source: &str, latest: Option<i64>) -> Option<i64> {
        let mut safe = latest;
        for f in self.in_flight.values() {
            match f.start.get(source) {
                Some(start) => safe = safe.min(*start),
                None => return None,
            }
        }
        safe
    }

    /// Routes one event: returns the events to hand to the writer now, in
    /// order (none if it is held back). Resync requests in it are queued.
    pub fn route(&mut self, mut ev: IndexEvent) -> Vec<IndexEvent> {
        if ev.cursor.is_some() {
            self.last
                .insert(ev.source.clone(), (ev.cursor, ev.time.clone()));
        }
        if let Some(did) = event_did(&ev).map(str::to_string) {
            if let Some(f) = self.in_flight.get_mut(&did) {
                Metrics::inc(&self.metrics.resync_buffered_events_total);
                ev.cursor = None;
                f.held.push(ev);
                return Vec::new();
            }
        }
        for c in &ev.changes {
            if let Change::Resync { did, .. } = c {
                self.request(did);
            }
        }
        if self.in_flight.is_empty() {
            return vec![ev];
        }
        ev.cursor = self.safe_cursor(&ev.source, ev.cursor);
        vec![ev]
    }

    /// A fetch finished: the snapshot (if any), then the held events the
    /// snapshot does not cover, then the cursors that may now move.
    pub fn finished(&mut self, fetched: Fetched) -> Vec<IndexEvent> {
        let (did, snapshot) = match fetched {
            // Records ahead of the snapshot go out at once (the held events
            // come after the snapshot anyway).
            Fetched::Part { did, changes } => {
                if !self.in_flight.contains_key(&did) {
                    return Vec::new();
                }
                return vec![IndexEvent {
                    source: "resync".into(),
                    changes,
                    ..Default::default()
                }];
            }
            Fetched::Done(s) => {
                Metrics::inc(&self.metrics.resyncs_done_total);
                self.done += 1;
                self.failures.remove(&s.did);
                tracing::debug!(
                    did = s.did,
                    rev = s.rev,
                    records = s.changes.len() - 1,
                    "repository resynced"
                );
                (s.did.clone(), Some(s))
            }
            Fetched::Failed {
                did,
                error,
                transient,
            } => {
                // The held events are applied as they are; the fetch is
                // tried again later (and, being in `resyncs`, at the next
                // start if this process stops first).
                Metrics::inc(&self.metrics.resyncs_failed_total);
                let n = self.failures.entry(did.clone()).or_insert(0);
                let wait = (self.retry_base * 2u32.saturating_pow((*n).min(16)))
                    .min(Duration::from_secs(3600));
                *n += 1;
                // An outage fails every repository in turn, at every retry:
                // said once per repository, then left to the metrics.
                if transient && *n > 1 {
                    tracing::debug!(
                        did,
                        error,
                        retry_in_s = wait.as_secs(),
                        "resync failed again"
                    );
                } else if transient {
                    tracing::warn!(
                        did,
                        error,
                        retry_in_s = wait.as_secs(),
                        "resync waits for an outage to end; applying the held events as they are"
                    );
                } else {
                    tracing::error!(
                        did,
                        error,
                        retry_in_s = wait.as_secs(),
                        "resync failed; applying the held events as they are"
                    );
                }
                if self.in_flight.contains_key(&did) {
                    self.retries
                        .push((std::time::Instant::now() + wait, did.clone()));
                }
                (did, None)
            }
        };
        let Some(f) = self.in_flight.remove(&did) else {
            return Vec::new();
        };
        // Progress, when a repository is done: every one while few are
        // pending, then every 100.
        let pending = self.queue.len() + self.in_flight.len();
        if snapshot.is_some() && (pending < 10 || self.done.is_multiple_of(100)) {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            let rate = self.done as f64 / secs;
            tracing::info!(
                done = self.done,
                pending,
                repos_per_s = format!("{rate:.1}"),
                eta_s = format!("{:.0}", pending as f64 / rate.max(1e-9)),
                "resync/backfill progress"
            );
        }
        let mut out = Vec::new();
        let snapshot_rev = snapshot.as_ref().map(|s| s.rev.clone());
        if let Some(s) = snapshot {
            out.push(IndexEvent {
                source: "resync".into(),
                cursor: None,
                time: None,
                changes: s.changes,
            });
        }
        for ev in f.held {
            let covered = match (&snapshot_rev, event_rev(&ev)) {
                (Some(snap), Some(rev)) => rev <= snap.as_str(),
                _ => false,
            };
            if covered {
                Metrics::inc(&self.metrics.resync_stale_events_total);
                continue;
            }
            out.extend(self.route(ev));
        }
        // Cursors may move on now: one cursor-only event per source.
        let sources: Vec<(String, Position)> = self
            .last
            .iter()
            .map(|(s, c)| (s.clone(), c.clone()))
            .collect();
        for (source, (latest, time)) in sources {
            let cursor = if self.in_flight.is_empty() {
                latest
            } else {
                self.safe_cursor(&source, latest)
            };
            if cursor.is_some() {
                out.push(IndexEvent {
                    source,
                    cursor,
                    time,
                    changes: Vec::new(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::event::RecordWrite;

    #[test]
    fn the_host_gate_bounds_fetches_per_host() {
        let gate = Arc::new(HostGate::new(2));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..6 {
                let (gate, peak, now) = (gate.clone(), peak.clone(), now.clone());
                s.spawn(move || {
                    gate.with("https://pds.example", || {
                        use std::sync::atomic::Ordering::SeqCst;
                        let n = now.fetch_add(1, SeqCst) + 1;
                        peak.fetch_max(n, SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        now.fetch_sub(1, SeqCst);
                    })
                });
            }
        });
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    fn put(source: &str, seq: i64, did: &str, rkey: &str, rev: &str) -> IndexEvent {
        IndexEvent {
            source: source.into(),
            cursor: Some(seq),
            time: None,
            changes: vec![Change::Put(RecordWrite::new(
                did.into(),
                "app.bsky.feed.like".into(),
                rkey.into(),
                "bafy".into(),
                rev.into(),
                serde_json::json!({}),
            ))],
        }
    }

    #[test]
    fn held_events_wait_for_the_snapshot_and_cursors_never_pass_them() {
        let mut r = Router::new(2, Arc::new(Metrics::default()));
        assert_eq!(
            r.route(put("s", 1, "did:plc:a", "1", "r1"))[0].cursor,
            Some(1)
        );
        let mut resync = put("s", 2, "did:plc:a", "2", "r2");
        resync.changes.push(Change::Resync {
            did: "did:plc:a".into(),
            reason: "test".into(),
        });
        // The event that asks for the resync is applied itself.
        assert_eq!(r.route(resync)[0].cursor, Some(2));
        assert_eq!(r.start_fetches(), vec!["did:plc:a".to_string()]);
        // Held: a's events; b's go out with the cursor at the fetch's start.
        assert!(r.route(put("s", 3, "did:plc:a", "3", "r3")).is_empty());
        assert!(r.route(put("s", 4, "did:plc:a", "4", "r5")).is_empty());
        let b = r.route(put("s", 5, "did:plc:b", "1", "r1"));
        assert_eq!(b[0].cursor, Some(2));
        let out = r.finished(Fetched::Done(Snapshot {
            did: "did:plc:a".into(),
            rev: "r4".into(),
            changes: vec![Change::Snapshot {
                did: "did:plc:a".into(),
                rev: "r4".into(),
                keep: None,
            }],
        }));
        // Snapshot, then the held event newer than it (r5; r3 is covered),
        // then the cursor moves to the latest.
        assert!(matches!(out[0].changes[0], Change::Snapshot { .. }));
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(event_rev(&out[1]), Some("r5"));
        assert_eq!(out[1].cursor, None);
        assert_eq!((out[2].cursor, out[2].changes.len()), (Some(5), 0));
        assert!(r.idle());
    }

    #[test]
    fn parts_of_a_repository_go_out_ahead_of_its_snapshot() {
        let mut r = Router::new(1, Arc::new(Metrics::default()));
        r.request("did:plc:a");
        r.start_fetches();
        assert!(
            r.route(put("s", 1, "did:plc:a", "1", "r9")).is_empty(),
            "held"
        );
        let part = r.finished(Fetched::Part {
            did: "did:plc:a".into(),
            changes: put("resync", 0, "did:plc:a", "2", "r5").changes,
        });
        assert_eq!((part.len(), part[0].cursor), (1, None), "{part:?}");
        assert!(r.pending() == 1, "still in flight until Done");
        // A part of a repository no longer in flight is dropped.
        assert!(r
            .finished(Fetched::Part {
                did: "did:plc:z".into(),
                changes: Vec::new()
            })
            .is_empty());
    }

    #[test]
    fn a_failed_fetch_is_tried_again_after_a_backoff() {
        let mut r =
            Router::new(1, Arc::new(Metrics::default())).with_retry_base(Duration::from_millis(20));
        r.request("did:plc:a");
        r.start_fetches();
        r.finished(Fetched::Failed {
            transient: false,
            did: "did:plc:a".into(),
            error: "down".into(),
        });
        assert_eq!(r.pending(), 1, "waiting for its retry");
        r.requeue_due(std::time::Instant::now());
        assert!(r.start_fetches().is_empty(), "not yet");
        std::thread::sleep(Duration::from_millis(30));
        r.requeue_due(std::time::Instant::now());
        assert_eq!(r.start_fetches(), vec!["did:plc:a".to_string()]);
        // The second failure waits twice as long.
        r.finished(Fetched::Failed {
            transient: false,
            did: "did:plc:a".into(),
            error: "down".into(),
        });
        let wait = r.next_retry().unwrap() - std::time::Instant::now();
        assert!(wait > Duration::from_millis(25), "{wait:?}");
    }

    #[test]
    fn a_failed_fetch_applies_the_held_events() {
        let mut r = Router::new(1, Arc::new(Metrics::default()));
        r.route(put("s", 1, "did:plc:a", "1", "r1"));
        r.request("did:plc:a");
        r.request("did:plc:a");
        r.request("did:plc:c");
        assert_eq!(r.start_fetches().len(), 1, "one in flight at a time");
        assert_eq!(r.pending(), 2);
        assert!(r.route(put("s", 2, "did:plc:a", "2", "r2")).is_empty());
        let out = r.finished(Fetched::Failed {
            transient: false,
            did: "did:plc:a".into(),
            error: "boom".into(),
        });
        assert_eq!(event_rev(&out[0]), Some("r2"));
        assert_eq!(out.last().unwrap().cursor, Some(2));
        assert_eq!(r.start_fetches(), vec!["did:plc:c".to_string()]);
    }
}
