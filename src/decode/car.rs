//! CAR v1 slices: the `blocks` of a `#commit` or `#sync`, or a whole repo.
//!
//! Parsing is iroh-car's; it does not check that a block's bytes hash to its
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

/// The blocks of a CAR (not yet hash-checked: see [`verify_block`]) and its roots.
#[derive(Debug, Default)]
pub struct Blocks {
    pub roots: Vec<Cid>,
    pub blocks: HashMap<Cid, Vec<u8>>,
}

/// Reads every block of an in-memory CAR. Hashes are not checked here: call
/// [`verify_block`] on each block before trusting its bytes.
pub fn read_car(bytes: &[u8]) -> Result<Blocks, CarError> {
    // The reader is async; over a byte slice every poll is immediately ready.
    futures::executor::block_on(async {
        let mut reader = iroh_car::CarReader::new(bytes)
            .await
            .map_err(|e| CarError::Malformed(e.to_string()))?;
        let roots = reader.header().roots().to_vec();
        let mut blocks = HashMap::new();
        while let Some((cid, data)) = reader
            .next_block()
            .await
            .map_err(|e| CarError::Malformed(e.to_string()))?
        {
            blocks.insert(cid, data);
        }
        Ok(Blocks { roots, blocks })
    })
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
