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

use super::Verify;
use crate::identity::Resolve;
use crate::index::store::Store;
use crate::ingest::backfill::{apply_repo_file, list_repos, RepoStats};
use crate::ingest::resync::{with_retries, REPO_DEADLINE, REPO_LIMIT};
use crate::ingest::Ingestor;
use crate::metrics::Metrics;
use crate::net::{Http, Trust};

/// What `lexview backfill` is asked to do.
#[derive(Debug, Clone)]
pub struct BackfillConfig {
    /// A PDS or relay to list (`listRepos`) and fetch (`getRepo`) repositories from.
    pub host: Option<String>,
    /// Local repository CAR files (instead of `host`).
    pub cars: Vec<PathBuf>,
    pub data: PathBuf,
    pub lexicons: PathBuf,
    /// Auto: full for `host`, none for local files.
    pub verify: Verify,
    pub plc: String,
    /// Signing keys from a `{did: document}` file instead of the network.
    pub did_docs: Option<PathBuf>,
    /// Repositories fetched from `host` at once.
    pub concurrency: usize,
    /// At most this many repositories fetched per second.
    pub max_repos_per_second: Option<f64>,
    /// DuckDB's memory limit, e.g. 256MB.
    pub memory_limit: Option<String>,
    /// Hosts that DID documents name may be plain HTTP on private
    /// addresses (tests only; see `net`).
    pub allow_private_hosts: bool,
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
/// Long on purpose: the two ways in (local files, a host) share the
/// progress and the summary; the fetching threads are inline to keep their
/// hand-off to the applying thread in view.
pub fn run(args: BackfillConfig) -> anyhow::Result<()> {
    purge_memory_promptly();
    let catalog = Arc::new(crate::cli::load_catalog(&args.lexicons)?);
    let metrics = Arc::new(Metrics::default());
    let ingestor = Ingestor::new(catalog.clone(), metrics.clone());
    let mut store = Store::open(&args.data)
        .with_context(|| format!("cannot open the store in {}", args.data.display()))?;
    if let Some(limit) = &args.memory_limit {
        store.set_memory_limit(limit)?;
    }
    use crate::cli::Verify;
    let http = Http::new(args.allow_private_hosts)?;
    let resolver: Option<Arc<dyn Resolve>> = match args.verify {
        Verify::None => None,
        Verify::Auto if args.host.is_none() => None,
        Verify::Full | Verify::Auto => Some(crate::identity::resolver(
            &args.plc,
            args.did_docs.as_deref(),
            &http,
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
        // Every repository first (the listing is small next to the CARs).
        let collections: Vec<String> = catalog.records().map(|r| r.nsid.clone()).collect();
        let (listed, how) = list_repos(&http, &host, &collections)?;
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
                let (queue, car_tx, http, host, pace, tmp) = (
                    queue.clone(),
                    car_tx.clone(),
                    http.clone(),
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
                    let car = with_retries(|| {
                        http.get_to_file(&url, Trust::Configured, REPO_DEADLINE, REPO_LIMIT, &path)
                    })
                    .map(|_| path)
                    .map_err(anyhow::Error::from);
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
