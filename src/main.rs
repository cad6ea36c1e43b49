//! The `lexview` binary: flags and environment (clap) only; each command
//! is `lexview::cli::*`, which knows nothing of clap.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use lexview::cli::serve::ServeConfig;
use lexview::cli::Verify;
use lexview::index::writer::WriterConfig;

/// mimalloc instead of glibc malloc: the ingest thread allocates every record
/// and the writer frees it, and glibc's arena locks made cross-thread frees the
/// top cost in profiles (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "lexview",
    version,
    about = "An atproto AppView for any record type a lexicon describes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Index sources into the store and serve XRPC, GraphQL, /_health and /metrics.
    Serve(Box<ServeArgs>),
    /// Run SQL against the store and print a table.
    Sql {
        /// The SQL to run, e.g. "SELECT collection, count(*) FROM records GROUP BY ALL".
        query: String,
        #[arg(long, env = "LEXVIEW_DATA", default_value = "./data")]
        data: PathBuf,
    },
    /// Index whole repositories from a PDS or relay (listRepos + getRepo) or
    /// from local CAR files (stop `lexview serve` first).
    Backfill(BackfillArgs),
    /// Compare the index with a repository's current `getRepo` and print every
    /// difference (stop `lexview serve` first).
    Audit(AuditArgs),
    /// Write the store's records, links, counts, actors and quarantine as
    /// Parquet (or CSV) files, with a manifest (stop `lexview serve` first).
    Export(ExportArgs),
    /// Rebuild derived indexes from the store (stop `lexview serve` first).
    Reindex {
        /// Rebuild the full-text search index from DuckDB.
        #[arg(long)]
        search: bool,
        #[arg(long, env = "LEXVIEW_DATA", default_value = "./data")]
        data: PathBuf,
        #[arg(long, env = "LEXVIEW_LEXICONS", default_value = "./lexicons")]
        lexicons: PathBuf,
        #[arg(long, env = "LEXVIEW_SEARCH_CONFIG", default_value = "./search.json")]
        search_config: PathBuf,
    },
}

/// `--verify`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum VerifyArg {
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

impl From<VerifyArg> for Verify {
    fn from(v: VerifyArg) -> Verify {
        match v {
            VerifyArg::Auto => Verify::Auto,
            VerifyArg::Full => Verify::Full,
            VerifyArg::None => Verify::None,
        }
    }
}

/// `export --format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    /// Apache Parquet, zstd-compressed.
    Parquet,
    /// CSV with a header row.
    Csv,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// wss://host (relay or PDS firehose), jetstream+wss://host, or replay:PATH[?rate=N]. Repeatable.
    #[arg(
        long = "source",
        env = "LEXVIEW_SOURCE",
        value_delimiter = ',',
        default_value = "wss://bsky.network"
    )]
    sources: Vec<String>,
    /// Directory of lexicon JSON files (searched recursively).
    #[arg(long, env = "LEXVIEW_LEXICONS", default_value = "./lexicons")]
    lexicons: PathBuf,
    /// Directory of SQL-defined query methods (`<nsid>.sql`, each with a query lexicon).
    #[arg(long, env = "LEXVIEW_QUERIES", default_value = "./queries")]
    queries: PathBuf,
    /// Directory of feed definitions (`<rkey>.sql`) served by getFeedSkeleton.
    #[arg(long, env = "LEXVIEW_FEEDS", default_value = "./feeds")]
    feeds: PathBuf,
    /// Search config (JSON): which record fields are searched, per field (optional).
    #[arg(long, env = "LEXVIEW_SEARCH_CONFIG", default_value = "./search.json")]
    search_config: PathBuf,
    /// The feed generator service's DID (describeFeedGenerator's `did`).
    #[arg(long, env = "LEXVIEW_FEEDGEN_DID", default_value = "did:web:localhost")]
    feedgen_did: String,
    /// The DID whose app.bsky.feed.generator records name the feeds (default: --feedgen-did).
    #[arg(long, env = "LEXVIEW_FEED_PUBLISHER")]
    feed_publisher: Option<String>,
    /// Image URLs in embed views: `{preset}` (feed_thumbnail, feed_fullsize),
    /// `{did}` and `{cid}` are filled in.
    #[arg(
        long,
        env = "LEXVIEW_IMAGE_URL",
        default_value = lexview::api::bsky::embeds::DEFAULT_IMAGE_URL
    )]
    image_url: String,
    /// Video playlist URLs in embed views (`{did}`, `{cid}` percent-encoded).
    #[arg(
        long,
        env = "LEXVIEW_VIDEO_PLAYLIST_URL",
        default_value = lexview::api::bsky::embeds::DEFAULT_VIDEO_PLAYLIST_URL
    )]
    video_playlist_url: String,
    /// Video thumbnail URLs in embed views (`{did}`, `{cid}` percent-encoded).
    #[arg(
        long,
        env = "LEXVIEW_VIDEO_THUMBNAIL_URL",
        default_value = lexview::api::bsky::embeds::DEFAULT_VIDEO_THUMBNAIL_URL
    )]
    video_thumbnail_url: String,
    /// Directory for the DuckDB store and the search index.
    #[arg(long, env = "LEXVIEW_DATA", default_value = "./data")]
    data: PathBuf,
    /// Address for the HTTP API.
    #[arg(long, env = "LEXVIEW_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// PLC directory for DID resolution.
    #[arg(long, env = "LEXVIEW_PLC", default_value = "https://plc.directory")]
    plc: String,
    /// Commit verification: auto is full for firehose sources, none for
    /// recordings and Jetstream.
    #[arg(long, env = "LEXVIEW_VERIFY", value_enum, default_value = "auto")]
    verify: VerifyArg,
    /// DID documents for verification from a file (`{"did": document}`)
    /// instead of the network, e.g. for a recording.
    #[arg(long, env = "LEXVIEW_DID_DOCS")]
    did_docs: Option<PathBuf>,
    /// Jetstream's zstd dictionary (`pkg/models/zstd_dictionary` in the
    /// Jetstream repository): with it, Jetstream sources ask for compressed
    /// events (about half the bytes).
    #[arg(long, env = "LEXVIEW_JETSTREAM_DICTIONARY")]
    jetstream_dictionary: Option<PathBuf>,
    /// Repositories fetched at once (getRepo from their PDS) when a `#sync`
    /// event, a broken commit chain or a reactivation asks for a resync;
    /// 0 turns resyncs off (requests are kept for a later run).
    #[arg(long, env = "LEXVIEW_RESYNC_CONCURRENCY", default_value_t = 4)]
    resync_concurrency: usize,
    /// Of those, at most this many fetched from one PDS host at a time.
    #[arg(long, env = "LEXVIEW_RESYNC_PER_HOST", default_value_t = 2)]
    resync_per_host: usize,
    /// Also index every repository's existing records: list them on the
    /// relay (listReposByCollection, else listRepos), fetch each from its
    /// PDS and apply it as a snapshot while its live events wait (resumable:
    /// repositories already done are skipped).
    #[arg(long, env = "LEXVIEW_BACKFILL")]
    backfill: bool,
    /// Where to list repositories for --backfill (default: the first
    /// firehose source, as http(s)).
    #[arg(long, env = "LEXVIEW_BACKFILL_HOST")]
    backfill_host: Option<String>,
    /// DuckDB's memory limit, e.g. 1GB (default: DuckDB's, 80% of RAM).
    #[arg(long, env = "LEXVIEW_MEMORY_LIMIT")]
    memory_limit: Option<String>,
    /// With verification, resolve handles through this service's
    /// com.atproto.identity.resolveHandle (e.g. a PDS for its own handles)
    /// instead of DNS TXT and https://<handle>/.well-known/atproto-did;
    /// `off`: show handles as claimed (e.g. replaying a recording offline).
    #[arg(long, env = "LEXVIEW_HANDLE_RESOLVER")]
    handle_resolver: Option<String>,
    /// Writer batch: commit after this many events...
    #[arg(long, env = "LEXVIEW_BATCH_EVENTS", default_value_t = 150_000)]
    batch_events: usize,
    /// ...or after this many milliseconds.
    #[arg(long, env = "LEXVIEW_BATCH_MS", default_value_t = 200)]
    batch_ms: u64,
    /// Hot post views kept in memory (and as many reply lists and thread
    /// contexts), all dropped at every committed batch that touches
    /// app.bsky.* records or accounts; 0 disables them.
    #[arg(long, env = "LEXVIEW_POST_CACHE", default_value_t = 20_000)]
    post_cache: usize,
    /// Unsafe, for tests: hosts that DID documents and handles name may be
    /// plain HTTP on loopback and private addresses (by default only HTTPS to
    /// public addresses is fetched from them).
    #[arg(long, env = "LEXVIEW_UNSAFE_ALLOW_PRIVATE_HOSTS")]
    unsafe_allow_private_hosts: bool,
    /// /_health answers 503 "degraded" once a source has been disconnected
    /// this many seconds (it keeps retrying meanwhile).
    #[arg(long, env = "LEXVIEW_MAX_DISCONNECTED", default_value_t = 300)]
    max_disconnected: u64,
}

impl Default for ServeArgs {
    fn default() -> Self {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: ServeArgs,
        }
        Wrapper::parse_from(["lexview"]).args
    }
}

impl ServeArgs {
    fn config(self) -> ServeConfig {
        ServeConfig {
            sources: self.sources,
            lexicons: self.lexicons,
            queries: self.queries,
            feeds: self.feeds,
            search_config: self.search_config,
            feed_publisher: self
                .feed_publisher
                .unwrap_or_else(|| self.feedgen_did.clone()),
            feedgen_did: self.feedgen_did,
            media: lexview::api::bsky::embeds::MediaUrls {
                image: self.image_url,
                video_playlist: self.video_playlist_url,
                video_thumbnail: self.video_thumbnail_url,
            },
            data: self.data,
            listen: self.listen,
            plc: self.plc,
            verify: self.verify.into(),
            did_docs: self.did_docs,
            jetstream_dictionary: self.jetstream_dictionary,
            resync_concurrency: self.resync_concurrency,
            resync_per_host: self.resync_per_host,
            backfill: self.backfill,
            backfill_host: self.backfill_host,
            memory_limit: self.memory_limit,
            handle_resolver: self.handle_resolver,
            post_cache: self.post_cache,
            allow_private_hosts: self.unsafe_allow_private_hosts,
            max_disconnected: std::time::Duration::from_secs(self.max_disconnected),
            writer: WriterConfig {
                max_events: self.batch_events,
                max_delay: std::time::Duration::from_millis(self.batch_ms),
            },
        }
    }
}

#[derive(clap::Args, Debug)]
struct BackfillArgs {
    /// A PDS or relay to list (`listRepos`) and fetch (`getRepo`) repositories from.
    #[arg(long)]
    host: Option<String>,
    /// Local repository CAR files (instead of --host).
    #[arg(long = "car", num_args = 1..)]
    cars: Vec<PathBuf>,
    #[arg(long, env = "LEXVIEW_DATA", default_value = "./data")]
    data: PathBuf,
    #[arg(long, env = "LEXVIEW_LEXICONS", default_value = "./lexicons")]
    lexicons: PathBuf,
    /// Check each repository's commit signature (full) or not (none); auto:
    /// full for --host, none for local --car files.
    #[arg(long, env = "LEXVIEW_VERIFY", value_enum, default_value = "auto")]
    verify: VerifyArg,
    /// PLC directory for DID resolution.
    #[arg(long, env = "LEXVIEW_PLC", default_value = "https://plc.directory")]
    plc: String,
    /// Signing keys from a `{did: document}` file instead of the network.
    #[arg(long, env = "LEXVIEW_DID_DOCS")]
    did_docs: Option<PathBuf>,
    /// Repositories fetched from --host at once (the limit per host).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// At most this many repositories fetched per second (politeness
    /// towards the host; default: no limit).
    #[arg(long)]
    max_repos_per_second: Option<f64>,
    /// DuckDB's memory limit, e.g. 256MB (default: DuckDB's, 80% of RAM).
    #[arg(long, env = "LEXVIEW_MEMORY_LIMIT")]
    memory_limit: Option<String>,
    /// Unsafe, for tests: hosts that DID documents and handles name may be
    /// plain HTTP on loopback and private addresses (by default only HTTPS to
    /// public addresses is fetched from them).
    #[arg(long, env = "LEXVIEW_UNSAFE_ALLOW_PRIVATE_HOSTS")]
    unsafe_allow_private_hosts: bool,
}

#[derive(clap::Args, Debug)]
struct AuditArgs {
    /// The repository to compare with the index.
    did: String,
    /// Where to fetch it (`getRepo`); default: the PDS its DID document names.
    #[arg(long)]
    host: Option<String>,
    #[arg(long, env = "LEXVIEW_DATA", default_value = "./data")]
    data: PathBuf,
    #[arg(long, env = "LEXVIEW_LEXICONS", default_value = "./lexicons")]
    lexicons: PathBuf,
    /// PLC directory, to find the PDS of a did:plc.
    #[arg(long, env = "LEXVIEW_PLC", default_value = "https://plc.directory")]
    plc: String,
    /// Unsafe, for tests: hosts that DID documents and handles name may be
    /// plain HTTP on loopback and private addresses (by default only HTTPS to
    /// public addresses is fetched from them).
    #[arg(long, env = "LEXVIEW_UNSAFE_ALLOW_PRIVATE_HOSTS")]
    unsafe_allow_private_hosts: bool,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// The directory to write to (created; must be empty if it exists).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "parquet")]
    format: FormatArg,
    /// Export only these record collections (NSIDs; repeatable): their
    /// records, the links they hold, their counts and their quarantine.
    #[arg(long = "collection", value_delimiter = ',')]
    collections: Vec<String>,
    #[arg(long, env = "LEXVIEW_DATA", default_value = "./data")]
    data: PathBuf,
}

/// Turns transparent huge pages off for this process. mimalloc (the
/// process's malloc, DuckDB's too) asks for them on its arenas, and DuckDB
/// takes a fresh 256 KiB buffer for every statement's result and every
/// block it loads: with huge pages the first touch of such a buffer zeroes
/// a whole 2 MiB page. That zeroing was half of the time of point lookups
/// on a freshly opened store (1,000s of URIs: 273-495 of 3,000 over 2 ms
/// with huge pages, 19-42 without; p99 6.5-7.3 ms against 1.8-2.3).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE sets a flag of this process; no memory
    // is touched.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> anyhow::Result<()> {
    no_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LEXVIEW_LOG")
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli
        .command
        .unwrap_or_else(|| Command::Serve(Box::default()))
    {
        Command::Serve(a) => {
            tokio::runtime::Runtime::new()?.block_on(lexview::cli::serve::serve(a.config()))
        }
        Command::Sql { query, data } => lexview::cli::sql::run(&data, &query),
        Command::Reindex {
            search,
            data,
            lexicons,
            search_config,
        } => {
            anyhow::ensure!(search, "nothing to rebuild: pass --search");
            let n = lexview::cli::reindex::search(&data, &lexicons, &search_config)?;
            println!("search index rebuilt: {n} records");
            Ok(())
        }
        Command::Backfill(a) => {
            lexview::cli::backfill::run(lexview::cli::backfill::BackfillConfig {
                host: a.host,
                cars: a.cars,
                data: a.data,
                lexicons: a.lexicons,
                verify: a.verify.into(),
                plc: a.plc,
                did_docs: a.did_docs,
                concurrency: a.concurrency,
                max_repos_per_second: a.max_repos_per_second,
                memory_limit: a.memory_limit,
                allow_private_hosts: a.unsafe_allow_private_hosts,
            })
        }
        Command::Audit(a) => lexview::cli::audit::run(lexview::cli::audit::AuditConfig {
            did: a.did,
            host: a.host,
            data: a.data,
            lexicons: a.lexicons,
            plc: a.plc,
            allow_private_hosts: a.unsafe_allow_private_hosts,
        }),
        Command::Export(a) => {
            let format = match a.format {
                FormatArg::Parquet => lexview::cli::export::Format::Parquet,
                FormatArg::Csv => lexview::cli::export::Format::Csv,
            };
            lexview::cli::export::run(&a.data, &a.out, format, &a.collections)
        }
    }
}
