//! Sync 1.1 proofs: a commit's ops, undone on the MST nodes its frame
//! carries, must give the event's `prevData`.

use super::VerifyError;
use crate::decode::car::verify_block;
use crate::decode::frame::Commit;

/// Sync 1.1: the commit's ops, undone on the MST nodes the frame carries
/// (each hash-checked), must give the event's `prevData`. A frame without
/// `prevData` (before Sync 1.1) still binds its ops to the signed root
/// `data`: each op's key must hold its new value there (or be absent, for
/// a delete) on the nodes the frame carries; a frame that does not carry
/// them proves nothing (`VerifyError::Unproven`: the repository is resynced
/// instead of the ops trusted).
pub fn check_proof(
    c: &Commit<'_>,
    blocks: &std::collections::HashMap<cid::Cid, &[u8], foldhash::fast::RandomState>,
    data: &cid::Cid,
) -> Result<(), VerifyError> {
    let get = |cid: &cid::Cid| {
        blocks
            .get(cid)
            .filter(|b| verify_block(cid, b).is_ok())
            .copied()
    };
    let Some(prev_data) = c.prev_data else {
        return check_ops_at_root(c, data, &get);
    };
    let ops: Vec<super::mst::Op> = c.ops.iter().map(Into::into).collect();
    match super::mst::invert(*data, &ops, &get) {
        Ok(root) if root == prev_data => Ok(()),
        Ok(root) => Err(VerifyError::Proof(format!(
            "ops inverted give {root}, not prevData {prev_data}"
        ))),
        Err(e) => Err(VerifyError::Proof(e.to_string())),
    }
}

/// Each op of `c` against the tree at `data`: a create or update's key
/// holds its new value, a delete's key is absent.
fn check_ops_at_root<'b>(
    c: &Commit<'_>,
    data: &cid::Cid,
    get: &super::mst::Get<'b>,
) -> Result<(), VerifyError> {
    for op in &c.ops {
        match super::mst::lookup(*data, op.path.as_bytes(), get) {
            Ok(found) if found == op.cid => {}
            Ok(found) => {
                return Err(VerifyError::Proof(format!(
                    "op on {} says {:?}, the signed tree holds {found:?}",
                    op.path, op.cid
                )))
            }
            Err(super::mst::ProofError::Incomplete(_)) => {
                return Err(VerifyError::Unproven(format!(
                    "the frame does not carry the tree nodes of {}",
                    op.path
                )))
            }
            Err(e) => return Err(VerifyError::Proof(e.to_string())),
        }
    }
    Ok(())
}
