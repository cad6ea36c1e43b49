//! Whole repositories (a `getRepo` CAR): the signed commit and every record,
//! found by walking the MST from the commit's `data` root.
//!
//! The MST walk is written here: it is a short in-order traversal of nodes
//! `{l, e: [{p, k, v, t}]}` with prefix-compressed keys (the repository spec),
//! and the crates that do it (atrium-repo, jacquard-repo) bring their own
//! CAR, CID and async stacks. Every block read is hash-checked against its CID.

use cid::Cid;

use crate::decode::car::{read_car, verify_block, Blocks, CarError};

/// Why a repository could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{0}")]
    Car(#[from] CarError),
    #[error("repository CAR has no root")]
    NoRoot,
    #[error("block {0} is missing from the repository")]
    Missing(Cid),
    #[error("commit block: {0}")]
    Commit(String),
    #[error("MST node {cid}: {message}")]
    Node { cid: Cid, message: String },
}

/// The unsigned fields of a commit that the walk needs.
#[derive(serde::Deserialize)]
struct CommitFields {
    did: String,
    /// Absent in legacy (v2) commits.
    rev: Option<String>,
    data: Cid,
}

#[derive(serde::Deserialize)]
struct Node {
    l: Option<Cid>,
    e: Vec<Entry>,
}

#[derive(serde::Deserialize)]
struct Entry {
    p: usize,
    #[serde(with = "serde_bytes")]
    k: Vec<u8>,
    v: Cid,
    t: Option<Cid>,
}

/// A repository read from its CAR: the commit and its records in key order.
pub struct Repo<'a> {
    pub did: String,
    /// None for a legacy (v2) commit.
    pub rev: Option<String>,
    /// The commit block's CID and bytes (for signature checks).
    pub commit: (Cid, &'a [u8]),
    /// `(collection/rkey, record CID)`, in key order.
    pub records: Vec<(String, Cid)>,
    blocks: Blocks<'a>,
}

impl<'a> Repo<'a> {
    /// A record block, hash-checked.
    pub fn block(&self, cid: &Cid) -> Result<&'a [u8], RepoError> {
        let data = *self
            .blocks
            .blocks
            .get(cid)
            .ok_or(RepoError::Missing(*cid))?;
        verify_block(cid, data)?;
        Ok(data)
    }
}

/// Reads a repository CAR: its root commit and the keys of every record.
pub fn read_repo(car: &[u8]) -> Result<Repo<'_>, RepoError> {
    let blocks = read_car(car)?;
    let root = *blocks.roots.first().ok_or(RepoError::NoRoot)?;
    let get = |cid: &Cid| -> Result<&[u8], RepoError> {
        let data = *blocks.blocks.get(cid).ok_or(RepoError::Missing(*cid))?;
        verify_block(cid, data)?;
        Ok(data)
    };
    let commit_block = get(&root)?;
    let commit: CommitFields = serde_ipld_dagcbor::from_slice(commit_block)
        .map_err(|e| RepoError::Commit(e.to_string()))?;
    let mut records = Vec::new();
    // An explicit stack (node CID, or a ready record) instead of recursion:
    // a hostile repository cannot overflow it.
    enum Step {
        Node(Cid),
        Record(String, Cid),
    }
    let mut stack = vec![Step::Node(commit.data)];
    while let Some(step) = stack.pop() {
        let cid = match step {
            Step::Record(key, v) => {
                records.push((key, v));
                continue;
            }
            Step::Node(cid) => cid,
        };
        let node: Node =
            serde_ipld_dagcbor::from_slice(get(&cid)?).map_err(|e| RepoError::Node {
                cid,
                message: e.to_string(),
            })?;
        // In order: l, then each entry's key followed by its right subtree.
        let mut ordered = Vec::with_capacity(node.e.len() * 2 + 1);
        if let Some(l) = node.l {
            ordered.push(Step::Node(l));
        }
        let mut key: Vec<u8> = Vec::new();
        for e in node.e {
            if e.p > key.len() {
                return Err(RepoError::Node {
                    cid,
                    message: format!("prefix length {} beyond the previous key", e.p),
                });
            }
            key.truncate(e.p);
            key.extend_from_slice(&e.k);
            let k = String::from_utf8(key.clone()).map_err(|_| RepoError::Node {
                cid,
                message: "key is not UTF-8".into(),
            })?;
            ordered.push(Step::Record(k, e.v));
            if let Some(t) = e.t {
                ordered.push(Step::Node(t));
            }
        }
        stack.extend(ordered.into_iter().rev());
    }
    Ok(Repo {
        did: commit.did,
        rev: commit.rev,
        commit: (root, commit_block),
        records,
        blocks,
    })
}

/// Writes a CAR v1 with one root (a repository export, or a test's).
pub fn write_car(root: Cid, blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Header {
        roots: Vec<Cid>,
        version: u64,
    }
    let header = serde_ipld_dagcbor::to_vec(&Header {
        roots: vec![root],
        version: 1,
    })
    .expect("a CAR header serialises");
    let mut out = Vec::new();
    let mut buf = unsigned_varint::encode::usize_buffer();
    out.extend_from_slice(unsigned_varint::encode::usize(header.len(), &mut buf));
    out.extend_from_slice(&header);
    for (cid, data) in blocks {
        let c = cid.to_bytes();
        out.extend_from_slice(unsigned_varint::encode::usize(
            c.len() + data.len(),
            &mut buf,
        ));
        out.extend_from_slice(&c);
        out.extend_from_slice(data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_a_production_repo_as_goat_lists_it() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jetstream");
        let car = std::fs::read(format!("{dir}/repo.car")).unwrap();
        let repo = read_repo(&car).unwrap();
        let expected: Vec<(String, String)> =
            std::fs::read_to_string(format!("{dir}/car_expected_records.tsv"))
                .unwrap()
                .lines()
                .map(|l| {
                    let (k, c) = l.split_once('\t').unwrap();
                    (k.to_string(), c.to_string())
                })
                .collect();
        let got: Vec<(String, String)> = repo
            .records
            .iter()
            .map(|(k, c)| (k.clone(), c.to_string()))
            .collect();
        assert_eq!(got, expected);
        for (_, cid) in &repo.records {
            repo.block(cid).unwrap();
        }
        let commit = std::fs::read_to_string(format!("{dir}/car_expected_commit.txt")).unwrap();
        assert!(commit.contains(&format!("DID: {}", repo.did)));
        assert!(commit.contains(&format!("Revision: {}", repo.rev.as_deref().unwrap())));
    }

    #[test]
    fn walks_the_indigo_repos() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/repos");
        // fakermaker is a legacy v2 repository (no rev).
        for name in ["greenground.repo.car", "fakermaker.repo.car"] {
            let car = std::fs::read(format!("{dir}/{name}")).unwrap();
            let repo = read_repo(&car).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!repo.records.is_empty(), "{name}");
            let mut sorted = repo.records.clone();
            sorted.sort();
            assert_eq!(sorted, repo.records, "{name}: keys in order");
        }
    }
}
