//! Ingest: from raw frames to index events. `ingestor` turns one frame into
//! one event (decode, filter by collection, verify, validate, extract
//! links); `run` is the ingest thread of `serve`; `resync` fetches whole
//! repositories when the stream cannot be trusted to be complete and holds
//! their live events back meanwhile; `backfill` applies whole repositories
//! and lists a host's; `handles` checks committed handles both ways.

pub mod backfill;
pub mod handles;
pub mod ingestor;
pub mod resync;
pub mod run;

pub use ingestor::{IngestError, Ingestor, Outcome};
