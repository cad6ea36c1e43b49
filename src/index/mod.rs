//! The index: domain events, link extraction, the DuckDB store and its
//! writer, and the full-text search index derived from the store.

pub mod batch;
pub mod event;
pub mod links;
pub mod search;
pub mod store;
pub mod writer;
