//! Writing what `decode` reads: record blocks and their CIDs, commit blocks,
//! CAR files and `#commit` frames. For tools, benchmarks and tests that need
//! repositories or frames (including shapes production never sends).

use cid::Cid;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Why a value could not be encoded as DAG-CBOR.
pub type EncodeError = serde_ipld_dagcbor::EncodeError<std::collections::TryReserveError>;

/// The CID of a DAG-CBOR block (sha2-256).
pub fn dag_cbor_cid(bytes: &[u8]) -> Cid {
    let hash = multihash::Multihash::<64>::wrap(0x12, &Sha256::digest(bytes))
        .expect("a 32-byte digest fits");
    Cid::new_v1(0x71, hash)
}

/// A v3 commit block over the MST root `data` (for generated repositories;
/// `sig` is not checked by anything that reads it back unverified). Fields
/// in DAG-CBOR key order: did, rev, sig, data, prev, version.
pub fn commit_block(did: &str, rev: &str, data: Cid, sig: &[u8]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Commit<'a> {
        did: &'a str,
        rev: &'a str,
        #[serde(with = "serde_bytes")]
        sig: &'a [u8],
        data: Cid,
        prev: Option<Cid>,
        version: u64,
    }
    serde_ipld_dagcbor::to_vec(&Commit {
        did,
        rev,
        sig,
        data,
        prev: None,
        version: 3,
    })
    .expect("a commit serialises")
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

#[derive(Serialize)]
struct Header<'a> {
    op: i64,
    t: &'a str,
}

#[derive(Serialize)]
struct OpOut {
    action: &'static str,
    path: String,
    cid: Option<Cid>,
    prev: Option<Cid>,
}

#[derive(Serialize)]
struct CommitOut {
    seq: i64,
    repo: String,
    rev: String,
    since: Option<String>,
    commit: Cid,
    #[serde(with = "serde_bytes")]
    blocks: Vec<u8>,
    ops: Vec<OpOut>,
    #[serde(rename = "tooBig")]
    too_big: bool,
    rebase: bool,
    blobs: Vec<Cid>,
    time: String,
}

/// One `#commit` frame (header + body) with a real CAR slice: `blocks` plus a
/// commit block for the repo. Used by the benchmark and by tests that need
/// frames production never sent (tooBig, tampered, legacy shapes).
pub fn commit_frame(
    seq: i64,
    repo: &str,
    rev: &str,
    ops: Vec<(&'static str, String, Option<Cid>)>,
    mut blocks: Vec<(Cid, Vec<u8>)>,
    too_big: bool,
    time: &str,
) -> Result<Vec<u8>, EncodeError> {
    let commit_block =
        serde_ipld_dagcbor::to_vec(&serde_json::json!({"did": repo, "rev": rev, "version": 3}))?;
    let commit_cid = dag_cbor_cid(&commit_block);
    blocks.push((commit_cid, commit_block));
    let body = CommitOut {
        seq,
        repo: repo.to_string(),
        rev: rev.to_string(),
        since: None,
        commit: commit_cid,
        blocks: if too_big {
            Vec::new()
        } else {
            write_car(commit_cid, &blocks)
        },
        ops: ops
            .into_iter()
            .map(|(action, path, cid)| OpOut {
                action,
                path,
                cid,
                prev: None,
            })
            .collect(),
        too_big,
        rebase: false,
        blobs: Vec::new(),
        time: time.to_string(),
    };
    let mut frame = serde_ipld_dagcbor::to_vec(&Header {
        op: 1,
        t: "#commit",
    })?;
    frame.extend(serde_ipld_dagcbor::to_vec(&body)?);
    Ok(frame)
}

/// A record's DAG-CBOR block and its CID.
pub fn record_block(record: &serde_json::Value) -> Result<(Cid, Vec<u8>), EncodeError> {
    let bytes = serde_ipld_dagcbor::to_vec(record)?;
    Ok((dag_cbor_cid(&bytes), bytes))
}
