//! `lexview serve`: sources -> ingest thread -> writer, and the HTTP API, in
//! one process (DuckDB allows one writing process; the API reads through
//! it). This file wires the subsystems together; each lives in its own
//! folder.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{load_catalog, Verify};
use crate::api::{self, AppState, Generation};
use crate::identity::Resolve;
use crate::index::event::IndexEvent;
use crate::index::search::Search;
use crate::index::store::{ReadPool, Store};
use crate::index::writer::{self, Positions, WriterConfig};
use crate::ingest::resync::{Router, WorkerSetup, Workers};
use crate::ingest::run::{ingest_loop, IngestContext, BACKFILL_WINDOW};
use crate::ingest::Ingestor;
use crate::lexicon::Catalog;
use crate::metrics::Metrics;
use crate::net::Http;
use crate::source::{firehose, jetstream, replay, LinkState, Links, RawFrame, SourceSpec};

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
    pub media: api::bsky::embeds::MediaUrls,
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
    /// DNS and HTTPS; `off`: show handles as claimed.
    pub handle_resolver: Option<String>,
    /// Entries of each hot view cache (`api::bsky::cache::HotViews`); 0: none.
    pub post_cache: usize,
    /// Hosts that DID documents and handles name may be plain HTTP on
    /// private addresses (tests only; see `net`).
    pub allow_private_hosts: bool,
    /// How long a source may stay disconnected before `/_health` says the
    /// server is degraded.
    pub max_disconnected: std::time::Duration,
    pub writer: WriterConfig,
}

/// What the store says at start: each source's cursor, the accounts that
/// are not active, and the resyncs left unfinished.
struct Resume {
    cursors: HashMap<String, Option<i64>>,
    inactive: Vec<String>,
    resyncs: Vec<String>,
}

/// Runs until SIGINT or SIGTERM, then drains the writer and returns.
/// Long on purpose: the one place where every subsystem starts, in the order
/// their dependencies need (each step is a function of its own); split
/// further, the order would be spread over several functions.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let catalog = Arc::new(load_catalog(&cfg.lexicons)?);
    if catalog.records().next().is_none() {
        bail!(
            "no record lexicons found under {}: nothing to index",
            cfg.lexicons.display()
        );
    }
    anyhow::ensure!(
        crate::syntax::is_valid_did(&cfg.feedgen_did)
            && crate::syntax::is_valid_did(&cfg.feed_publisher),
        "--feedgen-did and --feed-publisher must be DIDs (got {:?} and {:?})",
        cfg.feedgen_did,
        cfg.feed_publisher
    );
    let specs = cfg
        .sources
        .iter()
        .map(|s| SourceSpec::parse(s).map(|spec| (spec.id(), spec)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let verify = effective_verify(cfg.verify, &specs);
    let store = Store::open(&cfg.data)
        .with_context(|| format!("cannot open the store in {}", cfg.data.display()))?;
    if let Some(limit) = &cfg.memory_limit {
        store
            .set_memory_limit(limit)
            .with_context(|| format!("--memory-limit {limit}"))?;
    }
    let metrics = Arc::new(Metrics::default());
    let positions = Arc::new(Positions::default());
    let links = Arc::new(Links::default());
    let resume = read_resume(&store, &specs, &positions)?;

    let shutdown = CancellationToken::new();
    let (raw_tx, raw_rx) = mpsc::channel::<RawFrame>(1024);
    // Room for a whole batch while the previous one commits, so decoding and
    // writing overlap when the stream runs faster than the writer.
    let (ev_tx, ev_rx) = mpsc::channel::<IndexEvent>(cfg.writer.max_events.max(1024));
    let source_tasks = start_sources(
        &cfg,
        specs,
        &resume.cursors,
        &catalog,
        raw_tx,
        &metrics,
        &links,
        &shutdown,
    )?;

    // The catalog the ingest side reads; a reload swaps it with the API's.
    let ingest_catalog = Arc::new(arc_swap::ArcSwap::new(catalog.clone()));
    // One HTTP client and one resolver (and its cache) for verification,
    // resyncs, backfill listing and handles.
    let http = Http::new(cfg.allow_private_hosts)?;
    let resolver = crate::identity::resolver(&cfg.plc, cfg.did_docs.as_deref(), &http)?;
    let (request_tx, request_rx) = mpsc::channel::<String>(BACKFILL_WINDOW);
    if cfg.backfill {
        start_backfill_listing(&cfg, &http, &catalog, store.readers(), request_tx, &metrics)?;
    } else {
        drop(request_tx);
    }
    // Repositories arrive in parts of up to 25,000 records: a few may wait.
    let (fetched_tx, fetched_rx) = mpsc::channel(16);
    let workers = if cfg.resync_concurrency > 0 {
        Some(Arc::new(Workers::start(
            WorkerSetup {
                threads: cfg.resync_concurrency,
                per_host: cfg.resync_per_host,
                resolver: resolver.clone(),
                ingestor: Arc::new(Ingestor::shared(ingest_catalog.clone(), metrics.clone())),
                verify: verify == Verify::Full,
                tmp: cfg.data.join("resync-tmp"),
                http: http.clone(),
            },
            fetched_tx,
        )?))
    } else {
        None
    };
    let handles = start_handle_checks(
        &cfg,
        verify,
        &resolver,
        &http,
        &store.readers(),
        &ev_tx,
        &metrics,
        &shutdown,
    )?;
    let ingest = start_ingest(
        &cfg,
        verify,
        IngestInputs {
            catalog: &ingest_catalog,
            metrics: &metrics,
            resolver: &resolver,
            resume: &resume,
        },
        raw_rx,
        ev_tx,
        IngestContext {
            handle: tokio::runtime::Handle::current(),
            workers: workers.clone(),
            fetched: fetched_rx,
            requests: request_rx,
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
        },
    )?;

    // The writer owns the store; the API reads through the store's read pool.
    let readers = store.readers();
    // Search catches up with the store, and the API's caches and filters
    // load, before the writer moves it on (so no committed gate or block is
    // missed).
    let api = Api::load(&cfg, &catalog, &readers)?;
    let writer = tokio::spawn(writer::run(
        store,
        ev_rx,
        cfg.writer,
        positions.clone(),
        metrics.clone(),
        api.on_commit(handles),
    ));
    let search = api.search.clone();
    let state = api.state(&cfg, &catalog, metrics.clone(), positions, links)?;
    reload_on_hangup(cfg.clone(), state.clone(), ingest_catalog);
    let server = start_http(&cfg, state, &shutdown).await?;

    // Shutdown: sources stop, the ingest thread and the resync workers
    // finish, and the writer commits everything it was handed.
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
    if metrics
        .ingest_stopped
        .load(std::sync::atomic::Ordering::Relaxed)
        == 1
    {
        bail!("the ingest thread stopped unexpectedly (see the log above); what it handed on is committed");
    }
    Ok(())
}

/// The XRPC methods: the generic ones and the app.bsky room's.
fn methods(views: &Arc<api::bsky::Views>) -> api::xrpc::Methods {
    let mut methods = api::xrpc::generic_methods();
    views.methods(&mut methods);
    methods
}

/// Binds `--listen` and serves the API until shutdown, which SIGINT or
/// SIGTERM starts.
async fn start_http(
    cfg: &ServeConfig,
    state: AppState,
    shutdown: &CancellationToken,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!("serving on http://{}", listener.local_addr()?);
    let token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: stopping sources and draining the writer");
        token.cancel();
    });
    let token = shutdown.clone();
    Ok(tokio::spawn(async move {
        api::server::serve(listener, api::app(state), token).await
    }))
}

/// What the ingest thread's ingestor is made from.
struct IngestInputs<'a> {
    catalog: &'a Arc<arc_swap::ArcSwap<Catalog>>,
    metrics: &'a Arc<Metrics>,
    resolver: &'a Arc<dyn Resolve>,
    resume: &'a Resume,
}

/// Starts the ingest thread: frames from `raw_rx`, events to `ev_tx`,
/// resyncs left unfinished requested again first.
fn start_ingest(
    cfg: &ServeConfig,
    verify: Verify,
    inputs: IngestInputs<'_>,
    raw_rx: mpsc::Receiver<RawFrame>,
    ev_tx: mpsc::Sender<IndexEvent>,
    ctx: IngestContext,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let IngestInputs {
        catalog,
        metrics,
        resolver,
        resume,
    } = inputs;
    let ingestor = ingestor(cfg, verify, catalog, metrics, resolver, resume);
    let mut router = Router::new(cfg.resync_concurrency, metrics.clone());
    for did in &resume.resyncs {
        router.request(did);
    }
    if !resume.resyncs.is_empty() {
        tracing::info!(
            repos = resume.resyncs.len(),
            "resuming resyncs left unfinished"
        );
    }
    Ok(std::thread::Builder::new()
        .name("lexview-ingest".into())
        .spawn(move || ingest_loop(ingestor, raw_rx, ev_tx, router, ctx))?)
}

/// The API's parts that live beside the writer: the search index, the
/// app.bsky room's caches and filters, the verified-handle cache and the
/// GraphQL subscription feed.
pub struct Api {
    pub search: Arc<Search>,
    pub views: Arc<api::bsky::Views>,
    pub handles: Arc<api::actors::Handles>,
    pub events: api::graphql::Events,
    readers: Arc<ReadPool>,
}

impl Api {
    /// Opens the search index (filled from the store where it lags) and
    /// loads the app.bsky room's filters: before the writer starts.
    pub fn load(
        cfg: &ServeConfig,
        catalog: &Catalog,
        readers: &Arc<ReadPool>,
    ) -> anyhow::Result<Api> {
        Ok(Api {
            search: start_search(cfg, catalog, readers)?,
            views: Arc::new(load_views(cfg, readers)?),
            handles: Arc::new(api::actors::Handles::default()),
            events: tokio::sync::broadcast::channel(4096).0,
            readers: readers.clone(),
        })
    }

    /// What follows each committed batch: caches dropped, the search index
    /// and the handle checks told, and GraphQL subscribers sent the changes.
    pub fn on_commit(
        &self,
        handle_checks: Option<Arc<crate::ingest::handles::HandleQueue>>,
    ) -> writer::OnCommit {
        let (search, views, handles) = (
            self.search.clone(),
            self.views.clone(),
            self.handles.clone(),
        );
        let publish = self.events.clone();
        Arc::new(move |batch, stats| {
            handles.invalidate(batch);
            views.on_commit(batch);
            search.on_commit(batch, stats.indexed_us, &stats.accounts_moved);
            if let Some(h) = &handle_checks {
                h.on_commit(batch);
            }
            // Built only while someone is subscribed.
            if publish.receiver_count() > 0 {
                for ev in api::graphql::record_events(batch) {
                    let _ = publish.send(Arc::new(ev));
                }
            }
        })
    }

    /// The state the HTTP API serves from (`api::app`), for `catalog`.
    pub fn state(
        &self,
        cfg: &ServeConfig,
        catalog: &Arc<Catalog>,
        metrics: Arc<Metrics>,
        positions: Arc<Positions>,
        links: Arc<Links>,
    ) -> anyhow::Result<AppState> {
        Ok(AppState::new(api::StateParts {
            generation: generation(cfg, catalog, &self.readers, &self.events, &self.search)?,
            readers: self.readers.clone(),
            metrics,
            positions,
            links,
            events: self.events.clone(),
            search: Some(self.search.clone()),
            handles: self.handles.clone(),
            methods: methods(&self.views),
            extensions: vec![self.views.clone()],
            max_disconnected: cfg.max_disconnected,
        }))
    }
}

/// `auto` is full for firehose sources, none for recordings and Jetstream.
fn effective_verify(verify: Verify, specs: &[(String, SourceSpec)]) -> Verify {
    match verify {
        Verify::Auto
            if specs
                .iter()
                .any(|(_, s)| matches!(s, SourceSpec::Firehose { .. })) =>
        {
            Verify::Full
        }
        Verify::Auto => Verify::None,
        v => v,
    }
}

/// Each source's stored cursor (published as its position), the inactive
/// accounts and the unfinished resyncs.
fn read_resume(
    store: &Store,
    specs: &[(String, SourceSpec)],
    positions: &Positions,
) -> anyhow::Result<Resume> {
    let mut cursors = HashMap::new();
    for (id, _) in specs {
        let cursor = store.cursor(id)?;
        positions.set(id, cursor, None);
        tracing::info!(source = %id, ?cursor, "source position");
        cursors.insert(id.clone(), cursor);
    }
    let (inactive, resyncs) = store.readers().with_blocking(|c| {
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
    Ok(Resume {
        cursors,
        inactive,
        resyncs,
    })
}

/// Starts a task per source, each feeding `raw_tx` from its stored cursor.
#[allow(clippy::too_many_arguments)]
fn start_sources(
    cfg: &ServeConfig,
    specs: Vec<(String, SourceSpec)>,
    cursors: &HashMap<String, Option<i64>>,
    catalog: &Catalog,
    raw_tx: mpsc::Sender<RawFrame>,
    metrics: &Arc<Metrics>,
    links: &Arc<Links>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let dictionary = match &cfg.jetstream_dictionary {
        Some(path) => {
            let d = jetstream::Dictionary::load(path)?;
            tracing::info!(dictionary = %path.display(), "Jetstream sources ask for zstd-compressed events");
            Some(d)
        }
        None => None,
    };
    let collections: Vec<String> = catalog.records().map(|r| r.nsid.clone()).collect();
    let mut tasks = Vec::new();
    for (id, spec) in specs {
        let (tx, token, m) = (raw_tx.clone(), shutdown.clone(), metrics.clone());
        let (links, dictionary, collections) =
            (links.clone(), dictionary.clone(), collections.clone());
        let source: Arc<str> = Arc::from(id.as_str());
        let start = cursors.get(&id).copied().flatten();
        tasks.push(tokio::spawn(async move {
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
    Ok(tasks)
}

/// `--backfill`: lists the host's repositories on a blocking task; each
/// waits in `requests` (and the lister with it) until the router has room,
/// so a relay's listing is never held whole.
fn start_backfill_listing(
    cfg: &ServeConfig,
    http: &Http,
    catalog: &Catalog,
    readers: Arc<ReadPool>,
    requests: mpsc::Sender<String>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.resync_concurrency > 0,
        "--backfill needs --resync-concurrency above 0"
    );
    let host = backfill_host(cfg)?;
    let collections: Vec<String> = catalog.records().map(|r| r.nsid.clone()).collect();
    let (m, http) = (metrics.clone(), http.clone());
    tokio::task::spawn_blocking(move || {
        match crate::ingest::backfill::discover(&http, &host, &collections, &readers, &requests, &m)
        {
            Ok((todo, done)) => tracing::info!(
                host,
                to_backfill = todo,
                already_done = done,
                "backfill: repositories listed"
            ),
            Err(e) => tracing::error!(host, "backfill: listing repositories failed: {e:#}"),
        }
    });
    Ok(())
}

/// Handles are checked both ways when commits are verified (unless
/// `--handle-resolver off`).
#[allow(clippy::too_many_arguments)]
fn start_handle_checks(
    cfg: &ServeConfig,
    verify: Verify,
    resolver: &Arc<dyn Resolve>,
    http: &Http,
    readers: &ReadPool,
    ev_tx: &mpsc::Sender<IndexEvent>,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<crate::ingest::handles::HandleQueue>>> {
    use crate::identity::handles::{HandleChecker, Via};
    if verify != Verify::Full || cfg.handle_resolver.as_deref() == Some("off") {
        return Ok(None);
    }
    let via = match &cfg.handle_resolver {
        Some(url) => Via::Service(url.trim_end_matches('/').to_string()),
        None => Via::DnsAndHttps,
    };
    tracing::info!(?via, "verifying handles");
    Ok(Some(crate::ingest::handles::start(
        HandleChecker::new(resolver.clone(), via, http.clone()),
        ev_tx.clone(),
        metrics.clone(),
        readers.with_blocking(crate::ingest::handles::pending)?,
        shutdown.clone(),
    )?))
}

/// The ingestor of the ingest thread: in seq order from each source's
/// stored cursor, verifying with `resolver` under `--verify full`.
fn ingestor(
    cfg: &ServeConfig,
    verify: Verify,
    catalog: &Arc<arc_swap::ArcSwap<Catalog>>,
    metrics: &Arc<Metrics>,
    resolver: &Arc<dyn Resolve>,
    resume: &Resume,
) -> Ingestor {
    let mut ingestor = Ingestor::shared(catalog.clone(), metrics.clone()).with_seq_order();
    if verify == Verify::Full {
        tracing::info!(plc = %cfg.plc, did_docs = ?cfg.did_docs, "verifying commits");
        ingestor =
            ingestor.with_verifier(Arc::new(crate::verify::Verifier::shared(resolver.clone())));
    }
    for (source, cursor) in &resume.cursors {
        if let Some(seq) = cursor {
            ingestor.resume_after(source, *seq);
        }
    }
    ingestor.set_inactive(resume.inactive.clone());
    ingestor
}

/// The app.bsky room's state: caches, media URLs, the gate and block filter.
fn load_views(cfg: &ServeConfig, readers: &Arc<ReadPool>) -> anyhow::Result<api::bsky::Views> {
    let started = std::time::Instant::now();
    let views = api::bsky::Views::load(readers, cfg.post_cache, cfg.media.clone())
        .context("loading the gate and block filter")?;
    let (gated, blocking) = views.gates.sizes();
    tracing::info!(
        gated_posts = gated,
        blocking_pairs = blocking,
        ms = started.elapsed().as_millis() as u64,
        "gate and block filter loaded"
    );
    Ok(views)
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

/// Everything the API derives from the user's folders for `catalog`: the
/// GraphQL schema, the query methods and the feeds, each bad file logged
/// with its path. Fails only if the schema cannot be built.
fn generation(
    cfg: &ServeConfig,
    catalog: &Arc<Catalog>,
    readers: &Arc<ReadPool>,
    events: &api::graphql::Events,
    search: &Arc<Search>,
) -> anyhow::Result<Generation> {
    let schema = api::graphql::build_schema(
        catalog,
        readers.clone(),
        events.clone(),
        Some(search.clone()),
    )
    .context("building the GraphQL schema")?;
    let (queries, query_errors) = api::repo::queries::load(&cfg.queries, catalog, readers);
    for e in &query_errors {
        tracing::error!("query method not served: {e}");
    }
    tracing::info!(
        methods = ?queries.names().collect::<Vec<_>>(),
        failed = query_errors.len(),
        "query methods loaded from {}",
        cfg.queries.display()
    );
    let (feeds, feed_errors) = api::bsky::feeds::load(
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
    Ok(Generation::new(catalog.clone(), schema, queries).with_part(feeds))
}

/// On SIGHUP, [`reload`].
fn reload_on_hangup(
    cfg: ServeConfig,
    state: AppState,
    ingest_catalog: Arc<arc_swap::ArcSwap<Catalog>>,
) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::warn!("no SIGHUP handler: lexicons reload only on restart");
            return;
        };
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading lexicons, query methods and feeds");
            let (cfg, state, ingest_catalog) = (cfg.clone(), state.clone(), ingest_catalog.clone());
            match tokio::task::spawn_blocking(move || reload(&cfg, &state, &ingest_catalog)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!("reload failed; still serving the previous lexicons: {e:#}")
                }
                Err(e) => tracing::error!("reload panicked: {e}"),
            }
        }
    });
}

/// Reloads the lexicon directory and swaps in the new generation for the
/// API (catalog, GraphQL schema, query methods and feeds, whole) and the
/// new catalog for ingest. Nothing is swapped if the directory cannot be
/// read or the schema cannot be built; records already indexed stay, and
/// newly known collections are indexed from the next event on.
fn reload(
    cfg: &ServeConfig,
    state: &AppState,
    ingest_catalog: &arc_swap::ArcSwap<Catalog>,
) -> anyhow::Result<()> {
    let catalog = Arc::new(load_catalog(&cfg.lexicons)?);
    let search = state
        .search
        .clone()
        .context("the server runs without a search index")?;
    let generation = generation(cfg, &catalog, &state.readers, &state.events, &search)?;
    search.set_fields(super::search_fields(&catalog, &cfg.search_config)?);
    state.reload(generation);
    ingest_catalog.store(catalog.clone());
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
    readers: &Arc<ReadPool>,
) -> anyhow::Result<Arc<Search>> {
    let fields = super::search_fields(catalog, &cfg.search_config)?;
    for (collection, props) in fields.iter() {
        tracing::info!(collection, fields = ?props, "searched");
    }
    Search::start(&cfg.data, fields, readers.clone()).context("opening the search index")
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        tracing::warn!("no SIGTERM handler: stop with SIGINT (Ctrl-C)");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
