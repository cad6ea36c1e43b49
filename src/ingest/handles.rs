//! Handle checks after commit: the handles a committed batch asserted (its
//! `#identity` events) are checked both ways on a thread of their own
//! (`identity::handles::HandleChecker`); until a check ends the claimed
//! handle is shown. Results come back to the writer as
//! `Change::HandleChecked`, which applies only while the handle is still the
//! claimed one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::identity::handles::HandleChecker;
use crate::index::event::{Change, IndexEvent};

/// The checking thread's inbox: `(did, handle)` of committed `#identity`
/// events.
pub struct HandleQueue(std::sync::Mutex<std::sync::mpsc::Sender<(String, String)>>);

impl HandleQueue {
    /// Queues the handles a committed batch asserted.
    pub fn on_commit(&self, batch: &[IndexEvent]) {
        let tx = self.0.lock().expect("handle queue");
        for ev in batch {
            for c in &ev.changes {
                if let Change::Identity {
                    did,
                    handle: Some(handle),
                } = c
                {
                    let _ = tx.send((did.clone(), handle.clone()));
                }
            }
        }
    }
}

/// Starts the checking thread; results go to the writer through `tx`. It
/// stops at `shutdown` (so the writer can drain).
pub fn start(
    checker: HandleChecker,
    tx: mpsc::Sender<IndexEvent>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<HandleQueue>> {
    let (in_tx, in_rx) = std::sync::mpsc::channel::<(String, String)>();
    std::thread::Builder::new()
        .name("lexview-handles".into())
        .spawn(move || loop {
            if shutdown.is_cancelled() {
                return;
            }
            let (did, handle) = match in_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(job) => job,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let valid = checker.check(&did, &handle);
            crate::metrics::Metrics::inc(if valid {
                &metrics.handles_verified_total
            } else {
                &metrics.handles_invalid_total
            });
            if !valid {
                tracing::info!(
                    did,
                    handle,
                    "handle does not verify: shown as handle.invalid"
                );
            }
            let ev = IndexEvent {
                source: "handles".into(),
                changes: vec![Change::HandleChecked { did, handle, valid }],
                ..Default::default()
            };
            if tx.blocking_send(ev).is_err() {
                return;
            }
        })?;
    Ok(Arc::new(HandleQueue(std::sync::Mutex::new(in_tx))))
}
