//! Wire formats: firehose frames, CAR slices, and DAG-CBOR records.

pub mod car;
pub mod frame;
pub mod value;

/// How deeply DAG-CBOR from the network may nest. serde_ipld_dagcbor
/// recurses once per level with no limit of its own, so a small block
/// nested thousands deep would overflow the stack of the thread decoding
/// it; every untrusted item is scanned first, iteratively bounded
/// (`frame::cbor_item_len`), and refused past this depth.
pub const MAX_DEPTH: usize = frame::MAX_DEPTH;

/// Why bytes are not one acceptable DAG-CBOR item.
#[derive(Debug, thiserror::Error)]
pub enum CborError {
    #[error(
        "not one DAG-CBOR item (truncated, trailing bytes, or nested deeper than {MAX_DEPTH})"
    )]
    Shape,
    #[error("{0}")]
    Decode(String),
}

/// Deserializes the one DAG-CBOR item `bytes` holds, after checking its
/// shape (see [`MAX_DEPTH`]).
pub fn from_dag_cbor<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CborError> {
    if frame::cbor_item_len(bytes) != Some(bytes.len()) {
        return Err(CborError::Shape);
    }
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| CborError::Decode(e.to_string()))
}
