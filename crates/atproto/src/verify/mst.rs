//! Building a Merkle Search Tree from sorted keys (the repository spec): each
//! key's height is the number of leading zero bits of its SHA-256 divided by
//! two; a node holds the keys of its layer with prefix-compressed key bytes,
//! and subtrees of lower keys between them. Used to write repositories (the
//! backfill benchmark) and checked against the interop vectors. Written by
//! hand for the same reason as `repo.rs`'s walk.

use crate::encode::dag_cbor_cid;
use cid::Cid;
use sha2::{Digest, Sha256};

/// The layer of a key.
pub fn key_height(key: &[u8]) -> u32 {
    let hash = Sha256::digest(key);
    let mut zeros = 0;
    for b in hash {
        if b == 0 {
            zeros += 8;
            continue;
        }
        zeros += b.leading_zeros();
        break;
    }
    zeros / 2
}

/// DAG-CBOR of one node, written directly. By hand because the node's shape
/// is fixed (a map `e`, `l`; entries `k`, `p`, `t`, `v`, already in DAG-CBOR
/// key order) and serde_ipld_dagcbor buffers and sorts every map's entries:
/// its encoding was a fifth of a commit's verification (the Sync 1.1 proof
/// rebuilds each node of the proof). Tested against serde_ipld_dagcbor.
mod node_cbor {
    use cid::Cid;

    fn head(out: &mut Vec<u8>, major: u8, n: u64) {
        let m = major << 5;
        match n {
            0..=23 => out.push(m | n as u8),
            24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
            0x100..=0xffff => {
                out.push(m | 25);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(m | 26);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            _ => {
                out.push(m | 27);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }

    fn key(out: &mut Vec<u8>, k: u8) {
        out.extend_from_slice(&[0x61, k]);
    }

    fn cid(out: &mut Vec<u8>, c: &Cid) {
        // Tag 42, a byte string: the identity multibase prefix, then the CID.
        out.extend_from_slice(&[0xd8, 42]);
        head(out, 2, c.encoded_len() as u64 + 1);
        out.push(0);
        c.write_bytes(&mut *out).expect("writing to a Vec");
    }

    fn opt_cid(out: &mut Vec<u8>, c: &Option<Cid>) {
        match c {
            Some(c) => cid(out, c),
            None => out.push(0xf6),
        }
    }

    /// `{e: [{k, p, t, v}...], l}`; `entries` are (key suffix, prefix length,
    /// right subtree, value).
    pub fn encode(left: &Option<Cid>, entries: &[(&[u8], usize, Option<Cid>, Cid)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + entries.len() * 96);
        head(&mut out, 5, 2);
        key(&mut out, b'e');
        head(&mut out, 4, entries.len() as u64);
        for (k, p, t, v) in entries {
            head(&mut out, 5, 4);
            key(&mut out, b'k');
            head(&mut out, 2, k.len() as u64);
            out.extend_from_slice(k);
            key(&mut out, b'p');
            head(&mut out, 0, *p as u64);
            key(&mut out, b't');
            opt_cid(&mut out, t);
            key(&mut out, b'v');
            cid(&mut out, v);
        }
        key(&mut out, b'l');
        opt_cid(&mut out, left);
        out
    }
}

/// Builds the tree of `entries` (sorted by key, keys unique): its root CID
/// and every node block, appended to `blocks`.
pub fn build(entries: &[(Vec<u8>, Cid)], blocks: &mut Vec<(Cid, Vec<u8>)>) -> Cid {
    let items: Vec<Item> = entries
        .iter()
        .map(|(k, v)| Item::Leaf(k.clone(), *v, key_height(k)))
        .collect();
    let top = items.iter().map(Item::top).max().unwrap_or(0);
    build_items(&items, top, blocks).expect("a tree of records only has no unloaded subtree")
}

/// Encodes one node (its entries' keys prefix-compressed) into `blocks`.
fn encode_node(
    left: Option<Cid>,
    here: &[(&[u8], Cid, Option<Cid>)],
    blocks: &mut Vec<(Cid, Vec<u8>)>,
) -> Cid {
    let mut prev: &[u8] = &[];
    let e: Vec<(&[u8], usize, Option<Cid>, Cid)> = here
        .iter()
        .map(|(k, v, t)| {
            let p = prev
                .iter()
                .zip(k.iter())
                .take_while(|(a, b)| a == b)
                .count();
            prev = k;
            (&k[p..], p, *t, *v)
        })
        .collect();
    let bytes = node_cbor::encode(&left, &e);
    let cid = dag_cbor_cid(&bytes);
    blocks.push((cid, bytes));
    cid
}

// ---- Sync 1.1: inverting a commit's ops on a partial tree ----

/// An item of a partial tree flattened in key order: a record (its key's
/// height computed once, as each layer of a rebuild asks for it), or a
/// subtree whose node was not in the proof (its CID and layer).
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Leaf(Vec<u8>, Cid, u32),
    Opaque(Cid, u32),
}

impl Item {
    /// The lowest layer whose node can hold this item.
    fn top(&self) -> u32 {
        match self {
            Item::Leaf(_, _, h) => *h,
            Item::Opaque(_, l) => l + 1,
        }
    }
}

/// Why an inversion could not be carried out.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProofError {
    #[error("MST node {0} is not valid DAG-CBOR: {1}")]
    Node(Cid, String),
    #[error("the proof lacks a node needed to place {0}")]
    Incomplete(String),
    #[error("op on {0} does not match the tree")]
    OpMismatch(String),
}

#[derive(serde::Deserialize)]
struct NodeIn<'a> {
    l: Option<Cid>,
    #[serde(borrow)]
    e: Vec<EntryIn<'a>>,
}

#[derive(serde::Deserialize)]
struct EntryIn<'a> {
    p: usize,
    #[serde(borrow, with = "serde_bytes")]
    k: &'a [u8],
    v: Cid,
    t: Option<Cid>,
}

/// A proof's blocks by CID (each checked against its CID by the caller).
pub type Get<'b> = dyn Fn(&Cid) -> Option<&'b [u8]> + 'b;

/// One operation of a commit, as the inversion needs it.
pub struct Op<'a> {
    pub path: &'a str,
    /// The value after the commit (None for a delete).
    pub cid: Option<Cid>,
    /// The value before (None for a create).
    pub prev: Option<Cid>,
}

impl<'a> From<&crate::decode::frame::RepoOp<'a>> for Op<'a> {
    fn from(op: &crate::decode::frame::RepoOp<'a>) -> Op<'a> {
        Op {
            path: op.path,
            cid: op.cid,
            prev: op.prev,
        }
    }
}

/// What a flattening has seen: every node once, within a budget.
struct Seen {
    nodes: std::collections::HashSet<Cid>,
}

/// The most MST nodes one proof may hold (a commit's proof holds a few
/// dozen; a whole repository is walked by `repo::Walk`, not here).
const PROOF_NODE_BUDGET: usize = 10_000;

/// Flattens the tree under `cid` (whose layer is `layer`, when known) into
/// `out`, in key order. Recursive, but bounded: each level is one layer
/// lower than its parent (checked), layers come from key hashes (at most
/// 128), every node is visited once (a tree, not a DAG), and a proof holds
/// at most [`PROOF_NODE_BUDGET`] nodes.
fn flatten<'b>(
    cid: Cid,
    layer: Option<u32>,
    get: &Get<'b>,
    out: &mut Vec<Item>,
    seen: &mut Seen,
) -> Result<(), ProofError> {
    let Some(bytes) = get(&cid) else {
        let layer = layer.ok_or_else(|| ProofError::Incomplete("the root".into()))?;
        out.push(Item::Opaque(cid, layer));
        return Ok(());
    };
    if !seen.nodes.insert(cid) {
        return Err(ProofError::Node(cid, "appears twice: not a tree".into()));
    }
    if seen.nodes.len() > PROOF_NODE_BUDGET {
        return Err(ProofError::Node(
            cid,
            "more nodes than a proof holds".into(),
        ));
    }
    let node: NodeIn =
        crate::decode::from_dag_cbor(bytes).map_err(|e| ProofError::Node(cid, e.to_string()))?;
    let mut keys = Vec::with_capacity(node.e.len().min(1024));
    let mut key: Vec<u8> = Vec::new();
    for e in &node.e {
        if e.p > key.len() {
            return Err(ProofError::Node(cid, "bad prefix length".into()));
        }
        key.truncate(e.p);
        key.extend_from_slice(e.k);
        // Each key's own height: the rebuild places it by that, so a node
        // holding a key of another layer does not rebuild to its CID.
        keys.push((key.clone(), key_height(&key)));
    }
    // A node's layer is its keys' height; an empty node is one above its
    // child, and an empty root with no child is the empty tree (a commit
    // that deleted a repository's last record).
    let layer = match (keys.first(), layer) {
        (Some((_, h)), Some(l)) if *h != l => {
            return Err(ProofError::Node(
                cid,
                format!("keys of layer {h} below layer {}", l + 1),
            ))
        }
        (Some((_, h)), _) => *h,
        (None, Some(l)) => l,
        (None, None) if node.l.is_none() => 0,
        (None, None) => match node.l.and_then(|l| get(&l)) {
            Some(child) => {
                let c: NodeIn = crate::decode::from_dag_cbor(child)
                    .map_err(|e| ProofError::Node(cid, e.to_string()))?;
                match c.e.first() {
                    Some(e) if e.p == 0 => key_height(e.k) + 1,
                    _ => return Err(ProofError::Incomplete("the root's layer".into())),
                }
            }
            None => return Err(ProofError::Incomplete("the root's layer".into())),
        },
    };
    let below = layer.checked_sub(1);
    let subtree = |t: Option<Cid>| match (t, below) {
        (Some(_), None) => Err(ProofError::Node(cid, "a subtree below layer 0".into())),
        (t, _) => Ok(t),
    };
    if let Some(l) = subtree(node.l)? {
        flatten(l, below, get, out, seen)?;
    }
    for (e, (k, h)) in node.e.iter().zip(keys) {
        out.push(Item::Leaf(k, e.v, h));
        if let Some(t) = subtree(e.t)? {
            flatten(t, below, get, out, seen)?;
        }
    }
    Ok(())
}

/// Builds a tree over items, placing each unloaded subtree whole; an error
/// when a subtree would have to be split (the proof is incomplete).
fn build_items(
    items: &[Item],
    layer: u32,
    blocks: &mut Vec<(Cid, Vec<u8>)>,
) -> Result<Cid, ProofError> {
    if let [Item::Opaque(cid, l)] = items {
        if *l == layer {
            return Ok(*cid);
        }
    }
    let mut left: Option<Cid> = None;
    let mut here: Vec<(&[u8], Cid, Option<Cid>)> = Vec::new();
    let mut start = 0;
    let sub =
        |range: &[Item], blocks: &mut Vec<(Cid, Vec<u8>)>| -> Result<Option<Cid>, ProofError> {
            if range.is_empty() {
                return Ok(None);
            }
            let below = layer
                .checked_sub(1)
                .ok_or_else(|| ProofError::Incomplete("a subtree below layer 0".into()))?;
            Ok(Some(build_items(range, below, blocks)?))
        };
    for (i, item) in items.iter().enumerate() {
        match item {
            Item::Leaf(k, v, h) if *h == layer => {
                let below = sub(&items[start..i], blocks)?;
                match here.last_mut() {
                    Some(last) => last.2 = below,
                    None => left = below,
                }
                here.push((k, *v, None));
                start = i + 1;
            }
            Item::Leaf(k, _, h) if *h > layer => {
                return Err(ProofError::Incomplete(String::from_utf8_lossy(k).into()))
            }
            Item::Opaque(_, l) if *l >= layer => {
                return Err(ProofError::Incomplete("an unloaded subtree".into()))
            }
            _ => {}
        }
    }
    let below = sub(&items[start..], blocks)?;
    match here.last_mut() {
        Some(last) => last.2 = below,
        None => left = below,
    }
    Ok(encode_node(left, &here, blocks))
}

/// The value of `key` in the tree at `root`, from the nodes `get` returns:
/// `Ok(None)` when the tree does not hold the key, `Incomplete` when a node
/// on the key's path is missing. Each step goes one layer down (checked),
/// so it ends within the deepest layer a key hash gives.
pub fn lookup<'b>(root: Cid, key: &[u8], get: &Get<'b>) -> Result<Option<Cid>, ProofError> {
    let mut cid = root;
    let mut above: Option<u32> = None;
    for _ in 0..=MAX_LAYERS {
        let bytes =
            get(&cid).ok_or_else(|| ProofError::Incomplete(String::from_utf8_lossy(key).into()))?;
        let node: NodeIn = crate::decode::from_dag_cbor(bytes)
            .map_err(|e| ProofError::Node(cid, e.to_string()))?;
        let mut next = node.l;
        let mut full: Vec<u8> = Vec::new();
        let mut layer = None;
        for e in &node.e {
            if e.p > full.len() {
                return Err(ProofError::Node(cid, "bad prefix length".into()));
            }
            full.truncate(e.p);
            full.extend_from_slice(e.k);
            let h = key_height(&full);
            if above.is_some_and(|a| h >= a) || layer.is_some_and(|l| l != h) {
                return Err(ProofError::Node(cid, "a key in the wrong layer".into()));
            }
            layer = Some(h);
            match full.as_slice().cmp(key) {
                std::cmp::Ordering::Equal => return Ok(Some(e.v)),
                std::cmp::Ordering::Greater => break,
                std::cmp::Ordering::Less => next = e.t,
            }
        }
        match next {
            None => return Ok(None),
            Some(child) => {
                above = layer.or(above);
                cid = child;
            }
        }
    }
    Err(ProofError::Node(root, "deeper than any tree".into()))
}

/// More layers than any key's hash gives (a layer is half the leading zero
/// bits of a SHA-256).
const MAX_LAYERS: usize = 130;

/// Sync 1.1's inductive proof: undoes `ops` on the tree rooted at `root`
/// (only the nodes `get` returns are known) and returns the root before the
/// commit, to compare with the commit's `prevData`.
pub fn invert<'b>(root: Cid, ops: &[Op<'_>], get: &Get<'b>) -> Result<Cid, ProofError> {
    let mut items = Vec::new();
    let mut seen = Seen {
        nodes: std::collections::HashSet::new(),
    };
    flatten(root, None, get, &mut items, &mut seen)?;
    // Keys in strictly increasing order, as a tree's are.
    let mut last: Option<&[u8]> = None;
    for item in &items {
        if let Item::Leaf(k, ..) = item {
            if last.is_some_and(|l| l >= k.as_slice()) {
                return Err(ProofError::Node(root, "keys out of order".into()));
            }
            last = Some(k);
        }
    }
    let find = |items: &[Item], key: &[u8]| {
        items
            .iter()
            .position(|i| matches!(i, Item::Leaf(k, ..) if k == key))
    };
    for op in ops {
        let key = op.path.as_bytes();
        match (op.cid, op.prev) {
            // A create: the key goes.
            (Some(cid), None) => match find(&items, key) {
                Some(i) if matches!(&items[i], Item::Leaf(_, v, _) if *v == cid) => {
                    items.remove(i);
                }
                _ => return Err(ProofError::OpMismatch(op.path.into())),
            },
            // An update: the old value comes back.
            (Some(cid), Some(prev)) => match find(&items, key) {
                Some(i) if matches!(&items[i], Item::Leaf(_, v, _) if *v == cid) => {
                    if let Item::Leaf(_, v, _) = &mut items[i] {
                        *v = prev;
                    }
                }
                _ => return Err(ProofError::OpMismatch(op.path.into())),
            },
            // A delete: the key comes back, between two known leaves.
            (None, Some(prev)) => {
                if find(&items, key).is_some() {
                    return Err(ProofError::OpMismatch(op.path.into()));
                }
                let at = items
                    .iter()
                    .position(|i| matches!(i, Item::Leaf(k, ..) if k.as_slice() > key))
                    .unwrap_or(items.len());
                let before = items[..at]
                    .iter()
                    .rposition(|i| matches!(i, Item::Leaf(..)))
                    .map_or(0, |p| p + 1);
                if items[before..at]
                    .iter()
                    .any(|i| matches!(i, Item::Opaque(..)))
                {
                    return Err(ProofError::Incomplete(op.path.into()));
                }
                items.insert(at, Item::Leaf(key.to_vec(), prev, key_height(key)));
            }
            (None, None) => return Err(ProofError::OpMismatch(op.path.into())),
        }
    }
    let top = items.iter().map(Item::top).max().unwrap_or(0);
    build_items(&items, top, &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/../../tests/fixtures/interop/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    }

    /// A commit-proof vector's keys: before, added, deleted, and after (sorted).
    struct CommitVector {
        leaf: Cid,
        before: Vec<String>,
        adds: Vec<String>,
        dels: Vec<String>,
        after: Vec<String>,
    }

    impl CommitVector {
        fn of(v: &Value) -> CommitVector {
            let (before, adds, dels) = (
                strings(&v["keys"]),
                strings(&v["adds"]),
                strings(&v["dels"]),
            );
            let mut after: Vec<String> = before
                .iter()
                .filter(|k| !dels.contains(k))
                .chain(adds.iter())
                .cloned()
                .collect();
            after.sort();
            CommitVector {
                leaf: v["leafValue"].as_str().unwrap().parse().unwrap(),
                before,
                adds,
                dels,
                after,
            }
        }
    }

    #[test]
    fn nodes_encode_as_serde_ipld_dagcbor_does() {
        #[derive(serde::Serialize)]
        struct Node<'a> {
            e: Vec<Entry<'a>>,
            l: Option<Cid>,
        }
        #[derive(serde::Serialize)]
        struct Entry<'a> {
            #[serde(with = "serde_bytes")]
            k: &'a [u8],
            p: usize,
            t: Option<Cid>,
            v: Cid,
        }
        let a = dag_cbor_cid(b"a");
        let long_key = vec![b'x'; 300];
        let keys: Vec<Vec<u8>> = (0..30)
            .map(|i| format!("app.bsky.feed.post/{i:013}").into_bytes())
            .collect();
        for n in [0usize, 1, 5, 23, 24, 30] {
            for left in [None, Some(a)] {
                let entries: Vec<(&[u8], usize, Option<Cid>, Cid)> = (0..n)
                    .map(|i| {
                        let k: &[u8] = if i == 3 { &long_key } else { &keys[i] };
                        (k, i * 20, (i % 2 == 0).then_some(a), dag_cbor_cid(k))
                    })
                    .collect();
                let oracle = serde_ipld_dagcbor::to_vec(&Node {
                    e: entries
                        .iter()
                        .map(|(k, p, t, v)| Entry {
                            k,
                            p: *p,
                            t: *t,
                            v: *v,
                        })
                        .collect(),
                    l: left,
                })
                .unwrap();
                assert_eq!(node_cbor::encode(&left, &entries), oracle, "{n} entries");
            }
        }
    }

    #[test]
    fn key_heights_match_the_interop_vectors() {
        for v in fixture("mst/key_heights.json").as_array().unwrap() {
            let key = v["key"].as_str().unwrap();
            assert_eq!(
                key_height(key.as_bytes()),
                v["height"].as_u64().unwrap() as u32,
                "{key}"
            );
        }
    }

    #[test]
    fn roots_before_and_after_each_commit_proof_vector() {
        for v in fixture("commit-proof-fixtures.json").as_array().unwrap() {
            let CommitVector {
                leaf,
                before,
                after,
                ..
            } = CommitVector::of(v);
            let tree = |keys: &[String]| {
                let mut keys = keys.to_vec();
                keys.sort();
                let entries: Vec<(Vec<u8>, Cid)> =
                    keys.iter().map(|k| (k.as_bytes().to_vec(), leaf)).collect();
                build(&entries, &mut Vec::new()).to_string()
            };
            assert_eq!(tree(&before), v["rootBeforeCommit"], "{}", v["comment"]);
            assert_eq!(tree(&after), v["rootAfterCommit"], "{}", v["comment"]);
        }
    }

    #[test]
    fn a_built_tree_walks_back_to_its_keys() {
        let leaf = dag_cbor_cid(b"x");
        let entries: Vec<(Vec<u8>, Cid)> = (0..2000)
            .map(|i| (format!("app.bsky.feed.post/{i:08}").into_bytes(), leaf))
            .collect();
        let mut blocks = Vec::new();
        let root = build(&entries, &mut blocks);
        // A commit over it, in a CAR, read back by the repository reader.
        let commit = crate::encode::commit_block("did:plc:test", "3l000000000", root, &[0; 64]);
        let commit_cid = dag_cbor_cid(&commit);
        blocks.push((commit_cid, commit));
        blocks.push((leaf, b"x".to_vec()));
        let car = crate::encode::write_car(commit_cid, &blocks);
        let repo = crate::repo::read_repo(&car).unwrap();
        let keys: Vec<Vec<u8>> = repo.records().map(|r| r.unwrap().0.into_bytes()).collect();
        assert_eq!(
            keys,
            entries.iter().map(|e| e.0.clone()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_commit_that_empties_a_repository_or_fills_an_empty_one_inverts() {
        let leaf = dag_cbor_cid(b"x");
        let key = "app.bsky.feed.post/3kaaaaaaaaaaa";
        let mut blocks = Vec::new();
        let empty = build(&[], &mut blocks);
        let one = build(&[(key.as_bytes().to_vec(), leaf)], &mut blocks);
        let known: std::collections::HashMap<Cid, Vec<u8>> = blocks.into_iter().collect();
        let get = |c: &Cid| known.get(c).map(Vec::as_slice);
        // The last record deleted: the tree after is one empty node.
        let delete = [Op {
            path: key,
            cid: None,
            prev: Some(leaf),
        }];
        assert_eq!(invert(empty, &delete, &get).unwrap(), one);
        // The first record created.
        let create = [Op {
            path: key,
            cid: Some(leaf),
            prev: None,
        }];
        assert_eq!(invert(one, &create, &get).unwrap(), empty);
    }

    #[test]
    fn each_commit_proof_vector_inverts_to_the_root_before() {
        for v in fixture("commit-proof-fixtures.json").as_array().unwrap() {
            let CommitVector {
                leaf,
                adds,
                dels,
                after,
                ..
            } = CommitVector::of(v);
            let entries: Vec<(Vec<u8>, Cid)> = after
                .iter()
                .map(|k| (k.as_bytes().to_vec(), leaf))
                .collect();
            let mut blocks = Vec::new();
            let root = build(&entries, &mut blocks);
            // Only the proof's blocks are known, as in a #commit frame.
            let proof = strings(&v["blocksInProof"]);
            let known: std::collections::HashMap<Cid, Vec<u8>> = blocks
                .into_iter()
                .filter(|(c, _)| proof.contains(&c.to_string()))
                .collect();
            let ops: Vec<Op> = adds
                .iter()
                .map(|k| Op {
                    path: k,
                    cid: Some(leaf),
                    prev: None,
                })
                .chain(dels.iter().map(|k| Op {
                    path: k,
                    cid: None,
                    prev: Some(leaf),
                }))
                .collect();
            let got = invert(root, &ops, &|c| known.get(c).map(Vec::as_slice))
                .unwrap_or_else(|e| panic!("{}: {e}", v["comment"]));
            assert_eq!(got.to_string(), v["rootBeforeCommit"], "{}", v["comment"]);
            // A wrong prev value does not reach the root before.
            if let Some(k) = dels.first() {
                let bad = [Op {
                    path: k,
                    cid: None,
                    prev: Some(dag_cbor_cid(b"other")),
                }];
                let got = invert(root, &bad, &|c| known.get(c).map(Vec::as_slice));
                assert!(
                    got.map(|r| r.to_string())
                        != Ok(v["rootBeforeCommit"].as_str().unwrap().to_string())
                );
            }
        }
    }
}
