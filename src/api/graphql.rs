//! GraphQL generated from the loaded lexicons (async-graphql's dynamic schema).
//! Per record collection: an object type with the lexicon's fields, a list
//! connection and a by-URI lookup. Names come from the full NSID
//! (`CommunityLexiconCalendarEvent`, `communityLexiconCalendarEvent`), so two
//! lexicons that share a last segment never collide.

use std::sync::Arc;

use async_graphql::dynamic::{
    Field as GqlField, FieldFuture, FieldValue, InputValue, Object, ResolverContext, Scalar,
    Schema, SchemaError, TypeRef,
};
use async_graphql::Value as GqlValue;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use duckdb::params;
use serde_json::Value;

use super::AppState;
use crate::index::store::ReadPool;
use crate::lexicon::{Catalog, Field};
use crate::metrics::Metrics;

/// How long one GraphQL request may run.
pub const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest page a connection returns.
pub const MAX_PAGE: i64 = 100;

/// One stored record, as resolvers see it.
#[derive(Debug, Clone)]
pub struct RecordRow {
    pub uri: String,
    pub cid: String,
    pub did: String,
    pub rkey: String,
    pub indexed_at: String,
    pub record: Value,
    /// The author's handle, when known.
    pub handle: Option<String>,
    /// Backlink counts of this record: (source collection, path, n).
    pub counts: Arc<Vec<(String, String, i64)>>,
}

/// The author of a record, as GraphQL's `Actor`.
struct Actor {
    did: String,
    handle: Option<String>,
}

struct Page {
    rows: Vec<RecordRow>,
    total: i64,
    has_next: bool,
}

/// `app.bsky.feed.post` -> `AppBskyFeedPost`.
pub fn type_name(nsid: &str) -> String {
    nsid.split('.')
        .map(|seg| {
            let clean: String = seg
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let mut chars = clean.chars();
            match chars.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// `app.bsky.feed.post` -> `appBskyFeedPost`.
pub fn field_name(nsid: &str) -> String {
    let t = type_name(nsid);
    let mut chars = t.chars();
    match chars.next() {
        Some(f) => f.to_ascii_lowercase().to_string() + chars.as_str(),
        None => t,
    }
}

fn gql_name(name: &str) -> Option<String> {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let first = clean.chars().next()?;
    if first.is_ascii_digit() || clean.starts_with("__") {
        return None;
    }
    Some(clean)
}

fn json_value(v: &Value) -> GqlValue {
    GqlValue::from_json(v.clone()).unwrap_or(GqlValue::Null)
}

fn row<'a>(ctx: &'a ResolverContext<'a>) -> async_graphql::Result<&'a RecordRow> {
    ctx.parent_value.try_downcast_ref::<RecordRow>()
}

/// Builds the schema for a catalog.
pub fn build_schema(catalog: &Catalog, readers: Arc<ReadPool>) -> Result<Schema, SchemaError> {
    let mut query = Object::new("Query")
        .description("Records indexed by lexview, one entry point per record lexicon.");
    let page_info = Object::new("PageInfo")
        .field(GqlField::new(
            "hasNextPage",
            TypeRef::named_nn(TypeRef::BOOLEAN),
            |ctx| {
                FieldFuture::new(async move {
                    let p = ctx
                        .parent_value
                        .try_downcast_ref::<(bool, Option<String>)>()?;
                    Ok(Some(FieldValue::value(p.0)))
                })
            },
        ))
        .field(GqlField::new(
            "endCursor",
            TypeRef::named(TypeRef::STRING),
            |ctx| {
                FieldFuture::new(async move {
                    let p = ctx
                        .parent_value
                        .try_downcast_ref::<(bool, Option<String>)>()?;
                    Ok(p.1.clone().map(FieldValue::value))
                })
            },
        ));
    let mut builder_types: Vec<Object> = vec![page_info];
    let mut count = 0;
    for rt in catalog.records() {
        let Some(schema) = catalog.record_schema(&rt.nsid) else {
            continue;
        };
        let tname = type_name(&rt.nsid);
        let mut obj = Object::new(&tname).description(
            rt.description
                .clone()
                .unwrap_or_else(|| format!("A {} record.", rt.nsid)),
        );
        for (fname, getter) in [
            (
                "uri",
                (|r: &RecordRow| r.uri.clone()) as fn(&RecordRow) -> String,
            ),
            ("cid", |r| r.cid.clone()),
            ("did", |r| r.did.clone()),
            ("rkey", |r| r.rkey.clone()),
            ("indexedAt", |r| r.indexed_at.clone()),
        ] {
            obj = obj.field(GqlField::new(
                fname,
                TypeRef::named_nn(TypeRef::STRING),
                move |ctx| {
                    FieldFuture::new(async move { Ok(Some(FieldValue::value(getter(row(&ctx)?)))) })
                },
            ));
        }
        obj = obj.field(GqlField::new("record", TypeRef::named_nn("JSON"), |ctx| {
            FieldFuture::new(
                async move { Ok(Some(FieldValue::value(json_value(&row(&ctx)?.record)))) },
            )
        }));
        obj = obj.field(GqlField::new("author", TypeRef::named_nn("Actor"), |ctx| {
            FieldFuture::new(async move {
                let r = row(&ctx)?;
                Ok(Some(FieldValue::owned_any(Actor {
                    did: r.did.clone(),
                    handle: r.handle.clone(),
                })))
            })
        }));
        obj = obj.field(
            GqlField::new(
                "backlinkCount",
                TypeRef::named_nn(TypeRef::INT),
                |ctx| {
                    FieldFuture::new(async move {
                        let source = ctx.args.try_get("source")?.string()?.to_string();
                        let Some((collection, path)) = source.split_once(':') else {
                            return Err("source must be 'collection:path', e.g. 'app.bsky.feed.like:subject.uri'".into());
                        };
                        let path = format!(".{path}");
                        let n: i64 = row(&ctx)?
                            .counts
                            .iter()
                            .filter(|(c, p, _)| c == collection && *p == path)
                            .map(|(_, _, n)| n)
                            .sum();
                        Ok(Some(FieldValue::value(n)))
                    })
                },
            )
            .argument(InputValue::new("source", TypeRef::named_nn(TypeRef::STRING)))
            .description("Records linking here from `collection:path` (Constellation's source syntax), e.g. likes of a post: \"app.bsky.feed.like:subject.uri\"."),
        );
        obj = obj.field(
            GqlField::new(
                "backlinkCounts",
                TypeRef::named_nn_list_nn("BacklinkCount"),
                |ctx| {
                    FieldFuture::new(async move {
                        let counts = row(&ctx)?.counts.clone();
                        Ok(Some(FieldValue::list(
                            (0..counts.len()).map(|i| FieldValue::owned_any((counts.clone(), i))),
                        )))
                    })
                },
            )
            .description("Every (collection, path) linking here, with its count."),
        );
        let reserved = [
            "uri",
            "cid",
            "did",
            "rkey",
            "indexedAt",
            "record",
            "author",
            "backlinkCount",
            "backlinkCounts",
        ];
        for (prop, field) in &schema.properties {
            let Some(gname) = gql_name(prop) else {
                continue;
            };
            if reserved.contains(&gname.as_str()) {
                continue;
            }
            let ty = match field {
                Field::String(_) => TypeRef::STRING,
                Field::Integer { .. } => TypeRef::INT,
                Field::Boolean { .. } => TypeRef::BOOLEAN,
                _ => "JSON",
            };
            let required = schema.required.contains(prop) && !schema.nullable.contains(prop);
            let tref = if required {
                TypeRef::named_nn(ty)
            } else {
                TypeRef::named(ty)
            };
            let key = prop.clone();
            obj = obj.field(GqlField::new(gname, tref, move |ctx| {
                let key = key.clone();
                FieldFuture::new(async move {
                    Ok(row(&ctx)?
                        .record
                        .get(&key)
                        .filter(|v| !v.is_null())
                        .map(|v| FieldValue::value(json_value(v))))
                })
            }));
        }
        let conn = Object::new(format!("{tname}Connection"))
            .field(GqlField::new(
                "nodes",
                TypeRef::named_nn_list_nn(&tname),
                |ctx| {
                    FieldFuture::new(async move {
                        let page = ctx.parent_value.try_downcast_ref::<Page>()?;
                        Ok(Some(FieldValue::list(
                            page.rows.iter().cloned().map(FieldValue::owned_any),
                        )))
                    })
                },
            ))
            .field(GqlField::new(
                "totalCount",
                TypeRef::named_nn(TypeRef::INT),
                |ctx| {
                    FieldFuture::new(async move {
                        Ok(Some(FieldValue::value(
                            ctx.parent_value.try_downcast_ref::<Page>()?.total,
                        )))
                    })
                },
            ))
            .field(GqlField::new(
                "pageInfo",
                TypeRef::named_nn("PageInfo"),
                |ctx| {
                    FieldFuture::new(async move {
                        let page = ctx.parent_value.try_downcast_ref::<Page>()?;
                        let end = page.rows.last().map(|r| r.uri.clone());
                        Ok(Some(FieldValue::owned_any((page.has_next, end))))
                    })
                },
            ));
        let collection = rt.nsid.clone();
        let pool = readers.clone();
        query = query.field(
            GqlField::new(
                field_name(&rt.nsid),
                TypeRef::named_nn(format!("{tname}Connection")),
                move |ctx| {
                    let (collection, pool) = (collection.clone(), pool.clone());
                    FieldFuture::new(async move {
                        let first = ctx
                            .args
                            .get("first")
                            .map(|v| v.i64())
                            .transpose()?
                            .unwrap_or(20);
                        if !(0..=MAX_PAGE).contains(&first) {
                            return Err(format!("first must be between 0 and {MAX_PAGE}").into());
                        }
                        let after = ctx
                            .args
                            .get("after")
                            .map(|v| v.string().map(str::to_string))
                            .transpose()?;
                        let did = ctx
                            .args
                            .get("did")
                            .map(|v| v.string().map(str::to_string))
                            .transpose()?;
                        let page = fetch_page(&pool, collection, did, after, first).await?;
                        Ok(Some(FieldValue::owned_any(page)))
                    })
                },
            )
            .argument(
                InputValue::new("first", TypeRef::named(TypeRef::INT))
                    .description("Page size, at most 100 (default 20)."),
            )
            .argument(
                InputValue::new("after", TypeRef::named(TypeRef::STRING))
                    .description("endCursor of the previous page."),
            )
            .argument(
                InputValue::new("did", TypeRef::named(TypeRef::STRING))
                    .description("Only records of this author DID."),
            )
            .description(format!("{} records, ordered by URI.", rt.nsid)),
        );
        let pool = readers.clone();
        query = query.field(
            GqlField::new(
                format!("{}ByUri", field_name(&rt.nsid)),
                TypeRef::named(&tname),
                move |ctx| {
                    let pool = pool.clone();
                    FieldFuture::new(async move {
                        let uri = ctx.args.try_get("uri")?.string()?.to_string();
                        Ok(fetch_one(&pool, uri).await?.map(FieldValue::owned_any))
                    })
                },
            )
            .argument(InputValue::new("uri", TypeRef::named_nn(TypeRef::STRING))),
        );
        builder_types.push(obj);
        builder_types.push(conn);
        count += 1;
    }
    if count == 0 {
        query = query.field(GqlField::new(
            "recordTypes",
            TypeRef::named_nn(TypeRef::INT),
            |_| FieldFuture::new(async { Ok(Some(FieldValue::value(0))) }),
        ));
    }
    let actor = Object::new("Actor")
        .description("An account: its DID and, when known, its handle.")
        .field(GqlField::new(
            "did",
            TypeRef::named_nn(TypeRef::STRING),
            |ctx| {
                FieldFuture::new(async move {
                    Ok(Some(FieldValue::value(
                        ctx.parent_value.try_downcast_ref::<Actor>()?.did.clone(),
                    )))
                })
            },
        ))
        .field(GqlField::new(
            "handle",
            TypeRef::named(TypeRef::STRING),
            |ctx| {
                FieldFuture::new(async move {
                    Ok(ctx
                        .parent_value
                        .try_downcast_ref::<Actor>()?
                        .handle
                        .clone()
                        .map(FieldValue::value))
                })
            },
        ));
    type CountRef = (Arc<Vec<(String, String, i64)>>, usize);
    let backlink_count = Object::new("BacklinkCount")
        .field(GqlField::new(
            "collection",
            TypeRef::named_nn(TypeRef::STRING),
            |ctx| {
                FieldFuture::new(async move {
                    let (v, i) = ctx.parent_value.try_downcast_ref::<CountRef>()?;
                    Ok(Some(FieldValue::value(v[*i].0.clone())))
                })
            },
        ))
        .field(GqlField::new(
            "path",
            TypeRef::named_nn(TypeRef::STRING),
            |ctx| {
                FieldFuture::new(async move {
                    let (v, i) = ctx.parent_value.try_downcast_ref::<CountRef>()?;
                    Ok(Some(FieldValue::value(v[*i].1.clone())))
                })
            },
        ))
        .field(GqlField::new(
            "count",
            TypeRef::named_nn(TypeRef::INT),
            |ctx| {
                FieldFuture::new(async move {
                    let (v, i) = ctx.parent_value.try_downcast_ref::<CountRef>()?;
                    Ok(Some(FieldValue::value(v[*i].2)))
                })
            },
        ));
    let mut builder = Schema::build("Query", None, None)
        .register(Scalar::new("JSON").description("Any value of the atproto data model, as JSON."))
        .register(actor)
        .register(backlink_count)
        .limit_depth(16)
        .limit_complexity(10_000);
    for t in builder_types {
        builder = builder.register(t);
    }
    builder.register(query).data(readers).finish()
}

const RECORD_COLUMNS: &str =
    "r.uri, r.cid, r.did, r.rkey, strftime(r.indexed_at, '%Y-%m-%dT%H:%M:%S.%fZ'),
     r.record::VARCHAR, (SELECT handle FROM actors a WHERE a.did = r.did)";

fn read_row(r: &duckdb::Row) -> duckdb::Result<RecordRow> {
    let record: String = r.get(5)?;
    Ok(RecordRow {
        uri: r.get(0)?,
        cid: r.get(1)?,
        did: r.get(2)?,
        rkey: r.get(3)?,
        indexed_at: r.get(4)?,
        record: serde_json::from_str(&record).unwrap_or(Value::Null),
        handle: r.get(6)?,
        counts: Arc::default(),
    })
}

/// Fills in the backlink counts of `rows` with one query.
fn attach_counts(c: &duckdb::Connection, rows: &mut [RecordRow]) -> duckdb::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    // AT-URIs contain no spaces.
    let list = rows
        .iter()
        .map(|r| r.uri.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let mut stmt = c.prepare(
        "SELECT target, collection, path, n FROM link_counts
         WHERE target IN (SELECT unnest(string_split(?, ' '))) ORDER BY collection, path",
    )?;
    let mut by_target: std::collections::HashMap<String, Vec<(String, String, i64)>> =
        std::collections::HashMap::new();
    for r in stmt.query_map(params![list], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })? {
        let (target, collection, path, n) = r?;
        by_target
            .entry(target)
            .or_default()
            .push((collection, path, n));
    }
    for row in rows {
        if let Some(v) = by_target.remove(&row.uri) {
            row.counts = Arc::new(v);
        }
    }
    Ok(())
}

async fn fetch_page(
    pool: &Arc<ReadPool>,
    collection: String,
    did: Option<String>,
    after: Option<String>,
    first: i64,
) -> async_graphql::Result<Page> {
    let page = pool
        .with(move |c| {
            let total: i64 = c.query_row(
                "SELECT count(*) FROM records WHERE collection = ? AND (?::VARCHAR IS NULL OR did = ?)",
                params![collection, did, did],
                |r| r.get(0),
            )?;
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM records r WHERE collection = ? AND (?::VARCHAR IS NULL OR did = ?)
                 AND (?::VARCHAR IS NULL OR uri > ?) ORDER BY uri LIMIT ?"
            );
            let mut stmt = c.prepare(&sql)?;
            let mut rows = stmt
                .query_map(params![collection, did, did, after, after, first + 1], read_row)?
                .collect::<duckdb::Result<Vec<_>>>()?;
            let has_next = rows.len() as i64 > first;
            rows.truncate(first as usize);
            attach_counts(c, &mut rows)?;
            Ok(Page { rows, total, has_next })
        })
        .await
        .map_err(|e| async_graphql::Error::new(e.to_string()))?;
    Ok(page)
}

async fn fetch_one(pool: &Arc<ReadPool>, uri: String) -> async_graphql::Result<Option<RecordRow>> {
    pool.with(move |c| {
        let mut stmt = c.prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM records r WHERE uri = ?"
        ))?;
        let mut rows = stmt
            .query_map(params![uri], read_row)?
            .collect::<duckdb::Result<Vec<_>>>()?;
        attach_counts(c, &mut rows)?;
        Ok(rows.pop())
    })
    .await
    .map_err(|e| async_graphql::Error::new(e.to_string()))
}

/// `POST /graphql`.
pub async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: async_graphql_axum::GraphQLRequest,
) -> Response {
    Metrics::inc(&state.metrics.graphql_requests_total);
    execute(&state, &headers, req.into_inner()).await
}

/// Executes a request and shapes the HTTP answer per GraphQL-over-HTTP: a
/// request that could not run at all (syntax or validation error) is a 400
/// when the client accepts `application/graphql-response+json`.
async fn execute(state: &AppState, headers: &HeaderMap, req: async_graphql::Request) -> Response {
    let schema = state.graphql.load_full();
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
struct KeyOrder {
    keys: Vec<String>,
    children: std::collections::HashMap<String, KeyOrder>,
}

fn selection_order(req: &async_graphql::Request) -> Option<KeyOrder> {
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

fn reorder(value: GqlValue, order: &KeyOrder) -> GqlValue {
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
                .finish(),
        )
        .into_response(),
    }
}
