//! GraphQL over HTTP: `POST /graphql`, `GET /graphql` (a query in the URL,
//! GraphiQL for a browser, or a WebSocket upgrade for subscriptions).

use super::*;

/// `POST /graphql`.
pub async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: async_graphql_axum::GraphQLRequest,
) -> Response {
    let state = state.pinned();
    Metrics::inc(&state.metrics.graphql_requests_total);
    execute(&state, &headers, req.into_inner()).await
}

/// Executes a request and shapes the HTTP answer per GraphQL-over-HTTP: a
/// request that could not run at all (syntax or validation error) is a 400
/// when the client accepts `application/graphql-response+json`.
pub(super) async fn execute(
    state: &AppState,
    headers: &HeaderMap,
    req: async_graphql::Request,
) -> Response {
    let schema = state.generation().graphql.clone();
    // The limits first: nothing parses a request before they are checked.
    if let Err(why) = limits::check(&req) {
        return shape(headers, limits::refused(why));
    }
    let order = selection_order(&req);
    let mut resp = match tokio::time::timeout(QUERY_TIMEOUT, schema.execute(req)).await {
        Ok(resp) => resp,
        Err(_) => async_graphql::Response::from_errors(vec![async_graphql::ServerError::new(
            format!(
                "the query took longer than {} s and was stopped",
                QUERY_TIMEOUT.as_secs()
            ),
            None,
        )]),
    };
    if let Some(order) = order {
        resp.data = reorder(std::mem::take(&mut resp.data), &order);
    }
    shape(headers, resp)
}

/// The HTTP answer of a GraphQL response, per GraphQL-over-HTTP.
fn shape(headers: &HeaderMap, resp: async_graphql::Response) -> Response {
    let modern = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/graphql-response+json"));
    let request_error = !resp.errors.is_empty() && matches!(resp.data, GqlValue::Null);
    let mut body = serde_json::to_value(&resp).unwrap_or_default();
    if request_error {
        // A request error has no "data" entry at all (GraphQL over HTTP).
        if let Some(o) = body.as_object_mut() {
            o.remove("data");
        }
    }
    let (status, content_type) = match (modern, request_error) {
        (true, true) => (
            axum::http::StatusCode::BAD_REQUEST,
            "application/graphql-response+json",
        ),
        (true, false) => (
            axum::http::StatusCode::OK,
            "application/graphql-response+json",
        ),
        (false, _) => (axum::http::StatusCode::OK, "application/json"),
    };
    (
        status,
        [(header::CONTENT_TYPE, content_type)],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response()
}

/// The response keys of each selection set, in query order. async-graphql
/// resolves a container's fields concurrently and inserts them in completion
/// order, but GraphQL answers must follow the selection order.
#[derive(Debug, Default)]
pub(super) struct KeyOrder {
    pub(super) keys: Vec<String>,
    pub(super) children: std::collections::HashMap<String, KeyOrder>,
}

pub(super) fn selection_order(req: &async_graphql::Request) -> Option<KeyOrder> {
    use async_graphql::parser::types::{
        DocumentOperations, ExecutableDocument, Selection, SelectionSet,
    };
    let doc = async_graphql::parser::parse_query(&req.query).ok()?;
    let op = match (&doc.operations, &req.operation_name) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name.as_str())?,
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next()?,
        _ => return None,
    };
    fn walk(doc: &ExecutableDocument, set: &SelectionSet, out: &mut KeyOrder, depth: usize) {
        if depth > 32 {
            return;
        }
        for sel in &set.items {
            match &sel.node {
                Selection::Field(f) => {
                    let key = f.node.response_key().node.to_string();
                    if !out.keys.contains(&key) {
                        out.keys.push(key.clone());
                    }
                    walk(
                        doc,
                        &f.node.selection_set.node,
                        out.children.entry(key).or_default(),
                        depth + 1,
                    );
                }
                Selection::InlineFragment(fr) => {
                    walk(doc, &fr.node.selection_set.node, out, depth + 1)
                }
                Selection::FragmentSpread(sp) => {
                    if let Some(fr) = doc.fragments.get(&sp.node.fragment_name.node) {
                        walk(doc, &fr.node.selection_set.node, out, depth + 1);
                    }
                }
            }
        }
    }
    let mut order = KeyOrder::default();
    walk(&doc, &op.node.selection_set.node, &mut order, 0);
    Some(order)
}

pub(super) fn reorder(value: GqlValue, order: &KeyOrder) -> GqlValue {
    match value {
        GqlValue::Object(mut map) => {
            let mut out = async_graphql::indexmap::IndexMap::with_capacity(map.len());
            for key in &order.keys {
                if let Some((k, v)) = map.shift_remove_entry(key.as_str()) {
                    let v = match order.children.get(key) {
                        Some(child) => reorder(v, child),
                        None => v,
                    };
                    out.insert(k, v);
                }
            }
            out.extend(map);
            GqlValue::Object(out)
        }
        GqlValue::List(items) => {
            GqlValue::List(items.into_iter().map(|v| reorder(v, order)).collect())
        }
        other => other,
    }
}

/// `GET /graphql`: GraphiQL for a browser, otherwise a query in the URL.
/// `GET /graphql`: a WebSocket upgrade serves subscriptions (graphql-ws and
/// the older subscriptions-transport-ws); otherwise a query in the URL, or
/// GraphiQL for a browser.
pub async fn get_or_subscribe(
    State(state): State<AppState>,
    req: axum::extract::Request,
) -> Response {
    use axum::extract::{FromRequest, FromRequestParts, WebSocketUpgrade};
    let state = state.pinned();
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade {
        let (mut parts, _) = req.into_parts();
        let protocol =
            match async_graphql_axum::GraphQLProtocol::from_request_parts(&mut parts, &state).await
            {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
        let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
            Ok(ws) => ws,
            Err(e) => return e.into_response(),
        };
        let schema = limits::Limited(state.generation().graphql.clone());
        return ws
            .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
            .on_upgrade(move |stream| {
                async_graphql_axum::GraphQLWebSocket::new(stream, schema, protocol).serve()
            })
            .into_response();
    }
    let headers = req.headers().clone();
    let gql = async_graphql_axum::GraphQLRequest::from_request(req, &state).await;
    graphiql_or_get(State(state), headers, gql).await
}

pub async fn graphiql_or_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Result<
        async_graphql_axum::GraphQLRequest,
        async_graphql_axum::rejection::GraphQLRejection,
    >,
) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    match req {
        Ok(req) if !wants_html => {
            let req = req.into_inner();
            if req.query.trim_start().starts_with("mutation") {
                return (
                    axum::http::StatusCode::METHOD_NOT_ALLOWED,
                    "mutations need POST",
                )
                    .into_response();
            }
            Metrics::inc(&state.metrics.graphql_requests_total);
            execute(&state, &headers, req).await
        }
        _ => Html(
            async_graphql::http::GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql")
                .finish(),
        )
        .into_response(),
    }
}
