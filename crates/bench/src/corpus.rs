//! Generated workloads: a corpus of `#commit` frames with a realistic mix
//! and whole repositories, with real DAG-CBOR, real CIDs and real CAR
//! slices (through `lexview_atproto::encode`).

use std::io::Write;
use std::path::Path;

use cid::Cid;
use lexview_atproto::encode::{commit_frame, dag_cbor_cid, record_block, write_car};

/// Writes one repository of `n` records (half posts, 30 % likes, 20 %
/// follows) as a CAR: record blocks, a real MST, and a commit (unsigned).
pub fn generate_repo(path: &Path, n: usize) -> anyhow::Result<()> {
    let did = "did:plc:benchrepo0000000000000";
    let now = "2026-11-24T12:00:00.000Z";
    let mut blocks: Vec<(Cid, Vec<u8>)> = Vec::with_capacity(n * 2);
    let mut entries: Vec<(Vec<u8>, Cid)> = Vec::with_capacity(n);
    for i in 0..n {
        let subject = format!(
            "at://did:plc:other{:018}/app.bsky.feed.post/{}",
            i % 997,
            tid(i as u64)
        );
        let (collection, record) = match i % 10 {
            0..=4 => (
                "app.bsky.feed.post",
                serde_json::json!({"$type": "app.bsky.feed.post",
                "text": format!("backfilled post {i} about rust and atproto"), "createdAt": now, "langs": ["en"]}),
            ),
            5..=7 => (
                "app.bsky.feed.like",
                serde_json::json!({"$type": "app.bsky.feed.like",
                "subject": {"uri": subject, "cid": "bafyreigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"}, "createdAt": now}),
            ),
            _ => (
                "app.bsky.graph.follow",
                serde_json::json!({"$type": "app.bsky.graph.follow",
                "subject": format!("did:plc:other{:018}", i % 997), "createdAt": now}),
            ),
        };
        let (cid, bytes) = record_block(&record)?;
        entries.push((format!("{collection}/{}", tid(i as u64)).into_bytes(), cid));
        blocks.push((cid, bytes));
    }
    entries.sort();
    let root = lexview_atproto::verify::mst::build(&entries, &mut blocks);
    let commit = lexview_atproto::encode::commit_block(did, &tid(n as u64), root, &[0; 64]);
    let commit_cid = dag_cbor_cid(&commit);
    blocks.push((commit_cid, commit));
    std::fs::write(path, write_car(commit_cid, &blocks))?;
    Ok(())
}

fn tid(n: u64) -> String {
    const ALPHA: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";
    let v = (1_700_000_000_000_000u64 + n * 1000) << 10;
    (0..13)
        .rev()
        .map(|i| ALPHA[((v >> (i * 5)) & 31) as usize] as char)
        .collect()
}

/// Writes `n` `#commit` frames of [`Corpus`] to `path`.
pub fn generate_corpus(path: &Path, n: usize) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for frame in Corpus::new(n, false) {
        let frame = frame?;
        out.write_all(&(frame.len() as u32).to_le_bytes())?;
        out.write_all(&frame)?;
    }
    out.flush()?;
    Ok(())
}

const NOW: &str = "2026-11-24T12:00:00.000Z";

/// Generated `#commit` frames with a realistic mix: 40 % posts (a third of
/// them replies), 28 % likes, 10 % follows, 8 % reposts, 9 % custom records
/// (status, RSVP, book), 5 % deletes, by 5,000 authors.
pub struct Corpus {
    n: usize,
    i: usize,
    dids: Vec<String>,
    created: Vec<(usize, &'static str, String)>,
    /// Post texts drawn from a skewed vocabulary (for search), instead of
    /// one sentence that differs only in its number.
    varied: bool,
}

/// Words of the generated post texts; earlier words are drawn more often.
const VOCABULARY: &[&str] = &[
    "the",
    "and",
    "rust",
    "atproto",
    "today",
    "people",
    "network",
    "data",
    "open",
    "protocol",
    "server",
    "design",
    "music",
    "coffee",
    "garden",
    "morning",
    "book",
    "reading",
    "river",
    "mountain",
    "city",
    "train",
    "weather",
    "photo",
    "cat",
    "dog",
    "code",
    "release",
    "index",
    "search",
    "feed",
    "thread",
    "calendar",
    "event",
    "festival",
    "bridge",
    "library",
    "museum",
    "kitchen",
    "bread",
    "recipe",
    "winter",
    "summer",
    "ocean",
    "forest",
    "bicycle",
    "guitar",
    "painting",
    "poem",
    "story",
    "history",
    "science",
    "planet",
    "galaxy",
    "telescope",
    "lighthouse",
    "harbor",
    "island",
    "valley",
    "meadow",
    "orchard",
    "lantern",
    "compass",
    "journey",
];

impl Corpus {
    pub fn new(n: usize, varied: bool) -> Corpus {
        Corpus {
            n,
            i: 0,
            dids: (0..5000)
                .map(|i| format!("did:plc:bench{:019}", i))
                .collect(),
            created: Vec::new(),
            varied,
        }
    }

    /// Word `k` of generated post `i`, drawn from the vocabulary
    /// (skewed towards the front: the square of a uniform draw).
    pub fn word(i: usize, k: usize) -> &'static str {
        let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (k as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 31;
        x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 29;
        let u = (x % 1_000_000) as f64 / 1_000_000.0;
        VOCABULARY[((u * u) * VOCABULARY.len() as f64) as usize]
    }

    /// Two words that generated posts contain, for search queries.
    pub fn query_terms(j: usize) -> String {
        let n = VOCABULARY.len();
        format!(
            "{} {}",
            VOCABULARY[2 + j % (n - 2)],
            VOCABULARY[2 + (j * 7 + 3) % (n - 2)]
        )
    }

    fn post_text(&self, i: usize) -> String {
        if !self.varied {
            return format!("post number {i} about rust and atproto");
        }
        let words = 6 + i % 9;
        let text: Vec<&str> = (0..words).map(|k| Corpus::word(i, k)).collect();
        format!("{} {i}", text.join(" "))
    }

    /// Long on purpose: the workload mix, one arm per kind of event.
    fn frame(&mut self, i: usize) -> anyhow::Result<Vec<u8>> {
        let author = i % self.dids.len();
        let did = &self.dids[author];
        let rkey = tid(i as u64);
        let roll = (i * 7919) % 100;
        let target_post = self
            .created
            .iter()
            .rev()
            .find(|c| c.1 == "app.bsky.feed.post")
            .map(|c| {
                (
                    format!("at://{}/app.bsky.feed.post/{}", self.dids[c.0], c.2),
                    "bafyreigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
                )
            });
        let (action, collection, record): (&str, &'static str, Option<serde_json::Value>) = if roll
            < 5
            && !self.created.is_empty()
        {
            (
                "delete",
                self.created[(i * 31) % self.created.len()].1,
                None,
            )
        } else if roll < 45 {
            let mut r = serde_json::json!({"$type": "app.bsky.feed.post", "text": self.post_text(i), "createdAt": NOW, "langs": ["en"]});
            if let (true, Some((uri, cid))) = (i.is_multiple_of(3), &target_post) {
                r["reply"] = serde_json::json!({"root": {"uri": uri, "cid": cid}, "parent": {"uri": uri, "cid": cid}});
            }
            ("create", "app.bsky.feed.post", Some(r))
        } else if roll < 73 {
            let (uri, cid) = target_post.clone().unwrap_or((
                format!("at://{did}/app.bsky.feed.post/{rkey}"),
                "bafyreigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
            ));
            (
                "create",
                "app.bsky.feed.like",
                Some(
                    serde_json::json!({"$type": "app.bsky.feed.like", "subject": {"uri": uri, "cid": cid}, "createdAt": NOW}),
                ),
            )
        } else if roll < 83 {
            (
                "create",
                "app.bsky.graph.follow",
                Some(
                    serde_json::json!({"$type": "app.bsky.graph.follow", "subject": self.dids[(i * 13) % self.dids.len()], "createdAt": NOW}),
                ),
            )
        } else if roll < 91 {
            let (uri, cid) = target_post.clone().unwrap_or((
                format!("at://{did}/app.bsky.feed.post/{rkey}"),
                "bafyreigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
            ));
            (
                "create",
                "app.bsky.feed.repost",
                Some(
                    serde_json::json!({"$type": "app.bsky.feed.repost", "subject": {"uri": uri, "cid": cid}, "createdAt": NOW}),
                ),
            )
        } else if roll < 94 {
            (
                "create",
                "xyz.statusphere.status",
                Some(
                    serde_json::json!({"$type": "xyz.statusphere.status", "status": "🦀", "createdAt": NOW}),
                ),
            )
        } else if roll < 97 {
            (
                "create",
                "buzz.bookhive.book",
                Some(
                    serde_json::json!({"$type": "buzz.bookhive.book", "title": "The Dispossessed", "authors": "Ursula K. Le Guin", "hiveId": format!("bk_{i}"), "status": "buzz.bookhive.defs#finished", "stars": 9, "createdAt": NOW}),
                ),
            )
        } else {
            let uri = format!(
                "at://{}/community.lexicon.calendar.event/{}",
                self.dids[(i * 17) % self.dids.len()],
                tid(7)
            );
            (
                "create",
                "community.lexicon.calendar.rsvp",
                Some(
                    serde_json::json!({"$type": "community.lexicon.calendar.rsvp", "subject": {"uri": uri, "cid": "bafyreigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"}, "status": "community.lexicon.calendar.rsvp#going", "createdAt": NOW}),
                ),
            )
        };
        let (path_rkey, mut blocks, cid, repo_idx) = match &record {
            Some(r) => {
                let bytes = serde_ipld_dagcbor::to_vec(r)?;
                let cid = dag_cbor_cid(&bytes);
                self.created.push((author, collection, rkey.clone()));
                if self.created.len() > 10_000 {
                    self.created.drain(..5000);
                }
                (rkey.clone(), vec![(cid, bytes)], Some(cid), author)
            }
            None => {
                let victim = self.created.remove((i * 31) % self.created.len());
                (victim.2, Vec::new(), None, victim.0)
            }
        };
        let repo = self.dids[repo_idx].clone();
        let op = (
            if action == "delete" {
                "delete"
            } else {
                "create"
            },
            format!("{collection}/{path_rkey}"),
            cid,
        );
        commit_frame(
            i as i64 + 1,
            &repo,
            &rkey,
            vec![op],
            std::mem::take(&mut blocks),
            false,
            NOW,
        )
        .map_err(Into::into)
    }
}

impl Iterator for Corpus {
    type Item = anyhow::Result<Vec<u8>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.i >= self.n {
            return None;
        }
        self.i += 1;
        Some(self.frame(self.i - 1))
    }
}
