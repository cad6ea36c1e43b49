//! The HTTP API in-process: `api::app()` over a store filled with the
//! production recording, driven with `tower::ServiceExt::oneshot` (no port,
//! no binary). What only a real port or process shows (the replay through
//! `lexview serve`, locks, signals) stays in `serve_replay.rs`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use lexview::cli::serve::{Api, ServeConfig};
use lexview::index::event::IndexEvent;
use lexview::index::store::Store;
use serde_json::{json, Value};
use tower::ServiceExt;

/// A like from the recording's first frame.
const LIKER: &str = "did:plc:wq4aajammjtxdomz3e23667t";
const LIKE_RKEY: &str = "3mptbyplj5d2a";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `serve`'s configuration for the repository's folders (no sources).
fn config(data: &std::path::Path) -> ServeConfig {
    ServeConfig {
        sources: Vec::new(),
        lexicons: root().join("lexicons"),
        queries: root().join("queries"),
        feeds: root().join("feeds"),
        search_config: root().join("search.json"),
        feedgen_did: "did:web:localhost".into(),
        feed_publisher: "did:web:localhost".into(),
        media: Default::default(),
        data: data.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        plc: "http://127.0.0.1:9".into(),
        verify: lexview::cli::Verify::None,
        did_docs: None,
        jetstream_dictionary: None,
        resync_concurrency: 0,
        resync_per_host: 1,
        backfill: false,
        backfill_host: None,
        memory_limit: None,
        handle_resolver: None,
        post_cache: 1000,
        allow_private_hosts: false,
        max_disconnected: std::time::Duration::from_secs(300),
        writer: Default::default(),
    }
}

/// The app over a store holding the recording, and the store's directory.
struct Fixture {
    app: axum::Router,
    _dir: tempfile::TempDir,
    _store: Store,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let catalog = common::bundled_catalog();
    let ingestor = lexview::ingest::Ingestor::new(catalog.clone(), Default::default());
    let events: Vec<IndexEvent> = common::frames("jetstream/frames.bin")
        .iter()
        .filter_map(|f| match ingestor.process("replay", f).unwrap() {
            lexview::ingest::Outcome::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    let mut store = Store::open(dir.path()).unwrap();
    store.apply(&events).unwrap();
    let cfg = config(dir.path());
    let readers = store.readers();
    let api = Api::load(&cfg, &catalog, &readers).unwrap();
    let state = api
        .state(
            &cfg,
            &catalog,
            Arc::default(),
            Arc::default(),
            Arc::default(),
        )
        .unwrap();
    Fixture {
        app: lexview::api::app(state),
        _dir: dir,
        _store: store,
    }
}

/// One request: the status and the body as JSON (Null when it is not).
async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn get(app: &axum::Router, path: &str) -> (StatusCode, Value) {
    call(app, Request::get(path).body(Body::empty()).unwrap()).await
}

async fn graphql(app: &axum::Router, query: &str) -> Value {
    let req = Request::post("/graphql")
        .header("content-type", "application/json")
        .body(Body::from(json!({ "query": query }).to_string()))
        .unwrap();
    call(app, req).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrpc_answers_and_errors_in_the_envelope() {
    let f = fixture();
    let (status, body) = get(
        &f.app,
        &format!("/xrpc/com.atproto.repo.getRecord?repo={LIKER}&collection=app.bsky.feed.like&rkey={LIKE_RKEY}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["cid"],
        "bafyreiguce4jh7kcbmof3pmcvasifqtw24b6isakj5ve5ga2b4z4alpc4i"
    );
    let (status, body) = get(
        &f.app,
        &format!(
            "/xrpc/com.atproto.repo.listRecords?repo={LIKER}&collection=app.bsky.feed.like&limit=1"
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["records"].as_array().unwrap().len(), 1);
    let cases = [
        (
            format!("/xrpc/com.atproto.repo.getRecord?repo={LIKER}&collection=app.bsky.feed.like&rkey=nope"),
            400,
            "RecordNotFound",
            "",
        ),
        (
            "/xrpc/com.atproto.repo.getRecord?collection=app.bsky.feed.like&rkey=x".into(),
            400,
            "InvalidRequest",
            "repo",
        ),
        (
            format!("/xrpc/com.atproto.repo.listRecords?repo={LIKER}&collection=app.bsky.feed.like&limit=1000"),
            400,
            "InvalidRequest",
            "limit",
        ),
        ("/xrpc/com.example.nothing".into(), 501, "MethodNotImplemented", ""),
    ];
    for (path, want_status, want_error, names) in cases {
        let (status, body) = get(&f.app, &path).await;
        assert_eq!(
            (status.as_u16(), body["error"].as_str()),
            (want_status, Some(want_error)),
            "{path}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains(names),
            "{path}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_pages_and_its_errors_carry_xrpc_classes() {
    let f = fixture();
    let data = graphql(
        &f.app,
        r#"{ appBskyFeedLike(first: 2) { totalCount nodes { uri subject { uri cid } } pageInfo { hasNextPage endCursor } } }"#,
    )
    .await;
    assert!(data.get("errors").is_none(), "{data}");
    let conn = &data["data"]["appBskyFeedLike"];
    assert_eq!(conn["totalCount"], 105);
    assert_eq!(conn["pageInfo"]["hasNextPage"], true);
    // A cursor of an integer sort given to a string one: the client's
    // mistake, named as such, found before any query runs (no store text in
    // the answer). The cursor is `[5, "at://x"]`, as this server encodes one.
    let data = graphql(
        &f.app,
        r#"{ appBskyFeedLike(first: 2, after: "WzUsImF0Oi8veCJd") { totalCount } }"#,
    )
    .await;
    let error = &data["errors"][0];
    assert_eq!(error["message"], "after does not fit this sortBy", "{data}");
    assert_eq!(error["extensions"]["code"], "InvalidRequest", "{data}");
    // A cursor this server never issued.
    let data = graphql(
        &f.app,
        r#"{ appBskyFeedLike(first: 2, after: "bm90IGEgY3Vyc29y") { totalCount } }"#,
    )
    .await;
    assert_eq!(
        data["errors"][0]["extensions"]["code"], "InvalidRequest",
        "{data}"
    );
    let data = graphql(&f.app, "{ appBskyFeedLike(first: 1000) { totalCount } }").await;
    assert!(
        data["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("first"),
        "{data}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_counters_caches_and_queue_depths() {
    let f = fixture();
    let liked = "at://did:plc:r2zybk6op3ymzpz6jhqpkoy5/app.bsky.feed.post/3mpsjbtci2c2o";
    for _ in 0..2 {
        let (status, body) = get(
            &f.app,
            &format!("/xrpc/app.bsky.feed.getPosts?uris={liked}"),
        )
        .await;
        assert_eq!(
            (status, &body["posts"]),
            (StatusCode::OK, &json!([])),
            "{body}"
        );
    }
    let resp = f
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    let metrics = String::from_utf8(bytes.to_vec()).unwrap();
    for line in [
        "# TYPE lexview_view_cache_hits_total counter",
        "lexview_view_cache_hits_total{cache=\"posts\"} 1",
        "lexview_view_cache_misses_total{cache=\"posts\"} 1",
        "lexview_view_cache_entries{cache=\"handles\"} 0",
        "# TYPE lexview_queue_frames gauge",
        "# TYPE lexview_queue_events gauge",
        "# TYPE lexview_queue_handle_checks gauge",
        "# TYPE lexview_queue_resync_results gauge",
        "# TYPE lexview_queue_search_batches gauge",
        "lexview_queue_search_batches 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }
    // Latency by method and status; a method the server does not serve is
    // "other" (clients cannot grow the label set).
    let _ = get(&f.app, "/xrpc/com.example.nothing").await;
    let resp = f
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    let metrics = String::from_utf8(bytes.to_vec()).unwrap();
    for line in [
        "lexview_request_duration_seconds_count{method=\"app.bsky.feed.getPosts\",status=\"200\"} 2",
        "lexview_request_duration_seconds_count{method=\"other\",status=\"501\"} 1",
        "# TYPE lexview_source_connected gauge",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }
    let (status, health) = get(&f.app, "/_health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    assert!(health["records"].as_i64().unwrap() > 100, "{health}");
}

/// Requests any client can send must not crash the server. Regression: a
/// search cursor of 2^44 made tantivy reserve room for that many hits and
/// the allocation aborted the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_cursors_past_the_deepest_page_are_refused() {
    let f = fixture();
    for path in [
        "/xrpc/dev.lexview.search.searchRecords?q=the&cursor=17592186044416".to_string(),
        "/xrpc/dev.lexview.search.searchRecords?q=the&cursor=10001".to_string(),
        format!(
            "/xrpc/app.bsky.feed.getFeedSkeleton?feed=at://did:web:localhost/app.bsky.feed.generator/rust-ranked&cursor={}",
            1u64 << 44
        ),
    ] {
        let (status, body) = get(&f.app, &path).await;
        assert_eq!(
            (status.as_u16(), body["error"].as_str()),
            (400, Some("InvalidRequest")),
            "{path}: {body}"
        );
    }
    let (status, body) = get(
        &f.app,
        "/xrpc/dev.lexview.search.searchRecords?q=the&cursor=10000",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// GraphQL requests any client can send are checked before they are
/// parsed or run. Regressions: a value literal nested 2,000 deep overflowed
/// a worker's stack (the parser recurses); 4,000 aliased list fields cost
/// 4,000 store reads and seconds (complexity ignored page sizes); a 64 MB
/// body was read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_limits_refuse_before_any_work() {
    let f = fixture();
    let refused = |data: &Value, what: &str| {
        let e = &data["errors"][0];
        assert_eq!(e["extensions"]["code"], "InvalidRequest", "{data}");
        assert!(
            e["message"].as_str().unwrap().contains(what),
            "{what}: {data}"
        );
        assert!(
            data.get("data").is_none() || data["data"].is_null(),
            "{data}"
        );
    };
    let deep = format!(
        "{{ appBskyFeedLike(first: 1, where: {{ uri: {{ eq: {}\"x\"{} }} }}) {{ totalCount }} }}",
        "[".repeat(2_000),
        "]".repeat(2_000)
    );
    refused(&graphql(&f.app, &deep).await, "nests deeper");
    let aliases: String = (0..300)
        .map(|i| format!("a{i}: appBskyFeedLike(first: 100) {{ nodes {{ uri }} }} "))
        .collect();
    refused(
        &graphql(&f.app, &format!("{{ {aliases} }}")).await,
        "root fields",
    );
    let costly = "{ appBskyFeedPost(first: 100) { nodes { appBskyFeedLikeBySubject(first: 100) { nodes { appBskyFeedLikeBySubject(first: 100) { nodes { uri } } } } } } }";
    refused(&graphql(&f.app, costly).await, "values");
    let long = format!(
        "{{ appBskyFeedLike(first: 1) {{ totalCount }} }} #{}",
        "x".repeat(70_000)
    );
    refused(&graphql(&f.app, &long).await, "longer than");
    // A body over the limit is refused before it is read.
    let big = "x".repeat(lexview::api::MAX_BODY + 1);
    let req = Request::post("/graphql")
        .header("content-type", "application/json")
        .header("content-length", big.len())
        .body(Body::from(big))
        .unwrap();
    let (status, _) = call(&f.app, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // And an ordinary query still runs.
    let data = graphql(&f.app, "{ appBskyFeedLike(first: 1) { totalCount } }").await;
    assert_eq!(data["data"]["appBskyFeedLike"]["totalCount"], 105, "{data}");
}
