//! The HTTP surface: XRPC, GraphQL, health and metrics, one axum router.

pub mod backlinks;
pub mod cache;
pub mod embeds;
pub mod feeds;
pub mod gates;
pub mod graphql;
pub mod graphql_types;
pub mod health;
pub mod lookups;
pub mod params;
pub mod posts;
pub mod queries;
pub mod search;
pub mod views;
pub mod xrpc;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::index::store::{ReadPool, StoreError};
use crate::index::writer::Positions;
use crate::lexicon::Catalog;
use crate::metrics::Metrics;

/// Everything a request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub readers: Arc<ReadPool>,
    /// The catalog, query methods, feeds and GraphQL schema are each swapped
    /// whole when the lexicons are reloaded (SIGHUP).
    pub catalog: Arc<arc_swap::ArcSwap<Catalog>>,
    pub metrics: Arc<Metrics>,
    pub positions: Arc<Positions>,
    /// Each source's connection state.
    pub links: Arc<crate::source::Links>,
    pub graphql: Arc<arc_swap::ArcSwap<async_graphql::dynamic::Schema>>,
    pub queries: Arc<arc_swap::ArcSwap<queries::QueryMethods>>,
    pub feeds: Arc<arc_swap::ArcSwap<feeds::Feeds>>,
    pub profiles: Arc<views::ProfileCache>,
    /// Hot post views, reply lists and thread contexts (`cache.rs`).
    pub hot: Arc<cache::HotViews>,
    /// Committed record changes, for GraphQL subscriptions.
    pub events: graphql::Events,
    /// Full-text search (None when the server runs without it).
    pub search: Option<Arc<crate::search::Search>>,
    /// Where embed views point for images and videos.
    pub media: Arc<embeds::MediaUrls>,
    /// Which posts may have gates and which accounts may block: lookups
    /// run only on a hit.
    pub gates: Arc<gates::GateFilter>,
    /// Point lookups shared by concurrent requests.
    pub lookups: Arc<lookups::Lookups>,
}

impl AppState {
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }
    pub fn queries(&self) -> Arc<queries::QueryMethods> {
        self.queries.load_full()
    }
    pub fn feeds(&self) -> Arc<feeds::Feeds> {
        self.feeds.load_full()
    }
}

/// The router, separate from `main` so tests can drive it in-process.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/xrpc/{nsid}",
            get(xrpc::dispatch).post(xrpc::dispatch_post),
        )
        .route(
            "/graphql",
            get(graphql::get_or_subscribe).post(graphql::post),
        )
        .route("/_health", get(health::health))
        .route("/metrics", get(health::metrics))
        .with_state(state)
        // A 501 for an unknown method is the client's business, not an
        // operator's error; store failures are logged where they happen.
        .layer(
            tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
}

/// An XRPC error: atproto's envelope `{"error", "message"}` with a status.
#[derive(Debug)]
pub struct XrpcError {
    pub status: StatusCode,
    pub error: &'static str,
    pub message: String,
}

impl XrpcError {
    pub fn invalid_request(message: impl Into<String>) -> XrpcError {
        XrpcError {
            status: StatusCode::BAD_REQUEST,
            error: "InvalidRequest",
            message: message.into(),
        }
    }
    pub fn named(error: &'static str, message: impl Into<String>) -> XrpcError {
        XrpcError {
            status: StatusCode::BAD_REQUEST,
            error,
            message: message.into(),
        }
    }
    pub fn not_implemented(nsid: &str) -> XrpcError {
        XrpcError {
            status: StatusCode::NOT_IMPLEMENTED,
            error: "MethodNotImplemented",
            message: format!("Method Not Implemented: {nsid}"),
        }
    }
    pub fn internal(message: impl Into<String>) -> XrpcError {
        XrpcError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "InternalServerError",
            message: message.into(),
        }
    }
}

impl From<StoreError> for XrpcError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error while serving");
        XrpcError::internal("Internal Server Error")
    }
}

impl IntoResponse for XrpcError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.error, "message": self.message })),
        )
            .into_response()
    }
}
