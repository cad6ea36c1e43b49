//! lexview: an atproto AppView indexer for any record type a lexicon describes.
//!
//! Data flows one way: `source` (firehose, replay file) -> `decode` (frames,
//! CAR, DAG-CBOR) -> `lexicon` (validation) -> `pipeline` (index events) ->
//! `index` (DuckDB writer) -> `api` (XRPC, GraphQL). See ARCHITECTURE.md.

pub mod api;
pub mod backfill;
pub mod bench;
pub mod decode;
pub mod export;
pub mod handles;
pub mod index;
pub mod lexicon;
pub mod loadbench;
pub mod metrics;
pub mod mst;
pub mod pipeline;
pub mod repo;
pub mod resync;
pub mod search;
pub mod serve;
pub mod source;
pub mod sql;
pub mod syntax;
pub mod verify;
