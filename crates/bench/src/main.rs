//! `lexview-bench`: decode + validate + index throughput through the real
//! pipeline and a real on-disk DuckDB store, on (a) recorded frames replayed in
//! a loop, (b) a generated corpus of commit events with a realistic mix and
//! (c) a generated repository backfilled; (d) query load on a served store
//! (`load`). Kept out of the product: it is a workspace member of its own,
//! with its generators (`corpus`).

mod corpus;
mod load;

/// The same allocator as the `lexview` binary, so figures compare.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use corpus::{generate_corpus, generate_repo};

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use lexview::index::event::IndexEvent;
use lexview::index::store::Store;
use lexview::ingest::{Ingestor, Outcome};
use lexview::metrics::Metrics;

#[derive(Parser, Debug)]
#[command(
    name = "lexview-bench",
    about = "Measure lexview's ingest and query throughput (see BENCHMARKS.md)"
)]
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LEXVIEW_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = BenchArgs::parse();
    let catalog = Arc::new(lexview::cli::load_catalog(&args.lexicons)?);
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
        let (list, _) = lexview::source::replay::split_frames(&data);
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
        lexview::cli::backfill::purge_memory_promptly();
        let store_dir = args.dir.join("store-repo");
        let _ = std::fs::remove_dir_all(&store_dir);
        let mut store = Store::open(&store_dir)?;
        let ingestor = Ingestor::new(catalog.clone(), Arc::new(Metrics::default()));
        let start = Instant::now();
        // From the file, as `lexview backfill` applies a fetched repository.
        if let Some(limit) = &args.memory_limit {
            store.set_memory_limit(limit)?;
        }
        let (_, stats) =
            lexview::ingest::backfill::apply_repo_file(&mut store, &ingestor, None, &path)?;
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
        load::run(&args)?;
    }
    println!("peak RSS: {} MiB", peak_rss_kib() / 1024);
    Ok(())
}

fn verifier(args: &BenchArgs) -> anyhow::Result<Option<Arc<lexview::verify::Verifier>>> {
    let Some(path) = &args.did_docs else {
        return Ok(None);
    };
    let resolver = lexview::identity::StaticResolver::from_file(path)?;
    Ok(Some(Arc::new(
        lexview::verify::Verifier::new(Box::new(resolver)).without_rev_order(),
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
    catalog: &Arc<lexview::lexicon::Catalog>,
    store_dir: &Path,
    batch: usize,
    ingest_only: bool,
    verifier: Option<Arc<lexview::verify::Verifier>>,
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
