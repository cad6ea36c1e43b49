//! CAR v1 slices: the `blocks` of a `#commit` or `#sync`, or a whole repo.
//!
//! [`read_car`] indexes the blocks without copying them; it does not check that a block's bytes hash to its
//! CID, so [`verify_block`] does (sha2-256, the only hash atproto uses). The
//! ingest path checks every block it reads a record from; MST nodes and the
//! commit block are checked by commit verification, which walks them.

use std::collections::HashMap;

use cid::Cid;
use sha2::{Digest, Sha256};

const SHA2_256: u64 = 0x12;

/// Why a CAR slice could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    #[error("malformed CAR: {0}")]
    Malformed(String),
    #[error("block {cid} does not hash to its CID")]
    HashMismatch { cid: Cid },
    #[error("block {cid} uses unsupported hash function 0x{code:x}")]
    UnsupportedHash { cid: Cid, code: u64 },
}

/// The blocks of a CAR (not yet hash-checked: see [`verify_block`]) and its
/// roots, borrowed from the CAR's bytes.
#[derive(Debug, Default)]
pub struct Blocks<'a> {
    pub roots: Vec<Cid>,
    /// Keyed with foldhash: SipHash over a CID's 64-byte digest array cost
    /// ~6% of ingest.
    pub blocks: HashMap<Cid, &'a [u8], foldhash::fast::RandomState>,
}

#[derive(serde::Deserialize)]
struct Header {
    version: u64,
    roots: Vec<Cid>,
}

/// Indexes every block of an in-memory CAR v1 without copying it. Hashes are
/// not checked here: call [`verify_block`] on each block before trusting it.
///
/// Written by hand on purpose: iroh-car (kept as the test oracle) is an async
/// reader that copies every block into its own `Vec`; on the firehose hot path
/// that cost ~12% of ingest for frames we already hold in memory. The framing
/// is a varint length before the header and before each block; the header is
/// DAG-CBOR (serde_ipld_dagcbor) and each CID is parsed by the `cid` crate.
pub fn read_car(bytes: &[u8]) -> Result<Blocks<'_>, CarError> {
    let malformed = |what: &str| CarError::Malformed(what.to_string());
    let (header, mut rest) = split_section(bytes).ok_or_else(|| malformed("truncated header"))?;
    let header: Header = crate::decode::from_dag_cbor(header)
        .map_err(|e| CarError::Malformed(format!("header: {e}")))?;
    if header.version != 1 {
        return Err(CarError::Malformed(format!(
            "unsupported CAR version {}",
            header.version
        )));
    }
    let mut blocks = HashMap::default();
    while !rest.is_empty() {
        let (section, tail) = split_section(rest).ok_or_else(|| malformed("truncated block"))?;
        let mut cursor = std::io::Cursor::new(section);
        let cid = Cid::read_bytes(&mut cursor)
            .map_err(|e| CarError::Malformed(format!("block CID: {e}")))?;
        blocks.insert(cid, &section[cursor.position() as usize..]);
        rest = tail;
    }
    Ok(Blocks {
        roots: header.roots,
        blocks,
    })
}

/// Splits one varint-length-prefixed section off the front of `bytes`.
fn split_section(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = unsigned_varint::decode::u64(bytes).ok()?;
    let len = usize::try_from(len).ok()?;
    (len > 0 && len <= rest.len()).then(|| rest.split_at(len))
}

/// Checks that `data` hashes to `cid`.
pub fn verify_block(cid: &Cid, data: &[u8]) -> Result<(), CarError> {
    let mh = cid.hash();
    if mh.code() != SHA2_256 {
        return Err(CarError::UnsupportedHash {
            cid: *cid,
            code: mh.code(),
        });
    }
    if Sha256::digest(data).as_slice() != mh.digest() {
        return Err(CarError::HashMismatch { cid: *cid });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// iroh-car's reading of `bytes`, as the oracle.
    fn oracle(bytes: &[u8]) -> (Vec<Cid>, Vec<(Cid, Vec<u8>)>) {
        futures::executor::block_on(async {
            let mut reader = iroh_car::CarReader::new(bytes).await.unwrap();
            let roots = reader.header().roots().to_vec();
            let mut blocks = Vec::new();
            while let Some(b) = reader.next_block().await.unwrap() {
                blocks.push(b);
            }
            (roots, blocks)
        })
    }

    #[test]
    fn reads_what_iroh_car_reads_from_real_repos_and_frames() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/repos");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "car") {
                let bytes = std::fs::read(&path).unwrap();
                let (roots, expected) = oracle(&bytes);
                let got = read_car(&bytes).unwrap();
                assert_eq!(got.roots, roots, "{}", path.display());
                // A CAR may repeat a block (paul_staging does); the index holds it once.
                let distinct: std::collections::HashSet<_> = expected.iter().map(|b| b.0).collect();
                assert_eq!(got.blocks.len(), distinct.len(), "{}", path.display());
                for (cid, data) in &expected {
                    assert_eq!(got.blocks[cid], &data[..]);
                    verify_block(cid, data).unwrap();
                }
                checked += 1;
            }
        }
        assert!(checked > 0, "no CAR fixtures under {dir}");
    }

    #[test]
    fn truncated_and_garbage_cars_are_malformed() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/repos");
        let path = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "car"))
            .unwrap();
        let bytes = std::fs::read(path).unwrap();
        for cut in [1, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(read_car(&bytes[..cut]), Err(CarError::Malformed(_))),
                "cut at {cut}"
            );
        }
        assert!(matches!(read_car(&[0xff; 8]), Err(CarError::Malformed(_))));
        assert!(matches!(read_car(&[]), Err(CarError::Malformed(_))));
    }
}
