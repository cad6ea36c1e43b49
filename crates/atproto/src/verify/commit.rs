//! A signed repository commit: its unsigned bytes, its signature and what
//! it says (DID, rev, MST root).

use cid::Cid;

use super::VerifyError;
use crate::keys::PublicKey;

/// A signed repo commit (v3; v2 differs only in its version).
#[derive(Debug, serde::Deserialize)]
struct SignedCommit {
    did: String,
    version: u64,
    data: Cid,
    rev: String,
    prev: Option<Cid>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

/// The commit without `sig`, fields in DAG-CBOR key order (length, then
/// bytes: did, rev, data, prev, version), as it was signed.
#[derive(serde::Serialize)]
struct UnsignedCommit<'a> {
    did: &'a str,
    rev: &'a str,
    data: &'a Cid,
    prev: &'a Option<Cid>,
    version: u64,
}

/// What a verified commit says.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedCommit {
    pub did: String,
    pub rev: String,
    pub data: Cid,
    /// The Sync 1.1 proof was checked too (by a pre-check).
    pub proven: bool,
}

/// Checks a commit block's signature with `key` and that it belongs to
/// `repo` at `rev`.
pub fn verify_commit(
    block: &[u8],
    repo: &str,
    rev: &str,
    key: &PublicKey,
) -> Result<VerifiedCommit, VerifyError> {
    let c: SignedCommit =
        crate::decode::from_dag_cbor(block).map_err(|e| VerifyError::CommitBlock(e.to_string()))?;
    if c.version != 3 && c.version != 2 {
        return Err(VerifyError::Version(c.version));
    }
    if c.did != repo {
        return Err(VerifyError::DidMismatch {
            commit: c.did,
            repo: repo.to_string(),
        });
    }
    if c.rev != rev {
        return Err(VerifyError::RevMismatch {
            commit: c.rev,
            event: rev.to_string(),
        });
    }
    let unsigned = serde_ipld_dagcbor::to_vec(&UnsignedCommit {
        did: &c.did,
        rev: &c.rev,
        data: &c.data,
        prev: &c.prev,
        version: c.version,
    })
    .map_err(|e| VerifyError::CommitBlock(e.to_string()))?;
    key.verify(&unsigned, &c.sig)?;
    Ok(VerifiedCommit {
        did: c.did,
        rev: c.rev,
        data: c.data,
        proven: false,
    })
}

/// The MST root (`data`) of a commit block, unverified.
pub fn commit_data(block: &[u8]) -> Result<Cid, VerifyError> {
    #[derive(serde::Deserialize)]
    struct Data {
        data: Cid,
    }
    crate::decode::from_dag_cbor::<Data>(block)
        .map(|d| d.data)
        .map_err(|e| VerifyError::CommitBlock(e.to_string()))
}
