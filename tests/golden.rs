//! Production golden: the 150 production relay frames of the Jetstream corpus,
//! decoded by lexview, against what production Jetstream emitted for them.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use lexview::index::event::Change;
use lexview::ingest::{Ingestor, Outcome};
use lexview::lexicon::Catalog;
use lexview::metrics::Metrics;
use serde_json::{json, Value};

#[test]
fn production_frames_match_production_jetstream() {
    let mut catalog = Catalog::default();
    for dir in ["lexicons", "lexicons-wild"] {
        let errors = catalog.add_dir(&common::fixture(dir)).expect("dir");
        assert!(errors.is_empty(), "{errors:#?}");
    }
    let ingestor = Ingestor::new(Arc::new(catalog), Arc::new(Metrics::default()));

    // What lexview makes of each frame, keyed like Jetstream's lines.
    let mut ours: HashMap<String, Value> = HashMap::new();
    let frames = common::frames("jetstream/frames.bin");
    assert_eq!(frames.len(), 150);
    for frame in &frames {
        let Outcome::Event(ev) = ingestor.process("golden", frame).expect("frame decodes") else {
            panic!("unexpected control frame")
        };
        for change in ev.changes {
            let (key, value) = match change {
                Change::Put(w) => (
                    format!("commit {} {} {} {}", w.did, w.rev, w.collection, w.rkey),
                    json!({"cid": w.cid, "record": w.value()}),
                ),
                Change::Invalid(q) => (
                    format!("commit {} {} {} {}", q.did, q.rev, q.collection, q.rkey),
                    json!({"cid": q.cid, "record": q.record}),
                ),
                Change::Resync { did, .. }
                | Change::Snapshot { did, .. }
                | Change::HandleChecked { did, .. } => {
                    panic!("no #sync in this corpus, no resync for {did}")
                }
                Change::Delete {
                    did,
                    collection,
                    rkey,
                    rev,
                } => (
                    format!("commit {did} {rev} {collection} {rkey}"),
                    json!({"deleted": true}),
                ),
                Change::Identity { did, handle } => {
                    (format!("identity {did}"), json!({"handle": handle}))
                }
                Change::Account {
                    did,
                    active,
                    status,
                } => (
                    format!("account {did}"),
                    json!({"active": active, "status": status}),
                ),
            };
            assert!(ours.insert(key.clone(), value).is_none(), "duplicate {key}");
        }
    }

    let expected =
        std::fs::read_to_string(common::fixture("jetstream/expected_v1.jsonl")).expect("expected");
    let mut matched = 0;
    let mut failures = Vec::new();
    for line in expected.lines() {
        let e: Value = serde_json::from_str(line).expect("json line");
        let did = e["did"].as_str().expect("did");
        let (key, want) = match e["kind"].as_str() {
            Some("commit") => {
                let c = &e["commit"];
                let key = format!(
                    "commit {did} {} {} {}",
                    c["rev"].as_str().unwrap(),
                    c["collection"].as_str().unwrap(),
                    c["rkey"].as_str().unwrap()
                );
                let want = if c["operation"] == "delete" {
                    json!({"deleted": true})
                } else {
                    json!({"cid": c["cid"], "record": c["record"]})
                };
                (key, want)
            }
            Some("identity") => (
                format!("identity {did}"),
                json!({"handle": e["identity"].get("handle")}),
            ),
            Some("account") => (
                format!("account {did}"),
                json!({"active": e["account"]["active"], "status": e["account"].get("status")}),
            ),
            other => panic!("unexpected kind {other:?}"),
        };
        match ours.get(&key) {
            Some(got) if *got == want => matched += 1,
            Some(got) => failures.push(format!("{key}\n  expected {want}\n       got {got}")),
            None => failures.push(format!("{key}: not produced")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 150 differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // 150 ops from 148 commits, plus one #identity and one #account: every line of the 150 frames.
    assert_eq!(matched, 152);
}
