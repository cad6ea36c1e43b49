//! The binary end to end on the production recording: serve from a replay
//! file, answer XRPC and GraphQL, survive SIGKILL, refuse `sql` while running.

mod common;

use std::path::PathBuf;

use common::server::{sql, Server};

const FRAMES: &str = "tests/fixtures/jetstream/frames.bin";
const LAST_SEQ: i64 = 31527015471;

fn lexicons() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lexicons")
}

fn replay(rate: Option<u32>) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(FRAMES);
    match rate {
        Some(r) => format!("replay:{}?rate={r}", path.display()),
        None => format!("replay:{}", path.display()),
    }
}

fn dump(data: &std::path::Path) -> String {
    dump_with(data, true)
}

/// The index as text; with `cursors`, the stored source positions too (a
/// Jetstream cursor is a time, a firehose cursor a seq).
fn dump_with(data: &std::path::Path, cursors: bool) -> String {
    let mut out = String::new();
    for q in [
        "SELECT uri, cid, rev, record::VARCHAR FROM records ORDER BY uri",
        "SELECT target, collection, path, n FROM link_counts ORDER BY ALL",
        "SELECT source_uri, path, target FROM links ORDER BY ALL",
        "SELECT did, handle, active, status FROM actors ORDER BY did",
        "SELECT cursor FROM cursors",
        // The materialised counts equal a recount of the links.
        "SELECT count(*) AS counts_that_differ_from_a_recount FROM
           (SELECT target, source_collection AS collection, path, count(*) AS n FROM links GROUP BY ALL) a
           FULL JOIN link_counts b USING (target, collection, path) WHERE a.n IS DISTINCT FROM b.n",
    ] {
        if !cursors && q.contains("FROM cursors") {
            continue;
        }
        let (ok, stdout, stderr) = sql(data, q);
        assert!(ok, "sql failed: {stderr}");
        out.push_str(&stdout);
    }
    out
}

#[test]
fn serves_xrpc_and_graphql_from_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[&replay(None)], dir.path(), &lexicons());
    let health = server.wait_for_cursor(LAST_SEQ);
    assert!(health["records"].as_i64().unwrap() > 100, "{health}");

    // A like from the first production frame.
    let did = "did:plc:wq4aajammjtxdomz3e23667t";
    let (status, body) =
        server.get(&format!("/xrpc/com.atproto.repo.getRecord?repo={did}&collection=app.bsky.feed.like&rkey=3mptbyplj5d2a"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["uri"],
        format!("at://{did}/app.bsky.feed.like/3mptbyplj5d2a")
    );
    assert_eq!(
        body["cid"],
        "bafyreiguce4jh7kcbmof3pmcvasifqtw24b6isakj5ve5ga2b4z4alpc4i"
    );
    assert_eq!(
        body["value"]["subject"]["uri"],
        "at://did:plc:r2zybk6op3ymzpz6jhqpkoy5/app.bsky.feed.post/3mpsjbtci2c2o"
    );

    // GraphQL: list and by-URI.
    let data = server.graphql(
        r#"{ appBskyFeedLike(first: 2) { totalCount nodes { uri did createdAt subject { uri cid } } pageInfo { hasNextPage endCursor } } }"#,
    );
    assert!(data.get("errors").is_none(), "{data}");
    let conn = &data["data"]["appBskyFeedLike"];
    assert_eq!(conn["totalCount"], 105);
    assert_eq!(conn["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(conn["pageInfo"]["hasNextPage"], true);
    let uri = format!("at://{did}/app.bsky.feed.like/3mptbyplj5d2a");
    let data = server.graphql(&format!(
        r#"{{ appBskyFeedLikeByUri(uri: "{uri}") {{ cid subject {{ uri cid }} }} }}"#
    ));
    assert_eq!(
        data["data"]["appBskyFeedLikeByUri"]["cid"],
        "bafyreiguce4jh7kcbmof3pmcvasifqtw24b6isakj5ve5ga2b4z4alpc4i",
        "{data}"
    );
    let subject = &data["data"]["appBskyFeedLikeByUri"]["subject"];
    assert!(
        subject["uri"].as_str().unwrap().starts_with("at://") && subject["cid"].is_string(),
        "the strongRef is a typed object: {data}"
    );
    // Answers follow the selection order even where fields resolve concurrently
    // (async-graphql inserts root fields in completion order).
    let raw = reqwest::blocking::Client::new()
        .post(format!("{}/graphql", server.base))
        .json(&serde_json::json!({"query": format!(r#"{{ appBskyFeedLikeByUri(uri: "{uri}") {{ cid }} __typename }}"#)}))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        raw.find("appBskyFeedLikeByUri").unwrap() < raw.find("__typename").unwrap(),
        "{raw}"
    );
    // GraphQL-over-HTTP: a syntax error is a 400 for clients that accept the new media type.
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/graphql", server.base))
        .header("accept", "application/graphql-response+json")
        .json(&serde_json::json!({"query": "{ appBskyFeedLike("}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // A search (committed to the index on a timer): its count walks the
    // matches of the index's small segments, as /metrics counts.
    let start = std::time::Instant::now();
    loop {
        let (status, body) = server.get("/xrpc/dev.lexview.search.searchRecords?q=the");
        assert_eq!(status, 200, "{body}");
        if body["hitsTotal"].as_i64().unwrap() > 0 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("lexview_frames_total 150"), "{metrics}");
    let value = |name: &str| -> i64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{name}: {metrics}"));
        line[name.len() + 1..].parse().unwrap()
    };
    assert!(value("lexview_search_documents") > 0, "{metrics}");
    assert!(value("lexview_search_segments") > 0, "{metrics}");
    assert!(
        value("lexview_search_count_segments_total{path=\"walk\"}") > 0,
        "{metrics}"
    );
    assert_eq!(
        value("lexview_search_count_segments_total{path=\"bitsets\"}"),
        0
    );
    assert_eq!(value("lexview_search_term_bitset_bytes"), 0);
    // The store is held by the running server: `sql` says so clearly.
    let (ok, _, stderr) = sql(dir.path(), "SELECT 1");
    assert!(!ok);
    assert!(stderr.contains("locked by another process"), "{stderr}");

    assert!(server.stop().success());
    let (ok, stdout, stderr) = sql(
        dir.path(),
        "SELECT count(*) AS likes FROM records WHERE collection = 'app.bsky.feed.like'",
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("105"), "{stdout}");

    // The store opens in the stock DuckDB shell of the same version.
    let cli = std::process::Command::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/harness/duckdb-cli.sh"),
    )
    .output()
    .unwrap();
    assert!(
        cli.status.success(),
        "installing duckdb-cli: {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli = String::from_utf8(cli.stdout).unwrap();
    let out = std::process::Command::new(cli.trim())
        .arg("-readonly")
        .arg(dir.path().join("lexview.duckdb"))
        .args(["-csv", "-c", "SELECT count(*) AS n FROM records WHERE collection = 'app.bsky.feed.like' AND json_extract_string(record, '$.subject.uri') LIKE 'at://%'"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "n\n105");
}

#[test]
fn sigkill_mid_stream_then_restart_equals_a_clean_run() {
    let clean = tempfile::tempdir().unwrap();
    let server = Server::start(&[&replay(None)], clean.path(), &lexicons());
    server.wait_for_cursor(LAST_SEQ);
    assert!(server.stop().success());
    let expected = dump(clean.path());
    let recount = expected
        .split("counts_that_differ_from_a_recount\n")
        .nth(1)
        .and_then(|t| t.lines().nth(1));
    assert_eq!(
        recount,
        Some("0"),
        "link_counts must equal a recount of links"
    );

    let crashed = tempfile::tempdir().unwrap();
    // Paced at 100 frames/s: kill it once some but not all are committed.
    let server = Server::start(&[&replay(Some(100))], crashed.path(), &lexicons());
    let first_seq = 31527015322;
    let h = server.wait_for(std::time::Duration::from_secs(30), |h| {
        h["sources"][0]["cursor"]
            .as_i64()
            .is_some_and(|c| c > first_seq + 20)
    });
    let at_kill = h["sources"][0]["cursor"].as_i64().unwrap();
    assert!(at_kill < LAST_SEQ, "killed too late to test anything");
    server.kill9();

    let server = Server::start(&[&replay(None)], crashed.path(), &lexicons());
    server.wait_for_cursor(LAST_SEQ);
    assert!(server.stop().success());
    common::assert_lines_eq(&expected, &dump(crashed.path()));
}

#[test]
fn a_relay_that_drops_the_connection_every_40_frames_gives_the_same_index() {
    let clean = tempfile::tempdir().unwrap();
    let server = Server::start(&[&replay(None)], clean.path(), &lexicons());
    server.wait_for_cursor(LAST_SEQ);
    assert!(server.stop().success());

    let relay = common::relay::start(common::frames("jetstream/frames.bin"), 40);
    let dropped = tempfile::tempdir().unwrap();
    // A firehose source is verified by default: keys from the recording's
    // DID documents.
    let server = Server::start_full(
        &[&relay.url],
        dropped.path(),
        &lexicons(),
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries"),
        &[
            "--did-docs",
            common::fixture("jetstream/did_docs.json").to_str().unwrap(),
            // Checking the recording's handles would need the network.
            "--handle-resolver",
            "off",
        ],
    );
    server.wait_for_cursor(LAST_SEQ);
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("lexview_commits_rejected_total 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("lexview_commits_verified_total 0\n"),
        "{metrics}"
    );
    assert!(server.stop().success());
    assert!(
        relay.connections.load(std::sync::atomic::Ordering::SeqCst) >= 4,
        "the source reconnected and resumed"
    );
    common::assert_lines_eq(&dump(clean.path()), &dump(dropped.path()));
}

/// Jetstream's compressed mode: with a dictionary (here one trained on the
/// recording itself, as Jetstream's was trained on its own traffic), the
/// source asks for `compress=true`, decompresses every binary message, and
/// the index equals the replay's; a binary message that is not zstd is
/// counted as malformed and skipped.
#[test]
fn compressed_jetstream_gives_the_same_index() {
    let clean = tempfile::tempdir().unwrap();
    let server = Server::start(&[&replay(None)], clean.path(), &lexicons());
    server.wait_for_cursor(LAST_SEQ);
    assert!(server.stop().success());

    let lines = jetstream_lines();
    let samples: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let sizes: Vec<usize> = samples.iter().map(|s| s.len()).collect();
    let dictionary = zstd::dict::from_continuous(&samples.concat(), &sizes, 16 << 10).unwrap();
    let dict_dir = tempfile::tempdir().unwrap();
    let dict_path = dict_dir.path().join("zstd_dictionary");
    std::fs::write(&dict_path, &dictionary).unwrap();

    let jetstream = common::jetstream::start_with(lines, 40, 1, Some(dictionary));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_full(
        &[&format!("jetstream+{}", jetstream.url)],
        dir.path(),
        &lexicons(),
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries"),
        &["--jetstream-dictionary", dict_path.to_str().unwrap()],
    );
    server.wait_for_cursor(jetstream.last_time_us);
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    assert!(server.stop().success());
    common::assert_lines_eq(
        &dump_with(clean.path(), false),
        &dump_with(dir.path(), false),
    );
    let requests = jetstream.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "reconnected once: {requests:?}");
    assert!(
        requests.iter().all(|r| r.contains("compress=true")),
        "{requests:?}"
    );
    // One garbage message per connection.
    assert!(
        metrics.contains("lexview_frames_malformed_total 2"),
        "{metrics}"
    );

    // A file that is no zstd dictionary stops serve at once, saying so.
    std::fs::write(&dict_path, "{}").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lexview"))
        .args(["serve", "--source", "jetstream+ws://127.0.0.1:9", "--data"])
        .arg(dir.path())
        .arg("--jetstream-dictionary")
        .arg(&dict_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a zstd dictionary"), "{stderr}");
}

fn jetstream_lines() -> Vec<String> {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jetstream/expected_v1.jsonl"),
    )
    .unwrap()
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn jetstream_of_the_same_window_gives_the_same_index_through_dropped_connections() {
    let clean = tempfile::tempdir().unwrap();
    let server = Server::start(&[&replay(None)], clean.path(), &lexicons());
    server.wait_for_cursor(LAST_SEQ);
    assert!(server.stop().success());

    // What production Jetstream emitted for the same 150 frames, served with
    // the connection dropped once, after 40 events: the reconnection resumes
    // from a rewound cursor, so events are applied twice, harmlessly.
    let lines = jetstream_lines();
    let jetstream = common::jetstream::start(lines, 40, 1);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &[&format!("jetstream+{}", jetstream.url)],
        dir.path(),
        &lexicons(),
    );
    server.wait_for_cursor(jetstream.last_time_us);
    assert!(server.stop().success());
    common::assert_lines_eq(
        &dump_with(clean.path(), false),
        &dump_with(dir.path(), false),
    );

    let requests = jetstream.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "reconnected once: {requests:?}");
    assert!(
        requests[0].starts_with("/subscribe?wantedCollections=")
            && requests[0].contains("wantedCollections=app.bsky.feed.post")
            && !requests[0].contains("cursor="),
        "{requests:?}"
    );
    assert!(
        requests[1..].iter().all(|r| r.contains("cursor=")),
        "reconnections resume from a cursor: {requests:?}"
    );
}
