//! Request latency by method and status, as Prometheus histograms in
//! `/metrics`. Methods are named only when the server serves them (an XRPC
//! method or query method, `graphql`, `_health`, `metrics`); anything else
//! is `other`, so a client cannot grow the label set.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;

/// Bucket bounds, in seconds.
const BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BOUNDS.len()],
    count: u64,
    sum: f64,
}

/// Latencies by (method, status).
#[derive(Default)]
pub struct Latencies(Mutex<BTreeMap<(String, u16), Histogram>>);

impl Latencies {
    fn record(&self, method: String, status: u16, seconds: f64) {
        let mut map = self.0.lock().expect("latencies lock");
        let h = map.entry((method, status)).or_default();
        for (i, bound) in BOUNDS.iter().enumerate() {
            if seconds <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The `lexview_request_duration_seconds` family.
    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP lexview_request_duration_seconds Time to answer an HTTP request, by method and status.\n\
             # TYPE lexview_request_duration_seconds histogram\n",
        );
        let map = self.0.lock().expect("latencies lock").clone();
        for ((method, status), h) in map {
            let labels = format!("method=\"{method}\",status=\"{status}\"");
            for (bound, n) in BOUNDS.iter().zip(h.buckets) {
                out.push_str(&format!(
                    "lexview_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}\n"
                ));
            }
            out.push_str(&format!(
                "lexview_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
                 lexview_request_duration_seconds_sum{{{labels}}} {}\n\
                 lexview_request_duration_seconds_count{{{labels}}} {}\n",
                h.count, h.sum, h.count
            ));
        }
    }
}

/// The method label of a request path.
fn method_of(state: &AppState, path: &str) -> String {
    match path {
        "/graphql" => "graphql".into(),
        "/_health" => "_health".into(),
        "/metrics" => "metrics".into(),
        _ => match path.strip_prefix("/xrpc/") {
            Some(nsid)
                if state.methods.get(nsid).is_some()
                    || state.generation().queries.get(nsid).is_some() =>
            {
                nsid.to_string()
            }
            _ => "other".into(),
        },
    }
}

/// The middleware that times every request.
pub async fn measure(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let state = state.pinned();
    let method = method_of(&state, req.uri().path());
    let resp = next.run(req).await;
    state.latencies.record(
        method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}
