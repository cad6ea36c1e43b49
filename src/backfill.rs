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
    /// Check each repository's commit signature (full) or not (none).
    #[arg(long, env = "LEXVIEW_VERIFY", value_enum, default_value = "none")]
    pub verify: crate::serve::Verify,
    /// PLC directory for DID resolution.
    #[arg(long, env = "LEXVIEW_PLC", default_value = "https://plc.directory")]
    pub plc: String,
    /// Signing keys from a `{did: document}` file instead of the network.
    #[arg(long, env = "LEXVIEW_DID_DOCS")]
    pub did_docs: Option<PathBuf>,
}

/// What one repository contributed.
#[derive(Debug, Default, Clone, Copy)]
pub struct RepoStats {
    pub records: usize,
    pub removed: usize,
}

/// Indexes one repository CAR as a snapshot of its DID, in transactions of
/// 130k records (the writer's batch), so the index work does not hold the
/// whole repository. The last one removes what the snapshot lacks and
/// records the repository as done; a kill before it leaves the repository
/// to be applied again, which is harmless.
pub fn apply_repo(
    store: &mut Store,
    ingestor: &Ingestor,
    resolver: Option<&dyn Resolve>,
    car: &[u8],
) -> anyhow::Result<(String, RepoStats)> {
    const CHUNK: usize = 130_000;
    let (mut records, mut removed) = (0, 0);
    let (did, _) = snapshot_chunks(ingestor, resolver, car, CHUNK, |changes| {
        records += changes
            .iter()
            .filter(|c| !matches!(c, Change::Snapshot { .. }))
            .count();
        let mut events = [IndexEvent {
            source: "backfill".into(),
            cursor: None,
            time: None,
            changes,
        }];
        removed += store.expand_snapshots(&mut events)?;
        store.apply(&events)?;
        Ok(())
    })?;
    Ok((did, RepoStats { records, removed }))
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
    let mut seen = std::collections::HashSet::new();
    let mut listed = Vec::new();
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
                if listed.is_empty() && cursor.is_none() {
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
            for r in page["repos"].as_array().into_iter().flatten() {
                if let Some(did) = r["did"].as_str() {
                    if seen.insert(did.to_string()) {
                        listed.push(Listed {
                            did: did.to_string(),
                            rev: None,
                        });
                    }
                }
            }
            cursor = page["cursor"].as_str().map(str::to_string);
            if cursor.is_none() || page["repos"].as_array().is_none_or(|a| a.is_empty()) {
                continue 'collections;
            }
        }
    }
    if !collections.is_empty() && !seen.is_empty() {
        return Ok((listed, "listReposByCollection"));
    }
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{host}/xrpc/com.atproto.sync.listRepos?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: serde_json::Value = get_with_retries(client, &url)?.error_for_status()?.json()?;
        for r in page["repos"].as_array().into_iter().flatten() {
            let active = r["active"].as_bool().unwrap_or(true);
            if let (Some(did), true) = (r["did"].as_str(), active) {
                listed.push(Listed {
                    did: did.to_string(),
                    rev: r["rev"].as_str().map(str::to_string),
                });
            }
        }
        cursor = page["cursor"].as_str().map(str::to_string);
        if cursor.is_none() || page["repos"].as_array().is_none_or(|a| a.is_empty()) {
            break;
        }
    }
    Ok((listed, "listRepos"))
}

/// Runs `lexview backfill`.
pub fn run(args: BackfillArgs) -> anyhow::Result<()> {
    let catalog = Arc::new(crate::serve::load_catalog(&args.lexicons)?);
    let metrics = Arc::new(Metrics::default());
    let ingestor = Ingestor::new(catalog.clone(), metrics.clone());
    let mut store = Store::open(&args.data)
        .with_context(|| format!("cannot open the store in {}", args.data.display()))?;
    let resolver: Option<Arc<dyn Resolve>> = match args.verify {
        crate::serve::Verify::None => None,
        crate::serve::Verify::Full => Some(crate::verify::resolver(
            &args.plc,
            args.did_docs.as_deref(),
        )?),
    };
    let started = Instant::now();
    let (mut repos, mut records, mut failed) = (0usize, 0usize, 0usize);
    let mut report = |did: &str, r: anyhow::Result<RepoStats>, total: usize| match r {
        Ok(s) => {
            repos += 1;
            records += s.records;
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            let eta =
                (total.saturating_sub(repos + failed)) as f64 * secs / (repos + failed) as f64;
            eprintln!(
                "[{}/{total}] {did}: {} records ({} removed) | {:.0} records/s, ETA {:.0} s",
                repos + failed,
                s.records,
                s.removed,
                records as f64 / secs,
                eta
            );
        }
        Err(e) => {
            failed += 1;
            eprintln!("[{}/{total}] {did}: failed: {e:#}", repos + failed);
        }
    };
    if !args.cars.is_empty() {
        let total = args.cars.len();
        for path in &args.cars {
            let car = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let r = apply_repo(&mut store, &ingestor, resolver.as_deref(), &car);
            let name = path.display().to_string();
            match r {
                Ok((did, s)) => report(&did, Ok(s), total),
                Err(e) => report(&name, Err(e), total),
            }
        }
    } else if let Some(host) = &args.host {
        let host = host.trim_end_matches('/');
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .user_agent(concat!("lexview/", env!("CARGO_PKG_VERSION")))
            .build()?;
        // Every repository first (the listing is small next to the CARs).
        let collections: Vec<String> = catalog.records().map(|r| r.nsid.clone()).collect();
        let (listed, how) = list_repos(&client, host, &collections)?;
        eprintln!("{} repositories listed by {how}", listed.len());
        let done: std::collections::HashMap<String, String> =
            store.readers().with_blocking(|c| {
                let mut stmt = c.prepare("SELECT did, rev FROM backfill_repos")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })?;
        let total = listed.len();
        let todo: Vec<_> = listed
            .into_iter()
            .filter(|r| match (&r.rev, done.get(&r.did)) {
                (Some(rev), Some(at)) => rev != at,
                (None, at) => at.is_none(),
                (_, None) => true,
            })
            .collect();
        eprintln!(
            "{total} repositories on {host}; {} already backfilled at their current rev",
            total - todo.len()
        );
        for Listed { did, .. } in todo {
            let url = format!("{host}/xrpc/com.atproto.sync.getRepo?did={did}");
            let r = get_with_retries(&client, &url)
                .and_then(|resp| Ok(resp.error_for_status()?.bytes()?))
                .and_then(|car| {
                    Ok(apply_repo(&mut store, &ingestor, resolver.as_deref(), &car)?.1)
                });
            report(&did, r, total);
        }
    } else {
        bail!("give --host URL (a PDS or relay) or --car FILE...");
    }
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
    for (key, cid) in &repo.records {
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
