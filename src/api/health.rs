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
    match counts {
        Ok((records, quarantined, resyncs)) => Json(json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "records": records,
            "quarantined": quarantined,
            "resyncsPending": resyncs,
            "sources": sources,
        }))
        .into_response(),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "error", "message": e.to_string(), "sources": sources })),
        )
            .into_response(),
    }
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

/// One counter family with a line per value of its `label`.
fn counters(text: &mut String, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    text.push_str(&format!(
        "# HELP lexview_{name} {help}\n# TYPE lexview_{name} counter\n"
    ));
    for (value, n) in values {
        text.push_str(&format!("lexview_{name}{{{label}=\"{value}\"}} {n}\n"));
    }
}
