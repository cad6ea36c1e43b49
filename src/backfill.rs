//! `lexview backfill`: index whole repositories, from a PDS or relay
//! (`com.atproto.sync.listRepos` + `getRepo`) or from local CAR files, into
//! the store. Each repository is a snapshot: its records replace what the
//! store holds for the DID (records absent from it are removed), in one
//! transaction with a `backfill_repos` row, so a killed backfill resumes by
//! skipping the repositories already done at the same rev.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use duckdb::params;

use crate::index::event::{Change, IndexEvent};
use crate::index::store::Store;
use crate::metrics::Metrics;
use crate::pipeline::Ingestor;
use crate::repo::read_repo;
use crate::resync::{get_with_retries, snapshot_chunks};
use crate::verify::{HttpResolver, Resolve};

#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    /// A PDS or relay to list (`listRepos`) and fetch (`getRepo`) repositories from.
    #[arg(long)]
    pub host: Option<String>,
    /// Local repository CAR files (instead of --host).
    #[arg(long = "car", num_args = 1..)]
    pub cars: Vec<PathBuf>,
    #[arg(long, env = "LEXVIEW_DATA", default_value = "./data")]
    pub data: PathBuf,
    #[arg(long, env = "LEXVIEW_LEXICONS", default_value = "./lexicons")]
    pub lexicons: PathBuf,
    /// Check each repository's commit signature (full) or not (none); auto:
    /// full for --host, none for local --car files.
    #[arg(long, env = "LEXVIEW_VERIFY", value_enum, default_value = "auto")]
    pub verify: crate::serve::Verify,
    /// PLC directory for DID resolution.
    #[arg(long, env = "LEXVIEW_PLC", default_value = "https://plc.directory")]
    pub plc: String,
    /// Signing keys from a `{did: document}` file instead of the network.
    #[arg(long, env = "LEXVIEW_DID_DOCS")]
    pub did_docs: Option<PathBuf>,
    /// Repositories fetched from --host at once (the limit per host).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// At most this many repositories fetched per second (politeness
    /// towards the host; default: no limit).
    #[arg(long)]
    pub max_repos_per_second: Option<f64>,
    /// DuckDB's memory limit, e.g. 256MB (default: DuckDB's, 80% of RAM).
    #[arg(long, env = "LEXVIEW_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
}

/// What one repository contributed.
#[derive(Debug, Default, Clone, Copy)]
pub struct RepoStats {
    pub records: usize,
    pub removed: usize,
}

/// Indexes one repository CAR file as a snapshot of its DID (see
/// [`apply_repo`]); the file is indexed, not read into memory.
pub fn apply_repo_file(
    store: &mut Store,
    ingestor: &Ingestor,
    resolver: Option<&dyn Resolve>,
    path: &std::path::Path,
) -> anyhow::Result<(String, RepoStats)> {
    let repo = crate::repo::open_repo(path).with_context(|| format!("{}", path.display()))?;
    apply_repo(store, ingestor, resolver, &repo, BATCH_RECORDS)
}

/// Makes mimalloc return freed memory to the OS at once (mimalloc v3, which
/// this build uses, waits 1 s by default). With reading and writing on two threads a backfill otherwise
/// peaked about 100 MB higher (the 500 MB benchmark repository: 527-537 MB
/// against ~430 MB), for about 6% of its throughput. For the `backfill`
/// command and its benchmark, whose processes do nothing else.
pub fn purge_memory_promptly() {
    // SAFETY: sets a process-wide mimalloc option; mimalloc reads options
    // atomically, so this is sound at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// `mi_option_purge_delay`: mimalloc's Rust bindings do not name it; it is
/// the 16th entry of `mi_option_t` in mimalloc v2 and v3 (the test
/// `the_purge_delay_option_is_the_one_mimalloc_documents` checks its default,
/// which no neighbouring option shares).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Records per backfill transaction. Measured on a generated 2M-record
/// repository: 25k batches were as fast as 130k (the writer's live batch)
/// or faster, with a lower peak RSS (README, "Benchmarks").
pub const BATCH_RECORDS: usize = 25_000;

/// Indexes one repository as a snapshot of its DID, in transactions of
/// `batch` records, so the index work does not hold the whole repository. The last one removes what the snapshot lacks and
/// records the repository as done; a kill before it leaves the repository
/// to be applied again, which is harmless.
pub fn apply_repo<S: crate::repo::BlockStore>(
    store: &mut Store,
    ingestor: &Ingestor,
    resolver: Option<&dyn Resolve>,
    repo: &crate::repo::Repo<S>,
    batch: usize,
) -> anyhow::Result<(String, RepoStats)> {
    // Reading the repository (MST walk, record blocks, validation, links)
    // and writing to the store each take about half of a backfill's time:
    // they run on two threads, one chunk apart, in order (a rendezvous
    // channel: one chunk being read while the one before is written).
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Change>>(0);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> anyhow::Result<usize> {
            let mut removed = 0;
            for changes in rx {
                let mut events = [IndexEvent {
                    source: "backfill".into(),
                    cursor: None,
                    time: None,
                    changes,
                }];
                removed += store.expand_snapshots(&mut events)?;
                store.apply(&events)?;
            }
            Ok(removed)
        });
        let mut records = 0;
        let read = snapshot_chunks(ingestor, resolver, repo, batch.max(1), |changes| {
            records += changes
                .iter()
                .filter(|c| !matches!(c, Change::Snapshot { .. }))
                .count();
            tx.send(changes)
                .map_err(|_| anyhow::anyhow!("the store writer stopped"))
        });
        drop(tx);
        // The writer's error first: a failed write also fails the reader's
        // next send.
        let removed = writer.join().expect("the backfill writer panicked")?;
        let (did, _) = read?;
        Ok((did, RepoStats { records, removed }))
    })
}

/// A repository a host lists: its DID and, from `listRepos`, its rev.
#[derive(Debug, Clone)]
pub struct Listed {
    pub did: String,
    pub rev: Option<String>,
}

/// The active repositories `host` has records of `collections` in, through
/// `com.atproto.sync.listReposByCollection` (a relay's collection index),
/// or every active repository through `listRepos` where the host does not
/// offer it (a PDS). Returns them and the method that listed them.
pub fn list_repos(
    client: &reqwest::blocking::Client,
    host: &str,
    collections: &[String],
) -> anyhow::Result<(Vec<Listed>, &'static str)> {
    let mut listed = Vec::new();
    let (_, how) = list_repos_paged(client, host, collections, |page| {
        listed.extend(page);
        Ok(())
    })?;
    Ok((listed, how))
}

/// [`list_repos`], a page at a time: `each` gets every page as it arrives
/// (each repository once), so a relay's whole listing is never held. Returns
/// how many were listed and the method.
pub fn list_repos_paged(
    client: &reqwest::blocking::Client,
    host: &str,
    collections: &[String],
    mut each: impl FnMut(Vec<Listed>) -> anyhow::Result<()>,
) -> anyhow::Result<(usize, &'static str)> {
    // Repositories with records in several collections are listed once per
    // collection; a 128-bit key per DID (two seeded 64-bit hashes, 16 bytes)
    // remembers which were passed on.
    let (h1, h2) = (
        foldhash::fast::FixedState::with_seed(1),
        foldhash::fast::FixedState::with_seed(2),
    );
    let key = |did: &str| {
        use std::hash::BuildHasher;
        (u128::from(h1.hash_one(did)) << 64) | u128::from(h2.hash_one(did))
    };
    let mut seen: std::collections::HashSet<u128, foldhash::fast::FixedState> =
        std::collections::HashSet::default();
    let mut total = 0usize;
    'collections: for collection in collections {
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!(
                "{host}/xrpc/com.atproto.sync.listReposByCollection?collection={collection}&limit=2000"
            );
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let resp = get_with_retries(client, &url)?;
            if !resp.status().is_success() {
                if total == 0 && cursor.is_none() {
                    tracing::info!(
                        host,
                        status = %resp.status(),
                        "no listReposByCollection here; listing every repository (listRepos)"
                    );
                    break 'collections;
                }
                bail!("{url}: HTTP {}", resp.status());
            }
            let page: serde_json::Value = resp.json()?;
            let mut out = Vec::new();
            for r in page["repos"].as_array().into_iter().flatten() {
                if let Some(did) = r["did"].as_str() {
                    if seen.insert(key(did)) {
                        out.push(Listed {
                            did: did.to_string(),
                            rev: None,
                        });
                    }
                }
            }
            total += out.len();
            each(out)?;
            cursor = page["cursor"].as_str().map(str::to_string);
            if cursor.is_none() || page["repos"].as_array().is_none_or(|a| a.is_empty()) {
                continue 'collections;
            }
        }
    }
    if !collections.is_empty() && total > 0 {
        return Ok((total, "listReposByCollection"));
    }
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{host}/xrpc/com.atproto.sync.listRepos?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = get_with_retries(client, &url)?.error_for_status()?.json()?;
        let mut out = Vec::new();
        for r in page["repos"].as_array().into_iter().flatten() {
            let active = r["active"].as_bool().unwrap_or(true);
            if let (Some(did), true) = (r["did"].as_str(), active) {
                out.push(Listed {
                    did: did.to_string(),
                    rev: r["rev"].as_str().map(str::to_string),
                });
            }
        }
        total += out.len();
        each(out)?;
        cursor = page["cursor"].as_str().map(str::to_string);
        if cursor.is_none() || page["repos"].as_array().is_none_or(|a| a.is_empty()) {
            break;
        }
    }
    Ok((total, "listRepos"))
}

/// Spaces out fetches to at most `rate` per second, across threads.
struct Pace {
    every: Duration,
    next: std::sync::Mutex<Instant>,
}

impl Pace {
    fn new(rate: f64) -> Pace {
        Pace {
            every: Duration::from_secs_f64(1.0 / rate),
            next: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn wait(&self) {
        let at = {
            let mut next = self.next.lock().expect("pace lock");
            let at = (*next).max(Instant::now());
            *next = at + self.every;
            at
        };
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
    }
}

/// Backfill progress: a bar on a terminal, a line per repository otherwise
/// (logs, pipes), and the backfill metrics.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    repos: usize,
    failed: usize,
    records: usize,
    started: Instant,
    metrics: Arc<Metrics>,
}

impl Progress {
    fn new(metrics: Arc<Metrics>) -> Progress {
        Progress {
            bar: None,
            total: 0,
            repos: 0,
            failed: 0,
            records: 0,
            started: Instant::now(),
            metrics,
        }
    }

    fn start(&mut self, total: usize) {
        use std::io::IsTerminal;
        self.total = total;
        self.started = Instant::now();
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} repos | {msg} | ETA {eta}",
                )
                .expect("progress template"),
            );
            self.bar = Some(bar);
        }
    }

    fn done(&mut self, did: &str, r: anyhow::Result<RepoStats>) {
        let n = self.repos + self.failed + 1;
        let line = match r {
            Ok(s) => {
                self.repos += 1;
                self.records += s.records;
                Metrics::inc(&self.metrics.backfill_repos_total);
                Metrics::add(&self.metrics.backfill_records_total, s.records as u64);
                let secs = self.started.elapsed().as_secs_f64().max(1e-9);
                let eta = self.total.saturating_sub(n) as f64 * secs / n as f64;
                format!(
                    "[{n}/{}] {did}: {} records ({} removed) | {:.0} records/s, ETA {eta:.0} s",
                    self.total,
                    s.records,
                    s.removed,
                    self.records as f64 / secs,
                )
            }
            Err(e) => {
                self.failed += 1;
                format!("[{n}/{}] {did}: failed: {e:#}", self.total)
            }
        };
        match &self.bar {
            Some(bar) => {
                let secs = self.started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!(
                    "{} records, {:.0} records/s, {} failed",
                    self.records,
                    self.records as f64 / secs,
                    self.failed
                ));
                bar.inc(1);
                if self.failed > 0 && line.contains("failed:") {
                    bar.println(line);
                }
            }
            None => eprintln!("{line}"),
        }
    }

    /// Repositories done, failed, and records.
    fn finish(&self) -> (usize, usize, usize) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        (self.repos, self.failed, self.records)
    }
}

/// Runs `lexview backfill`.
pub fn run(args: BackfillArgs) -> anyhow::Result<()> {
    purge_memory_promptly();
    let catalog = Arc::new(crate::serve::load_catalog(&args.lexicons)?);
    let metrics = Arc::new(Metrics::default());
    let ingestor = Ingestor::new(catalog.clone(), metrics.clone());
    let mut store = Store::open(&args.data)
        .with_context(|| format!("cannot open the store in {}", args.data.display()))?;
    if let Some(limit) = &args.memory_limit {
        store.set_memory_limit(limit)?;
    }
    use crate::serve::Verify;
    let resolver: Option<Arc<dyn Resolve>> = match args.verify {
        Verify::None => None,
        Verify::Auto if args.host.is_none() => None,
        Verify::Full | Verify::Auto => Some(crate::verify::resolver(
            &args.plc,
            args.did_docs.as_deref(),
        )?),
    };
    let started = Instant::now();
    let mut progress = Progress::new(metrics.clone());
    if !args.cars.is_empty() {
        progress.start(args.cars.len());
        for path in &args.cars {
            match apply_repo_file(&mut store, &ingestor, resolver.as_deref(), path) {
                Ok((did, s)) => progress.done(&did, Ok(s)),
                Err(e) => progress.done(&path.display().to_string(), Err(e)),
            }
        }
    } else if let Some(host) = &args.host {
        let host = host.trim_end_matches('/').to_string();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .user_agent(concat!("lexview/", env!("CARGO_PKG_VERSION")))
            .build()?;
        // Every repository first (the listing is small next to the CARs).
        let collections: Vec<String> = catalog.records().map(|r| r.nsid.clone()).collect();
        let (listed, how) = list_repos(&client, &host, &collections)?;
        let done: std::collections::HashMap<String, String> =
            store.readers().with_blocking(|c| {
                let mut stmt = c.prepare("SELECT did, rev FROM backfill_repos")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })?;
        let total = listed.len();
        let todo: Vec<String> = listed
            .into_iter()
            .filter(|r| match (&r.rev, done.get(&r.did)) {
                (Some(rev), Some(at)) => rev != at,
                (None, at) => at.is_none(),
                (_, None) => true,
            })
            .map(|r| r.did)
            .collect();
        eprintln!(
            "{total} repositories on {host} (by {how}); {} already backfilled at their current rev",
            total - todo.len()
        );
        progress.start(todo.len());
        // Fetches run on `concurrency` threads (at most that many requests
        // to the host at once), each streaming its CAR to a file under
        // <data>/backfill-tmp; the files are applied here, one at a time, in
        // the order they arrive, and removed. At most 2 x concurrency CARs
        // are on disk, and none is held in memory.
        let concurrency = args.concurrency.max(1);
        let tmp = args.data.join("backfill-tmp");
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let (car_tx, car_rx) =
            std::sync::mpsc::sync_channel::<(String, anyhow::Result<PathBuf>)>(concurrency);
        let queue = Arc::new(std::sync::Mutex::new(todo.into_iter()));
        let pace = args
            .max_repos_per_second
            .filter(|r| *r > 0.0)
            .map(|r| Arc::new(Pace::new(r)));
        std::thread::scope(|scope| -> anyhow::Result<()> {
            for _ in 0..concurrency {
                let (queue, car_tx, client, host, pace, tmp) = (
                    queue.clone(),
                    car_tx.clone(),
                    client.clone(),
                    host.clone(),
                    pace.clone(),
                    tmp.clone(),
                );
                scope.spawn(move || loop {
                    let Some(did) = queue.lock().expect("backfill queue").next() else {
                        return;
                    };
                    if let Some(p) = &pace {
                        p.wait();
                    }
                    let url = format!("{host}/xrpc/com.atproto.sync.getRepo?did={did}");
                    let path = tmp.join(format!("{}.car", did.replace(':', "_")));
                    let car = get_with_retries(&client, &url).and_then(|resp| {
                        let mut resp = resp.error_for_status()?;
                        let mut file = std::fs::File::create(&path)?;
                        resp.copy_to(&mut file)?;
                        Ok(path)
                    });
                    if car_tx.send((did, car)).is_err() {
                        return;
                    }
                });
            }
            drop(car_tx);
            for (did, car) in car_rx {
                let r = car.and_then(|path| {
                    let r = apply_repo_file(&mut store, &ingestor, resolver.as_deref(), &path);
                    let _ = std::fs::remove_file(&path);
                    Ok(r?.1)
                });
                progress.done(&did, r);
            }
            Ok(())
        })?;
    } else {
        bail!("give --host URL (a PDS or relay) or --car FILE...");
    }
    let (repos, failed, records) = progress.finish();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "backfilled {repos} repositories ({failed} failed), {records} records in {secs:.2} s = {:.0} records/s",
        records as f64 / secs.max(1e-9)
    );
    if failed > 0 {
        bail!("{failed} repositories failed (see above); run again to retry them");
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The repository to compare with the index.
    pub did: String,
    /// Where to fetch it (`getRepo`); default: the PDS its DID document names.
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long, env = "LEXVIEW_DATA", default_value = "./data")]
    pub data: PathBuf,
    #[arg(long, env = "LEXVIEW_LEXICONS", default_value = "./lexicons")]
    pub lexicons: PathBuf,
    /// PLC directory, to find the PDS of a did:plc.
    #[arg(long, env = "LEXVIEW_PLC", default_value = "https://plc.directory")]
    pub plc: String,
}

/// One difference between the index and the repository.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Difference {
    /// In the repository, not in the index.
    Missing { uri: String, cid: String },
    /// In the index, not in the repository.
    Extra { uri: String, cid: String },
    /// In both, at different versions.
    Changed {
        uri: String,
        repo: String,
        index: String,
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Missing { uri, cid } => write!(f, "missing  {uri} (repo has {cid})"),
            Difference::Extra { uri, cid } => {
                write!(f, "extra    {uri} (index has {cid}; not in the repo)")
            }
            Difference::Changed { uri, repo, index } => {
                write!(f, "changed  {uri} (repo has {repo}, index has {index})")
            }
        }
    }
}

/// Compares the records of loaded collections in a repository CAR with what
/// the store holds for its DID (visible or hidden; quarantined records count
/// as held, since the index knows them).
pub fn audit_repo(
    conn: &duckdb::Connection,
    ingestor: &Ingestor,
    car: &[u8],
) -> anyhow::Result<Vec<Difference>> {
    let repo = read_repo(car)?;
    let mut in_repo = std::collections::BTreeMap::new();
    for record in repo.records() {
        let (key, cid) = record?;
        if key.split_once('/').is_some_and(|(c, _)| ingestor.wants(c)) {
            in_repo.insert(format!("at://{}/{key}", repo.did), cid.to_string());
        }
    }
    let mut stmt = conn.prepare(
        "SELECT uri, cid FROM records WHERE did = $1
         UNION ALL SELECT uri, cid FROM hidden_records WHERE did = $1
         UNION ALL SELECT uri, coalesce(cid, '') FROM quarantine WHERE did = $1",
    )?;
    let held: std::collections::BTreeMap<String, String> = stmt
        .query_map(params![repo.did], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<duckdb::Result<_>>()?;
    let mut out = Vec::new();
    for (uri, cid) in &in_repo {
        match held.get(uri) {
            None => out.push(Difference::Missing {
                uri: uri.clone(),
                cid: cid.clone(),
            }),
            Some(h) if h != cid => out.push(Difference::Changed {
                uri: uri.clone(),
                repo: cid.clone(),
                index: h.clone(),
            }),
            Some(_) => {}
        }
    }
    for (uri, cid) in held {
        if !in_repo.contains_key(&uri) {
            out.push(Difference::Extra { uri, cid });
        }
    }
    Ok(out)
}

/// The PDS a DID document names (`#atproto_pds`).
fn pds_of(plc: &str, did: &str) -> anyhow::Result<String> {
    let resolver = HttpResolver::new(plc, Duration::from_secs(60));
    let url = resolver.document_url(did)?;
    let doc: serde_json::Value = reqwest::blocking::get(&url)?.error_for_status()?.json()?;
    doc["service"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| {
            s["id"]
                .as_str()
                .is_some_and(|id| id.ends_with("#atproto_pds"))
        })
        .and_then(|s| s["serviceEndpoint"].as_str())
        .map(str::to_string)
        .with_context(|| format!("{url}: no #atproto_pds service"))
}

/// Runs `lexview audit DID`: prints every difference; fails if there is one.
pub fn run_audit(args: AuditArgs) -> anyhow::Result<()> {
    let catalog = Arc::new(crate::serve::load_catalog(&args.lexicons)?);
    let ingestor = Ingestor::new(catalog, Arc::new(Metrics::default()));
    let host = match &args.host {
        Some(h) => h.trim_end_matches('/').to_string(),
        None => pds_of(&args.plc, &args.did)?,
    };
    let url = format!("{host}/xrpc/com.atproto.sync.getRepo?did={}", args.did);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let car = get_with_retries(&client, &url)?
        .error_for_status()?
        .bytes()?;
    let conn = crate::index::store::open_for_query(&args.data)?;
    let diffs = audit_repo(&conn, &ingestor, &car)?;
    for d in &diffs {
        println!("{d}");
    }
    println!("{}: {} differences", args.did, diffs.len());
    if !diffs.is_empty() {
        bail!("the index differs from the repository");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_mimalloc_documents() {
        // mimalloc v3's options.c: `purge_delay` is 1000 ms (the header's
        // "(=10)" is v2's), unless MIMALLOC_PURGE_DELAY overrides it.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads an option.
            let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
            assert_eq!(delay, 1000);
        }
    }
}
