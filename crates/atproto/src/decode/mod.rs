//! Wire formats: firehose frames, CAR slices, and DAG-CBOR records.

pub mod car;
pub mod frame;
pub mod value;
