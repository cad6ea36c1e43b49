//! `lexview serve`: sources -> ingest -> writer, and the HTTP API, in one
//! process (DuckDB allows one writing process; the API reads through it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::index::event::IndexEvent;
use crate::index::store::Store;
use crate::index::writer::{self, Positions, WriterConfig};
use crate::lexicon::Catalog;
use crate::metrics::Metrics;
use crate::pipeline::{Ingestor, Outcome};
use crate::source::{firehose, jetstream, replay, LinkState, RawFrame, SourceSpec, Wire};

/// Backfill requests waiting in the channel, and the router's queue length
/// up to which more are taken from it.
const BACKFILL_WINDOW: usize = 1024;

/// Whether commits are verified before they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verify {
    /// `full` for network sources (a firehose for `serve`, `--host` for
    /// `backfill`), `none` for recordings and local files (and Jetstream,
    /// which carries nothing to verify).
    Auto,
    /// Check each commit's signature against its DID document, its DID,
    /// its rev order and (with `prevData`) its Sync 1.1 proof.
    Full,
    /// Trust the source.
    None,
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub sources: Vec<String>,
    pub lexicons: PathBuf,
    pub queries: PathBuf,
    pub feeds: PathBuf,
    /// The search config (JSON, optional): per-field overrides of which
    /// record fields are searched.
    pub search_config: PathBuf,
    pub feedgen_did: String,
    pub feed_publisher: String,
    /// Where embed views point for images and videos.
    pub media: api::embeds::MediaUrls,
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub plc: String,
    pub verify: Verify,
    /// With `verify`, keys from this `{did: document}` file, not the network.
    pub did_docs: Option<PathBuf>,
    /// Jetstream's zstd dictionary: Jetstream sources ask for compression.
    pub jetstream_dictionary: Option<PathBuf>,
    /// Repositories resynced at once; 0: none (requests stay in `resyncs`).
    pub resync_concurrency: usize,
    /// Of those, at most this many from one PDS host.
    pub resync_per_host: usize,
    /// Backfill every listed repository through the resync path.
    pub backfill: bool,
    /// Where to list repositories (default: the first firehose source).
    pub backfill_host: Option<String>,
    /// DuckDB's memory limit (e.g. "1GB"); None: DuckDB's default.
    pub memory_limit: Option<String>,
    /// Resolve handles through this service's `resolveHandle` instead of
    /// DNS and HTTPS.
    pub handle_resolver: Option<String>,
    /// Entries of each hot view cache (`api::cache::HotViews`); 0: none.
    pub post_cache: usize,
    pub writer: WriterConfig,
}

/// Loads the lexicon directory, reporting every file that failed.
pub fn load_catalog(dir: &std::path::Path) -> anyhow::Result<Catalog> {
    let (catalog, errors) = Catalog::load_dir(dir)
        .with_context(|| format!("cannot read lexicon directory {}", dir.display()))?;
    for e in &errors {
        tracing::error!("lexicon not loaded: {e}");
    }
    let unresolved = catalog.unresolved_refs();
    for (from, to) in &unresolved {
        tracing::warn!(
            from,
            to,
            "lexicon ref points at a def that is not loaded; values there will not validate"
        );
    }
    tracing::info!(
        documents = catalog.len(),
        record_types = catalog.records().count(),
        failed = errors.len(),
        "lexicons loaded from {}",
        dir.display()
    );
    Ok(catalog)
}

/// Runs until SIGINT or SIGTERM, then drains the writer and returns.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let catalog = Arc::new(load_catalog(&cfg.lexicons)?);
    if catalog.records().next().is_none() {
        bail!(
            "no record lexicons found under {}: nothing to index",
            cfg.lexicons.display()
        );
    }
    let specs = cfg
        .sources
        .iter()
        .map(|s| SourceSpec::parse(s).map(|spec| (spec.id(), spec)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let verify = match cfg.verify {
        Verify::Auto
            if specs
                .iter()
                .any(|(_, s)| matches!(s, SourceSpec::Firehose { .. })) =>
        {
            Verify::Full
        }
        Verify::Auto => Verify::None,
        v => v,
    };
    let store = Store::open(&cfg.data)
        .with_context(|| format!("cannot open the store in {}", cfg.data.display()))?;
    if let Some(limit) = &cfg.memory_limit {
        store
            .set_memory_limit(limit)
            .with_context(|| format!("--memory-limit {limit}"))?;
    }
    let metrics = Arc::new(Metrics::default());
    let positions = Arc::new(Positions::default());
    let links = Arc::new(crate::source::Links::default());
    let mut resume: HashMap<String, Option<i64>> = HashMap::new();
    for (id, _) in &specs {
        let cursor = store.cursor(id)?;
        positions.set(id, cursor, None);
        tracing::info!(source = %id, ?cursor, "source position");
        resume.insert(id.clone(), cursor);
    }
    let (inactive, pending_resyncs) = store.readers().with_blocking(|c| {
        let dids = |sql: &str| -> duckdb::Result<Vec<String>> {
            let mut stmt = c.prepare(sql)?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        };
        Ok((
            dids("SELECT did FROM actors WHERE NOT active")?,
            dids("SELECT did FROM resyncs ORDER BY requested_at")?,
        ))
    })?;

    let shutdown = CancellationToken::new();
    let (raw_tx, raw_rx) = mpsc::channel::<RawFrame>(1024);
    // Room for a whole batch while the previous one commits, so decoding and
    // writing overlap when the stream runs faster than the writer.
    let (ev_tx, ev_rx) = mpsc::channel::<IndexEvent>(cfg.writer.max_events.max(1024));

    let dictionary = match &cfg.jetstream_dictionary {
        Some(path) => {
            let d = jetstream::Dictionary::load(path)?;
            tracing::info!(dictionary = %path.display(), "Jetstream sources ask for zstd-compressed events");
            Some(d)
        }
        None => None,
    };
    let mut source_tasks = Vec::new();
    for (id, spec) in specs {
        let (tx, token, m) = (raw_tx.clone(), shutdown.clone(), metrics.clone());
        let links = links.clone();
        let dictionary = dictionary.clone();
        let source: Arc<str> = Arc::from(id.as_str());
        let start = resume.get(&id).copied().flatten();
        let collections: Vec<String> = catalog.records().map(|r| r.nsid.clone()).collect();
        source_tasks.push(tokio::spawn(async move {
            match spec {
                SourceSpec::Firehose { url } => {
                    firehose::run(source, url, start, tx, m, links, token).await
                }
                SourceSpec::Replay { path, rate } => {
                    links.set(&source, LinkState::Connected, None);
                    match replay::run(source.clone(), &path, rate, tx, token).await {
                        Ok(n) => {
                            links.set(&source, LinkState::Finished, None);
                            tracing::info!(frames = n, "replay of {} finished", path.display())
                        }
                        Err(e) => {
                            links.set(&source, LinkState::Finished, Some(e.to_string()));
                            Metrics::inc(&m.frames_malformed_total);
                            tracing::error!("replay stopped: {e}");
                        }
                    }
                }
                SourceSpec::Jetstream { url } => {
                    jetstream::run(
                        source,
                        url,
                        start,
                        collections,
                        dictionary,
                        tx,
                        m,
                        links,
                        token,
                    )
                    .await
                }
            }
        }));
    }
    drop(raw_tx);

    let shared_catalog = Arc::new(arc_swap::ArcSwap::new(catalog.clone()));
    // One resolver (and its cache) for verification and resyncs.
    let resolver = crate::verify::resolver(&cfg.plc, cfg.did_docs.as_deref())?;
    let (fetched_tx, fetched_rx) = mpsc::unbounded_channel();
    // Backfill requests wait here (and the lister with them) until the
    // router's queue has room: a relay's listing is never held whole.
    let (request_tx, request_rx) = mpsc::channel::<String>(BACKFILL_WINDOW);
    if cfg.backfill {
        anyhow::ensure!(
            cfg.resync_concurrency > 0,
            "--backfill needs --resync-concurrency above 0"
        );
        let host = backfill_host(&cfg)?;
        let collections: Vec<String> = catalog.records().map(|r| r.nsid.clone()).collect();
        let readers = store.readers();
        let m = metrics.clone();
        tokio::task::spawn_blocking(move || {
            match discover(&host, &collections, &readers, &request_tx, &m) {
                Ok((todo, done)) => tracing::info!(
                    host,
                    to_backfill = todo,
                    already_done = done,
                    "backfill: repositories listed"
                ),
                Err(e) => tracing::error!(host, "backfill: listing repositories failed: {e:#}"),
            }
        });
    } else {
        drop(request_tx);
    }
    let workers = if cfg.resync_concurrency > 0 {
        Some(Arc::new(crate::resync::Workers::start(
            cfg.resync_concurrency,
            cfg.resync_per_host,
            resolver.clone(),
            Arc::new(Ingestor::shared(shared_catalog.clone(), metrics.clone())),
            verify == Verify::Full,
            cfg.data.join("resync-tmp"),
            fetched_tx,
        )?))
    } else {
        None
    };
    // Handles are checked both ways when commits are verified.
    let handles_on = cfg.handle_resolver.as_deref() != Some("off");
    let handles = if verify == Verify::Full && handles_on {
        let via = match &cfg.handle_resolver {
            Some(url) => crate::handles::Via::Service(url.trim_end_matches('/').to_string()),
            None => crate::handles::Via::DnsAndHttps,
        };
        tracing::info!(?via, "verifying handles");
        Some(crate::handles::start(
            crate::handles::HandleChecker::new(resolver.clone(), via)?,
            ev_tx.clone(),
            metrics.clone(),
            shutdown.clone(),
        )?)
    } else {
        None
    };
    let ingest = {
        let mut ingestor =
            Ingestor::shared(shared_catalog.clone(), metrics.clone()).with_seq_order();
        if verify == Verify::Full {
            tracing::info!(plc = %cfg.plc, did_docs = ?cfg.did_docs, "verifying commits");
            ingestor =
                ingestor.with_verifier(Arc::new(crate::verify::Verifier::shared(resolver.clone())));
        }
        for (source, cursor) in &resume {
            if let Some(seq) = cursor {
                ingestor.resume_after(source, *seq);
            }
        }
        ingestor.set_inactive(inactive);
        let mut router = crate::resync::Router::new(cfg.resync_concurrency, metrics.clone());
        for did in &pending_resyncs {
            router.request(did);
        }
        if !pending_resyncs.is_empty() {
            tracing::info!(
                repos = pending_resyncs.len(),
                "resuming resyncs left unfinished"
            );
        }
        let ctx = IngestContext {
            handle: tokio::runtime::Handle::current(),
            workers: workers.clone(),
            fetched: fetched_rx,
            requests: request_rx,
            shutdown: shutdown.clone(),
        };
        std::thread::Builder::new()
            .name("lexview-ingest".into())
            .spawn(move || ingest_loop(ingestor, raw_rx, ev_tx, router, ctx))?
    };
    // The writer owns the store; the API reads through the store's read pool.
    let readers = store.readers();
    // Search catches up with the store before the writer moves it on.
    let search = start_search(&cfg, &catalog, &readers)?;
    let profiles = Arc::new(api::views::ProfileCache::default());
    let invalidate = profiles.clone();
    let hot = Arc::new(api::cache::HotViews::new(cfg.post_cache));
    let hot_seen = hot.clone();
    // Loaded before the writer starts, so no committed gate or block is missed.
    let started = std::time::Instant::now();
    let gate_filter = Arc::new(
        readers
            .with_blocking(api::gates::GateFilter::load)
            .context("loading the gate and block filter")?,
    );
    let (gated, blocking) = gate_filter.sizes();
    tracing::info!(
        gated_posts = gated,
        blocking_pairs = blocking,
        ms = started.elapsed().as_millis() as u64,
        "gate and block filter loaded"
    );
    let gates_seen = gate_filter.clone();
    let (events, _) = tokio::sync::broadcast::channel(4096);
    let publish: api::graphql::Events = events.clone();
    let writer = tokio::spawn(writer::run(
        store,
        ev_rx,
        cfg.writer,
        positions.clone(),
        metrics.clone(),
        Arc::new({
            let search = search.clone();
            move |batch, stats| {
                invalidate.invalidate(batch);
                hot_seen.on_commit(batch);
                gates_seen.on_commit(batch);
                search.on_commit(batch, stats.indexed_us, &stats.accounts_moved);
                if let Some(h) = &handles {
                    h.on_commit(batch);
                }
                // Built only while someone is subscribed.
                if publish.receiver_count() > 0 {
                    for ev in api::graphql::record_events(batch) {
                        let _ = publish.send(Arc::new(ev));
                    }
                }
            }
        }),
    ));
    let schema = api::graphql::build_schema(
        &catalog,
        readers.clone(),
        events.clone(),
        Some(search.clone()),
    )
    .context("building the GraphQL schema")?;
    anyhow::ensure!(
        crate::syntax::is_valid_did(&cfg.feedgen_did)
            && crate::syntax::is_valid_did(&cfg.feed_publisher),
        "--feedgen-did and --feed-publisher must be DIDs (got {:?} and {:?})",
        cfg.feedgen_did,
        cfg.feed_publisher
    );
    let (queries, feeds) = load_methods(&cfg, &catalog, &readers);
    let state = AppState {
        queries: Arc::new(arc_swap::ArcSwap::from_pointee(queries)),
        feeds: Arc::new(arc_swap::ArcSwap::from_pointee(feeds)),
        profiles,
        hot,
        events,
        search: Some(search.clone()),
        media: Arc::new(cfg.media.clone()),
        gates: gate_filter,
        lookups: Arc::new(api::lookups::Lookups::new(&readers)),
        readers,
        catalog: shared_catalog,
        metrics: metrics.clone(),
        positions,
        links,
        graphql: Arc::new(arc_swap::ArcSwap::from_pointee(schema)),
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!("serving on http://{}", listener.local_addr()?);
    {
        let (cfg, state) = (cfg.clone(), state.clone());
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hangup) = signal(SignalKind::hangup()) else {
                tracing::warn!("no SIGHUP handler: lexicons reload only on restart");
                return;
            };
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading lexicons, query methods and feeds");
                let (cfg, state) = (cfg.clone(), state.clone());
                match tokio::task::spawn_blocking(move || reload(&cfg, &state)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!("reload failed; still serving the previous lexicons: {e:#}")
                    }
                    Err(e) => tracing::error!("reload panicked: {e}"),
                }
            }
        });
    }
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: stopping sources and draining the writer");
        token.cancel();
    });
    let server = {
        let token = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, api::app(state))
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
        })
    };
    shutdown.cancelled().await;
    for t in source_tasks {
        let _ = t.await;
    }
    let _ = tokio::task::spawn_blocking(move || ingest.join()).await;
    if let Some(w) = workers {
        let _ = tokio::task::spawn_blocking(move || w.close()).await;
    }
    let _store = writer.await.context("writer task")?;
    tracing::info!("writer drained; all received events are committed");
    let _ = tokio::task::spawn_blocking(move || search.close()).await;
    let _ = server.await;
    Ok(())
}

/// What the ingest thread needs besides frames: resync workers and their
/// results, and the shutdown signal.
struct IngestContext {
    handle: tokio::runtime::Handle,
    workers: Option<Arc<crate::resync::Workers>>,
    fetched: mpsc::UnboundedReceiver<crate::resync::Fetched>,
    /// Repositories to backfill (`--backfill`).
    requests: mpsc::Receiver<String>,
    shutdown: CancellationToken,
}

/// What the ingest thread waits for.
enum Input {
    Frame(Option<RawFrame>),
    Fetched(crate::resync::Fetched),
    Request(String),
    /// A failed resync's retry is due.
    Retry,
    Stop,
}

/// Frames are taken in rounds of what is waiting (up to this many), so that
/// signature checks can run in parallel before the frames are handled one by
/// one, in order.
const ROUND: usize = 256;

fn ingest_loop(
    ingestor: Ingestor,
    mut rx: mpsc::Receiver<RawFrame>,
    tx: mpsc::Sender<IndexEvent>,
    mut router: crate::resync::Router,
    mut ctx: IngestContext,
) {
    let mut round: Vec<RawFrame> = Vec::with_capacity(ROUND);
    let mut sources_open = true;
    loop {
        if let Some(workers) = &ctx.workers {
            for did in router.start_fetches() {
                tracing::debug!(did, "resync: fetching the repository");
                workers.fetch(&did);
            }
        }
        if !sources_open && (router.idle() || ctx.workers.is_none()) {
            return;
        }
        router.requeue_due(std::time::Instant::now());
        let retry = router.next_retry();
        let input = ctx.handle.block_on(async {
            let retry_at = tokio::time::Instant::from_std(retry.unwrap_or_else(|| {
                std::time::Instant::now() + std::time::Duration::from_secs(3600)
            }));
            tokio::select! {
                biased;
                Some(f) = ctx.fetched.recv() => Input::Fetched(f),
                _ = tokio::time::sleep_until(retry_at), if retry.is_some() => Input::Retry,
                Some(did) = ctx.requests.recv(), if router.queued() < BACKFILL_WINDOW => {
                    Input::Request(did)
                }
                f = rx.recv(), if sources_open => Input::Frame(f),
                _ = ctx.shutdown.cancelled(), if !sources_open => Input::Stop,
            }
        });
        let first = match input {
            Input::Fetched(f) => {
                for ev in router.finished(f) {
                    if tx.blocking_send(ev).is_err() {
                        return;
                    }
                }
                continue;
            }
            // Sources are done, but resyncs are in flight: wait for them
            // (unless shutting down: they are resumed on the next start).
            Input::Frame(None) => {
                sources_open = false;
                continue;
            }
            Input::Request(did) => {
                router.request(&did);
                continue;
            }
            Input::Retry => continue,
            Input::Stop => return,
            Input::Frame(Some(f)) => f,
        };
        round.push(first);
        take_waiting(&mut rx, &mut round);
        let firehose = firehose_frames(&round);
        if firehose.len() > 1 {
            ingestor.precheck(&firehose);
        }
        // While more frames are waiting, the next round is checked while this
        // one is handled (for a few rounds, then the other inputs get a turn).
        for stretch in 0.. {
            let mut next = Vec::with_capacity(ROUND);
            if stretch < OVERLAPPED_ROUNDS {
                take_waiting(&mut rx, &mut next);
            }
            let handled = ingestor.overlapped(&firehose_frames(&next), || {
                round
                    .drain(..)
                    .all(|frame| handle_frame(&ingestor, &frame, &mut router, &tx))
            });
            if !handled {
                return;
            }
            if next.is_empty() {
                break;
            }
            round = next;
        }
    }
}

/// Frames taken in a row before the ingest thread looks at its other inputs.
const OVERLAPPED_ROUNDS: usize = 8;

/// Moves the frames that are waiting into `round`, up to [`ROUND`].
fn take_waiting(rx: &mut mpsc::Receiver<RawFrame>, round: &mut Vec<RawFrame>) {
    while round.len() < ROUND {
        match rx.try_recv() {
            Ok(f) => round.push(f),
            Err(_) => break,
        }
    }
}

fn firehose_frames(round: &[RawFrame]) -> Vec<&[u8]> {
    round
        .iter()
        .filter(|f| f.wire == Wire::Firehose)
        .map(|f| f.bytes.as_slice())
        .collect()
}

/// Ingests one frame and hands its events to the writer (through the resync
/// router); false once the writer is gone.
fn handle_frame(
    ingestor: &Ingestor,
    frame: &RawFrame,
    router: &mut crate::resync::Router,
    tx: &mpsc::Sender<IndexEvent>,
) -> bool {
    let processed = match frame.wire {
        Wire::Firehose => ingestor.process(&frame.source, &frame.bytes),
        Wire::Jetstream => ingestor.process_jetstream(&frame.source, &frame.bytes),
    };
    match processed {
        Ok(Outcome::Event(ev)) => {
            // Firehose events at or before the stored cursor were dropped by
            // the ingestor's seq order. Jetstream resumes rewound and out of
            // time order: its events are applied again, which is harmless.
            for ev in router.route(ev) {
                if tx.blocking_send(ev).is_err() {
                    return false;
                }
            }
        }
        Ok(Outcome::Dropped { reason }) => {
            tracing::debug!(source = %frame.source, "event dropped: {reason}");
        }
        Ok(Outcome::SourceError { error, message }) => {
            tracing::warn!(source = %frame.source, error, ?message, "error frame from source");
        }
        Ok(Outcome::Info { name, message }) => {
            tracing::warn!(source = %frame.source, name, ?message, "info frame from source");
        }
        Err(e) => {
            tracing::warn!(source = %frame.source, "frame skipped: {e}");
            // A rejected event is done with: the cursor moves past it.
            if let crate::pipeline::IngestError::CommitRejected { seq, .. } = e {
                if frame.wire == Wire::Firehose && seq > 0 {
                    let ev = IndexEvent {
                        source: frame.source.to_string(),
                        cursor: Some(seq),
                        ..Default::default()
                    };
                    for ev in router.route(ev) {
                        if tx.blocking_send(ev).is_err() {
                            return false;
                        }
                    }
                }
            }
        }
    }
    true
}

/// Where `--backfill` lists repositories: `--backfill-host`, else the first
/// firehose source as http(s).
fn backfill_host(cfg: &ServeConfig) -> anyhow::Result<String> {
    if let Some(h) = &cfg.backfill_host {
        return Ok(h.trim_end_matches('/').to_string());
    }
    for s in &cfg.sources {
        if let Ok(SourceSpec::Firehose { url }) = SourceSpec::parse(s) {
            let base = firehose::split_cursor(&url).0;
            let base = base
                .split("/xrpc/")
                .next()
                .unwrap_or(&base)
                .trim_end_matches('/');
            if let Some(rest) = base.strip_prefix("wss://") {
                return Ok(format!("https://{rest}"));
            }
            if let Some(rest) = base.strip_prefix("ws://") {
                return Ok(format!("http://{rest}"));
            }
        }
    }
    bail!("--backfill needs a firehose source or --backfill-host")
}

/// The repositories `host` lists that the store has not backfilled yet,
/// and how many it has.
fn discover(
    host: &str,
    collections: &[String],
    readers: &crate::index::store::ReadPool,
    requests: &mpsc::Sender<String>,
    metrics: &Metrics,
) -> anyhow::Result<(usize, usize)> {
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("lexview/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let (mut todo, mut skipped) = (0, 0);
    let (listed, how) = crate::backfill::list_repos_paged(&client, host, collections, |page| {
        // Repositories a backfill finished before are skipped, a page at a
        // time (DIDs contain no spaces).
        let list = page
            .iter()
            .map(|l| l.did.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let done: std::collections::HashSet<String> = readers.with_blocking(|c| {
            let mut stmt = c.prepare(
                "SELECT did FROM backfill_repos WHERE did IN (SELECT unnest(string_split(?, ' ')))",
            )?;
            let rows = stmt.query_map([list], |r| r.get(0))?;
            rows.collect()
        })?;
        for l in page {
            if done.contains(&l.did) {
                skipped += 1;
                continue;
            }
            todo += 1;
            Metrics::inc(&metrics.backfill_repos_listed_total);
            requests
                .blocking_send(l.did)
                .map_err(|_| anyhow::anyhow!("shutting down"))?;
        }
        Ok(())
    })?;
    tracing::info!(host, repos = listed, how, "backfill: listing done");
    Ok((todo, skipped))
}

/// Query methods and feeds for `catalog`, each bad file logged with its path.
fn load_methods(
    cfg: &ServeConfig,
    catalog: &Catalog,
    readers: &crate::index::store::ReadPool,
) -> (api::queries::QueryMethods, api::feeds::Feeds) {
    let (queries, query_errors) = api::queries::load(&cfg.queries, catalog, readers);
    for e in &query_errors {
        tracing::error!("query method not served: {e}");
    }
    tracing::info!(
        methods = ?queries.names().collect::<Vec<_>>(),
        failed = query_errors.len(),
        "query methods loaded from {}",
        cfg.queries.display()
    );
    let (feeds, feed_errors) = api::feeds::load(
        &cfg.feeds,
        &cfg.feedgen_did,
        &cfg.feed_publisher,
        catalog,
        readers,
    );
    for e in &feed_errors {
        tracing::error!("feed not served: {e}");
    }
    tracing::info!(feeds = ?feeds.uris(), failed = feed_errors.len(), "feeds loaded from {}", cfg.feeds.display());
    (queries, feeds)
}

/// Reloads the lexicon directory and swaps in the new catalog (for ingest and
/// the API), GraphQL schema, query methods and feeds. Nothing is swapped if
/// the directory cannot be read or the schema cannot be built; records
/// already indexed stay, and newly known collections are indexed from the
/// next event on.
fn reload(cfg: &ServeConfig, state: &AppState) -> anyhow::Result<()> {
    let catalog = Arc::new(load_catalog(&cfg.lexicons)?);
    let schema = api::graphql::build_schema(
        &catalog,
        state.readers.clone(),
        state.events.clone(),
        state.search.clone(),
    )
    .context("building the GraphQL schema")?;
    if let Some(search) = &state.search {
        let config = crate::search::SearchConfig::load(&cfg.search_config)?;
        search.set_fields(crate::search::SearchFields::new(&catalog, &config));
    }
    let (queries, feeds) = load_methods(cfg, &catalog, &state.readers);
    state.catalog.store(catalog.clone());
    state.graphql.store(Arc::new(schema));
    state.queries.store(Arc::new(queries));
    state.feeds.store(Arc::new(feeds));
    tracing::info!(
        documents = catalog.len(),
        record_types = catalog.records().count(),
        "lexicons reloaded"
    );
    Ok(())
}

/// Opens the search index, fills it from the store where it lags, and starts
/// its indexer thread.
fn start_search(
    cfg: &ServeConfig,
    catalog: &Catalog,
    readers: &Arc<crate::index::store::ReadPool>,
) -> anyhow::Result<Arc<crate::search::Search>> {
    use crate::search::{Search, SearchConfig, SearchFields};
    let config = SearchConfig::load(&cfg.search_config)?;
    let fields = SearchFields::new(catalog, &config);
    for (collection, props) in fields.iter() {
        tracing::info!(collection, fields = ?props, "searched");
    }
    Search::start(&cfg.data, fields, readers.clone()).context("opening the search index")
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
