//! Whole repositories (a `getRepo` CAR): the signed commit and every record,
//! found by walking the MST from the commit's `data` root.
//!
//! The MST walk is written here: it is a short in-order traversal of nodes
//! `{l, e: [{p, k, v, t}]}` with prefix-compressed keys (the repository spec),
//! and the crates that do it (atrium-repo, jacquard-repo) bring their own
//! CAR, CID and async stacks. Every block read is hash-checked against its CID.

use std::borrow::Cow;
use std::path::Path;

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

/// Where a repository's blocks come from: an in-memory CAR ([`Blocks`]) or a
/// CAR file read on demand ([`CarFile`]). Blocks are not hash-checked here.
pub trait BlockStore {
    fn raw(&self, cid: &Cid) -> Result<Cow<'_, [u8]>, RepoError>;
}

impl BlockStore for Blocks<'_> {
    fn raw(&self, cid: &Cid) -> Result<Cow<'_, [u8]>, RepoError> {
        self.blocks
            .get(cid)
            .map(|b| Cow::Borrowed(*b))
            .ok_or(RepoError::Missing(*cid))
    }
}

/// A CAR file indexed by one sequential scan: per block, the first 16 bytes
/// of its sha2-256 digest and its place in the file (24 bytes a block, in a
/// sorted vector), never its bytes, which are read back with `pread` and
/// hash-checked against the full CID when asked for (so a clash of
/// truncated digests could only ever fail a read, not return another
/// block). A repository of any size is walked in memory proportional to its
/// block count.
pub struct CarFile {
    file: std::fs::File,
    roots: Vec<Cid>,
    /// (digest prefix, offset << 24 | length), sorted.
    index: Vec<(u128, u64)>,
}

/// The index key of a CID: the first 16 bytes of its digest.
fn digest_key(cid: &Cid) -> Option<u128> {
    let d = cid.hash().digest();
    Some(u128::from_be_bytes(d.get(..16)?.try_into().ok()?))
}

/// Blocks of up to 16 MiB (a record is at most 1 MiB) at offsets up to 1 TiB.
const LEN_BITS: u32 = 24;

impl CarFile {
    pub fn open(path: &Path) -> Result<CarFile, RepoError> {
        use std::io::{BufRead, BufReader, Read};
        let malformed = |what: String| RepoError::Car(CarError::Malformed(what));
        let file =
            std::fs::File::open(path).map_err(|e| malformed(format!("{}: {e}", path.display())))?;
        let mut r = BufReader::with_capacity(1 << 20, &file);
        let varint = |r: &mut BufReader<&std::fs::File>| -> Result<Option<u64>, RepoError> {
            if r.fill_buf()
                .map_err(|e| malformed(e.to_string()))?
                .is_empty()
            {
                return Ok(None);
            }
            unsigned_varint::io::read_u64(&mut *r)
                .map(Some)
                .map_err(|e| malformed(format!("section length: {e}")))
        };
        let header_len = varint(&mut r)?.ok_or_else(|| malformed("empty file".into()))?;
        if header_len == 0 || header_len > 1 << 20 {
            return Err(malformed(format!("header length {header_len}")));
        }
        let mut header = vec![0; header_len as usize];
        r.read_exact(&mut header)
            .map_err(|_| malformed("truncated header".into()))?;
        #[derive(serde::Deserialize)]
        struct Header {
            version: u64,
            roots: Vec<Cid>,
        }
        let header: Header =
            crate::decode::from_dag_cbor(&header).map_err(|e| malformed(format!("header: {e}")))?;
        if header.version != 1 {
            return Err(malformed(format!(
                "unsupported CAR version {}",
                header.version
            )));
        }
        let mut offset = 0u64; // of the reader, from the file's start
        offset +=
            unsigned_varint::encode::u64(header_len, &mut unsigned_varint::encode::u64_buffer())
                .len() as u64
                + header_len;
        let mut index = Vec::new();
        while let Some(len) = varint(&mut r)? {
            offset += unsigned_varint::encode::u64(len, &mut unsigned_varint::encode::u64_buffer())
                .len() as u64;
            let mut counted = CountingReader {
                inner: &mut r,
                n: 0,
            };
            let cid =
                Cid::read_bytes(&mut counted).map_err(|e| malformed(format!("block CID: {e}")))?;
            let cid_len = counted.n;
            let data_len = len
                .checked_sub(cid_len)
                .ok_or_else(|| malformed("block shorter than its CID".into()))?;
            if data_len >= 1 << LEN_BITS || offset + cid_len >= 1 << (64 - LEN_BITS) {
                return Err(malformed(format!(
                    "block of {data_len} bytes at {offset}: too large"
                )));
            }
            let key = digest_key(&cid).ok_or_else(|| {
                RepoError::Car(CarError::UnsupportedHash {
                    cid,
                    code: cid.hash().code(),
                })
            })?;
            index.push((key, ((offset + cid_len) << LEN_BITS) | data_len));
            // Skip the data: a seek within the buffer when it is there.
            std::io::copy(&mut (&mut r).take(data_len), &mut std::io::sink())
                .ok()
                .filter(|n| *n == data_len)
                .ok_or_else(|| malformed("truncated block".into()))?;
            offset += len;
        }
        index.sort_unstable();
        index.dedup_by_key(|e| e.0);
        index.shrink_to_fit();
        Ok(CarFile {
            file,
            roots: header.roots,
            index,
        })
    }
}

/// Counts the bytes read through it (the length of a CID read from a stream).
struct CountingReader<'r, R> {
    inner: &'r mut R,
    n: u64,
}

impl<R: std::io::Read> std::io::Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

impl BlockStore for CarFile {
    fn raw(&self, cid: &Cid) -> Result<Cow<'_, [u8]>, RepoError> {
        use std::os::unix::fs::FileExt;
        let place = digest_key(cid)
            .and_then(|k| {
                let i = self.index.binary_search_by_key(&k, |e| e.0).ok()?;
                Some(self.index[i].1)
            })
            .ok_or(RepoError::Missing(*cid))?;
        let (offset, len) = (place >> LEN_BITS, place & ((1 << LEN_BITS) - 1));
        let mut data = vec![0; len as usize];
        self.file
            .read_exact_at(&mut data, offset)
            .map_err(|e| RepoError::Car(CarError::Malformed(format!("reading a block: {e}"))))?;
        Ok(Cow::Owned(data))
    }
}

/// A repository: its signed commit, and its records through an MST walk.
pub struct Repo<S> {
    pub did: String,
    /// None for a legacy (v2) commit.
    pub rev: Option<String>,
    /// The commit block's CID and bytes (for signature checks).
    pub commit: (Cid, Vec<u8>),
    data: Cid,
    store: S,
}

impl<S: BlockStore> Repo<S> {
    /// A block, hash-checked against its CID.
    pub fn block(&self, cid: &Cid) -> Result<Cow<'_, [u8]>, RepoError> {
        let data = self.store.raw(cid)?;
        verify_block(cid, &data)?;
        Ok(data)
    }

    /// Every `(collection/rkey, record CID)`, in key order, walked lazily
    /// (memory: the path from the root, not the record list).
    pub fn records(&self) -> Walk<'_, S> {
        Walk {
            repo: self,
            stack: vec![Step::Node(self.data)],
            last: None,
            empty: std::collections::HashSet::new(),
        }
    }

    fn open(store: S, roots: &[Cid]) -> Result<Repo<S>, RepoError> {
        let root = *roots.first().ok_or(RepoError::NoRoot)?;
        let commit_block = store.raw(&root)?.into_owned();
        verify_block(&root, &commit_block)?;
        let commit: CommitFields = crate::decode::from_dag_cbor(&commit_block)
            .map_err(|e| RepoError::Commit(e.to_string()))?;
        Ok(Repo {
            did: commit.did,
            rev: commit.rev,
            commit: (root, commit_block),
            data: commit.data,
            store,
        })
    }
}

/// A step of the in-order walk: a node to expand, or a record ready to go.
enum Step {
    Node(Cid),
    Record(String, Cid),
}

/// The in-order MST walk of [`Repo::records`]. An explicit stack instead of
/// recursion: a hostile repository cannot overflow it.
pub struct Walk<'r, S> {
    repo: &'r Repo<S>,
    stack: Vec<Step>,
    /// The last key returned: keys come in strictly increasing order, which
    /// also stops a DAG whose shared nodes would be walked again and again
    /// (their keys would come back).
    last: Option<String>,
    /// Nodes without keys expanded (only a root should be one): a cycle of
    /// them would emit no key to catch.
    empty: std::collections::HashSet<Cid>,
}

impl<S: BlockStore> Iterator for Walk<'_, S> {
    type Item = Result<(String, Cid), RepoError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let cid = match self.stack.pop()? {
                Step::Record(key, v) => {
                    if self.last.as_ref().is_some_and(|l| *l >= key) {
                        self.stack.clear();
                        return Some(Err(RepoError::Node {
                            cid: self.repo.commit.0,
                            message: format!("key {key:?} out of order"),
                        }));
                    }
                    self.last = Some(key.clone());
                    return Some(Ok((key, v)));
                }
                Step::Node(cid) => cid,
            };

            if let Err(e) = self.expand(cid) {
                self.stack.clear();
                return Some(Err(e));
            }
        }
    }
}

impl<S: BlockStore> Walk<'_, S> {
    fn expand(&mut self, cid: Cid) -> Result<(), RepoError> {
        let block = self.repo.block(&cid)?;
        let node: Node = crate::decode::from_dag_cbor(&block).map_err(|e| RepoError::Node {
            cid,
            message: e.to_string(),
        })?;
        if node.e.is_empty() && !self.empty.insert(cid) {
            return Err(RepoError::Node {
                cid,
                message: "an empty node appears twice: not a tree".into(),
            });
        }
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
        self.stack.extend(ordered.into_iter().rev());
        Ok(())
    }
}

/// Reads a repository from an in-memory CAR: its root commit (hash-checked).
pub fn read_repo(car: &[u8]) -> Result<Repo<Blocks<'_>>, RepoError> {
    let blocks = read_car(car)?;
    let roots = blocks.roots.clone();
    Repo::open(blocks, &roots)
}

/// Reads a repository from a CAR file, indexing it without holding it.
pub fn open_repo(path: &Path) -> Result<Repo<CarFile>, RepoError> {
    let file = CarFile::open(path)?;
    let roots = file.roots.clone();
    Repo::open(file, &roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_a_production_repo_as_goat_lists_it() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/jetstream"
        );
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
        let records: Vec<(String, Cid)> = repo.records().map(Result::unwrap).collect();
        let got: Vec<(String, String)> = records
            .iter()
            .map(|(k, c)| (k.clone(), c.to_string()))
            .collect();
        assert_eq!(got, expected);
        for (_, cid) in &records {
            repo.block(cid).unwrap();
        }
        // The same through the file index.
        let file = open_repo(std::path::Path::new(&format!("{dir}/repo.car"))).unwrap();
        assert_eq!(
            (file.did.as_str(), &file.rev, file.commit.0),
            (repo.did.as_str(), &repo.rev, repo.commit.0)
        );
        let from_file: Vec<(String, Cid)> = file.records().map(Result::unwrap).collect();
        assert_eq!(from_file, records);
        for (_, cid) in &records {
            assert_eq!(file.block(cid).unwrap(), repo.block(cid).unwrap());
        }
        let commit = std::fs::read_to_string(format!("{dir}/car_expected_commit.txt")).unwrap();
        assert!(commit.contains(&format!("DID: {}", repo.did)));
        assert!(commit.contains(&format!("Revision: {}", repo.rev.as_deref().unwrap())));
    }

    #[test]
    fn walks_the_indigo_repos() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/repos");
        // fakermaker is a legacy v2 repository (no rev).
        for name in ["greenground.repo.car", "fakermaker.repo.car"] {
            let car = std::fs::read(format!("{dir}/{name}")).unwrap();
            let repo = read_repo(&car).unwrap_or_else(|e| panic!("{name}: {e}"));
            let records: Vec<(String, Cid)> = repo.records().map(Result::unwrap).collect();
            assert!(!records.is_empty(), "{name}");
            let mut sorted = records.clone();
            sorted.sort();
            assert_eq!(sorted, records, "{name}: keys in order");
            let file = open_repo(std::path::Path::new(&format!("{dir}/{name}"))).unwrap();
            let from_file: Vec<(String, Cid)> = file.records().map(Result::unwrap).collect();
            assert_eq!(from_file, records, "{name}: the file index walks the same");
        }
    }
}
