//! `GET /_health` and `GET /metrics`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

/// Status, per-source cursor and lag, record count, repositories waiting
/// for a resync (`resyncsPending`: each is applied once its snapshot is).
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let state = state.pinned();
    let now = chrono::Utc::now();
    let links = state.links.snapshot();
    let sources: Vec<Value> = state
        .positions
        .snapshot()
        .into_iter()
        .map(|(source, pos)| {
            let lag = pos
                .event_time
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| (now - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0);
            let link = links.get(&source).map(|l| {
                json!({
                    "state": l.state.as_str(),
                    "since": l.since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "failures": l.failures,
                    "lastError": l.last_error,
                })
            });
            json!({ "source": source, "cursor": pos.cursor, "eventTime": pos.event_time,
                    "lagSeconds": lag, "connection": link })
        })
        .collect();
    // Counted after the positions were read, so that the counts are never
    // older than the cursors shown (a batch commits before its cursor is
    // published): a client that waits for a cursor then sees its records.
    let counts = state
        .readers
        .with(|c| {
            c.query_row(
                "SELECT (SELECT count(*) FROM records), (SELECT count(*) FROM quarantine),
                        (SELECT count(*) FROM resyncs)",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
        })
        .await;
    let problems = problems(&state, &links, now);
    match counts {
        Ok((records, quarantined, resyncs)) => {
            let status = if problems.is_empty() {
                axum::http::StatusCode::OK
            } else {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            };
            let body = Json(json!({
                "status": if problems.is_empty() { "ok" } else { "degraded" },
                "problems": problems,
                "version": env!("CARGO_PKG_VERSION"),
                "records": records,
                "quarantined": quarantined,
                "resyncsPending": resyncs,
                "sources": sources,
            }));
            (status, body).into_response()
        }
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "error", "message": e.to_string(), "sources": sources })),
        )
            .into_response(),
    }
}

/// What keeps the server from doing its job now: a stopped ingest thread,
/// index transactions failing in a row, a source disconnected for longer
/// than `--max-disconnected`.
fn problems(
    state: &AppState,
    links: &std::collections::BTreeMap<String, crate::source::Link>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = Vec::new();
    if state.metrics.ingest_stopped.load(Relaxed) == 1 {
        out.push("the ingest thread stopped; the server is shutting down".to_string());
    }
    let failing = state.metrics.writer_failures_in_a_row.load(Relaxed);
    if failing >= 3 {
        out.push(format!(
            "the last {failing} index transactions failed (retrying; see the log)"
        ));
    }
    for (source, link) in links {
        use crate::source::LinkState;
        let down = matches!(link.state, LinkState::Connecting | LinkState::Disconnected);
        let for_secs = (now - link.since).num_seconds().max(0) as u64;
        if down && for_secs >= state.max_disconnected.as_secs() {
            out.push(format!(
                "{source} has been disconnected for {for_secs} s: {}",
                link.last_error.as_deref().unwrap_or("connecting")
            ));
        }
    }
    out
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    text.push_str(&format!(
        "# HELP lexview_store_reads_total Uses of a store read connection (API queries).\n\
         # TYPE lexview_store_reads_total counter\nlexview_store_reads_total {}\n",
        state.readers.reads()
    ));
    // Per view cache: (name, (hits, misses), entries held now).
    let mut caches = vec![("handles", state.handles.stats(), state.handles.len())];
    for ext in state.extensions.iter() {
        caches.extend(ext.view_caches());
    }
    let mut family = |name: &str, help: &str, kind: &str, value: fn(((u64, u64), usize)) -> u64| {
        text.push_str(&format!(
            "# HELP lexview_{name} {help}\n# TYPE lexview_{name} {kind}\n"
        ));
        for &(cache, stats, len) in &caches {
            let v = value((stats, len));
            text.push_str(&format!("lexview_{name}{{cache=\"{cache}\"}} {v}\n"));
        }
    };
    family(
        "view_cache_hits_total",
        "Keys answered by a view cache (handles; posts, replies, root_likes, profiles).",
        "counter",
        |((hits, _), _)| hits,
    );
    family(
        "view_cache_misses_total",
        "Keys a view cache did not hold, read from the store.",
        "counter",
        |((_, misses), _)| misses,
    );
    family(
        "view_cache_entries",
        "Entries a view cache holds now.",
        "gauge",
        |(_, len)| len as u64,
    );
    for ext in state.extensions.iter() {
        ext.render_metrics(&mut text);
    }
    sources(&state, &mut text);
    state.latencies.render(&mut text);
    if let Some(search) = &state.search {
        let index = &search.index;
        let c = index.count_stats();
        let gauges = [
            (
                "search_documents",
                "Documents visible to searches.",
                index.len(),
            ),
            (
                "search_segments",
                "Index segments visible to searches.",
                index.segments() as u64,
            ),
            (
                "queue_search_batches",
                "Committed batches waiting for the search indexer (at most 64).",
                index.queued(),
            ),
            (
                "search_term_bitsets",
                "Term bitsets held for counting the matches of common terms.",
                c.bitsets as u64,
            ),
            (
                "search_term_bitset_bytes",
                "Bytes those bitsets take (at most 64 MB).",
                c.bitset_bytes as u64,
            ),
        ];
        for (name, help, value) in gauges {
            text.push_str(&format!(
                "# HELP lexview_{name} {help}\n# TYPE lexview_{name} gauge\nlexview_{name} {value}\n"
            ));
        }
        counters(
            &mut text,
            "search_count_segments_total",
            "Segments whose matches a search counted, from term bitsets or by walking the matches.",
            "path",
            &[
                ("bitsets", c.segments_from_bitsets),
                ("walk", c.segments_walked),
            ],
        );
        let (records, reply_lists) = index.lookup_counts();
        counters(
            &mut text,
            "post_index_reads_total",
            "Post rows and reply lists that post views and threads read from the search index instead of the store.",
            "what",
            &[("rows", records), ("reply_lists", reply_lists)],
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Per source: whether it is connected, its committed cursor and its lag.
fn sources(state: &AppState, text: &mut String) {
    let links = state.links.snapshot();
    let positions = state.positions.snapshot();
    let now = chrono::Utc::now();
    let label = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    text.push_str(
        "# HELP lexview_source_connected 1 while the source is connected (or a recording is being read).\n\
         # TYPE lexview_source_connected gauge\n",
    );
    for (source, link) in &links {
        let up = matches!(link.state, crate::source::LinkState::Connected);
        text.push_str(&format!(
            "lexview_source_connected{{source=\"{}\"}} {}\n",
            label(source),
            u8::from(up)
        ));
    }
    text.push_str(
        "# HELP lexview_source_cursor The source's cursor committed with the data.\n\
         # TYPE lexview_source_cursor gauge\n\
         # HELP lexview_source_lag_seconds How far behind the source's newest committed event is.\n\
         # TYPE lexview_source_lag_seconds gauge\n",
    );
    for (source, pos) in &positions {
        if let Some(c) = pos.cursor {
            text.push_str(&format!(
                "lexview_source_cursor{{source=\"{}\"}} {c}\n",
                label(source)
            ));
        }
        let lag = pos
            .event_time
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| (now - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0);
        if let Some(lag) = lag {
            text.push_str(&format!(
                "lexview_source_lag_seconds{{source=\"{}\"}} {lag}\n",
                label(source)
            ));
        }
    }
}

/// One counter family with a line per value of its `label`.
fn counters(text: &mut String, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    text.push_str(&format!(
        "# HELP lexview_{name} {help}\n# TYPE lexview_{name} counter\n"
    ));
    for (value, n) in values {
        text.push_str(&format!("lexview_{name}{{{label}=\"{value}\"}} {n}\n"));
    }
}
