//! `GET /xrpc/{nsid}`: the method's handler from the dispatch table, or the
//! SQL query method of that name; parameters are checked against the
//! method's lexicon by each handler (`params::parse`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::{AppState, XrpcError};
use crate::metrics::Metrics;

/// What a method handler returns.
pub type MethodFuture = Pin<Box<dyn Future<Output = Result<Value, XrpcError>> + Send>>;

/// A method handler: the request's state, the method's NSID and the query
/// parameters as given.
pub type Handler =
    Arc<dyn Fn(AppState, String, Vec<(String, String)>) -> MethodFuture + Send + Sync>;

/// The XRPC methods with handlers, by NSID.
#[derive(Default, Clone)]
pub struct Methods(HashMap<&'static str, Handler>);

impl Methods {
    /// Registers `handler` for `nsid` (a later registration of the same
    /// NSID replaces the earlier one).
    pub fn add(&mut self, nsid: &'static str, handler: Handler) {
        self.0.insert(nsid, handler);
    }

    pub fn get(&self, nsid: &str) -> Option<&Handler> {
        self.0.get(nsid)
    }

    /// The NSIDs served.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.keys().copied()
    }
}

/// A [`Handler`] from an `async fn(&AppState, &str, &[(String, String)])`.
#[macro_export]
macro_rules! xrpc_handler {
    ($f:path) => {
        ::std::sync::Arc::new(
            |state: $crate::api::AppState, nsid: String, pairs: Vec<(String, String)>| {
                Box::pin(async move { $f(&state, &nsid, &pairs).await })
                    as $crate::api::xrpc::MethodFuture
            },
        ) as $crate::api::xrpc::Handler
    };
}

/// The methods every lexview serves, whatever the lexicons: repository
/// reads, Constellation's backlinks and lexview's own search.
pub fn generic_methods() -> Methods {
    use super::repo::{backlinks, records, search};
    let mut m = Methods::default();
    m.add(
        "com.atproto.repo.getRecord",
        xrpc_handler!(records::get_record),
    );
    m.add(
        "com.atproto.repo.listRecords",
        xrpc_handler!(records::list_records),
    );
    m.add(
        "blue.microcosm.links.getBacklinks",
        xrpc_handler!(backlinks::get_backlinks),
    );
    m.add(
        "blue.microcosm.links.getBacklinksCount",
        xrpc_handler!(backlinks::get_backlinks_count),
    );
    m.add(
        "blue.microcosm.links.getBacklinkDids",
        xrpc_handler!(backlinks::get_backlink_dids),
    );
    m.add(
        "dev.lexview.search.searchRecords",
        xrpc_handler!(search::search_records),
    );
    m
}

/// Dispatches a query method.
pub async fn dispatch(
    State(state): State<AppState>,
    Path(nsid): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let state = state.pinned();
    Metrics::inc(&state.metrics.xrpc_requests_total);
    let result = match state.methods.get(&nsid) {
        Some(handler) => handler(state.clone(), nsid, pairs).await,
        None => match state.generation().queries.get(&nsid) {
            Some(method) => super::repo::queries::run(&state, method, &pairs).await,
            None => Err(XrpcError::not_implemented(&nsid)),
        },
    };
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            Metrics::inc(&state.metrics.xrpc_errors_total);
            e.into_response()
        }
    }
}

/// No procedures are served: this is a read-only AppView.
pub async fn dispatch_post(State(state): State<AppState>, Path(nsid): Path<String>) -> Response {
    Metrics::inc(&state.metrics.xrpc_errors_total);
    XrpcError::not_implemented(&nsid).into_response()
}
