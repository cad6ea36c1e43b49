//! `lexview-bench --load N`: the query side under load, over loopback.
//!
//! Builds (once; reused while it exists) a store of at least N records from
//! the generated corpus with varied post texts, starts the real server
//! (`lexview serve`, the `lexview` binary beside this one, as a child process) on it, and drives
//! each kind of request open-loop: requests are due at a fixed rate, at most
//! `--concurrency` are in flight, and a request's latency counts from the
//! moment it was due, not from when a slot freed up, so a server that falls
//! behind shows it in the figures (no coordinated omission). The load
//! generator shares the machine's cores with the server; the figures include
//! that.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::corpus::Corpus;
use crate::BenchArgs;

/// What one case sends.
#[derive(Clone)]
enum Request {
    Get(String),
    Graphql(String),
}

/// Targets sampled from the store before the server starts.
struct Targets {
    posts: Vec<String>,
    liked: Vec<String>,
    threads: Vec<String>,
    /// Other threads, one per request of a case (none asked before), for
    /// the thread method with cold caches.
    cold_threads: Vec<String>,
    authors: Vec<String>,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let store_dir = args.dir.join(format!("store-load-{}", args.load));
    let built = store_dir.join("BUILT");
    if !built.exists() {
        build(args, &store_dir)?;
        std::fs::write(&built, b"")?;
    }
    let (records, targets) = sample(&store_dir, args)?;
    println!("store: {} ({records} records)", store_dir.display());

    let empty = args.dir.join("empty-frames.bin");
    std::fs::write(&empty, b"")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = args.dir.join("load-serve.log");
    let mut child = std::process::Command::new(lexview_binary()?)
        .arg("serve")
        .arg("--data")
        .arg(&store_dir)
        .arg("--lexicons")
        .arg(&args.lexicons)
        .arg("--source")
        .arg(format!("replay:{}", empty.display()))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--verify", "none", "--handle-resolver", "off"])
        .args(["--resync-concurrency", "0"])
        .env("LEXVIEW_PLC", "http://127.0.0.1:9")
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(args.dir.join("load-serve.err"))?)
        .spawn()
        .context("starting lexview serve")?;
    let pid = child.id();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(drive_all(args, port, &targets, &mut child));
    // SIGTERM, so the server drains and closes the store cleanly.
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    result
}

/// Generates and indexes the corpus until the store holds `args.load` records.
fn build(args: &BenchArgs, store_dir: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(store_dir);
    let catalog = Arc::new(lexview::cli::load_catalog(&args.lexicons)?);
    // 5 % of the generated events delete a record made earlier, so 90 % of
    // the events leave one.
    let events = args.load * 10 / 9 + 1000;
    eprintln!(
        "building a store of {} records ({events} generated commit events) in {} ...",
        args.load,
        store_dir.display()
    );
    let frames = Corpus::new(events, true).map(|f| f.expect("generated frame"));
    let m = crate::measure(&catalog, store_dir, args.batch, false, None, frames)?;
    eprintln!(
        "built in {:.0} s ({:.0} events/s)",
        m.secs,
        m.events as f64 / m.secs
    );
    Ok(())
}

fn sample(store_dir: &Path, args: &BenchArgs) -> anyhow::Result<(i64, Targets)> {
    let conn = lexview::index::store::open_for_query(store_dir)?;
    let list = |sql: &str| -> anyhow::Result<Vec<String>> {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let out = rows.collect::<Result<Vec<_>, _>>()?;
        if out.is_empty() {
            bail!("the load store has no rows for: {sql}");
        }
        Ok(out)
    };
    let records: i64 = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
    let counted = |collection: &str, path: &str| {
        list(&format!(
            "SELECT target FROM (SELECT target FROM link_counts
               WHERE collection = '{collection}' AND path = '{path}' AND n > 0
                 AND target LIKE 'at://%' AND target IN (SELECT uri FROM records))
             USING SAMPLE reservoir(2000 ROWS) REPEATABLE (7) ORDER BY target"
        ))
    };
    let targets = Targets {
        posts: list(
            "SELECT uri FROM (SELECT uri FROM records WHERE collection = 'app.bsky.feed.post')
             USING SAMPLE reservoir(2000 ROWS) REPEATABLE (7) ORDER BY uri",
        )?,
        liked: counted("app.bsky.feed.like", ".subject.uri")?,
        threads: counted("app.bsky.feed.post", ".reply.parent.uri")?,
        cold_threads: Vec::new(),
        authors: list(
            "SELECT DISTINCT did FROM records WHERE collection = 'app.bsky.feed.post'
             ORDER BY did LIMIT 2000",
        )?,
    };
    // As many as the case sends (warm-up included), none of them a hot one.
    let wanted = (args.load_rate * (args.load_seconds + 2.0)).ceil() as usize;
    let hot: std::collections::HashSet<&String> = targets.threads.iter().collect();
    let cold = list(&format!(
        "SELECT target FROM (SELECT target FROM link_counts
           WHERE collection = 'app.bsky.feed.post' AND path = '.reply.parent.uri' AND n > 0
             AND target LIKE 'at://%' AND target IN (SELECT uri FROM records))
         USING SAMPLE reservoir({} ROWS) REPEATABLE (11) ORDER BY hash(target)",
        wanted + targets.threads.len()
    ))?
    .into_iter()
    .filter(|t| !hot.contains(t))
    .take(wanted)
    .collect();
    let targets = Targets {
        cold_threads: cold,
        ..targets
    };
    Ok((records, targets))
}

/// `GET {base}/xrpc/{nsid}?{params}`, the parameters URL-encoded.
fn xrpc(base: &str, nsid: &str, params: &[(&str, &str)]) -> Request {
    let url = reqwest::Url::parse_with_params(&format!("{base}/xrpc/{nsid}"), params)
        .expect("loopback URL");
    Request::Get(url.into())
}

const GRAPHQL_PAGE: &str = "query Page($author: String!) { appBskyFeedPost(where: {author: $author}, sortBy: indexedAt, order: DESC, first: 50) { nodes { uri cid text createdAt appBskyFeedLikeBySubjectCount author { did handle } } } }";

/// Long on purpose: the list of load cases, one entry each.
async fn drive_all(
    args: &BenchArgs,
    port: u16,
    t: &Targets,
    child: &mut std::process::Child,
) -> anyhow::Result<()> {
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    eprintln!("waiting for the server (it catches its search index up with the store first) ...");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the server exited ({status}); see {}",
                args.dir.join("load-serve.err").display()
            );
        }
        if let Ok(r) = client.get(format!("{base}/_health")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the server did not answer /_health within an hour");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "server ready after {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let at = |uri: &str| {
        let rest = uri.trim_start_matches("at://");
        let mut parts = rest.splitn(3, '/');
        (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        )
    };
    let get = |list: &[String], f: &dyn Fn(&str) -> Request| -> Vec<Request> {
        list.iter().map(|x| f(x)).collect()
    };
    let cases: Vec<(&str, f64, Vec<Request>)> = vec![
        (
            "com.atproto.repo.getRecord",
            args.load_rate,
            get(&t.posts, &|u| {
                let (did, coll, rkey) = at(u);
                xrpc(
                    &base,
                    "com.atproto.repo.getRecord",
                    &[("repo", &did), ("collection", &coll), ("rkey", &rkey)],
                )
            }),
        ),
        (
            "blue.microcosm.links.getBacklinksCount",
            args.load_rate,
            get(&t.liked, &|u| {
                xrpc(
                    &base,
                    "blue.microcosm.links.getBacklinksCount",
                    &[("subject", u), ("source", "app.bsky.feed.like:subject.uri")],
                )
            }),
        ),
        (
            "app.bsky.feed.getLikes",
            args.load_rate,
            get(&t.liked, &|u| {
                xrpc(
                    &base,
                    "app.bsky.feed.getLikes",
                    &[("uri", u), ("limit", "50")],
                )
            }),
        ),
        (
            "app.bsky.feed.getPostThread, 2,000 threads asked in turn (hot caches)",
            args.load_rate,
            get(&t.threads, &|u| {
                xrpc(&base, "app.bsky.feed.getPostThread", &[("uri", u)])
            }),
        ),
        (
            "app.bsky.feed.getPostThread, each thread once (cold caches)",
            args.load_rate,
            get(&t.cold_threads, &|u| {
                xrpc(&base, "app.bsky.feed.getPostThread", &[("uri", u)])
            }),
        ),
        (
            "search, 2 terms (dev.lexview.search.searchRecords)",
            args.load_rate,
            (0..2000)
                .map(|j| {
                    xrpc(
                        &base,
                        "dev.lexview.search.searchRecords",
                        &[("q", &Corpus::query_terms(j)), ("limit", "25")],
                    )
                })
                .collect(),
        ),
        (
            "app.bsky.feed.getAuthorFeed, 50 posts",
            args.load_page_rate,
            get(&t.authors, &|d| {
                xrpc(
                    &base,
                    "app.bsky.feed.getAuthorFeed",
                    &[("actor", d), ("limit", "50")],
                )
            }),
        ),
        (
            "GraphQL, 50 posts with like counts and authors",
            args.load_page_rate,
            t.authors
                .iter()
                .map(|d| {
                    Request::Graphql(
                        serde_json::json!({"query": GRAPHQL_PAGE, "variables": {"author": d}})
                            .to_string(),
                    )
                })
                .collect(),
        ),
    ];
    println!(
        "open-loop load on loopback: {} s per case after 2 s of warm-up, at most {} requests in flight",
        args.load_seconds, args.concurrency
    );
    println!(
        "| case | rate (req/s) | answered | errors | p50 ms | p90 ms | p99 ms | max ms | store reads / req | server CPU ms / req |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let wanted = |name: &str| {
        args.load_only.is_empty() || args.load_only.iter().any(|w| name.contains(w.as_str()))
    };
    for (name, rate, requests) in cases.into_iter().filter(|c| wanted(c.0)) {
        let graphql = format!("{base}/graphql");
        // Warm-up (not counted): connections, caches, the server's pages.
        drive(&client, &graphql, &requests, rate, 2.0, args.concurrency).await;
        let before = reads(&client, &base).await;
        let cpu_before = cpu_seconds(child.id());
        let s = drive(
            &client,
            &graphql,
            &requests,
            rate,
            args.load_seconds,
            args.concurrency,
        )
        .await;
        // A counter's growth over the case, per request sent.
        let per_request = |before: Option<f64>, after: Option<f64>| match (before, after) {
            (Some(a), Some(b)) => format!("{:.2}", (b - a) / (s.answered + s.errors).max(1) as f64),
            _ => "?".to_string(),
        };
        let reads_per_request = per_request(before, reads(&client, &base).await);
        let cpu_per_request = per_request(
            cpu_before.map(|c| c * 1000.0),
            cpu_seconds(child.id()).map(|c| c * 1000.0),
        );
        println!(
            "| {name} | {rate:.0} | {:.0}/s | {} | {:.2} | {:.2} | {:.2} | {:.2} | {reads_per_request} | {cpu_per_request} |",
            s.answered_rate, s.errors, s.p50, s.p90, s.p99, s.max
        );
        if let Some(e) = s.first_error {
            eprintln!("  first error of {name}: {e}");
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
        if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
            println!(
                "server peak RSS: {}",
                line.trim_start_matches("VmHWM:").trim()
            );
        }
    }
    Ok(())
}

/// The server's `lexview_store_reads_total` (uses of a read connection:
/// statements and batched lookups), or None if `/metrics` did not answer.
async fn reads(client: &reqwest::Client, base: &str) -> Option<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("lexview_store_reads_total "))?
        .trim()
        .parse()
        .ok()
}

/// CPU time (user and system) the process `pid` has used, in seconds, from
/// `/proc` (None where there is no `/proc`).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces), from the
    // third on: utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks / per_second as f64)
}

struct Stats {
    answered: usize,
    answered_rate: f64,
    errors: usize,
    first_error: Option<String>,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// Sends `rate * seconds` requests, cycling through `requests`, each due at
/// its slot of the schedule; latencies are measured from the due time.
async fn drive(
    client: &reqwest::Client,
    graphql: &str,
    requests: &[Request],
    rate: f64,
    seconds: f64,
    concurrency: usize,
) -> Stats {
    let total = ((rate * seconds) as usize).max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let t0 = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = slots.clone().acquire_owned().await.expect("semaphore");
        let builder = match &requests[i % requests.len()] {
            Request::Get(url) => client.get(url),
            Request::Graphql(body) => client
                .post(graphql)
                .header("content-type", "application/json")
                .body(body.clone()),
        };
        tasks.push(tokio::spawn(async move {
            let outcome = match builder.send().await {
                Ok(r) => {
                    let status = r.status();
                    match r.bytes().await {
                        Ok(body) if status.is_success() && !has_errors(&body) => Ok(()),
                        Ok(body) => Err(format!(
                            "{status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(300)])
                        )),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            let latency = due.elapsed();
            drop(permit);
            (latency, Instant::now(), outcome)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    let mut first_error = None;
    let mut last = t0;
    for t in tasks {
        let Ok((latency, done, outcome)) = t.await else {
            errors += 1;
            continue;
        };
        last = last.max(done);
        match outcome {
            Ok(()) => latencies.push(latency.as_secs_f64() * 1000.0),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if latencies.is_empty() {
            return f64::NAN;
        }
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    Stats {
        answered: latencies.len(),
        answered_rate: latencies.len() as f64 / last.duration_since(t0).as_secs_f64(),
        errors,
        first_error,
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        max: latencies.last().copied().unwrap_or(f64::NAN),
    }
}

/// A GraphQL answer with errors (the status is 200 either way).
fn has_errors(body: &[u8]) -> bool {
    body.windows(9).any(|w| w == b"\"errors\":")
}

/// The `lexview` binary beside this one (cargo builds both into one
/// directory).
fn lexview_binary() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("lexview");
    anyhow::ensure!(
        path.exists(),
        "{} not found: build it first (cargo build --release)",
        path.display()
    );
    Ok(path)
}
