//! Building a Merkle Search Tree from sorted keys (the repository spec): each
//! key's height is the number of leading zero bits of its SHA-256 divided by
//! two; a node holds the keys of its layer with prefix-compressed key bytes,
//! and subtrees of lower keys between them. Used to write repositories (the
//! backfill benchmark) and checked against the interop vectors. Written by
//! hand for the same reason as `repo.rs`'s walk.

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

/// The CID of a DAG-CBOR block (sha2-256).
pub fn dag_cbor_cid(bytes: &[u8]) -> Cid {
    let hash = multihash::Multihash::<64>::wrap(0x12, &Sha256::digest(bytes))
        .expect("a 32-byte digest fits");
    Cid::new_v1(0x71, hash)
}

/// Builds the tree of `entries` (sorted by key, keys unique): its root CID
/// and every node block, appended to `blocks`.
pub fn build(entries: &[(Vec<u8>, Cid)], blocks: &mut Vec<(Cid, Vec<u8>)>) -> Cid {
    let keyed: Vec<(&[u8], Cid, u32)> = entries
        .iter()
        .map(|(k, v)| (k.as_slice(), *v, key_height(k)))
        .collect();
    let top = keyed.iter().map(|k| k.2).max().unwrap_or(0);
    node(&keyed, top, blocks)
}

fn node(keys: &[(&[u8], Cid, u32)], layer: u32, blocks: &mut Vec<(Cid, Vec<u8>)>) -> Cid {
    let mut left: Option<Cid> = None;
    let mut here: Vec<(&[u8], Cid, Option<Cid>)> = Vec::new();
    let mut start = 0;
    let sub = |range: &[(&[u8], Cid, u32)], blocks: &mut Vec<(Cid, Vec<u8>)>| {
        (!range.is_empty()).then(|| node(range, layer - 1, blocks))
    };
    for (i, k) in keys.iter().enumerate() {
        if k.2 == layer {
            let below = sub(&keys[start..i], blocks);
            match here.last_mut() {
                Some(last) => last.2 = below,
                None => left = below,
            }
            here.push((k.0, k.1, None));
            start = i + 1;
        }
    }
    let below = sub(&keys[start..], blocks);
    match here.last_mut() {
        Some(last) => last.2 = below,
        None => left = below,
    }
    let mut prev: &[u8] = &[];
    let e = here
        .iter()
        .map(|(k, v, t)| {
            let p = prev
                .iter()
                .zip(k.iter())
                .take_while(|(a, b)| a == b)
                .count();
            prev = k;
            Entry {
                k: &k[p..],
                p,
                t: *t,
                v: *v,
            }
        })
        .collect();
    let bytes = serde_ipld_dagcbor::to_vec(&Node { e, l: left }).expect("a node serialises");
    let cid = dag_cbor_cid(&bytes);
    blocks.push((cid, bytes));
    cid
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture(name: &str) -> Value {
        let path = format!(
            "{}/tests/fixtures/interop/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
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
            let leaf: Cid = v["leafValue"].as_str().unwrap().parse().unwrap();
            let strs = |f: &str| -> Vec<String> {
                v[f].as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap().to_string())
                    .collect()
            };
            let tree = |keys: &[String]| {
                let mut keys = keys.to_vec();
                keys.sort();
                let entries: Vec<(Vec<u8>, Cid)> =
                    keys.iter().map(|k| (k.as_bytes().to_vec(), leaf)).collect();
                build(&entries, &mut Vec::new()).to_string()
            };
            let before = strs("keys");
            assert_eq!(tree(&before), v["rootBeforeCommit"], "{}", v["comment"]);
            let (adds, dels) = (strs("adds"), strs("dels"));
            let after: Vec<String> = before
                .iter()
                .filter(|k| !dels.contains(k))
                .chain(adds.iter())
                .cloned()
                .collect();
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
        #[derive(serde::Serialize)]
        struct Commit {
            did: &'static str,
            rev: &'static str,
            data: Cid,
            prev: Option<Cid>,
            version: u64,
            #[serde(with = "serde_bytes")]
            sig: Vec<u8>,
        }
        let commit = serde_ipld_dagcbor::to_vec(&Commit {
            did: "did:plc:test",
            rev: "3l000000000",
            data: root,
            prev: None,
            version: 3,
            sig: vec![0; 64],
        })
        .unwrap();
        let commit_cid = dag_cbor_cid(&commit);
        blocks.push((commit_cid, commit));
        blocks.push((leaf, b"x".to_vec()));
        let car = crate::repo::write_car(commit_cid, &blocks);
        let repo = crate::repo::read_repo(&car).unwrap();
        let keys: Vec<Vec<u8>> = repo
            .records
            .iter()
            .map(|(k, _)| k.clone().into_bytes())
            .collect();
        assert_eq!(
            keys,
            entries.iter().map(|e| e.0.clone()).collect::<Vec<_>>()
        );
    }
}
