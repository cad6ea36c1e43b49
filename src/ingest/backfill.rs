//! Whole repositories into the store: a repository applied as a snapshot of
//! its DID (`apply_repo`), and the repositories a host lists
//! (`list_repos`), for `lexview backfill` and `serve --backfill`.

use anyhow::{bail, Context};

use super::ingestor::Ingestor;
use super::resync::{snapshot_chunks, with_retries};
use crate::identity::Resolve;
use crate::index::event::{Change, IndexEvent};
use crate::index::store::Store;
use crate::metrics::Metrics;
use crate::net::{Http, NetError, Trust};
use tokio::sync::mpsc;

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

/// Records per backfill transaction. Measured on a generated 2M-record
/// repository: 25k batches were as fast as 130k (the writer's live batch)
/// or faster, with a lower peak RSS (BENCHMARKS.md).
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

/// One page of a host's listing (a host the operator named).
fn list_page(http: &Http, url: &str) -> Result<serde_json::Value, NetError> {
    http.get_json(
        url,
        Trust::Configured,
        std::time::Duration::from_secs(60),
        64 << 20,
    )
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
    http: &Http,
    host: &str,
    collections: &[String],
) -> anyhow::Result<(Vec<Listed>, &'static str)> {
    let mut listed = Vec::new();
    let (_, how) = list_repos_paged(http, host, collections, |page| {
        listed.extend(page);
        Ok(())
    })?;
    Ok((listed, how))
}

/// [`list_repos`], a page at a time: `each` gets every page as it arrives
/// (each repository once), so a relay's whole listing is never held. Returns
/// how many were listed and the method.
pub fn list_repos_paged(
    http: &Http,
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
            let page: serde_json::Value = match with_retries(|| list_page(http, &url)) {
                Ok(page) => page,
                Err(NetError::Status { status, .. }) if total == 0 && cursor.is_none() => {
                    tracing::info!(
                        host,
                        status,
                        "no listReposByCollection here; listing every repository (listRepos)"
                    );
                    break 'collections;
                }
                Err(e) => bail!(e),
            };
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
        let page: serde_json::Value = with_retries(|| list_page(http, &url))?;
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

/// The repositories `host` lists that the store has not backfilled yet,
/// and how many it has.
pub fn discover(
    http: &Http,
    host: &str,
    collections: &[String],
    readers: &crate::index::store::ReadPool,
    requests: &mpsc::Sender<String>,
    metrics: &Metrics,
) -> anyhow::Result<(usize, usize)> {
    let (mut todo, mut skipped) = (0, 0);
    let (listed, how) = list_repos_paged(http, host, collections, |page| {
        // Repositories a backfill finished before are skipped, a page at a
        // time (DIDs contain no spaces).
        let list = page
            .iter()
            .map(|l| l.did.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let done: std::collections::HashSet<String> = readers.with_blocking(|c| {
            let mut stmt = c.prepare(
                "SELECT did FROM backfill_repos WHERE did IN (SELECT unnest(string_split(?, ' ')))",
            )?;
            let rows = stmt.query_map([list], |r| r.get(0))?;
            rows.collect()
        })?;
        for l in page {
            if done.contains(&l.did) {
                skipped += 1;
                continue;
            }
            todo += 1;
            Metrics::inc(&metrics.backfill_repos_listed_total);
            requests
                .blocking_send(l.did)
                .map_err(|_| anyhow::anyhow!("shutting down"))?;
        }
        Ok(())
    })?;
    tracing::info!(host, repos = listed, how, "backfill: listing done");
    Ok((todo, skipped))
}
