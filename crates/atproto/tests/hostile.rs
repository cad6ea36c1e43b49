//! Input any account holder can publish (a record block, an MST proof, a
//! repository) must not panic, abort, overflow the stack or allocate
//! without bound: each case here is decoded and must fail cleanly, and
//! fast.

use std::time::{Duration, Instant};

use cid::Cid;
use lexview_atproto::decode::value::dagcbor_to_json;
use lexview_atproto::encode::{dag_cbor_cid, write_car};
use lexview_atproto::verify::mst::{invert, Op};

/// A CBOR array head claiming `n` elements (major type 4, 8-byte length).
fn array_claiming(n: u64) -> Vec<u8> {
    let mut b = vec![0x9b];
    b.extend_from_slice(&n.to_be_bytes());
    b
}

/// Runs `f` on a thread with a small stack, as the ingest thread's is
/// bounded: a recursion that depends on the input would overflow it.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .expect("no panic, no overflow")
}

#[test]
fn a_record_claiming_two_to_the_sixty_elements_is_refused_without_allocating() {
    for n in [1u64 << 41, 1 << 60, u64::MAX] {
        let block = array_claiming(n);
        let started = Instant::now();
        let got = dagcbor_to_json(&block);
        assert!(got.is_err(), "{n}: {got:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // And as a map, and behind a valid prefix.
        let mut map = block.clone();
        map[0] = 0xbb;
        assert!(dagcbor_to_json(&map).is_err());
    }
}

#[test]
fn a_record_nested_thousands_deep_is_refused_without_recursing() {
    for depth in [65usize, 2_000, 100_000] {
        // [[[[...]]]] with one-element arrays: one byte per level.
        let mut block = vec![0x81u8; depth];
        block.push(0x00);
        let got = on_small_stack(move || dagcbor_to_json(&block).map(|_| ()));
        assert!(got.is_err(), "{depth}");
    }
    // 64 levels are data like any other.
    let mut block = vec![0x81u8; 60];
    block.push(0x00);
    assert!(dagcbor_to_json(&block).is_ok());
}

/// An MST node block: `{l, e}` with entries `(prefix, key suffix, value, right)`.
fn node(l: Option<Cid>, entries: &[(usize, &[u8], Cid, Option<Cid>)]) -> (Cid, Vec<u8>) {
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        p: usize,
        #[serde(with = "serde_bytes")]
        k: &'a [u8],
        v: Cid,
        t: Option<Cid>,
    }
    #[derive(serde::Serialize)]
    struct Node<'a> {
        l: Option<Cid>,
        e: Vec<Entry<'a>>,
    }
    let bytes = serde_ipld_dagcbor::to_vec(&Node {
        l,
        e: entries
            .iter()
            .map(|(p, k, v, t)| Entry {
                p: *p,
                k,
                v: *v,
                t: *t,
            })
            .collect(),
    })
    .unwrap();
    (dag_cbor_cid(&bytes), bytes)
}

fn get_from(blocks: Vec<(Cid, Vec<u8>)>) -> impl Fn(&Cid) -> Option<&'static [u8]> {
    let map: std::collections::HashMap<Cid, &'static [u8]> = blocks
        .into_iter()
        .map(|(c, b)| (c, &*Box::leak(b.into_boxed_slice())))
        .collect();
    move |c| map.get(c).copied()
}

#[test]
fn an_mst_proof_chained_two_thousand_deep_is_refused_without_recursing() {
    let leaf = dag_cbor_cid(b"record");
    // Each node holds one key of layer 0 and a left subtree: below layer 0.
    let mut blocks = Vec::new();
    let (mut below, b) = node(None, &[(0, b"app.bsky.feed.post/a", leaf, None)]);
    blocks.push((below, b));
    for _ in 0..2_000 {
        let (c, b) = node(Some(below), &[(0, b"app.bsky.feed.post/a", leaf, None)]);
        blocks.push((c, b));
        below = c;
    }
    let root = below;
    let got = on_small_stack(move || {
        let get = get_from(blocks);
        let ops = [Op {
            path: "app.bsky.feed.post/a",
            cid: Some(leaf),
            prev: None,
        }];
        invert(root, &ops, &get)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    assert!(got.is_err(), "{got:?}");
    // A chain of keyless nodes, each the left child of the one above.
    let mut blocks = Vec::new();
    let (mut below, b) = node(None, &[]);
    blocks.push((below, b));
    for _ in 0..2_000 {
        let (c, b) = node(Some(below), &[]);
        blocks.push((c, b));
        below = c;
    }
    let root = below;
    let got = on_small_stack(move || {
        let get = get_from(blocks);
        invert(root, &[], &get)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    assert!(got.is_err(), "{got:?}");
}

#[test]
fn an_mst_proof_that_shares_subtrees_is_refused_at_once() {
    // A fan-out DAG: every node's subtrees are the same node, 40 levels up.
    // Walked as a tree it would be 2^40 nodes.
    let leaf = dag_cbor_cid(b"record");
    let mut blocks = Vec::new();
    let (mut below, b) = node(None, &[(0, b"a", leaf, None)]);
    blocks.push((below, b));
    for _ in 0..40 {
        let (c, b) = node(Some(below), &[(0, b"b", leaf, Some(below))]);
        blocks.push((c, b));
        below = c;
    }
    let root = below;
    let started = Instant::now();
    let get = get_from(blocks);
    assert!(invert(root, &[], &get).is_err());
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_repository_whose_tree_is_a_dag_or_a_cycle_is_refused() {
    let leaf_bytes = serde_ipld_dagcbor::to_vec(&serde_json::json!({"text": "x"})).unwrap();
    let leaf = dag_cbor_cid(&leaf_bytes);
    let commit = |data: Cid| {
        let bytes =
            lexview_atproto::encode::commit_block("did:plc:test", "3l000000000", data, &[0; 64]);
        (dag_cbor_cid(&bytes), bytes)
    };
    // A DAG: the same subtree under two keys of the root; its keys repeat.
    let (sub, sub_bytes) = node(None, &[(0, b"app.bsky.feed.post/1", leaf, None)]);
    let (root, root_bytes) = node(Some(sub), &[(0, b"app.bsky.feed.post/2", leaf, Some(sub))]);
    let (c, cb) = commit(root);
    let car = write_car(
        c,
        &[
            (c, cb),
            (root, root_bytes),
            (sub, sub_bytes),
            (leaf, leaf_bytes.clone()),
        ],
    );
    let repo = lexview_atproto::repo::read_repo(&car).unwrap();
    let walked: Vec<_> = repo.records().collect();
    assert!(walked.iter().any(Result::is_err), "{walked:?}");
    // A cycle of keyless nodes: a node whose left child is itself cannot be
    // encoded (its CID depends on itself), so two that point at each other
    // cannot either; the nearest is a long chain of keyless nodes, which
    // ends. A keyless node reached twice is refused.
    let (empty, empty_bytes) = node(None, &[]);
    let (root, root_bytes) = node(Some(empty), &[(0, b"k", leaf, Some(empty))]);
    let (c, cb) = commit(root);
    let car = write_car(c, &[(c, cb), (root, root_bytes), (empty, empty_bytes)]);
    let repo = lexview_atproto::repo::read_repo(&car).unwrap();
    let walked: Vec<_> = repo.records().collect();
    assert!(walked.iter().any(Result::is_err), "{walked:?}");
}
