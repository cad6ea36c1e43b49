//! Sync 1.1 proofs: a commit's ops, undone on the MST nodes its frame
//! carries, must give the event's `prevData`.

use super::VerifyError;
use crate::decode::car::verify_block;
use crate::decode::frame::Commit;

/// Sync 1.1: the commit's ops, undone on the MST nodes the frame carries
/// (each hash-checked), must give the event's `prevData`. Frames without
/// `prevData` (before Sync 1.1) have nothing to check.
pub fn check_proof(
    c: &Commit<'_>,
    blocks: &std::collections::HashMap<cid::Cid, &[u8], foldhash::fast::RandomState>,
    data: &cid::Cid,
) -> Result<(), VerifyError> {
    let Some(prev_data) = c.prev_data else {
        return Ok(());
    };
    let ops: Vec<super::mst::Op> = c.ops.iter().map(Into::into).collect();
    let get = |cid: &cid::Cid| {
        blocks
            .get(cid)
            .filter(|b| verify_block(cid, b).is_ok())
            .copied()
    };
    match super::mst::invert(*data, &ops, &get) {
        Ok(root) if root == prev_data => Ok(()),
        Ok(root) => Err(VerifyError::Proof(format!(
            "ops inverted give {root}, not prevData {prev_data}"
        ))),
        Err(e) => Err(VerifyError::Proof(e.to_string())),
    }
}
