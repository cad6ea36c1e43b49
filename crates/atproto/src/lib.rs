//! The atproto building blocks lexview is made of, with nothing of storage
//! or serving: protocol strings (`syntax`), firehose frames, CAR slices and
//! DAG-CBOR records (`decode`, and `encode` for the way back), whole
//! repositories (`repo`), signing keys (`keys`), DID documents and handles
//! (`identity`, fetched through `net`), commit signatures and Sync 1.1 proofs (`verify`), and
//! lexicon loading and validation (`lexicon`).

pub mod decode;
pub mod encode;
pub mod identity;
pub mod keys;
pub mod lexicon;
pub mod net;
pub mod repo;
pub mod syntax;
pub mod verify;
