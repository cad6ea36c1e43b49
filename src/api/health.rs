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
    let now = chrono::Utc::now();
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
            json!({ "source": source, "cursor": pos.cursor, "eventTime": pos.event_time, "lagSeconds": lag })
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
