//! Bad input: each kind is reported with a clear message and counted, and the
//! frames after it are still processed.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use lexview::index::event::Change;
use lexview::ingest::{IngestError, Ingestor, Outcome};
use lexview::lexicon::Catalog;
use lexview::metrics::Metrics;

fn ingestor(catalog: Arc<Catalog>) -> (Ingestor, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    (Ingestor::new(catalog, metrics.clone()), metrics)
}

fn changes(ingestor: &Ingestor, frame: &[u8]) -> Vec<Change> {
    match ingestor.process("test", frame).expect("frame processes") {
        Outcome::Event(ev) => ev.changes,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn truncated_frame_is_reported_and_the_next_frame_still_indexes() {
    let (ing, metrics) = ingestor(common::catalog("lexicons"));
    let frames = common::frames("jetstream/frames.bin");
    let cut = &frames[0][..frames[0].len() / 2];
    let err = ing.process("test", cut).unwrap_err();
    assert!(matches!(err, IngestError::Frame(_)), "{err}");
    assert!(err.to_string().starts_with("malformed frame"), "{err}");
    assert_eq!(metrics.frames_malformed_total.load(Ordering::Relaxed), 1);
    assert_eq!(changes(&ing, &frames[0]).len(), 1);
}

#[test]
fn garbage_cbor_is_reported() {
    let (ing, metrics) = ingestor(common::catalog("lexicons"));
    for garbage in [
        &b""[..],
        b"\xff\xff\xff",
        b"not cbor at all",
        b"\xa2\x62op\x01",
    ] {
        let err = ing.process("test", garbage).unwrap_err();
        assert!(err.to_string().contains("frame"), "{err}");
    }
    assert_eq!(metrics.frames_malformed_total.load(Ordering::Relaxed), 4);
}

#[test]
fn car_block_whose_bytes_do_not_match_its_cid_rejects_the_commit() {
    let (ing, metrics) = ingestor(common::catalog("lexicons"));
    let frames = common::frames("jetstream/frames.bin");
    // The first frame is a like created at 2026-07-04T14:38:08.999Z (see
    // expected_v1.jsonl); that timestamp occurs once, inside the record block.
    let mut frame = frames[0].clone();
    let needle = b"2026-07-04T14:38:08.999Z";
    let positions: Vec<usize> = frame
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(positions.len(), 1, "needle must be unique");
    frame[positions[0] + 20] = b'8';
    let err = ing.process("test", &frame).unwrap_err();
    assert!(
        err.to_string().contains("does not hash to its CID"),
        "{err}"
    );
    assert_eq!(metrics.commits_rejected_total.load(Ordering::Relaxed), 1);
    // The untouched frame after it still indexes.
    assert_eq!(changes(&ing, &frames[1]).len(), 1);
}

#[test]
fn record_failing_its_lexicon_is_quarantined_with_the_reason() {
    // A stricter like lexicon: every real like lacks "reason".
    let mut catalog = Catalog::default();
    let errors = catalog.add_dir(&common::fixture("lexicons")).expect("dir");
    assert!(errors.is_empty());
    let mut strict = Catalog::default();
    let mut like: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("lexicons/app/bsky/feed/like.json")).unwrap(),
    )
    .unwrap();
    like["defs"]["main"]["record"]["required"] =
        serde_json::json!(["subject", "createdAt", "reason"]);
    strict.add_document(like).expect("doc");
    strict
        .add_document(
            serde_json::from_str(
                &std::fs::read_to_string(common::fixture(
                    "lexicons/com/atproto/repo/strongRef.json",
                ))
                .unwrap(),
            )
            .unwrap(),
        )
        .expect("doc");
    let (ing, metrics) = ingestor(Arc::new(strict));
    let frames = common::frames("jetstream/frames.bin");
    let got = changes(&ing, &frames[0]);
    match &got[..] {
        [Change::Invalid(q)] => {
            assert_eq!(q.collection, "app.bsky.feed.like");
            assert_eq!(q.reason, "record.reason: required field is missing");
            assert!(q.record.is_some());
        }
        other => panic!("expected one quarantined record, got {other:?}"),
    }
    assert_eq!(metrics.records_invalid_total.load(Ordering::Relaxed), 1);
}

#[test]
fn collections_without_a_lexicon_are_skipped_before_decoding() {
    let mut catalog = Catalog::default();
    catalog
        .add_document(
            serde_json::from_str(
                &std::fs::read_to_string(common::fixture("lexicons/xyz/statusphere/status.json"))
                    .unwrap(),
            )
            .unwrap(),
        )
        .expect("doc");
    let (ing, metrics) = ingestor(Arc::new(catalog));
    let mut seqs = 0;
    for frame in common::frames("jetstream/frames.bin") {
        match ing.process("test", &frame).expect("frame") {
            Outcome::Event(ev) => {
                assert!(ev.changes.iter().all(|c| !matches!(c, Change::Put(_))));
                seqs += ev.cursor.is_some() as usize;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seqs, 150, "every frame still advances the cursor");
    // 148 commits carry 150 ops between them.
    assert_eq!(metrics.ops_skipped_total.load(Ordering::Relaxed), 150);
}
