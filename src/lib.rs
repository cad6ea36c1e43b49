//! lexview: an atproto AppView indexer for any record type a lexicon describes.
//!
//! Data flows one way: `source` (firehose, Jetstream, replay file) -> `ingest`
//! (decode, verify and validate with the protocol crate `lexview_atproto`,
//! extract links) -> `index` (the DuckDB writer and store, the tantivy search
//! index) -> `api` (XRPC, GraphQL). `cli` wires them into commands. See
//! ARCHITECTURE.md.

pub use lexview_atproto::{decode, encode, identity, keys, lexicon, net, repo, syntax, verify};

pub mod api;
pub mod cli;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod source;
