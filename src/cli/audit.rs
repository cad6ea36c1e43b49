//! `lexview audit DID`: compares the index with a repository's current
//! `getRepo` and prints every difference.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use duckdb::params;

use crate::identity::{HttpResolver, Resolve};
use crate::ingest::resync::{with_retries, REPO_DEADLINE, REPO_LIMIT};
use crate::ingest::Ingestor;
use crate::metrics::Metrics;
use crate::net::{Http, Trust};
use crate::repo::read_repo;

/// What `lexview audit` is asked to compare.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The repository to compare with the index.
    pub did: String,
    /// Where to fetch it (`getRepo`); None: the PDS its DID document names.
    pub host: Option<String>,
    pub data: PathBuf,
    pub lexicons: PathBuf,
    /// PLC directory, to find the PDS of a did:plc.
    pub plc: String,
    /// Hosts that DID documents name may be plain HTTP on private
    /// addresses (tests only; see `net`).
    pub allow_private_hosts: bool,
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

/// Runs `lexview audit DID`: prints every difference; fails if there is one.
pub fn run(args: AuditConfig) -> anyhow::Result<()> {
    let catalog = Arc::new(crate::cli::load_catalog(&args.lexicons)?);
    let ingestor = Ingestor::new(catalog, Arc::new(Metrics::default()));
    let http = Http::new(args.allow_private_hosts)?;
    // A host the operator gives is fetched as given; the PDS a DID document
    // names is a host the network names.
    let (host, trust) = match &args.host {
        Some(h) => (h.trim_end_matches('/').to_string(), Trust::Configured),
        None => (
            HttpResolver::new(&args.plc, Duration::from_secs(60), http.clone())
                .pds_endpoint(&args.did)?,
            Trust::Named,
        ),
    };
    let url = format!("{host}/xrpc/com.atproto.sync.getRepo?did={}", args.did);
    let car = with_retries(|| http.get_bytes(&url, trust, REPO_DEADLINE, REPO_LIMIT))?;
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
