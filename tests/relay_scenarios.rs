//! indigo's relay scenarios (`tests/fixtures/relay-scenarios/`, see
//! PROVENANCE.md): each message of each scenario goes through the verifying
//! ingest pipeline, and what lexview does with it must be what the scenario
//! expects of a relay: dropped or passed on, and whether it changes the
//! account's state. Then every passed event is applied to a store.
//!
//! The messages are JSON (`$bytes`, `$link`); they are encoded back to
//! DAG-CBOR frames here, the commit blocks inside them untouched.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use ipld_core::ipld::Ipld;
use lexview::identity::StaticResolver;
use lexview::index::event::Change;
use lexview::index::store::Store;
use lexview::ingest::{Ingestor, Outcome};
use lexview::metrics::Metrics;
use lexview::verify::Verifier;
use serde_json::{json, Value};

/// The data model's JSON form to IPLD (`{"$bytes"}`, `{"$link"}`).
fn ipld(v: &Value) -> Ipld {
    match v {
        Value::Null => Ipld::Null,
        Value::Bool(b) => Ipld::Bool(*b),
        Value::Number(n) => Ipld::Integer(n.as_i64().expect("integers only").into()),
        Value::String(s) => Ipld::String(s.clone()),
        Value::Array(a) => Ipld::List(a.iter().map(ipld).collect()),
        Value::Object(o) => {
            if let (1, Some(Value::String(b))) = (o.len(), o.get("$bytes")) {
                let b = b.trim_end_matches('=');
                return Ipld::Bytes(
                    base64::engine::general_purpose::STANDARD_NO_PAD
                        .decode(b)
                        .expect("$bytes is base64"),
                );
            }
            if let (1, Some(Value::String(l))) = (o.len(), o.get("$link")) {
                return Ipld::Link(l.parse().expect("$link is a CID"));
            }
            Ipld::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), ipld(v)))
                    .collect::<BTreeMap<_, _>>(),
            )
        }
    }
}

/// A `subscribeRepos` frame: the header, then the body, each DAG-CBOR.
fn frame(m: &Value) -> Vec<u8> {
    let mut out = serde_ipld_dagcbor::to_vec(&ipld(&m["frame"]["header"])).unwrap();
    out.extend(serde_ipld_dagcbor::to_vec(&ipld(&m["frame"]["body"])).unwrap());
    out
}

/// DID documents for the scenario's accounts (the keys and PDS they name).
fn documents(accounts: &[Value]) -> Value {
    let mut docs = serde_json::Map::new();
    for a in accounts {
        let id = &a["identity"];
        let did = id["did"].as_str().unwrap();
        let key = &id["keys"]["atproto"];
        docs.insert(
            did.to_string(),
            json!({
                "id": did,
                "alsoKnownAs": id["alsoKnownAs"],
                "verificationMethod": [{
                    "id": format!("{did}#atproto"),
                    "type": key["type"],
                    "controller": did,
                    "publicKeyMultibase": key["publicKeyMultibase"],
                }],
                "service": [{
                    "id": "#atproto_pds",
                    "type": "AtprotoPersonalDataServer",
                    "serviceEndpoint": id["services"]["atproto_pds"]["url"],
                }],
            }),
        );
    }
    Value::Object(docs)
}

struct Run {
    /// Per message: passed on (not dropped), changed the account's state,
    /// asked for a resync.
    results: Vec<(bool, bool, bool)>,
    metrics: Arc<Metrics>,
}

fn run(name: &str) -> Run {
    run_without(name, &[])
}

/// As [`run`], leaving out the messages at `skip` (as if a relay lost them).
fn run_without(name: &str, skip: &[usize]) -> Run {
    let path = common::fixture(&format!("relay-scenarios/{name}.json"));
    let scenario: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let accounts = scenario["accounts"].as_array().unwrap();
    let resolver = StaticResolver::from_documents(&documents(accounts));
    let metrics = Arc::new(Metrics::default());
    let ingestor = Ingestor::new(common::catalog("lexicons"), metrics.clone())
        .with_verifier(Arc::new(Verifier::new(Box::new(resolver))))
        .with_seq_order();
    ingestor.set_inactive(
        accounts
            .iter()
            .filter(|a| a["status"] != "active")
            .map(|a| a["identity"]["did"].as_str().unwrap().to_string()),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut results = Vec::new();
    for (i, m) in scenario["messages"].as_array().unwrap().iter().enumerate() {
        if skip.contains(&i) {
            results.push((false, false, false));
            continue;
        }
        let did = m["frame"]["body"]["did"]
            .as_str()
            .or(m["frame"]["body"]["repo"].as_str())
            .unwrap();
        let active_before = !ingestor.is_inactive(did);
        let outcome = ingestor.process("relay", &frame(m));
        let active_after = !ingestor.is_inactive(did);
        let (passed, resync) = match outcome {
            Ok(Outcome::Event(mut ev)) => {
                let resync = ev
                    .changes
                    .iter()
                    .any(|c| matches!(c, Change::Resync { .. }));
                store
                    .expand_snapshots(std::slice::from_mut(&mut ev))
                    .unwrap();
                store.apply(&[ev]).unwrap();
                (true, resync)
            }
            Ok(Outcome::Dropped { reason }) => {
                eprintln!("{name} #{i}: dropped: {reason}");
                (false, false)
            }
            Ok(other) => panic!("{name} #{i}: unexpected {other:?}"),
            Err(e) => {
                eprintln!("{name} #{i}: rejected: {e}");
                (false, false)
            }
        };
        results.push((passed, active_before != active_after, resync));
        let expect_drop = m["drop"].as_bool().unwrap();
        let expect_update = m["update"].as_bool().unwrap();
        assert_eq!(
            passed, !expect_drop,
            "{name} message #{i} ({}): passed = {passed}, the scenario expects drop = {expect_drop}",
            m["frame"]["header"]["t"]
        );
        assert_eq!(
            active_before != active_after,
            expect_update,
            "{name} message #{i} ({}): the account's state",
            m["frame"]["header"]["t"]
        );
        assert!(
            !m["invalid"].as_bool().unwrap(),
            "no scenario has invalid messages"
        );
    }
    Run { results, metrics }
}

fn count(m: &std::sync::atomic::AtomicU64) -> u64 {
    m.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn post_lifecycle_commits_chain_and_verify_with_their_proofs() {
    for name in ["post_lifecycle", "post_lifecycle_legacy", "legacy"] {
        let r = run(name);
        assert!(
            r.results.iter().all(|(_, _, resync)| !resync),
            "{name}: the chain is intact: no resync"
        );
        assert_eq!(count(&r.metrics.verify_rejected_proof_total), 0, "{name}");
        assert!(count(&r.metrics.commits_verified_total) > 0, "{name}");
    }
}

#[test]
fn revs_must_grow_per_repo() {
    let r = run("rev_ordering");
    assert_eq!(count(&r.metrics.verify_rejected_rev_total), 2);
}

#[test]
fn seqs_must_grow_per_source() {
    let r = run("seq_ordering");
    assert_eq!(count(&r.metrics.frames_stale_seq_total), 2);
}

#[test]
fn commits_of_a_deactivated_account_are_dropped_and_reactivation_resyncs() {
    let r = run("deactivation");
    assert_eq!(count(&r.metrics.commits_inactive_total), 1);
    // Message 3 reactivates the account: its commits while deactivated were
    // dropped, so the repository is fetched again.
    assert_eq!(r.results[3], (true, true, true));
}

#[test]
fn a_sync_event_asks_for_a_resync_and_deletion_updates_the_account() {
    let r = run("account_lifecycle");
    assert_eq!(r.results[2], (true, false, true), "#sync: verified, resync");
    assert_eq!(count(&r.metrics.resyncs_requested_total), 1);
}

#[test]
fn a_lost_commit_breaks_the_chain_and_asks_for_a_resync() {
    // Message 1 never arrives: message 2's prevData is the data of message
    // 1's commit, not of message 0's.
    let r = run_without("post_lifecycle", &[1]);
    assert_eq!(r.results[2], (true, false, true), "applied, and resynced");
    assert!(r.results[3..]
        .iter()
        .all(|(passed, _, resync)| *passed && !resync));
    assert_eq!(count(&r.metrics.resyncs_requested_total), 1);
}

/// A relay whose sequence was reset answers the stored cursor with
/// `FutureCursor`: lexview goes on live and indexes the new, lower seqs
/// (regression: the old seq stayed in memory and every new frame was
/// dropped as stale).
#[test]
fn after_future_cursor_the_new_lower_seqs_are_indexed() {
    use common::server::Server;
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let frames = common::frames("jetstream/frames.bin");
    let last = lexview::decode::frame::decode_frame(frames.last().unwrap())
        .unwrap()
        .seq()
        .unwrap();
    let reset: Vec<Vec<u8>> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| common::relay::with_seq(f, i as i64 + 1))
        .collect();
    let relay = common::relay::start_sets(vec![frames, reset], 150);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[&relay.url], dir.path(), &root.join("lexicons"));
    server.wait_for_cursor(last);
    // The relay resets; the connection closes after 150 frames, so the
    // next one asks with the old cursor.
    relay.set.store(1, std::sync::atomic::Ordering::SeqCst);
    server.wait_for(std::time::Duration::from_secs(60), |h| {
        h["sources"][0]["cursor"].as_i64() == Some(150)
    });
    assert_eq!(server.counter("frames_stale_seq_total"), 0);
    assert!(server.counter("error_frames_total") >= 1);
    assert!(server.stop().success());
}
