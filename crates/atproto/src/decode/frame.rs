//! `com.atproto.sync.subscribeRepos` frames: a DAG-CBOR header `{op, t}`
//! followed by a DAG-CBOR body, decoded into borrowed, typed structs.

use cid::Cid;
use serde::Deserialize;

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame header: {0}")]
    Header(String),
    #[error("{kind} body: {message}")]
    Body { kind: String, message: String },
    #[error("unknown header op {0}")]
    UnknownOp(i64),
}

#[derive(Debug, Deserialize)]
struct Header<'a> {
    op: i64,
    #[serde(borrow, default)]
    t: Option<&'a str>,
}

/// A `#commit` body. Fields this indexer does not use (`blobs`, `rebase`,
/// legacy `prev`) are skipped without decoding.
#[derive(Debug, Deserialize)]
pub struct Commit<'a> {
    pub seq: i64,
    #[serde(borrow)]
    pub repo: &'a str,
    pub rev: &'a str,
    #[serde(default)]
    pub since: Option<&'a str>,
    pub commit: Cid,
    #[serde(borrow, with = "serde_bytes")]
    pub blocks: &'a [u8],
    pub ops: Vec<RepoOp<'a>>,
    #[serde(rename = "tooBig", default)]
    pub too_big: bool,
    #[serde(rename = "prevData", default)]
    pub prev_data: Option<Cid>,
    #[serde(borrow)]
    pub time: &'a str,
}

/// One operation of a commit: `create`, `update` or `delete` at `collection/rkey`.
#[derive(Debug, Deserialize)]
pub struct RepoOp<'a> {
    #[serde(borrow)]
    pub action: &'a str,
    #[serde(borrow)]
    pub path: &'a str,
    pub cid: Option<Cid>,
    #[serde(default)]
    pub prev: Option<Cid>,
}

impl RepoOp<'_> {
    /// `(collection, rkey)` of the op's path.
    pub fn split_path(&self) -> Option<(&str, &str)> {
        self.path.split_once('/')
    }
}

/// `#identity`: the DID's handle or document may have changed.
#[derive(Debug, Deserialize)]
pub struct Identity<'a> {
    pub seq: i64,
    #[serde(borrow)]
    pub did: &'a str,
    #[serde(borrow, default)]
    pub handle: Option<&'a str>,
    #[serde(borrow)]
    pub time: &'a str,
}

/// `#account`: hosting status changed.
#[derive(Debug, Deserialize)]
pub struct Account<'a> {
    pub seq: i64,
    #[serde(borrow)]
    pub did: &'a str,
    pub active: bool,
    #[serde(borrow, default)]
    pub status: Option<&'a str>,
    #[serde(borrow)]
    pub time: &'a str,
}

/// `#sync`: the repo's current state, to be re-fetched.
#[derive(Debug, Deserialize)]
pub struct Sync<'a> {
    pub seq: i64,
    #[serde(borrow)]
    pub did: &'a str,
    #[serde(borrow)]
    pub rev: &'a str,
    #[serde(borrow, with = "serde_bytes")]
    pub blocks: &'a [u8],
    #[serde(borrow)]
    pub time: &'a str,
}

/// `#info`, e.g. `OutdatedCursor`.
#[derive(Debug, Deserialize)]
pub struct Info {
    pub name: String,
    #[serde(default)]
    pub message: Option<String>,
}

/// An error frame (`op: -1`), e.g. `FutureCursor` or `ConsumerTooSlow`.
#[derive(Debug, Deserialize)]
pub struct ErrorFrame {
    pub error: String,
    #[serde(default)]
    pub message: Option<String>,
}

/// A decoded frame. Frames live briefly on the stack, so the size of the
/// commit variant is not worth a heap allocation per commit.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Frame<'a> {
    Commit(Commit<'a>),
    Identity(Identity<'a>),
    Account(Account<'a>),
    Sync(Sync<'a>),
    Info(Info),
    Error(ErrorFrame),
    /// A message type this indexer does not know (`#handle`, `#tombstone`,
    /// `#migrate` from older relays, or anything newer); carries its seq if any.
    Other {
        kind: String,
        seq: Option<i64>,
    },
}

impl Frame<'_> {
    /// The event's sequence number, for frames that have one.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Frame::Commit(c) => Some(c.seq),
            Frame::Identity(i) => Some(i.seq),
            Frame::Account(a) => Some(a.seq),
            Frame::Sync(s) => Some(s.seq),
            Frame::Other { seq, .. } => *seq,
            Frame::Info(_) | Frame::Error(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct SeqOnly {
    #[serde(default)]
    seq: Option<i64>,
}

fn body<'a, T: Deserialize<'a>>(kind: &str, bytes: &'a [u8]) -> Result<T, FrameError> {
    crate::decode::from_dag_cbor(bytes).map_err(|e| FrameError::Body {
        kind: kind.to_string(),
        message: e.to_string(),
    })
}

/// Decodes one websocket message.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    let (header, rest) = split_header(bytes)?;
    match header.op {
        -1 => Ok(Frame::Error(body("error", rest)?)),
        1 => match header.t.unwrap_or("") {
            "#commit" => Ok(Frame::Commit(body("#commit", rest)?)),
            "#identity" => Ok(Frame::Identity(body("#identity", rest)?)),
            "#account" => Ok(Frame::Account(body("#account", rest)?)),
            "#sync" => Ok(Frame::Sync(body("#sync", rest)?)),
            "#info" => Ok(Frame::Info(body("#info", rest)?)),
            other => {
                let seq = crate::decode::from_dag_cbor::<SeqOnly>(rest)
                    .ok()
                    .and_then(|s| s.seq);
                Ok(Frame::Other {
                    kind: other.to_string(),
                    seq,
                })
            }
        },
        op => Err(FrameError::UnknownOp(op)),
    }
}

/// What a source needs from a frame, without decoding its body: the seq (for
/// resuming), or the error of an error frame.
#[derive(Debug)]
pub enum Peek {
    Seq(Option<i64>),
    Error(ErrorFrame),
}

/// Reads a frame's header and only the `seq` of its body; everything else in
/// the body is skipped, not built.
pub fn peek(bytes: &[u8]) -> Result<Peek, FrameError> {
    let (header, rest) = split_header(bytes)?;
    match header.op {
        -1 => Ok(Peek::Error(body("error", rest)?)),
        1 => Ok(Peek::Seq(
            body::<SeqOnly>(header.t.unwrap_or("?"), rest)?.seq,
        )),
        op => Err(FrameError::UnknownOp(op)),
    }
}

/// The frame header and the bytes of the body after it.
fn split_header(bytes: &[u8]) -> Result<(Header<'_>, &[u8]), FrameError> {
    let header_len = cbor_item_len(bytes)
        .ok_or_else(|| FrameError::Header("truncated or not DAG-CBOR".into()))?;
    let header: Header = crate::decode::from_dag_cbor(&bytes[..header_len])
        .map_err(|e| FrameError::Header(e.to_string()))?;
    Ok((header, &bytes[header_len..]))
}

/// The deepest nesting [`cbor_item_len`] accepts (see `decode::MAX_DEPTH`).
pub const MAX_DEPTH: usize = 64;

/// The byte length of the first CBOR data item in `b` (definite lengths only,
/// as DAG-CBOR requires). serde_ipld_dagcbor does not report how far it read,
/// and a frame is two items back to back, so the split is found here.
pub fn cbor_item_len(b: &[u8]) -> Option<usize> {
    fn arg(b: &[u8], pos: usize) -> Option<(u64, usize)> {
        let info = b.get(pos)? & 0x1f;
        let n = match info {
            0..=23 => return Some((info as u64, pos + 1)),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return None,
        };
        let bytes = b.get(pos + 1..pos + 1 + n)?;
        Some((
            bytes.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64),
            pos + 1 + n,
        ))
    }
    fn item(b: &[u8], pos: usize, depth: usize) -> Option<usize> {
        if depth > MAX_DEPTH {
            return None;
        }
        let major = b.get(pos)? >> 5;
        let (value, next) = arg(b, pos)?;
        match major {
            0 | 1 | 7 => Some(next),
            2 | 3 => {
                let end = next.checked_add(usize::try_from(value).ok()?)?;
                (end <= b.len()).then_some(end)
            }
            4 => (0..value).try_fold(next, |p, _| item(b, p, depth + 1)),
            5 => (0..value).try_fold(next, |p, _| item(b, item(b, p, depth + 1)?, depth + 1)),
            6 => item(b, next, depth + 1),
            _ => None,
        }
    }
    item(b, 0, 0)
}
