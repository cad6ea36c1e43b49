//! `replay:PATH`: a recorded frames file, `[u32 little-endian length][frame]`
//! repeated, the format of the fixtures and of `pds.js --capture`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{RawFrame, Wire};

/// Why a frames file could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: truncated frame at byte {offset}: length prefix says {len} bytes, {available} left")]
    Truncated {
        path: String,
        offset: usize,
        len: usize,
        available: usize,
    },
}

/// Where a frames file ends early: the frame's offset, its announced length,
/// and the bytes that are left.
pub type Truncation = (usize, usize, usize);

/// Splits a frames file into frames. A truncated tail is an error reported
/// with its offset; the frames before it are still returned.
pub fn split_frames(data: &[u8]) -> (Vec<&[u8]>, Option<Truncation>) {
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        if data.len() - pos < 4 {
            return (frames, Some((pos, 4, data.len() - pos)));
        }
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let start = pos + 4;
        if data.len() - start < len {
            return (frames, Some((pos, len, data.len() - start)));
        }
        frames.push(&data[start..start + len]);
        pos = start + len;
    }
    (frames, None)
}

/// Sends every frame of the file, then returns. Pacing is optional.
pub async fn run(
    source: Arc<str>,
    path: &Path,
    rate: Option<u32>,
    tx: mpsc::Sender<RawFrame>,
    shutdown: CancellationToken,
) -> Result<usize, ReplayError> {
    let display = path.display().to_string();
    let data = tokio::fs::read(path)
        .await
        .map_err(|source| ReplayError::Io {
            path: display.clone(),
            source,
        })?;
    let (frames, truncated) = split_frames(&data);
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1) as f64));
    let mut sent = 0;
    for frame in frames {
        if shutdown.is_cancelled() {
            return Ok(sent);
        }
        if tx
            .send(RawFrame {
                source: source.clone(),
                bytes: frame.to_vec(),
                wire: Wire::Firehose,
            })
            .await
            .is_err()
        {
            return Ok(sent);
        }
        sent += 1;
        if let Some(i) = interval {
            tokio::time::sleep(i).await;
        }
    }
    if let Some((offset, len, available)) = truncated {
        return Err(ReplayError::Truncated {
            path: display,
            offset,
            len,
            available,
        });
    }
    Ok(sent)
}
