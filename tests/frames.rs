//! Frame kinds production rarely sends: tooBig and legacy commits, `#info`,
//! error frames, unknown message types.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use lexview::encode::{commit_frame, record_block};
use lexview::index::event::Change;
use lexview::ingest::{Ingestor, Outcome};
use lexview::metrics::Metrics;
use serde_json::json;

fn frame(header: serde_json::Value, body: serde_json::Value) -> Vec<u8> {
    let mut f = serde_ipld_dagcbor::to_vec(&header).unwrap();
    f.extend(serde_ipld_dagcbor::to_vec(&body).unwrap());
    f
}

fn setup() -> (Ingestor, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    (
        Ingestor::new(common::bundled_catalog(), metrics.clone()),
        metrics,
    )
}

const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
const NOW: &str = "2026-11-24T12:00:00.000Z";

#[test]
/// A tooBig commit (its records not in the frame) applies what it can (the
/// delete) and asks for a resync of its repository for the rest.
fn too_big_commit_advances_the_cursor_and_still_applies_deletes() {
    let (ing, metrics) = setup();
    let (cid, _) =
        record_block(&json!({"$type": "xyz.statusphere.status", "status": "x", "createdAt": NOW}))
            .unwrap();
    let f = commit_frame(
        9,
        DID,
        "3kaaaaaaaaaa2",
        vec![
            (
                "create",
                "xyz.statusphere.status/3kaaaaaaaaaa2".into(),
                Some(cid),
            ),
            (
                "delete",
                "xyz.statusphere.status/3kaaaaaaaaaa3".into(),
                None,
            ),
        ],
        Vec::new(),
        true,
        NOW,
    )
    .unwrap();
    let Outcome::Event(ev) = ing.process("t", &f).unwrap() else {
        panic!()
    };
    assert_eq!(ev.cursor, Some(9));
    assert!(
        matches!(&ev.changes[..], [Change::Delete { rkey, .. }, Change::Resync { did, .. }]
            if rkey == "3kaaaaaaaaaa3" && did == DID),
        "{:?}",
        ev.changes
    );
    assert_eq!(metrics.commits_too_big_total.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.resyncs_requested_total.load(Ordering::Relaxed), 1);
}

#[test]
fn commit_with_records_indexes_and_validates() {
    let (ing, _) = setup();
    let good = json!({"$type": "xyz.statusphere.status", "status": "🦀", "createdAt": NOW});
    let bad = json!({"$type": "xyz.statusphere.status", "status": "🦀🦀", "createdAt": NOW});
    let (g, gb) = record_block(&good).unwrap();
    let (b, bb) = record_block(&bad).unwrap();
    let f = commit_frame(
        10,
        DID,
        "3kaaaaaaaaaa4",
        vec![
            ("create", "xyz.statusphere.status/a".into(), Some(g)),
            ("update", "xyz.statusphere.status/b".into(), Some(b)),
        ],
        vec![(g, gb), (b, bb)],
        false,
        NOW,
    )
    .unwrap();
    let Outcome::Event(ev) = ing.process("t", &f).unwrap() else {
        panic!()
    };
    match &ev.changes[..] {
        [Change::Put(p), Change::Invalid(q)] => {
            assert_eq!(p.value(), good);
            assert_eq!(
                q.reason,
                "record.status: 2 graphemes, more than the maximum 1"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_record_block_rejects_the_commit() {
    let (ing, metrics) = setup();
    let (cid, _) =
        record_block(&json!({"$type": "xyz.statusphere.status", "status": "x", "createdAt": NOW}))
            .unwrap();
    let f = commit_frame(
        11,
        DID,
        "3kaaaaaaaaaa5",
        vec![("create", "xyz.statusphere.status/a".into(), Some(cid))],
        vec![],
        false,
        NOW,
    )
    .unwrap();
    let err = ing.process("t", &f).unwrap_err();
    assert!(err.to_string().contains("missing from the commit"), "{err}");
    assert_eq!(metrics.commits_rejected_total.load(Ordering::Relaxed), 1);
}

#[test]
fn control_and_unknown_frames() {
    let (ing, metrics) = setup();
    let info = frame(
        json!({"op": 1, "t": "#info"}),
        json!({"name": "OutdatedCursor", "message": "too old"}),
    );
    assert!(
        matches!(ing.process("t", &info).unwrap(), Outcome::Info { name, .. } if name == "OutdatedCursor")
    );
    let err = frame(
        json!({"op": -1}),
        json!({"error": "FutureCursor", "message": "Cursor in the future."}),
    );
    assert!(
        matches!(ing.process("t", &err).unwrap(), Outcome::SourceError { error, .. } if error == "FutureCursor")
    );
    let unknown = frame(
        json!({"op": 1, "t": "#tombstone"}),
        json!({"seq": 77, "did": DID, "time": NOW}),
    );
    let Outcome::Event(ev) = ing.process("t", &unknown).unwrap() else {
        panic!()
    };
    assert_eq!((ev.cursor, ev.changes.len()), (Some(77), 0));
    let account = frame(
        json!({"op": 1, "t": "#account"}),
        json!({"seq": 78, "did": DID, "time": NOW, "active": false, "status": "deactivated"}),
    );
    let Outcome::Event(ev) = ing.process("t", &account).unwrap() else {
        panic!()
    };
    assert!(
        matches!(&ev.changes[..], [Change::Account { active: false, status: Some(s), .. }] if s == "deactivated")
    );
    #[derive(serde::Serialize)]
    struct SyncBody {
        seq: i64,
        did: &'static str,
        time: &'static str,
        rev: &'static str,
        blocks: serde_bytes::ByteBuf,
    }
    let mut sync = serde_ipld_dagcbor::to_vec(&json!({"op": 1, "t": "#sync"})).unwrap();
    sync.extend(
        serde_ipld_dagcbor::to_vec(&SyncBody {
            seq: 79,
            did: DID,
            time: NOW,
            rev: "3kaaaaaaaaaa6",
            blocks: Default::default(),
        })
        .unwrap(),
    );
    let Outcome::Event(ev) = ing.process("t", &sync).unwrap() else {
        panic!()
    };
    assert_eq!(ev.cursor, Some(79));
    let bad_op = frame(json!({"op": 7}), json!({}));
    assert!(ing
        .process("t", &bad_op)
        .unwrap_err()
        .to_string()
        .contains("unknown header op 7"));
    assert_eq!(metrics.unknown_frames_total.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.sync_events_total.load(Ordering::Relaxed), 1);
}

#[test]
fn floats_in_records_are_quarantined() {
    let (ing, _) = setup();
    // A record with a float cannot come from a conforming PDS; build its block by hand.
    #[derive(serde::Serialize)]
    struct Bad {
        #[serde(rename = "$type")]
        t: &'static str,
        status: f64,
    }
    let bytes = serde_ipld_dagcbor::to_vec(&Bad {
        t: "xyz.statusphere.status",
        status: 1.5,
    })
    .unwrap();
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
    let cid = cid::Cid::new_v1(
        0x71,
        multihash::Multihash::<64>::wrap(0x12, &digest).unwrap(),
    );
    let f = commit_frame(
        12,
        DID,
        "3kaaaaaaaaaa7",
        vec![("create", "xyz.statusphere.status/f".into(), Some(cid))],
        vec![(cid, bytes)],
        false,
        NOW,
    )
    .unwrap();
    let Outcome::Event(ev) = ing.process("t", &f).unwrap() else {
        panic!()
    };
    assert!(
        matches!(&ev.changes[..], [Change::Invalid(q)] if q.reason.contains("floats")),
        "{:?}",
        ev.changes
    );
}
