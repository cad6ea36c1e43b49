//! The HTTP surface: XRPC, GraphQL, health and metrics, one axum router.
//!
//! Two rooms. What any lexicon gets lives here and in `repo/` (records,
//! backlinks, SQL query methods, search) and `graphql/`; what Bluesky's own
//! app needs (`app.bsky` views, gates, embeds, feeds) lives in `bsky/`,
//! which registers its XRPC methods in the generic dispatch table
//! ([`xrpc::Methods`]) and may use everything here. Nothing here names
//! `bsky`.

pub mod actors;
pub mod bsky;
pub mod cache;
mod error;
pub mod graphql;
pub mod health;
pub mod latency;
pub mod page;
pub mod params;
pub mod repo;
pub mod rows;
pub mod server;
pub mod xrpc;

use std::any::Any;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;

pub use error::XrpcError;

use crate::index::store::ReadPool;
use crate::index::writer::Positions;
use crate::lexicon::Catalog;
use crate::metrics::Metrics;

/// Everything derived from the user's folders (lexicons, query methods,
/// feeds), swapped whole when they are reloaded (SIGHUP), so that a request
/// never pairs one generation's catalog with another's methods.
pub struct Generation {
    pub catalog: Arc<Catalog>,
    pub graphql: async_graphql::dynamic::Schema,
    pub queries: repo::queries::QueryMethods,
    /// What API extensions derive from the same folders (the app.bsky
    /// room's feeds), by type.
    parts: Vec<Arc<dyn Any + Send + Sync>>,
}

impl Generation {
    pub fn new(
        catalog: Arc<Catalog>,
        graphql: async_graphql::dynamic::Schema,
        queries: repo::queries::QueryMethods,
    ) -> Generation {
        Generation {
            catalog,
            graphql,
            queries,
            parts: Vec::new(),
        }
    }

    /// Adds an extension's part (one per type).
    pub fn with_part<T: Any + Send + Sync>(mut self, part: T) -> Generation {
        self.parts.retain(|p| !p.is::<T>());
        self.parts.push(Arc::new(part));
        self
    }

    /// An extension's part, if it added one.
    pub fn part<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.parts.iter().find_map(|p| p.downcast_ref::<T>())
    }
}

/// What an API extension (the app.bsky room) shows in `/metrics`.
pub trait Extension: Send + Sync {
    /// Its view caches: (name, (hits, misses), entries held now), shown in
    /// the `lexview_view_cache_*` families.
    fn view_caches(&self) -> Vec<(&'static str, (u64, u64), usize)>;
    /// Metric families of its own, in Prometheus text.
    fn render_metrics(&self, out: &mut String);
}

/// Everything a request handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub readers: Arc<ReadPool>,
    /// The current generation, swapped whole on reload.
    pub generations: Arc<arc_swap::ArcSwap<Generation>>,
    /// The generation this request runs against ([`AppState::pinned`]).
    current: Arc<Generation>,
    pub metrics: Arc<Metrics>,
    pub positions: Arc<Positions>,
    /// Each source's connection state.
    pub links: Arc<crate::source::Links>,
    /// Committed record changes, for GraphQL subscriptions.
    pub events: graphql::Events,
    /// Full-text search (None when the server runs without it).
    pub search: Option<Arc<crate::index::search::Search>>,
    /// Verified handles by DID.
    pub handles: Arc<actors::Handles>,
    /// The XRPC methods with handlers of their own (SQL query methods are
    /// in the generation).
    pub methods: Arc<xrpc::Methods>,
    /// The API extensions, for `/metrics`.
    pub extensions: Arc<Vec<Arc<dyn Extension>>>,
    /// How long a source may stay disconnected before `/_health` says the
    /// server is degraded.
    pub max_disconnected: std::time::Duration,
    /// Request latencies, for `/metrics`.
    pub latencies: Arc<latency::Latencies>,
}

/// What [`AppState::new`] needs.
pub struct StateParts {
    pub readers: Arc<ReadPool>,
    pub generation: Generation,
    pub metrics: Arc<Metrics>,
    pub positions: Arc<Positions>,
    pub links: Arc<crate::source::Links>,
    pub events: graphql::Events,
    pub search: Option<Arc<crate::index::search::Search>>,
    pub handles: Arc<actors::Handles>,
    pub methods: xrpc::Methods,
    pub extensions: Vec<Arc<dyn Extension>>,
    pub max_disconnected: std::time::Duration,
}

impl AppState {
    pub fn new(p: StateParts) -> AppState {
        let current = Arc::new(p.generation);
        AppState {
            readers: p.readers,
            generations: Arc::new(arc_swap::ArcSwap::new(current.clone())),
            current,
            metrics: p.metrics,
            positions: p.positions,
            links: p.links,
            events: p.events,
            search: p.search,
            handles: p.handles,
            methods: Arc::new(p.methods),
            extensions: Arc::new(p.extensions),
            max_disconnected: p.max_disconnected,
            latencies: Arc::default(),
        }
    }

    /// This state for one request: the current generation, held for the
    /// whole request. Every entry point calls it first.
    pub fn pinned(&self) -> AppState {
        AppState {
            current: self.generations.load_full(),
            ..self.clone()
        }
    }

    /// Swaps in a new generation for the requests that start from now on.
    pub fn reload(&self, generation: Generation) {
        self.generations.store(Arc::new(generation));
    }

    /// The generation this request runs against.
    pub fn generation(&self) -> &Arc<Generation> {
        &self.current
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.current.catalog.clone()
    }
}

/// The largest request body.
pub const MAX_BODY: usize = 1 << 20;

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
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            latency::measure,
        ))
        .with_state(state)
        // A GraphQL query with its variables fits well within this; more
        // is refused with 413 before it is read.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        // A 501 for an unknown method is the client's business, not an
        // operator's error; store failures are logged where they happen.
        .layer(
            tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_keeps_the_generation_it_started_with() {
        fn schema() -> async_graphql::dynamic::Schema {
            let query = async_graphql::dynamic::Object::new("Query").field(
                async_graphql::dynamic::Field::new(
                    "x",
                    async_graphql::dynamic::TypeRef::named(async_graphql::dynamic::TypeRef::INT),
                    |_| {
                        async_graphql::dynamic::FieldFuture::new(async {
                            Ok(None::<async_graphql::Value>)
                        })
                    },
                ),
            );
            async_graphql::dynamic::Schema::build("Query", None, None)
                .register(query)
                .finish()
                .unwrap()
        }
        let generation = |n: usize| {
            let mut catalog = Catalog::default();
            for i in 0..n {
                catalog
                    .add_document(serde_json::json!({
                        "lexicon": 1,
                        "id": format!("test.gen.r{i}"),
                        "defs": {"main": {"type": "record", "key": "tid",
                                  "record": {"type": "object", "properties": {}}}}
                    }))
                    .unwrap();
            }
            Generation::new(Arc::new(catalog), schema(), Default::default()).with_part(n)
        };
        let dir = tempfile::tempdir().unwrap();
        let store = crate::index::store::Store::open(dir.path()).unwrap();
        let state = AppState::new(StateParts {
            readers: store.readers(),
            generation: generation(1),
            metrics: Arc::default(),
            positions: Arc::default(),
            links: Arc::default(),
            events: tokio::sync::broadcast::channel(1).0,
            search: None,
            handles: Arc::default(),
            methods: xrpc::Methods::default(),
            extensions: Vec::new(),
            max_disconnected: std::time::Duration::from_secs(300),
        });
        let request = state.pinned();
        state.reload(generation(2));
        // The request in flight sees one generation throughout...
        assert_eq!(request.catalog().records().count(), 1);
        assert_eq!(request.generation().part::<usize>(), Some(&1));
        // ...and the next request the new one, whole.
        let next = state.pinned();
        assert_eq!(next.catalog().records().count(), 2);
        assert_eq!(next.generation().part::<usize>(), Some(&2));
    }
}
