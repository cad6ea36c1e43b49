//! `lexview bench`: decode + validate + index throughput through the real
//! pipeline and a real on-disk DuckDB store, on (a) recorded frames replayed in
//! a loop and (b) a generated corpus of commit events with a realistic mix.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use cid::Cid;
use serde::Serialize;

use crate::index::event::IndexEvent;
use crate::index::store::Store;
use crate::metrics::Metrics;
use crate::pipeline::{Ingestor, Outcome};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A recorded frames file to replay in a loop (case a).
    #[arg(long)]
    pub frames: Option<PathBuf>,
    /// How many times to replay --frames.
    #[arg(long, default_value_t = 200)]
    pub loops: usize,
    /// Generate and index this many commit events (case b).
    #[arg(long, default_value_t = 0)]
    pub generate: usize,
    /// Lexicon directory.
    #[arg(long, default_value = "./lexicons")]
    pub lexicons: PathBuf,
    /// Scratch directory for the store and the generated corpus.
    #[arg(long, default_value = "./target/bench")]
    pub dir: PathBuf,
    /// Measure decoding and validation only, without the store.
    #[arg(long)]
    pub ingest_only: bool,
    /// Verify every commit that touches a loaded collection, with keys from
    /// this `{did: document}` file (case a; rev order is not checked, as the
    /// loop replays the same commits).
    #[arg(long)]
    pub did_docs: Option<PathBuf>,
    /// Generate a repository of this many records and backfill it (case c).
    #[arg(long, default_value_t = 0)]
    pub repo: usize,
    /// Writer batch size in events.
    #[arg(long, default_value_t = 150_000)]
    pub batch: usize,
    /// DuckDB's memory limit for the store, e.g. 128MB (default: DuckDB's).
    #[arg(long)]
    pub memory_limit: Option<String>,
    /// Query load (case d): build a store of at least this many generated
    /// records (once; reused), serve it, and measure request latencies.
    #[arg(long, default_value_t = 0)]
    pub load: usize,
    /// Requests per second for point, backlink, thread and search requests.
    #[arg(long, default_value_t = 1000.0)]
    pub load_rate: f64,
    /// Requests per second for the 50-post pages (XRPC and GraphQL).
    #[arg(long, default_value_t = 100.0)]
    pub load_page_rate: f64,
    /// Seconds of measured load per case (after 2 s of warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub load_seconds: f64,
    /// Only the load cases whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub load_only: Vec<String>,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let catalog = Arc::new(crate::serve::load_catalog(&args.lexicons)?);
    std::fs::create_dir_all(&args.dir)?;
    println!(
        "machine: {} cores (std::thread::available_parallelism)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    if let Some(frames) = &args.frames {
        let data =
            std::fs::read(frames).with_context(|| format!("reading {}", frames.display()))?;
        let (list, _) = crate::source::replay::split_frames(&data);
        let list: Vec<Vec<u8>> = list.into_iter().map(<[u8]>::to_vec).collect();
        let n = list.len();
        let iter = (0..args.loops).flat_map(move |_| list.clone().into_iter());
        let store_dir = args.dir.join("store-frames");
        let _ = std::fs::remove_dir_all(&store_dir);
        report(
            &format!("(a) {} recorded frames x {} loops", n, args.loops),
            measure(
                &catalog,
                &store_dir,
                args.batch,
                args.ingest_only,
                verifier(&args)?,
                iter,
            )?,
        );
    }
    if args.generate > 0 {
        let corpus = args.dir.join(format!("generated-{}.bin", args.generate));
        if !corpus.exists() {
            eprintln!(
                "generating {} commit events into {} ...",
                args.generate,
                corpus.display()
            );
            generate_corpus(&corpus, args.generate)?;
        }
        let reader = FrameReader(BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(&corpus)?,
        ));
        let store_dir = args.dir.join("store-generated");
        let _ = std::fs::remove_dir_all(&store_dir);
        report(
            &format!("(b) {} generated commit events", args.generate),
            measure(
                &catalog,
                &store_dir,
                args.batch,
                args.ingest_only,
                None,
                reader,
            )?,
        );
    }
    if args.repo > 0 {
        let path = args.dir.join(format!("repo-{}.car", args.repo));
        if !path.exists() {
            eprintln!(
                "generating a repository of {} records into {} ...",
                args.repo,
                path.display()
            );
            generate_repo(&path, args.repo)?;
        }
        let car_len = std::fs::metadata(&path)?.len();
        // As `lexview backfill` runs.
        crate::backfill::purge_memory_promptly();
        let store_dir = args.dir.join("store-repo");
        let _ = std::fs::remove_dir_all(&store_dir);
        let mut store = Store::open(&store_dir)?;
        let ingestor = Ingestor::new(catalog.clone(), Arc::new(Metrics::default()));
        let start = Instant::now();
        // From the file, as `lexview backfill` applies a fetched repository.
        if let Some(limit) = &args.memory_limit {
            store.set_memory_limit(limit)?;
        }
        let (_, stats) = crate::backfill::apply_repo_file(&mut store, &ingestor, None, &path)?;
        store.checkpoint()?;
        for (tag, bytes) in store.memory_report()? {
            eprintln!("DuckDB memory: {tag} {} MiB", bytes >> 20);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "(c) backfill of a generated repository ({} MiB CAR, {} records): {secs:.2} s = {:.0} records/s",
            car_len >> 20,
            stats.records,
            stats.records as f64 / secs
        );
    }
    if args.load > 0 {
        crate::loadbench::run(&args)?;
    }
    println!("peak RSS: {} MiB", peak_rss_kib() / 1024);
    Ok(())
}

/// Writes one repository of `n` records (half posts, 30 % likes, 20 %
/// follows) as a CAR: record blocks, a real MST, and a commit (unsigned).
fn generate_repo(path: &Path, n: usize) -> anyhow::Result<()> {
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
    let root = crate::mst::build(&entries, &mut blocks);
    let commit = crate::repo::commit_block(did, &tid(n as u64), root, &[0; 64]);
    let commit_cid = crate::mst::dag_cbor_cid(&commit);
    blocks.push((commit_cid, commit));
    std::fs::write(path, car_bytes(commit_cid, &blocks))?;
    Ok(())
}

fn verifier(args: &BenchArgs) -> anyhow::Result<Option<Arc<crate::verify::Verifier>>> {
    let Some(path) = &args.did_docs else {
        return Ok(None);
    };
    let resolver = crate::verify::StaticResolver::from_file(path)?;
    Ok(Some(Arc::new(
        crate::verify::Verifier::new(Box::new(resolver)).without_rev_order(),
    )))
}

pub(crate) struct Measured {
    pub events: usize,
    pub secs: f64,
    metrics: Arc<Metrics>,
}

fn report(label: &str, m: Measured) {
    println!(
        "{label}: {} events in {:.2} s = {:.0} events/s ({} records indexed, {} deleted, {} invalid, {} ops skipped, {} commits verified, {} rejected)",
        m.events,
        m.secs,
        m.events as f64 / m.secs,
        m.metrics.records_indexed_total.load(std::sync::atomic::Ordering::Relaxed),
        m.metrics.records_deleted_total.load(std::sync::atomic::Ordering::Relaxed),
        m.metrics.records_invalid_total.load(std::sync::atomic::Ordering::Relaxed),
        m.metrics.ops_skipped_total.load(std::sync::atomic::Ordering::Relaxed),
        m.metrics.commits_verified_total.load(std::sync::atomic::Ordering::Relaxed),
        m.metrics.commits_rejected_total.load(std::sync::atomic::Ordering::Relaxed),
    );
}

/// Ingest on one thread, write on another, as `serve` does.
pub(crate) fn measure(
    catalog: &Arc<crate::lexicon::Catalog>,
    store_dir: &Path,
    batch: usize,
    ingest_only: bool,
    verifier: Option<Arc<crate::verify::Verifier>>,
    frames: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> anyhow::Result<Measured> {
    let mut store = Store::open(store_dir)?;
    let metrics = Arc::new(Metrics::default());
    let mut ingestor = Ingestor::new(catalog.clone(), metrics.clone());
    if let Some(v) = verifier {
        ingestor = ingestor.with_verifier(v);
    }
    // The producer hands over small chunks; the writer takes everything that
    // is waiting when it becomes free, up to `batch` events, as `serve`'s
    // writer does under load. So the first commit does not wait for a whole
    // batch to be decoded, and batches grow to `batch` once the writer is the
    // bottleneck.
    const CHUNK: usize = 1000;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<IndexEvent>>(2 * batch.div_ceil(CHUNK));
    let start = Instant::now();
    let producer = std::thread::spawn(move || {
        let mut n = 0usize;
        let mut chunk = Vec::with_capacity(CHUNK);
        // Rounds of 256 frames, as `serve`'s ingest loop takes them under
        // load: when verifying, each round's signatures and proofs are
        // checked in parallel while the round before is handled in order.
        let mut frames = frames.peekable();
        let mut previous: Vec<Vec<u8>> = Vec::new();
        loop {
            let round: Vec<Vec<u8>> = frames.by_ref().take(256).collect();
            let views: Vec<&[u8]> = round.iter().map(Vec::as_slice).collect();
            ingestor.overlapped(&views, || {
                for frame in &previous {
                    n += 1;
                    if let Ok(Outcome::Event(ev)) = ingestor.process("bench", frame) {
                        chunk.push(ev);
                    }
                    if chunk.len() >= CHUNK {
                        let _ = tx.send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
                    }
                }
            });
            if round.is_empty() {
                break;
            }
            previous = round;
        }
        let _ = tx.send(chunk);
        n
    });
    let mut apply_secs = 0.0;
    let mut batches = 0usize;
    while let Ok(first) = rx.recv() {
        let mut events = first;
        while events.len() < batch {
            match rx.try_recv() {
                Ok(more) => events.extend(more),
                Err(_) => break,
            }
        }
        if !ingest_only {
            let t = Instant::now();
            store.apply(&events)?;
            apply_secs += t.elapsed().as_secs_f64();
            batches += 1;
        }
    }
    eprintln!("writer busy {apply_secs:.2} s in {batches} transactions");
    // The WAL's last stretch is folded into the file inside the timed window:
    // a checkpoint deferred past the end would flatter the figure.
    if !ingest_only {
        let t = Instant::now();
        store.checkpoint()?;
        eprintln!("final checkpoint {:.2} s", t.elapsed().as_secs_f64());
    }
    let events = producer.join().expect("producer thread");
    Ok(Measured {
        events,
        secs: start.elapsed().as_secs_f64(),
        metrics,
    })
}

struct FrameReader<R>(R);

impl<R: Read> Iterator for FrameReader<R> {
    type Item = Vec<u8>;
    fn next(&mut self) -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).ok()?;
        let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
        self.0.read_exact(&mut buf).ok()?;
        Some(buf)
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

// ---- corpus generation: real DAG-CBOR, real CIDs, real CAR slices ----

#[derive(Serialize)]
struct Header<'a> {
    op: i64,
    t: &'a str,
}

#[derive(Serialize)]
struct OpOut {
    action: &'static str,
    path: String,
    cid: Option<Cid>,
    prev: Option<Cid>,
}

#[derive(Serialize)]
struct CommitOut {
    seq: i64,
    repo: String,
    rev: String,
    since: Option<String>,
    commit: Cid,
    #[serde(with = "serde_bytes")]
    blocks: Vec<u8>,
    ops: Vec<OpOut>,
    #[serde(rename = "tooBig")]
    too_big: bool,
    rebase: bool,
    blobs: Vec<Cid>,
    time: String,
}

fn car_bytes(root: Cid, blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    crate::repo::write_car(root, blocks)
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
                let cid = crate::mst::dag_cbor_cid(&bytes);
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

/// One `#commit` frame (header + body) with a real CAR slice: `blocks` plus a
/// commit block for the repo. Used by the benchmark and by tests that need
/// frames production never sent (tooBig, tampered, legacy shapes).
pub fn commit_frame(
    seq: i64,
    repo: &str,
    rev: &str,
    ops: Vec<(&'static str, String, Option<Cid>)>,
    mut blocks: Vec<(Cid, Vec<u8>)>,
    too_big: bool,
    time: &str,
) -> anyhow::Result<Vec<u8>> {
    let commit_block =
        serde_ipld_dagcbor::to_vec(&serde_json::json!({"did": repo, "rev": rev, "version": 3}))?;
    let commit_cid = crate::mst::dag_cbor_cid(&commit_block);
    blocks.push((commit_cid, commit_block));
    let body = CommitOut {
        seq,
        repo: repo.to_string(),
        rev: rev.to_string(),
        since: None,
        commit: commit_cid,
        blocks: if too_big {
            Vec::new()
        } else {
            car_bytes(commit_cid, &blocks)
        },
        ops: ops
            .into_iter()
            .map(|(action, path, cid)| OpOut {
                action,
                path,
                cid,
                prev: None,
            })
            .collect(),
        too_big,
        rebase: false,
        blobs: Vec::new(),
        time: time.to_string(),
    };
    let mut frame = serde_ipld_dagcbor::to_vec(&Header {
        op: 1,
        t: "#commit",
    })?;
    frame.extend(serde_ipld_dagcbor::to_vec(&body)?);
    Ok(frame)
}

/// A record's DAG-CBOR block and its CID.
pub fn record_block(record: &serde_json::Value) -> anyhow::Result<(Cid, Vec<u8>)> {
    let bytes = serde_ipld_dagcbor::to_vec(record)?;
    Ok((crate::mst::dag_cbor_cid(&bytes), bytes))
}
