//! The index: domain events, link extraction, the DuckDB store and its writer.

pub mod batch;
pub mod event;
pub mod links;
pub mod store;
pub mod writer;
