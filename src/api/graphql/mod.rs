//! GraphQL generated from the loaded lexicons (async-graphql's dynamic schema).
//! Per record collection: an object type with the lexicon's fields, a list
//! connection and a by-URI lookup. Names come from the full NSID
//! (`CommunityLexiconCalendarEvent`, `communityLexiconCalendarEvent`), so two
//! lexicons that share a last segment never collide.

mod http;
mod joins;
pub mod limits;
mod query;
mod search;
mod subscriptions;
pub mod types;

pub use http::{get_or_subscribe, graphiql_or_get, post};
use joins::*;
use query::*;
use search::*;
use subscriptions::*;
pub use subscriptions::{record_events, EventKind, Events, RecordEvent};

use std::sync::Arc;

use async_graphql::dataloader::DataLoader;
use async_graphql::dynamic::{
    Enum, EnumItem, Field as GqlField, FieldFuture, FieldValue, InputObject, InputValue, Object,
    ResolverContext, Scalar, Schema, SchemaError, Subscription, SubscriptionField,
    SubscriptionFieldFuture, TypeRef,
};
use async_graphql::Value as GqlValue;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use duckdb::params;
use futures::StreamExt;
use serde_json::Value;

use crate::api::rows::{attach_handles, read_row, records_by_uri, RecordRow, RECORD_COLUMNS};
use crate::api::AppState;
use crate::index::store::ReadPool;
use crate::lexicon::{Catalog, Field};
use crate::metrics::Metrics;

/// How long one GraphQL request may run.
pub const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest page a connection returns.
pub const MAX_PAGE: i64 = 100;

/// A store failure while resolving a field: logged with its cause; the
/// client sees the class XRPC answers with (`InternalServerError`), never
/// the store's own text.
fn store_error(e: crate::index::store::StoreError) -> async_graphql::Error {
    tracing::error!(error = %e, "store error while resolving a GraphQL field");
    coded("Internal Server Error", "InternalServerError")
}

/// A data loader's store failure: logged here; what the loader hands on.
fn loader_error(e: crate::index::store::StoreError) -> Arc<String> {
    tracing::error!(error = %e, "store error while loading GraphQL fields");
    Arc::new("Internal Server Error".to_string())
}

/// The field error of a data loader's failure ([`loader_error`]).
fn loaded_error(_: Arc<String>) -> async_graphql::Error {
    coded("Internal Server Error", "InternalServerError")
}

/// The client's mistake, in XRPC's class (`InvalidRequest`).
fn bad_request(message: &str) -> async_graphql::Error {
    coded(message, "InvalidRequest")
}

/// An error with `extensions.code`, the XRPC error name of its class.
fn coded(message: &str, code: &'static str) -> async_graphql::Error {
    use async_graphql::ErrorExtensions;
    async_graphql::Error::new(message).extend_with(|_, ext| ext.set("code", code))
}

/// The author of a record, as GraphQL's `Actor`.
struct Actor {
    did: String,
    handle: Option<String>,
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

pub(crate) fn gql_name(name: &str) -> Option<String> {
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

/// A field read from a parent value of type `T` by `get` (None is null).
fn field_of<T: Send + Sync + 'static>(
    name: &str,
    ty: TypeRef,
    get: fn(&T) -> Option<FieldValue<'static>>,
) -> GqlField {
    GqlField::new(name, ty, move |ctx| {
        FieldFuture::new(async move { Ok(get(ctx.parent_value.try_downcast_ref::<T>()?)) })
    })
}

/// `StringFilter` / `IntFilter`: comparisons on one field, all of which must hold.
fn filter_input(name: &str, ty: &str, strings: bool) -> InputObject {
    let mut o = InputObject::new(name);
    for op in ["eq", "gt", "gte", "lt", "lte"] {
        o = o.field(InputValue::new(op, TypeRef::named(ty)));
    }
    o = o.field(InputValue::new("in", TypeRef::named_nn_list(ty)));
    if strings {
        o = o.field(
            InputValue::new("contains", TypeRef::named(TypeRef::STRING))
                .description("Substring match."),
        );
    }
    o
}

/// What one record type contributes to the schema.
struct RecordType {
    object: Object,
    connection: Object,
    /// Its root query fields: the connection, aggregates, by URI.
    query_fields: Vec<GqlField>,
    subscriptions: Vec<SubscriptionField>,
    where_input: InputObject,
    sort_enum: Enum,
    source: JoinSource,
}

/// Builds the GraphQL schema of `catalog`'s record types: per type an
/// object, a connection with filters and sorts, aggregates, a by-URI
/// lookup, subscriptions and reverse joins; `search` when the server has a
/// search index.
pub fn build_schema(
    catalog: &Catalog,
    readers: Arc<ReadPool>,
    events: Events,
    search: Option<Arc<crate::index::search::Search>>,
) -> Result<Schema, SchemaError> {
    let mut query = Object::new("Query")
        .description("Records indexed by lexview, one entry point per record lexicon.");
    let mut nested = types::Nested::new(catalog, catalog.records().map(|rt| type_name(&rt.nsid)));
    let mut objects = vec![page_info_type()];
    let (mut inputs, mut enums, mut subscriptions) = (Vec::new(), Vec::new(), Vec::new());
    // Per record type, what reverse joins need: its connection's type and
    // filters, and the paths at which its records link to records or DIDs.
    let mut sources: Vec<JoinSource> = Vec::new();
    let mut record_objects: Vec<Object> = Vec::new();
    for rt in catalog.records() {
        let Some(schema) = catalog.record_schema(&rt.nsid) else {
            continue;
        };
        let t = record_type(catalog, rt, schema, &mut nested, &readers, &events);
        for f in t.query_fields {
            query = query.field(f);
        }
        subscriptions.extend(t.subscriptions);
        inputs.push(t.where_input);
        enums.push(t.sort_enum);
        sources.push(t.source);
        record_objects.push(t.object);
        objects.push(t.connection);
    }
    if record_objects.is_empty() {
        query = query.field(GqlField::new(
            "recordTypes",
            TypeRef::named_nn(TypeRef::INT),
            |_| FieldFuture::new(async { Ok(Some(FieldValue::value(0))) }),
        ));
    }
    for obj in record_objects {
        objects.push(add_reverse_joins(obj, &sources, &readers, false));
    }
    let subscription_root = (!subscriptions.is_empty()).then_some("Subscription");
    let mut builder = register_shared(
        Schema::build("Query", None, subscription_root),
        &sources,
        &readers,
    )
    .limit_depth(16)
    .limit_complexity(10_000)
    .limit_recursive_depth(limits::MAX_NESTING);
    for t in objects {
        builder = builder.register(t);
    }
    for t in inputs {
        builder = builder.register(t);
    }
    if let Some(any) = nested.any_record() {
        builder = builder.register(any);
        if let Some(search) = search {
            let (field, types) = search_field(search);
            query = query.field(field);
            for t in types {
                builder = builder.register(t);
            }
        }
    }
    for t in nested.objects {
        builder = builder.register(t);
    }
    for t in nested.unions {
        builder = builder.register(t);
    }
    if !subscriptions.is_empty() {
        builder = register_subscriptions(builder, subscriptions);
    }
    for t in enums {
        builder = builder.register(t);
    }
    let counts = DataLoader::new(ActorCounts(readers.clone()), tokio::spawn);
    let connections = DataLoader::new(Connections(readers.clone()), tokio::spawn);
    let targets = DataLoader::new(TargetRows(readers.clone()), tokio::spawn);
    builder
        .register(query)
        .data(readers)
        .data(counts)
        .data(connections)
        .data(targets)
        .finish()
}

/// One record type's part of the schema.
fn record_type(
    catalog: &Catalog,
    rt: &crate::lexicon::RecordType,
    schema: &crate::lexicon::ObjectSchema,
    nested: &mut types::Nested<'_>,
    readers: &Arc<ReadPool>,
    events: &Events,
) -> RecordType {
    let tname = type_name(&rt.nsid);
    let (object, scalar_fields) =
        property_fields(record_object(rt, &tname), schema, &tname, nested);
    let fields = Arc::new(scalar_fields);
    let query_fields = vec![
        connection_field(
            field_name(&rt.nsid),
            &tname,
            rt.nsid.clone(),
            readers.clone(),
            fields.clone(),
            Join::None,
        )
        .description(format!("{} records.", rt.nsid)),
        aggregate_field(rt, &tname, readers, &fields),
        by_uri_field(rt, &tname, readers),
    ];
    let (where_input, sort_enum) = filters(&tname, &fields);
    RecordType {
        object,
        connection: connection_object(&tname),
        query_fields,
        subscriptions: subscription_fields(&rt.nsid, &tname, events, &fields),
        where_input,
        sort_enum,
        source: JoinSource {
            nsid: rt.nsid.clone(),
            tname: tname.clone(),
            fields: fields.clone(),
            paths: link_paths(catalog, schema),
        },
    }
}

/// Relay's `PageInfo`.
fn page_info_type() -> Object {
    let string = || TypeRef::named(TypeRef::STRING);
    Object::new("PageInfo")
        .field(field_of::<PageInfo>(
            "hasNextPage",
            TypeRef::named_nn(TypeRef::BOOLEAN),
            |p| Some(FieldValue::value(p.has_next)),
        ))
        .field(field_of::<PageInfo>(
            "hasPreviousPage",
            TypeRef::named_nn(TypeRef::BOOLEAN),
            |p| Some(FieldValue::value(p.has_previous)),
        ))
        .field(field_of::<PageInfo>("startCursor", string(), |p| {
            p.start_cursor.clone().map(FieldValue::value)
        }))
        .field(field_of::<PageInfo>("endCursor", string(), |p| {
            p.end_cursor.clone().map(FieldValue::value)
        }))
}

/// A record type's object with the fields every record has: its URI,
/// CID, author, rkey, index time, the record as JSON, and backlink counts.
fn record_object(rt: &crate::lexicon::RecordType, tname: &str) -> Object {
    let mut obj = Object::new(tname).description(
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
        FieldFuture::new(async move { Ok(Some(FieldValue::value(json_value(&row(&ctx)?.record)))) })
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
    obj
}

/// Adds a field per lexicon property to `obj` (scalars as GraphQL scalars,
/// objects, arrays, unions and blobs typed from the lexicon), and returns
/// the scalar properties that filters, sorts and aggregates may name.
fn property_fields(
    mut obj: Object,
    schema: &crate::lexicon::ObjectSchema,
    tname: &str,
    nested: &mut types::Nested<'_>,
) -> (Object, Vec<(String, String, Kind)>) {
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
    let mut scalar_fields: Vec<(String, String, Kind)> = Vec::new();
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
        let kind = match field {
            Field::String(s) if s.format == Some(crate::syntax::Format::Datetime) => {
                Some(Kind::Datetime)
            }
            Field::String(_) => Some(Kind::Str),
            Field::Integer { .. } => Some(Kind::Int),
            Field::Boolean { .. } => Some(Kind::Bool),
            _ => None,
        };
        // Only names that need no escaping reach the SQL (see field_expr).
        if let (Some(kind), true) = (kind, gname == *prop) {
            scalar_fields.push((gname.clone(), prop.clone(), kind));
        }
        let required = schema.required.contains(prop) && !schema.nullable.contains(prop);
        let key = prop.clone();
        if kind.is_some() {
            let tref = if required {
                TypeRef::named_nn(ty)
            } else {
                TypeRef::named(ty)
            };
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
            continue;
        }
        // Objects, arrays, unions and blobs: typed from the lexicon.
        let mut hint = tname.to_string();
        let mut chars = gname.chars();
        if let Some(c) = chars.next() {
            hint.push(c.to_ascii_uppercase());
            hint.push_str(chars.as_str());
        }
        let (tref, shape) = nested.output(field, &hint);
        let shape = Arc::new(shape);
        obj = obj.field(GqlField::new(gname, tref, move |ctx| {
            let (key, shape) = (key.clone(), shape.clone());
            FieldFuture::new(async move {
                let r = row(&ctx)?;
                Ok(r.record.get(&key).and_then(|v| shape.value(v, &r.targets)))
            })
        }));
    }
    (obj, scalar_fields)
}

/// `<Type>Connection`: a page's nodes, the total and the page info.
fn connection_object(tname: &str) -> Object {
    Object::new(format!("{tname}Connection"))
        .field(GqlField::new(
            "nodes",
            TypeRef::named_nn_list_nn(tname),
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
                    Ok(Some(FieldValue::owned_any(page.info.clone())))
                })
            },
        ))
}

/// `<type>Aggregate`: counts of a type's records, grouped.
fn aggregate_field(
    rt: &crate::lexicon::RecordType,
    tname: &str,
    readers: &Arc<ReadPool>,
    fields: &Arc<Vec<(String, String, Kind)>>,
) -> GqlField {
    let (collection, pool, agg_fields) = (rt.nsid.clone(), readers.clone(), fields.clone());
    GqlField::new(
        format!("{}Aggregate", field_name(&rt.nsid)),
        TypeRef::named_nn_list_nn("AggregateGroup"),
        move |ctx| {
            let (collection, pool, fields) = (collection.clone(), pool.clone(), agg_fields.clone());
            FieldFuture::new(async move {
                let groups = aggregate(&ctx, &pool, collection, &fields).await?;
                Ok(Some(FieldValue::list(
                    groups.into_iter().map(FieldValue::owned_any),
                )))
            })
        },
    )
    .argument(
        InputValue::new(
            "groupBy",
            TypeRef::named_nn_list_nn(format!("{tname}SortField")),
        )
        .description("One to three fields to group by."),
    )
    .argument(InputValue::new(
        "where",
        TypeRef::named(format!("{tname}Where")),
    ))
    .argument(
        InputValue::new("bucket", TypeRef::named("DateBucket"))
            .description("Group datetime fields (and indexedAt) by day, week or month."),
    )
    .argument(
        InputValue::new("first", TypeRef::named(TypeRef::INT))
            .description("Most groups returned, at most 100 (default 100); largest first."),
    )
    .description(format!("Counts of {} records, grouped.", rt.nsid))
}

/// `<type>ByUri`: one record by its AT-URI.
fn by_uri_field(rt: &crate::lexicon::RecordType, tname: &str, readers: &Arc<ReadPool>) -> GqlField {
    let pool = readers.clone();
    GqlField::new(
        format!("{}ByUri", field_name(&rt.nsid)),
        TypeRef::named(tname),
        move |ctx| {
            let pool = pool.clone();
            FieldFuture::new(async move {
                let uri = ctx.args.try_get("uri")?.string()?.to_string();
                Ok(fetch_one(&pool, uri).await?.map(FieldValue::owned_any))
            })
        },
    )
    .argument(InputValue::new("uri", TypeRef::named_nn(TypeRef::STRING)))
}

/// `<Type>Where` (a filter per scalar property, the author, `linksTo`)
/// and `<Type>SortField`.
fn filters(tname: &str, fields: &[(String, String, Kind)]) -> (InputObject, Enum) {
    let mut where_input = InputObject::new(format!("{tname}Where"))
        .field(
            InputValue::new("author", TypeRef::named(TypeRef::STRING))
                .description("The author's DID or handle."),
        )
        .field(
            InputValue::new("linksTo", TypeRef::named(TypeRef::STRING)).description(
                "Only records that link to this AT-URI or DID, anywhere in the record (the backlink index).",
            ),
        );
    let mut sort_enum = Enum::new(format!("{tname}SortField"))
        .item(EnumItem::new("uri"))
        .item(EnumItem::new("indexedAt"));
    for (gname, _, kind) in fields {
        let filter = match kind {
            Kind::Str | Kind::Datetime => "StringFilter",
            Kind::Int => "IntFilter",
            Kind::Bool => "BooleanFilter",
        };
        where_input = where_input.field(InputValue::new(gname, TypeRef::named(filter)));
        if !["uri", "indexedAt"].contains(&gname.as_str()) {
            sort_enum = sort_enum.item(EnumItem::new(gname));
        }
    }
    (where_input, sort_enum)
}

/// Registers the types every schema has: `JSON`, `Actor` (with its reverse
/// joins), `BacklinkCount`, the filter inputs, `DateBucket`,
/// `AggregateGroup` and `SortOrder`.
fn register_shared(
    builder: async_graphql::dynamic::SchemaBuilder,
    sources: &[JoinSource],
    readers: &Arc<ReadPool>,
) -> async_graphql::dynamic::SchemaBuilder {
    let string = || TypeRef::named(TypeRef::STRING);
    let actor = Object::new("Actor")
        .description("An account: its DID and, when known, its handle.")
        .field(field_of::<Actor>(
            "did",
            TypeRef::named_nn(TypeRef::STRING),
            |a| Some(FieldValue::value(a.did.clone())),
        ))
        .field(field_of::<Actor>("handle", string(), |a| {
            a.handle.clone().map(FieldValue::value)
        }));
    type CountRef = (Arc<Vec<(String, String, i64)>>, usize);
    let backlink_count = Object::new("BacklinkCount")
        .field(field_of::<CountRef>(
            "collection",
            TypeRef::named_nn(TypeRef::STRING),
            |(v, i)| Some(FieldValue::value(v[*i].0.clone())),
        ))
        .field(field_of::<CountRef>(
            "path",
            TypeRef::named_nn(TypeRef::STRING),
            |(v, i)| Some(FieldValue::value(v[*i].1.clone())),
        ))
        .field(field_of::<CountRef>(
            "count",
            TypeRef::named_nn(TypeRef::INT),
            |(v, i)| Some(FieldValue::value(v[*i].2)),
        ));
    builder
        .register(Scalar::new("JSON").description("Any value of the atproto data model, as JSON."))
        .register(add_reverse_joins(actor, sources, readers, true))
        .register(backlink_count)
        .register(filter_input("StringFilter", TypeRef::STRING, true))
        .register(filter_input("IntFilter", TypeRef::INT, false))
        .register(
            InputObject::new("BooleanFilter")
                .field(InputValue::new("eq", TypeRef::named(TypeRef::BOOLEAN))),
        )
        .register(
            Enum::new("DateBucket")
                .item(EnumItem::new("DAY"))
                .item(EnumItem::new("WEEK"))
                .item(EnumItem::new("MONTH")),
        )
        .register(
            Object::new("AggregateGroup")
                .description("One group: its key values, in groupBy order, and its size.")
                .field(GqlField::new(
                    "keys",
                    TypeRef::named_nn_list(TypeRef::STRING),
                    |ctx| {
                        FieldFuture::new(async move {
                            let g = ctx.parent_value.try_downcast_ref::<Group>()?;
                            Ok(Some(FieldValue::list(g.keys.iter().map(|k| match k {
                                Some(k) => FieldValue::value(k.clone()),
                                None => FieldValue::NULL,
                            }))))
                        })
                    },
                ))
                .field(GqlField::new(
                    "count",
                    TypeRef::named_nn(TypeRef::INT),
                    |ctx| {
                        FieldFuture::new(async move {
                            Ok(Some(FieldValue::value(
                                ctx.parent_value.try_downcast_ref::<Group>()?.count,
                            )))
                        })
                    },
                )),
        )
        .register(
            Enum::new("SortOrder")
                .item(EnumItem::new("ASC"))
                .item(EnumItem::new("DESC")),
        )
        .limit_depth(16)
        .limit_complexity(10_000)
}

/// The `Subscription` root with `fields`, and `DeletedRecord`.
fn register_subscriptions(
    builder: async_graphql::dynamic::SchemaBuilder,
    fields: Vec<SubscriptionField>,
) -> async_graphql::dynamic::SchemaBuilder {
    let mut root = Subscription::new("Subscription");
    for f in fields {
        root = root.field(f);
    }
    let deleted = |name: &str, get: fn(&RecordEvent) -> Option<FieldValue<'static>>| {
        field_of::<RecordEvent>(name, TypeRef::named_nn(TypeRef::STRING), get)
    };
    builder.register(root).register(
        Object::new("DeletedRecord")
            .description("A record that was deleted.")
            .field(deleted("uri", |e| Some(FieldValue::value(e.uri.clone()))))
            .field(deleted("did", |e| Some(FieldValue::value(e.did.clone()))))
            .field(deleted("rkey", |e| Some(FieldValue::value(e.rkey.clone())))),
    )
}
