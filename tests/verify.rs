//! `--verify full`: every production commit of the Jetstream corpus verifies
//! against its DID document, and tampered frames are rejected with the right
//! reason (and counted), without stopping anything.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use ipld_core::ipld::Ipld;
use lexview::decode::car::read_car;
use lexview::decode::frame::{cbor_item_len, decode_frame, Frame};
use lexview::encode::dag_cbor_cid;
use lexview::encode::write_car;
use lexview::identity::StaticResolver;
use lexview::ingest::{IngestError, Ingestor, Outcome};
use lexview::metrics::Metrics;
use lexview::verify::{verify_commit, Verifier};
use serde_json::Value;

fn did_docs() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jetstream/did_docs.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn verifying_ingestor() -> (Ingestor, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let catalog = common::catalog("lexicons");
    let verifier = Verifier::new(Box::new(StaticResolver::from_documents(&did_docs())));
    (
        Ingestor::new(catalog, metrics.clone()).with_verifier(Arc::new(verifier)),
        metrics,
    )
}

#[test]
fn all_148_production_commits_verify_against_their_did_documents_with_their_proofs() {
    let resolver = StaticResolver::from_documents(&did_docs());
    let mut verified = 0;
    for frame in common::frames("jetstream/frames.bin") {
        let Ok(Frame::Commit(c)) = decode_frame(&frame) else {
            continue;
        };
        let blocks = read_car(c.blocks).unwrap().blocks;
        let key = lexview::identity::Resolve::signing_key(&resolver, c.repo).unwrap();
        let commit = verify_commit(blocks[&c.commit], c.repo, c.rev, &key)
            .unwrap_or_else(|e| panic!("seq {}: {e}", c.seq));
        assert_eq!(commit.did, c.repo);
        // Sync 1.1: every op undone on the frame's MST nodes gives prevData.
        let ops: Vec<lexview::verify::mst::Op> = c.ops.iter().map(Into::into).collect();
        let root = lexview::verify::mst::invert(commit.data, &ops, &|cid| blocks.get(cid).copied())
            .unwrap_or_else(|e| panic!("seq {}: {e}", c.seq));
        assert_eq!(Some(root), c.prev_data, "seq {}", c.seq);
        verified += 1;
    }
    assert_eq!(verified, 148);

    // Through the pipeline: commits touching a loaded collection are verified,
    // none is rejected.
    let (ingestor, metrics) = verifying_ingestor();
    for frame in common::frames("jetstream/frames.bin") {
        ingestor.process("test", &frame).unwrap();
    }
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        get(&metrics.commits_verified_total) > 100,
        "{}",
        get(&metrics.commits_verified_total)
    );
    assert_eq!(get(&metrics.commits_rejected_total), 0);
}

// ---- tampering: rebuild a frame around a changed body ----

fn split(frame: &[u8]) -> (Vec<u8>, BTreeMap<String, Ipld>) {
    let n = cbor_item_len(frame).unwrap();
    let body: BTreeMap<String, Ipld> = serde_ipld_dagcbor::from_slice(&frame[n..]).unwrap();
    (frame[..n].to_vec(), body)
}

fn join(header: &[u8], body: &BTreeMap<String, Ipld>) -> Vec<u8> {
    let mut out = header.to_vec();
    out.extend(serde_ipld_dagcbor::to_vec(body).unwrap());
    out
}

/// The frame with its commit block replaced by `edit(block)` (re-hashed, so
/// only the signature can tell).
fn with_commit_block(frame: &[u8], edit: impl Fn(&mut BTreeMap<String, Ipld>)) -> Vec<u8> {
    let (header, mut body) = split(frame);
    let Ipld::Link(old_root) = body["commit"] else {
        panic!("commit link")
    };
    let Ipld::Bytes(car) = &body["blocks"] else {
        panic!("blocks")
    };
    let blocks = read_car(car).unwrap().blocks;
    let mut commit: BTreeMap<String, Ipld> =
        serde_ipld_dagcbor::from_slice(blocks[&old_root]).unwrap();
    edit(&mut commit);
    let new_block = serde_ipld_dagcbor::to_vec(&commit).unwrap();
    let new_root = dag_cbor_cid(&new_block);
    let mut new_blocks = vec![(new_root, new_block)];
    new_blocks.extend(
        blocks
            .iter()
            .filter(|(cid, _)| **cid != old_root)
            .map(|(cid, data)| (*cid, data.to_vec())),
    );
    let out = write_car(new_root, &new_blocks);
    body.insert("blocks".into(), Ipld::Bytes(out));
    body.insert("commit".into(), Ipld::Link(new_root));
    join(&header, &body)
}

fn rejection(ingestor: &Ingestor, frame: &[u8]) -> String {
    match ingestor.process("test", frame) {
        Err(IngestError::CommitRejected { reason, .. }) => reason,
        Ok(Outcome::Event(ev)) => panic!("accepted: {} changes", ev.changes.len()),
        other => panic!("unexpected: {other:?}"),
    }
}

/// The first production commit that creates a post (a loaded collection).
fn post_commit() -> Vec<u8> {
    common::frames("jetstream/frames.bin")
        .into_iter()
        .find(|f| match decode_frame(f) {
            Ok(Frame::Commit(c)) => c
                .ops
                .iter()
                .any(|o| o.path.starts_with("app.bsky.feed.post/")),
            _ => false,
        })
        .unwrap()
}

#[test]
fn tampered_frames_are_rejected_with_the_right_reason() {
    let frame = post_commit();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);

    // One signature byte flipped.
    let (ingestor, metrics) = verifying_ingestor();
    let flipped = with_commit_block(&frame, |c| {
        let Some(Ipld::Bytes(sig)) = c.get_mut("sig") else {
            panic!("sig")
        };
        sig[10] ^= 0x01;
    });
    // Signatures pre-checked in parallel first, as `serve` does: the
    // sequential pass still rejects the bad one and orders revs.
    ingestor.precheck(&[&flipped, &frame, &frame]);
    assert!(rejection(&ingestor, &flipped).contains("(bad_signature)"));
    assert_eq!(get(&metrics.verify_rejected_signature_total), 1);
    // The untouched frame still verifies: nothing was poisoned.
    assert!(matches!(
        ingestor.process("test", &frame),
        Ok(Outcome::Event(_))
    ));

    // The same commit again: its rev is not newer.
    assert!(rejection(&ingestor, &frame).contains("(rev_not_newer)"));
    assert_eq!(get(&metrics.verify_rejected_rev_total), 1);

    // A rev that is not the event's.
    let (ingestor, metrics) = verifying_ingestor();
    let (header, mut body) = split(&frame);
    body.insert("rev".into(), Ipld::String("3zzzzzzzzzzzz".into()));
    assert!(rejection(&ingestor, &join(&header, &body)).contains("(rev_mismatch)"));
    assert_eq!(get(&metrics.verify_rejected_rev_total), 1);

    // The event claims another repo (whose key resolves) than the commit's.
    let (ingestor, metrics) = verifying_ingestor();
    let (header, mut body) = split(&frame);
    let Ipld::String(repo) = &body["repo"] else {
        panic!("repo")
    };
    let other = did_docs()
        .as_object()
        .unwrap()
        .keys()
        .find(|d| *d != repo)
        .unwrap()
        .clone();
    body.insert("repo".into(), Ipld::String(other));
    assert!(rejection(&ingestor, &join(&header, &body)).contains("(did_mismatch)"));
    assert_eq!(get(&metrics.verify_rejected_identity_total), 1);

    // A prevData that the ops, inverted on the MST, do not give (the frame
    // body is not signed, so only the Sync 1.1 proof can tell).
    let (ingestor, metrics) = verifying_ingestor();
    let (header, mut body) = split(&frame);
    assert!(
        matches!(body["prevData"], Ipld::Link(_)),
        "a Sync 1.1 frame"
    );
    body.insert(
        "prevData".into(),
        Ipld::Link(dag_cbor_cid(b"not the previous root")),
    );
    let tampered = join(&header, &body);
    // Pre-checked in the same round as the genuine frame (same commit): the
    // genuine frame's result must not vouch for the tampered one.
    ingestor.precheck(&[&frame, &tampered]);
    assert!(rejection(&ingestor, &tampered).contains("(proof)"));
    assert_eq!(get(&metrics.verify_rejected_proof_total), 1);
    assert!(matches!(
        ingestor.process("test", &frame),
        Ok(Outcome::Event(_))
    ));

    // A repo with no DID document.
    let (ingestor, metrics) = verifying_ingestor();
    let (header, mut body) = split(&frame);
    body.insert(
        "repo".into(),
        Ipld::String("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into()),
    );
    assert!(rejection(&ingestor, &join(&header, &body)).contains("(resolve)"));
    assert_eq!(get(&metrics.verify_rejected_other_total), 1);
    assert_eq!(get(&metrics.commits_rejected_total), 1);
}

/// A relay that drops `prevData` and substitutes a commit's ops and record
/// blocks: the genuine signature must not vouch for them. Regression: the
/// ops were not bound to the signed `data` root without `prevData`, and the
/// substituted record was indexed.
#[test]
fn ops_substituted_behind_a_genuine_signature_are_not_applied_without_prev_data() {
    let frame = post_commit();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    // The genuine frame without prevData verifies: its ops are in the
    // signed tree, on the nodes the frame carries.
    let (ingestor, metrics) = verifying_ingestor();
    let (header, mut body) = split(&frame);
    body.remove("prevData");
    match ingestor.process("test", &join(&header, &body)) {
        Ok(Outcome::Event(ev)) => assert!(
            ev.changes
                .iter()
                .any(|c| matches!(c, lexview::index::event::Change::Put(_))),
            "{:?}",
            ev.changes
        ),
        other => panic!("the genuine frame: {other:?}"),
    }
    assert_eq!(get(&metrics.commits_unproven_total), 0);

    // The post op's record swapped for another (its block added, its CID
    // in the op): the signed tree holds the genuine CID.
    let (ingestor, metrics) = verifying_ingestor();
    let (header, mut body) = split(&frame);
    body.remove("prevData");
    let forged = serde_ipld_dagcbor::to_vec(&serde_json::json!({
        "$type": "app.bsky.feed.post", "text": "words the author never wrote",
        "createdAt": "2026-07-04T14:39:14.000Z"
    }))
    .unwrap();
    let forged_cid = dag_cbor_cid(&forged);
    let Ipld::Link(root) = body["commit"] else {
        panic!("commit link")
    };
    let Ipld::Bytes(car) = &body["blocks"] else {
        panic!("blocks")
    };
    let mut blocks: Vec<(cid::Cid, Vec<u8>)> = read_car(car)
        .unwrap()
        .blocks
        .iter()
        .map(|(c, d)| (*c, d.to_vec()))
        .collect();
    blocks.push((forged_cid, forged));
    body.insert("blocks".into(), Ipld::Bytes(write_car(root, &blocks)));
    let Some(Ipld::List(ops)) = body.get_mut("ops") else {
        panic!("ops")
    };
    for op in ops.iter_mut() {
        let Ipld::Map(op) = op else { panic!("op") };
        if matches!(&op["path"], Ipld::String(p) if p.starts_with("app.bsky.feed.post/")) {
            op.insert("cid".into(), Ipld::Link(forged_cid));
        }
    }
    let substituted = join(&header, &body);
    ingestor.precheck(&[&substituted, &substituted]);
    assert!(rejection(&ingestor, &substituted).contains("(proof)"));
    assert_eq!(get(&metrics.verify_rejected_proof_total), 1);

    // The same with the tree nodes left out: nothing binds the ops, so
    // nothing of the commit is applied; its repository is resynced.
    let (ingestor, metrics) = verifying_ingestor();
    let (header, mut body) = split(&substituted);
    let Ipld::Bytes(car) = &body["blocks"] else {
        panic!("blocks")
    };
    let kept: Vec<(cid::Cid, Vec<u8>)> = read_car(car)
        .unwrap()
        .blocks
        .iter()
        .filter(|(c, d)| {
            // The commit and the records stay; MST nodes (maps with "e") go.
            let v: Result<BTreeMap<String, Ipld>, _> = serde_ipld_dagcbor::from_slice(d);
            **c == root || !v.is_ok_and(|m| m.contains_key("e"))
        })
        .map(|(c, d)| (*c, d.to_vec()))
        .collect();
    body.insert("blocks".into(), Ipld::Bytes(write_car(root, &kept)));
    match ingestor.process("test", &join(&header, &body)) {
        Ok(Outcome::Event(ev)) => assert!(
            ev.changes
                .iter()
                .all(|c| matches!(c, lexview::index::event::Change::Resync { .. })),
            "only a resync: {:?}",
            ev.changes
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(get(&metrics.commits_unproven_total), 1);
}
