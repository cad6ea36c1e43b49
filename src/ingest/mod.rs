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

/// A log line said at most once per interval: an outage makes the same
/// warning for every commit, and a log is for people.
pub struct Throttle {
    every: std::time::Duration,
    /// When it was last said, and how many times it was not said since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: std::time::Duration) -> Throttle {
        Throttle {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(times not said since)` when the line is due now.
    pub fn due(&self) -> Option<u64> {
        let mut state = self.state.lock().expect("throttle lock");
        let now = std::time::Instant::now();
        match state.0 {
            Some(at) if now.duration_since(at) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let folded = state.1;
                *state = (Some(now), 0);
                Some(folded)
            }
        }
    }
}
