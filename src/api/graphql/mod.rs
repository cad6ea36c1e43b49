//! GraphQL generated from the loaded lexicons (async-graphql's dynamic schema).
//! Per record collection: an object type with the lexicon's fields, a list
//! connection and a by-URI lookup. Names come from the full NSID
//! (`CommunityLexiconCalendarEvent`, `communityLexiconCalendarEvent`), so two
//! lexicons that share a last segment never collide.

pub mod types;

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

/// What happened to a record, for subscriptions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

/// A committed change of one record, published to GraphQL subscriptions.
#[derive(Debug, Clone)]
pub struct RecordEvent {
    pub kind: EventKind,
    pub uri: String,
    pub did: String,
    pub collection: String,
    pub rkey: String,
    pub cid: String,
    /// The new record (null for a delete).
    pub record: Value,
}

/// Where committed changes are published (the writer's `on_commit` sends).
pub type Events = tokio::sync::broadcast::Sender<Arc<RecordEvent>>;

/// The changes of a committed batch as subscription events.
pub fn record_events(batch: &[crate::index::event::IndexEvent]) -> Vec<RecordEvent> {
    use crate::index::event::Change;
    let mut out = Vec::new();
    for ev in batch {
        for change in &ev.changes {
            match change {
                Change::Put(w) => out.push(RecordEvent {
                    kind: if w.update {
                        EventKind::Updated
                    } else {
                        EventKind::Created
                    },
                    uri: w.uri.clone(),
                    did: w.did.clone(),
                    collection: w.collection.clone(),
                    rkey: w.rkey.clone(),
                    cid: w.cid.clone(),
                    record: w.value(),
                }),
                Change::Delete {
                    did,
                    collection,
                    rkey,
                    ..
                } => out.push(RecordEvent {
                    kind: EventKind::Deleted,
                    uri: format!("at://{did}/{collection}/{rkey}"),
                    did: did.clone(),
                    collection: collection.clone(),
                    rkey: rkey.clone(),
                    cid: String::new(),
                    record: Value::Null,
                }),
                _ => {}
            }
        }
    }
    out
}

/// A record row for a created or updated record event.
fn row_from_event(ev: &RecordEvent) -> RecordRow {
    RecordRow {
        uri: ev.uri.clone(),
        cid: ev.cid.clone(),
        did: ev.did.clone(),
        rkey: ev.rkey.clone(),
        indexed_at: chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string(),
        record: ev.record.clone(),
        handle: None,
        counts: Arc::default(),
        targets: Arc::default(),
    }
}

/// A subscription's `where`, checked in memory against each event.
struct EventFilter {
    conditions: Vec<(String, Kind, &'static str, Vec<Value>)>,
    author: Option<String>,
}

impl EventFilter {
    fn read(
        ctx: &ResolverContext<'_>,
        fields: &[(String, String, Kind)],
    ) -> async_graphql::Result<EventFilter> {
        let mut f = EventFilter {
            conditions: Vec::new(),
            author: None,
        };
        let Some(w) = ctx.args.get("where") else {
            return Ok(f);
        };
        let w = w.object()?;
        for (gname, prop, kind) in fields {
            let Some(filter) = w.get(gname) else { continue };
            let filter = filter.object()?;
            for op in ["eq", "gt", "gte", "lt", "lte", "contains"] {
                if let Some(v) = filter.get(op) {
                    f.conditions.push((
                        prop.clone(),
                        *kind,
                        op,
                        vec![v.as_value().clone().into_json()?],
                    ));
                }
            }
            if let Some(list) = filter.get("in") {
                let values = list
                    .list()?
                    .iter()
                    .map(|v| v.as_value().clone().into_json())
                    .collect::<Result<Vec<_>, _>>()?;
                f.conditions.push((prop.clone(), *kind, "in", values));
            }
        }
        if w.get("linksTo").is_some() {
            return Err("subscriptions do not take linksTo".into());
        }
        f.author = w
            .get("author")
            .map(|a| a.string().map(str::to_string))
            .transpose()?;
        Ok(f)
    }

    fn matches(&self, ev: &RecordEvent) -> bool {
        if let Some(a) = &self.author {
            if *a != ev.did {
                return false;
            }
        }
        self.conditions.iter().all(|(prop, kind, op, values)| {
            let Some(v) = ev.record.get(prop) else {
                return false;
            };
            let cmp = |want: &Value| -> Option<std::cmp::Ordering> {
                match kind {
                    Kind::Int => Some(v.as_i64()?.cmp(&want.as_i64()?)),
                    Kind::Bool => Some(v.as_bool()?.cmp(&want.as_bool()?)),
                    _ => Some(v.as_str()?.cmp(want.as_str()?)),
                }
            };
            use std::cmp::Ordering::*;
            match *op {
                "eq" => cmp(&values[0]) == Some(Equal),
                "gt" => cmp(&values[0]) == Some(Greater),
                "gte" => matches!(cmp(&values[0]), Some(Greater | Equal)),
                "lt" => cmp(&values[0]) == Some(Less),
                "lte" => matches!(cmp(&values[0]), Some(Less | Equal)),
                "in" => values.iter().any(|w| cmp(w) == Some(Equal)),
                "contains" => match (v.as_str(), values[0].as_str()) {
                    (Some(s), Some(w)) => s.contains(w),
                    _ => false,
                },
                _ => false,
            }
        })
    }
}

/// The author of a record, as GraphQL's `Actor`.
struct Actor {
    did: String,
    handle: Option<String>,
}

#[derive(Clone, Default)]
struct Page {
    rows: Vec<RecordRow>,
    total: i64,
    info: PageInfo,
}

/// Relay's page info.
#[derive(Clone, Default)]
struct PageInfo {
    has_next: bool,
    has_previous: bool,
    start_cursor: Option<String>,
    end_cursor: Option<String>,
}

/// A scalar lexicon field that `where` and `sortBy` can use.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Str,
    /// A string with the `datetime` format: filtered and sorted as a string,
    /// bucketed by day, week or month in aggregations.
    Datetime,
    Int,
    Bool,
}

/// The SQL expression for a field. `prop` is spliced into the SQL text, so
/// only property names that are plain GraphQL names (letters, digits, `_`)
/// are ever given here; request values are always bound.
fn field_expr(prop: &str, kind: Kind) -> String {
    match kind {
        Kind::Str | Kind::Datetime => format!("(r.record ->> '{prop}')"),
        Kind::Int => format!("TRY_CAST(r.record ->> '{prop}' AS BIGINT)"),
        Kind::Bool => format!("TRY_CAST(r.record ->> '{prop}' AS BOOLEAN)"),
    }
}

/// The filters and order of one connection request.
#[derive(Default, Clone, Debug)]
struct Query {
    /// SQL conditions with `?` placeholders, and their values in order.
    conditions: Vec<String>,
    values: Vec<duckdb::types::Value>,
    /// Only records of this author (a DID or a handle): looked up through
    /// the DID index (`records_by`, schema/006), not as a condition, which
    /// would scan the table.
    author: Option<String>,
    /// The sort key expression (never NULL) and whether it is an integer.
    sort: Option<(String, bool)>,
    descending: bool,
}

impl Query {
    /// Only records of `did`.
    fn by_author(&mut self, did: String) {
        if self.author.is_none() {
            self.author = Some(did);
        } else {
            self.conditions.push("r.did = ?".into());
            self.values.push(duckdb::types::Value::Text(did));
        }
    }

    /// The table the conditions filter, aliased `r`, with its bound values:
    /// the author's records when there is an author, else all records.
    fn source(
        &self,
        c: &duckdb::Connection,
    ) -> duckdb::Result<(&'static str, Vec<duckdb::types::Value>)> {
        Ok(match self.author_did(c)? {
            Some(did) => ("records_by(?) r", vec![duckdb::types::Value::Text(did)]),
            None => ("records r", Vec::new()),
        })
    }

    /// The author's DID: a handle names its DID; anything else is taken as
    /// a DID (an unknown one matches nothing).
    fn author_did(&self, c: &duckdb::Connection) -> duckdb::Result<Option<String>> {
        let Some(author) = &self.author else {
            return Ok(None);
        };
        if author.starts_with("did:") {
            return Ok(Some(author.clone()));
        }
        Ok(Some(
            crate::api::actors::did_for_handle(c, author)?.unwrap_or_else(|| author.clone()),
        ))
    }
}

fn db_value(
    v: &async_graphql::dynamic::ValueAccessor<'_>,
    kind: Kind,
) -> async_graphql::Result<duckdb::types::Value> {
    Ok(match kind {
        Kind::Str | Kind::Datetime => duckdb::types::Value::Text(v.string()?.to_string()),
        Kind::Int => duckdb::types::Value::BigInt(v.i64()?),
        Kind::Bool => duckdb::types::Value::Boolean(v.boolean()?),
    })
}

/// Reads `where`, `sortBy` and `order` into SQL with bound values.
fn read_query(
    ctx: &ResolverContext<'_>,
    fields: &[(String, String, Kind)],
) -> async_graphql::Result<Query> {
    let mut q = Query::default();
    if let Some(w) = ctx.args.get("where") {
        let w = w.object()?;
        for (gname, prop, kind) in fields {
            let Some(filter) = w.get(gname) else { continue };
            let filter = filter.object()?;
            let expr = field_expr(prop, *kind);
            for (op, sql) in [
                ("eq", "="),
                ("gt", ">"),
                ("gte", ">="),
                ("lt", "<"),
                ("lte", "<="),
            ] {
                if let Some(v) = filter.get(op) {
                    q.conditions.push(format!("{expr} {sql} ?"));
                    q.values.push(db_value(&v, *kind)?);
                }
            }
            if let Some(list) = filter.get("in") {
                let list = list.list()?;
                if list.len() > MAX_PAGE as usize {
                    return Err(format!("where.{gname}.in takes at most {MAX_PAGE} values").into());
                }
                let marks = vec!["?"; list.len()].join(", ");
                q.conditions.push(if list.is_empty() {
                    "false".into()
                } else {
                    format!("{expr} IN ({marks})")
                });
                for v in list.iter() {
                    q.values.push(db_value(&v, *kind)?);
                }
            }
            if let Some(v) = filter.get("contains") {
                q.conditions.push(format!("contains({expr}, ?)"));
                q.values.push(db_value(&v, Kind::Str)?);
            }
        }
        if let Some(target) = w.get("linksTo") {
            q.conditions
                .push("r.uri IN (SELECT source_uri FROM links_to(?))".into());
            q.values
                .push(duckdb::types::Value::Text(target.string()?.to_string()));
        }
        if let Some(author) = w.get("author") {
            q.author = Some(author.string()?.to_string());
        }
    }
    if let Some(did) = ctx.args.get("did") {
        q.by_author(did.string()?.to_string());
    }
    if let Some(sort) = ctx.args.get("sortBy") {
        let name = sort.enum_name()?;
        q.sort = Some(match name {
            "uri" => ("r.uri".to_string(), false),
            "indexedAt" => (
                "strftime(r.indexed_at, '%Y-%m-%dT%H:%M:%S.%fZ')".to_string(),
                false,
            ),
            _ => {
                let (_, prop, kind) = fields
                    .iter()
                    .find(|(g, _, _)| g == name)
                    .ok_or_else(|| format!("cannot sort by {name}"))?;
                match kind {
                    Kind::Str | Kind::Datetime => {
                        (format!("coalesce({}, '')", field_expr(prop, *kind)), false)
                    }
                    Kind::Int => (
                        format!(
                            "coalesce({}, -9223372036854775808)",
                            field_expr(prop, *kind)
                        ),
                        true,
                    ),
                    Kind::Bool => (
                        format!("coalesce({}::INTEGER, -1)", field_expr(prop, *kind)),
                        true,
                    ),
                }
            }
        });
    }
    if let Some(order) = ctx.args.get("order") {
        q.descending = order.enum_name()? == "DESC";
    }
    Ok(q)
}

/// One aggregation group.
struct Group {
    keys: Vec<Option<String>>,
    count: i64,
}

/// Runs a `...Aggregate` field: `count(*)` grouped by up to three fields.
async fn aggregate(
    ctx: &ResolverContext<'_>,
    pool: &Arc<ReadPool>,
    collection: String,
    fields: &[(String, String, Kind)],
) -> async_graphql::Result<Vec<Group>> {
    let names: Vec<String> = ctx
        .args
        .try_get("groupBy")?
        .list()?
        .iter()
        .map(|v| v.enum_name().map(str::to_string))
        .collect::<async_graphql::Result<_>>()?;
    if names.is_empty() || names.len() > 3 {
        return Err("groupBy takes one to three fields".into());
    }
    let bucket = ctx
        .args
        .get("bucket")
        .map(|b| b.enum_name().map(str::to_string))
        .transpose()?;
    let unit = match bucket.as_deref() {
        Some("DAY") => Some("day"),
        Some("WEEK") => Some("week"),
        Some("MONTH") => Some("month"),
        _ => None,
    };
    let first = ctx
        .args
        .get("first")
        .map(|v| v.i64())
        .transpose()?
        .unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&first) {
        return Err(format!("first must be between 1 and {MAX_PAGE}").into());
    }
    let bucketed = |ts: &str| match unit {
        Some(u) => format!("strftime(date_trunc('{u}', {ts}), '%Y-%m-%d')"),
        None => format!("strftime({ts}, '%Y-%m-%dT%H:%M:%S.%fZ')"),
    };
    let mut keys = Vec::new();
    for name in &names {
        keys.push(match name.as_str() {
            "uri" => "r.uri".to_string(),
            "indexedAt" => bucketed("r.indexed_at"),
            _ => {
                let (_, prop, kind) = fields
                    .iter()
                    .find(|(g, _, _)| g == name)
                    .ok_or_else(|| format!("cannot group by {name}"))?;
                match (kind, unit) {
                    (Kind::Datetime, Some(_)) => bucketed(&format!(
                        "TRY_CAST({} AS TIMESTAMP)",
                        field_expr(prop, *kind)
                    )),
                    _ => format!("CAST({} AS VARCHAR)", field_expr(prop, *kind)),
                }
            }
        });
    }
    let query = read_query(ctx, fields)?;
    let groups = pool
        .with(move |c| {
            let (from, mut values) = query.source(c)?;
            let mut filter = String::from("r.collection = ?");
            values.push(duckdb::types::Value::Text(collection));
            for cond in &query.conditions {
                filter.push_str(" AND ");
                filter.push_str(cond);
            }
            values.extend(query.values.iter().cloned());
            values.push(duckdb::types::Value::BigInt(first));
            let cols: Vec<String> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{k} AS k{i}"))
                .collect();
            let group: Vec<String> = (0..keys.len()).map(|i| format!("k{i}")).collect();
            let sql = format!(
                "SELECT {}, count(*) AS n FROM {from} WHERE {filter}
                 GROUP BY {} ORDER BY n DESC, {} LIMIT ?",
                cols.join(", "),
                group.join(", "),
                group.join(", ")
            );
            let n = keys.len();
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(duckdb::params_from_iter(values.iter()), |r| {
                let keys = (0..n)
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect::<duckdb::Result<Vec<_>>>()?;
                Ok(Group {
                    keys,
                    count: r.get(n)?,
                })
            })?;
            rows.collect::<duckdb::Result<Vec<_>>>()
        })
        .await
        .map_err(|e| async_graphql::Error::new(e.to_string()))?;
    Ok(groups)
}

/// An opaque page position: the sort key and URI of the last row.
fn encode_gql_cursor(key: &Value, uri: &str) -> String {
    data_encoding::BASE64URL_NOPAD.encode(serde_json::json!([key, uri]).to_string().as_bytes())
}

fn decode_gql_cursor(raw: &str) -> async_graphql::Result<(Value, String)> {
    let bad = || async_graphql::Error::new("after is not a cursor this server issued");
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(raw.as_bytes())
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    match v.as_array().map(Vec::as_slice) {
        Some([key, Value::String(uri)]) => Ok((key.clone(), uri.clone())),
        _ => Err(bad()),
    }
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

/// Builds the schema for a catalog.
pub fn build_schema(
    catalog: &Catalog,
    readers: Arc<ReadPool>,
    events: Events,
    search: Option<Arc<crate::index::search::Search>>,
) -> Result<Schema, SchemaError> {
    let mut subscriptions: Vec<SubscriptionField> = Vec::new();
    let mut query = Object::new("Query")
        .description("Records indexed by lexview, one entry point per record lexicon.");
    let string = || TypeRef::named(TypeRef::STRING);
    let page_info = Object::new("PageInfo")
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
        }));
    let mut builder_types: Vec<Object> = vec![page_info];
    let mut inputs: Vec<InputObject> = Vec::new();
    let mut enums: Vec<Enum> = Vec::new();
    let mut count = 0;
    // Per record type, what reverse joins need: its connection's type and
    // filters, and the paths at which its records link to records or DIDs.
    let mut sources: Vec<JoinSource> = Vec::new();
    let mut record_objects: Vec<Object> = Vec::new();
    let mut nested = types::Nested::new(catalog, catalog.records().map(|rt| type_name(&rt.nsid)));
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
            let mut hint = tname.clone();
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
                        Ok(Some(FieldValue::owned_any(page.info.clone())))
                    })
                },
            ));
        query = query.field(
            connection_field(
                field_name(&rt.nsid),
                &tname,
                rt.nsid.clone(),
                readers.clone(),
                Arc::new(scalar_fields.clone()),
                Join::None,
            )
            .description(format!("{} records.", rt.nsid)),
        );
        for (suffix, kind) in [
            ("Created", EventKind::Created),
            ("Updated", EventKind::Updated),
            ("Deleted", EventKind::Deleted),
        ] {
            let (collection, events, fields) = (
                rt.nsid.clone(),
                events.clone(),
                Arc::new(scalar_fields.clone()),
            );
            let ty = if kind == EventKind::Deleted {
                TypeRef::named_nn("DeletedRecord")
            } else {
                TypeRef::named_nn(&tname)
            };
            let mut field = SubscriptionField::new(
                format!("{}{suffix}", field_name(&rt.nsid)),
                ty,
                move |ctx| {
                    let (collection, events, fields) =
                        (collection.clone(), events.clone(), fields.clone());
                    SubscriptionFieldFuture::new(async move {
                        let filter = EventFilter::read(&ctx, &fields)?;
                        let stream =
                            futures::stream::unfold(events.subscribe(), |mut rx| async move {
                                loop {
                                    match rx.recv().await {
                                        Ok(ev) => return Some((ev, rx)),
                                        Err(tokio::sync::broadcast::error::RecvError::Lagged(
                                            n,
                                        )) => {
                                            tracing::warn!(
                                                skipped = n,
                                                "GraphQL subscriber too slow; events skipped"
                                            );
                                        }
                                        Err(_) => return None,
                                    }
                                }
                            })
                            .filter(move |ev| {
                                futures::future::ready(
                                    ev.collection == collection
                                        && ev.kind == kind
                                        && filter.matches(ev),
                                )
                            })
                            .map(|ev| {
                                Ok(if ev.kind == EventKind::Deleted {
                                    FieldValue::owned_any((*ev).clone())
                                } else {
                                    FieldValue::owned_any(row_from_event(&ev))
                                })
                            });
                        Ok(stream)
                    })
                },
            )
            .description(format!(
                "{} records {}, as they are committed.",
                rt.nsid,
                suffix.to_lowercase()
            ));
            if kind != EventKind::Deleted {
                field = field.argument(InputValue::new(
                    "where",
                    TypeRef::named(format!("{tname}Where")),
                ));
            }
            subscriptions.push(field);
        }
        let (collection, pool, agg_fields) = (
            rt.nsid.clone(),
            readers.clone(),
            Arc::new(scalar_fields.clone()),
        );
        query = query.field(
            GqlField::new(
                format!("{}Aggregate", field_name(&rt.nsid)),
                TypeRef::named_nn_list_nn("AggregateGroup"),
                move |ctx| {
                    let (collection, pool, fields) =
                        (collection.clone(), pool.clone(), agg_fields.clone());
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
            .description(format!("Counts of {} records, grouped.", rt.nsid)),
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
        for (gname, _, kind) in &scalar_fields {
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
        inputs.push(where_input);
        enums.push(sort_enum);
        sources.push(JoinSource {
            nsid: rt.nsid.clone(),
            tname: tname.clone(),
            fields: Arc::new(scalar_fields.clone()),
            paths: link_paths(catalog, schema),
        });
        record_objects.push(obj);
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
    for obj in record_objects {
        builder_types.push(add_reverse_joins(obj, &sources, &readers, false));
    }
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
    let subscription_root = (!subscriptions.is_empty()).then_some("Subscription");
    let mut builder = Schema::build("Query", None, subscription_root)
        .register(Scalar::new("JSON").description("Any value of the atproto data model, as JSON."))
        .register(add_reverse_joins(actor, &sources, &readers, true))
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
        .limit_complexity(10_000);
    for t in builder_types {
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
        let mut root = Subscription::new("Subscription");
        for f in subscriptions {
            root = root.field(f);
        }
        let deleted = |name: &str, get: fn(&RecordEvent) -> Option<FieldValue<'static>>| {
            field_of::<RecordEvent>(name, TypeRef::named_nn(TypeRef::STRING), get)
        };
        builder = builder.register(root).register(
            Object::new("DeletedRecord")
                .description("A record that was deleted.")
                .field(deleted("uri", |e| Some(FieldValue::value(e.uri.clone()))))
                .field(deleted("did", |e| Some(FieldValue::value(e.did.clone()))))
                .field(deleted("rkey", |e| Some(FieldValue::value(e.rkey.clone())))),
        );
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

/// One page of search hits with their records.
struct SearchPage {
    total: usize,
    hits: Vec<(f32, RecordRow)>,
}

/// `search(...)`: full-text search over every searched record type, and the
/// types it returns.
fn search_field(search: Arc<crate::index::search::Search>) -> (GqlField, Vec<Object>) {
    type Hit = (f32, RecordRow);
    let hit = Object::new("SearchHit")
        .description("A record that matches a search, with its relevance score.")
        .field(field_of::<Hit>(
            "score",
            TypeRef::named_nn(TypeRef::FLOAT),
            |h| Some(FieldValue::value(h.0)),
        ))
        .field(GqlField::new(
            "record",
            TypeRef::named_nn("AnyRecord"),
            |ctx| {
                FieldFuture::new(async move {
                    let h = ctx.parent_value.try_downcast_ref::<Hit>()?;
                    let collection = h.1.uri.split('/').nth(3).unwrap_or_default();
                    Ok(Some(
                        FieldValue::owned_any(h.1.clone()).with_type(type_name(collection)),
                    ))
                })
            },
        ));
    let results = Object::new("SearchResults")
        .field(
            field_of::<SearchPage>("totalCount", TypeRef::named_nn(TypeRef::INT), |p| {
                Some(FieldValue::value(p.total as i64))
            })
            .description(
                "How many records match, counted up to 10000 (a search with more reports 10000).",
            ),
        )
        .field(GqlField::new(
            "hits",
            TypeRef::named_nn_list_nn("SearchHit"),
            |ctx| {
                FieldFuture::new(async move {
                    let p = ctx.parent_value.try_downcast_ref::<SearchPage>()?;
                    Ok(Some(FieldValue::list(
                        p.hits.iter().map(|h| FieldValue::owned_any(h.clone())),
                    )))
                })
            },
        ));
    let field = GqlField::new("search", TypeRef::named_nn("SearchResults"), move |ctx| {
        let search = search.clone();
        FieldFuture::new(async move {
            let pool = ctx.data::<Arc<ReadPool>>()?.clone();
            let text = ctx.args.try_get("query")?.string()?.to_string();
            let collection = match ctx.args.get("collection") {
                Some(v) => Some(v.string()?.to_string()),
                None => None,
            };
            let author = match ctx.args.get("author") {
                Some(v) => Some(v.string()?.to_string()),
                None => None,
            };
            let recency = match ctx.args.get("recency") {
                Some(v) => v.boolean()?,
                None => false,
            };
            let first = ctx.args.get("first").map(|v| v.i64()).transpose()?.unwrap_or(25);
            let offset = ctx.args.get("offset").map(|v| v.i64()).transpose()?.unwrap_or(0);
            if !(1..=MAX_PAGE).contains(&first) {
                return Err(async_graphql::Error::new(format!(
                    "first must be between 1 and {MAX_PAGE}"
                )));
            }
            if !(0..=10_000).contains(&offset) {
                return Err(async_graphql::Error::new("offset must be between 0 and 10000"));
            }
            let page = pool
                .with(move |c| {
                    // A handle is looked up; a DID is used as is.
                    let author = match author {
                        Some(a) if !a.starts_with("did:") => Some(
                            c.query_row(
                                "SELECT coalesce((SELECT did FROM actors WHERE lower(handle) = lower(?) LIMIT 1), ?)",
                                params![a, a],
                                |r| r.get::<_, String>(0),
                            )?,
                        ),
                        other => other,
                    };
                    let q = crate::index::search::SearchQuery {
                        text,
                        collection,
                        author,
                        limit: first as usize,
                        offset: offset as usize,
                        recency,
                    };
                    // Best first; records deleted since the last search commit drop out.
                    let (found, total) = crate::api::repo::search::run_on(c, &search, &q)?;
                    let (scores, mut rows): (Vec<f32>, Vec<RecordRow>) = found.into_iter().unzip();
                    attach_counts(c, &mut rows)?;
                    attach_targets(c, &mut rows)?;
                    let hits = scores.into_iter().zip(rows).collect();
                    Ok(SearchPage { total, hits })
                })
                .await
                .map_err(|e| async_graphql::Error::new(e.to_string()))?;
            Ok(Some(FieldValue::owned_any(page)))
        })
    })
    .description(
        "Full-text search over the searched fields of every record type (BM25; every word \
         must match; CJK text by character bigrams), best first.",
    )
    .argument(InputValue::new("query", TypeRef::named_nn(TypeRef::STRING)))
    .argument(
        InputValue::new("collection", TypeRef::named(TypeRef::STRING))
            .description("Only records of this collection (NSID)."),
    )
    .argument(
        InputValue::new("author", TypeRef::named(TypeRef::STRING))
            .description("Only records by this DID or handle."),
    )
    .argument(
        InputValue::new("recency", TypeRef::named(TypeRef::BOOLEAN))
            .description("Weigh newer records up (halving every 7 days of age, to at most half)."),
    )
    .argument(InputValue::new("first", TypeRef::named(TypeRef::INT)))
    .argument(InputValue::new("offset", TypeRef::named(TypeRef::INT)));
    (field, vec![hit, results])
}

/// A record type as the source of reverse joins.
struct JoinSource {
    nsid: String,
    tname: String,
    fields: Arc<Vec<(String, String, Kind)>>,
    /// (path in the backlink index, whether it holds a DID rather than an AT-URI).
    paths: Vec<(String, bool)>,
}

/// The paths at which a record type's lexicon puts AT-URIs (`format: at-uri`,
/// or the `uri` of a strongRef-like object) and DIDs, as the backlink index
/// writes them: top-level fields and fields of objects one level down
/// (`.subject.uri`, `.reply.parent.uri`, `.subject`). Arrays and unions are
/// not followed (their paths vary per element).
fn link_paths(catalog: &Catalog, schema: &crate::lexicon::ObjectSchema) -> Vec<(String, bool)> {
    use crate::syntax::Format;
    fn object<'a>(catalog: &'a Catalog, f: &'a Field) -> Option<&'a crate::lexicon::ObjectSchema> {
        match f {
            Field::Object(o) => Some(o),
            Field::Ref { target } => match catalog.def(target) {
                Some(Field::Object(o)) => Some(o),
                _ => None,
            },
            _ => None,
        }
    }
    fn walk(
        catalog: &Catalog,
        o: &crate::lexicon::ObjectSchema,
        prefix: &str,
        depth: usize,
        out: &mut Vec<(String, bool)>,
    ) {
        for (prop, f) in &o.properties {
            let path = format!("{prefix}.{prop}");
            match f {
                Field::String(s) if s.format == Some(Format::AtUri) => out.push((path, false)),
                Field::String(s) if s.format == Some(Format::Did) => out.push((path, true)),
                _ if depth < 2 => {
                    if let Some(inner) = object(catalog, f) {
                        walk(catalog, inner, &path, depth + 1, out);
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(catalog, schema, "", 0, &mut out);
    out
}

/// `subject.uri` -> `Subject`, `.reply.parent.uri` -> `ReplyParent`.
fn path_name(path: &str) -> String {
    let trimmed = path.strip_suffix(".uri").unwrap_or(path);
    trimmed
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|seg| {
            let mut c = seg.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// Adds the reverse joins to a record type (`actor` false: every AT-URI path
/// of every record type, e.g. a post's `appBskyFeedLikeBySubject` and
/// `appBskyFeedPostByReplyParent`) or to `Actor` (every DID path, e.g.
/// `appBskyGraphFollowBySubject` for followers, plus each collection the
/// actor authored, e.g. `appBskyGraphFollow` for follows), each with a count.
fn add_reverse_joins(
    mut obj: Object,
    sources: &[JoinSource],
    readers: &Arc<ReadPool>,
    actor: bool,
) -> Object {
    for s in sources {
        let fname = field_name(&s.nsid);
        let mut joins: Vec<(String, Join, String)> = s
            .paths
            .iter()
            .filter(|(_, is_did)| *is_did == actor)
            .map(|(path, _)| {
                (
                    format!("{fname}By{}", path_name(path)),
                    Join::LinksHere { path: path.clone() },
                    format!("{} records whose `{}` links here.", s.nsid, &path[1..]),
                )
            })
            .collect();
        if actor {
            joins.push((
                fname.clone(),
                Join::AuthoredBy,
                format!("{} records by this account.", s.nsid),
            ));
        }
        for (name, join, description) in joins {
            obj = obj.field(
                connection_field(
                    name.clone(),
                    &s.tname,
                    s.nsid.clone(),
                    readers.clone(),
                    s.fields.clone(),
                    join.clone(),
                )
                .description(description),
            );
            let collection = s.nsid.clone();
            obj = obj.field(GqlField::new(
                format!("{name}Count"),
                TypeRef::named_nn(TypeRef::INT),
                move |ctx| {
                    let (collection, join) = (collection.clone(), join.clone());
                    FieldFuture::new(async move {
                        // A record's counts came with its page; an actor's are read here.
                        if let (Some(r), Join::LinksHere { path }) =
                            (ctx.parent_value.downcast_ref::<RecordRow>(), &join)
                        {
                            let n: i64 = r
                                .counts
                                .iter()
                                .filter(|(c, p, _)| *c == collection && p == path)
                                .map(|(_, _, n)| n)
                                .sum();
                            return Ok(Some(FieldValue::value(n)));
                        }
                        // An actor's: batched with every other actor count of
                        // the response (one query per kind, not per actor).
                        let did = ctx.parent_value.try_downcast_ref::<Actor>()?.did.clone();
                        let loader = ctx.data::<DataLoader<ActorCounts>>()?;
                        let key = ActorCountKey {
                            did,
                            collection,
                            path: match join {
                                Join::LinksHere { path } => Some(path),
                                _ => None,
                            },
                        };
                        let n = loader
                            .load_one(key)
                            .await
                            .map_err(|e| async_graphql::Error::new(e.to_string()))?
                            .unwrap_or(0);
                        Ok(Some(FieldValue::value(n)))
                    })
                },
            ));
        }
    }
    obj
}

/// An actor count: links to the DID at `path` from `collection` records, or
/// (without a path) the DID's own `collection` records.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ActorCountKey {
    did: String,
    collection: String,
    path: Option<String>,
}

/// Loads the actor counts of a response together (async-graphql's
/// DataLoader batches the keys requested in the same tick).
struct ActorCounts(Arc<ReadPool>);

impl async_graphql::dataloader::Loader<ActorCountKey> for ActorCounts {
    type Value = i64;
    type Error = Arc<String>;

    async fn load(
        &self,
        keys: &[ActorCountKey],
    ) -> Result<std::collections::HashMap<ActorCountKey, i64>, Self::Error> {
        // DIDs contain no spaces.
        let dids = |with_path: bool| {
            let mut v: Vec<&str> = keys
                .iter()
                .filter(|k| k.path.is_some() == with_path)
                .map(|k| k.did.as_str())
                .collect();
            v.sort_unstable();
            v.dedup();
            v.join(" ")
        };
        let (linked, authored) = (dids(true), dids(false));
        let keys = keys.to_vec();
        self.0
            .with(move |c| {
                let mut out = std::collections::HashMap::new();
                if !linked.is_empty() {
                    let mut stmt = c.prepare_cached(
                        "SELECT target, collection, path, sum(n)::BIGINT FROM counts_of_any(?)
                         GROUP BY ALL",
                    )?;
                    let rows = stmt.query_map(params![linked], |r| {
                        Ok((
                            ActorCountKey {
                                did: r.get(0)?,
                                collection: r.get(1)?,
                                path: Some(r.get(2)?),
                            },
                            r.get::<_, i64>(3)?,
                        ))
                    })?;
                    for row in rows {
                        let (k, n) = row?;
                        out.insert(k, n);
                    }
                }
                if !authored.is_empty() {
                    let mut stmt = c.prepare_cached(
                        "SELECT did, collection, count(*) FROM records
                         WHERE did IN (SELECT unnest(string_split(?, ' '))) GROUP BY ALL",
                    )?;
                    let rows = stmt.query_map(params![authored], |r| {
                        Ok((
                            ActorCountKey {
                                did: r.get(0)?,
                                collection: r.get(1)?,
                                path: None,
                            },
                            r.get::<_, i64>(2)?,
                        ))
                    })?;
                    for row in rows {
                        let (k, n) = row?;
                        out.insert(k, n);
                    }
                }
                // Every key asked for gets an answer (0 when nothing links).
                for k in keys {
                    out.entry(k).or_insert(0);
                }
                Ok(out)
            })
            .await
            .map_err(|e| Arc::new(e.to_string()))
    }
}

/// Everything of a reverse-join connection request but its parent.
#[derive(Debug)]
struct ConnSpec {
    collection: String,
    join: Join,
    query: Query,
    after: Option<(Value, String)>,
    first: i64,
    backward: bool,
}

/// One parent's page of a reverse-join connection; requests with the same
/// fingerprint (the same field and arguments) are loaded together.
#[derive(Clone)]
struct ConnKey {
    fingerprint: Arc<str>,
    spec: Arc<ConnSpec>,
    parent: String,
}

impl PartialEq for ConnKey {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint && self.parent == other.parent
    }
}

impl Eq for ConnKey {}

impl std::hash::Hash for ConnKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state);
        self.parent.hash(state);
    }
}

/// Loads the pages of a reverse-join connection for all its parents in a
/// response at once: per distinct request, one count query and one
/// windowed page query (each parent's first rows by `row_number()`), then
/// the backlink counts and forward targets of all rows together.
struct Connections(Arc<ReadPool>);

impl async_graphql::dataloader::Loader<ConnKey> for Connections {
    type Value = Page;
    type Error = Arc<String>;

    async fn load(
        &self,
        keys: &[ConnKey],
    ) -> Result<std::collections::HashMap<ConnKey, Page>, Self::Error> {
        let mut groups: std::collections::HashMap<Arc<str>, Vec<ConnKey>> =
            std::collections::HashMap::new();
        for k in keys {
            groups
                .entry(k.fingerprint.clone())
                .or_default()
                .push(k.clone());
        }
        self.0
            .with(move |c| {
                let mut out = std::collections::HashMap::new();
                for keys in groups.into_values() {
                    let spec = keys[0].spec.clone();
                    let parents: Vec<&str> = keys.iter().map(|k| k.parent.as_str()).collect();
                    let mut pages = batch_pages(c, &spec, &parents)?;
                    for k in keys {
                        let page = pages.remove(&k.parent).unwrap_or_default();
                        out.insert(k, page);
                    }
                }
                Ok(out)
            })
            .await
            .map_err(|e| Arc::new(e.to_string()))
    }
}

/// Keyset pagination: adds to `filter` (and its values) the condition for
/// rows after the cursor `after` in the order of `key` then URI, and returns
/// that order's SQL direction.
fn seek(
    after: &Option<(Value, String)>,
    key: &str,
    key_is_int: bool,
    descending: bool,
    filter: &mut String,
    values: &mut Vec<duckdb::types::Value>,
) -> duckdb::Result<&'static str> {
    use duckdb::types::Value as V;
    let (cmp, order) = if descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some((k, uri)) = after {
        filter.push_str(&format!(
            " AND ({key} {cmp} ? OR ({key} = ? AND r.uri {cmp} ?))"
        ));
        let kv = match (k, key_is_int) {
            (Value::Number(n), true) => V::BigInt(n.as_i64().unwrap_or_default()),
            (Value::String(s), false) => V::Text(s.clone()),
            _ => return Err(duckdb::Error::InvalidParameterName("after".into())),
        };
        values.push(kv.clone());
        values.push(kv);
        values.push(V::Text(uri.clone()));
    }
    Ok(order)
}

/// The pages of `spec` for each of `parents` (URIs or DIDs, no spaces).
fn batch_pages(
    c: &duckdb::Connection,
    spec: &ConnSpec,
    parents: &[&str],
) -> duckdb::Result<std::collections::HashMap<String, Page>> {
    use duckdb::types::Value as V;
    let list = parents.join(" ");
    let (from, mut values) = match &spec.join {
        Join::LinksHere { path } => (
            "records r JOIN (SELECT DISTINCT target AS parent, source_uri FROM links_to_any(?)
               WHERE path = ?) j
             ON j.source_uri = r.uri",
            vec![V::Text(list), V::Text(path.clone())],
        ),
        _ => (
            "records r JOIN (SELECT unnest(string_split(?, ' ')) AS parent) j ON r.did = j.parent",
            vec![V::Text(list)],
        ),
    };
    let mut filter = String::from("r.collection = ?");
    values.push(V::Text(spec.collection.clone()));
    if let Some(did) = spec.query.author_did(c)? {
        // Many parents' pages at once: the author is a condition here.
        filter.push_str(" AND r.did = ?");
        values.push(V::Text(did));
    }
    for cond in &spec.query.conditions {
        filter.push_str(" AND ");
        filter.push_str(cond);
    }
    values.extend(spec.query.values.iter().cloned());
    let mut totals: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    {
        let mut stmt = c.prepare_cached(&format!(
            "SELECT j.parent, count(*) FROM {from} WHERE {filter} GROUP BY j.parent"
        ))?;
        let rows = stmt.query_map(duckdb::params_from_iter(values.iter()), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (p, n) = row?;
            totals.insert(p, n);
        }
    }
    let descending = spec.query.descending != spec.backward;
    let (key, key_is_int) = spec
        .query
        .sort
        .clone()
        .unwrap_or(("r.uri".to_string(), false));
    let order = seek(
        &spec.after,
        &key,
        key_is_int,
        descending,
        &mut filter,
        &mut values,
    )?;
    values.push(V::BigInt(spec.first + 1));
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS}, {key} AS sort_key, j.parent,
                row_number() OVER (PARTITION BY j.parent ORDER BY {key} {order}, r.uri {order}) AS rn
         FROM {from} WHERE {filter} QUALIFY rn <= ? ORDER BY j.parent, rn"
    ))?;
    let mut rows = stmt
        .query_map(duckdb::params_from_iter(values.iter()), |r| {
            let key = if key_is_int {
                Value::from(r.get::<_, i64>(6)?)
            } else {
                Value::from(r.get::<_, String>(6)?)
            };
            Ok((read_row(r)?, key, r.get::<_, String>(7)?))
        })?
        .collect::<duckdb::Result<Vec<_>>>()?;
    attach_handles(c, rows.iter_mut().map(|(row, _, _)| row))?;
    // Counts and forward targets for every row of every parent at once.
    let mut by_parent: std::collections::HashMap<String, Vec<(RecordRow, Value)>> =
        std::collections::HashMap::new();
    for (row, key, parent) in rows {
        by_parent.entry(parent).or_default().push((row, key));
    }
    let mut all: Vec<RecordRow> = Vec::new();
    let mut shapes: Vec<(String, Vec<Value>, bool)> = Vec::new();
    for (parent, mut rows) in by_parent {
        let more = rows.len() as i64 > spec.first;
        rows.truncate(spec.first as usize);
        if spec.backward {
            rows.reverse();
        }
        let keys = rows.iter().map(|(_, k)| k.clone()).collect();
        all.extend(rows.into_iter().map(|(r, _)| r));
        shapes.push((parent, keys, more));
    }
    attach_counts(c, &mut all)?;
    attach_targets(c, &mut all)?;
    let mut all = all.into_iter();
    let had_cursor = spec.after.is_some();
    let mut out = std::collections::HashMap::new();
    for (parent, keys, more) in shapes {
        let rows: Vec<RecordRow> = all.by_ref().take(keys.len()).collect();
        let info = PageInfo {
            has_next: if spec.backward { had_cursor } else { more },
            has_previous: if spec.backward { more } else { had_cursor },
            start_cursor: rows
                .first()
                .zip(keys.first())
                .map(|(r, k)| encode_gql_cursor(k, &r.uri)),
            end_cursor: rows
                .last()
                .zip(keys.last())
                .map(|(r, k)| encode_gql_cursor(k, &r.uri)),
        };
        let total = totals.get(&parent).copied().unwrap_or(0);
        out.insert(parent, Page { rows, total, info });
    }
    // Parents whose page is empty (all after the cursor) keep their totals.
    for (parent, total) in totals {
        out.entry(parent).or_insert_with(|| Page {
            rows: Vec::new(),
            total,
            info: PageInfo {
                has_previous: had_cursor && !spec.backward,
                has_next: had_cursor && spec.backward,
                ..Default::default()
            },
        });
    }
    Ok(out)
}

/// How a connection of records relates to the object it hangs from.
#[derive(Clone, Debug)]
enum Join {
    /// A root field: all records of the collection.
    None,
    /// Records whose `path` links to the parent record's URI (or, on an
    /// Actor, the parent's DID): a reverse join from the backlink index.
    LinksHere { path: String },
    /// Records by the parent Actor.
    AuthoredBy,
}

impl Join {
    /// The parent a reverse join hangs from (a record's URI or an actor's
    /// DID); None for a root connection.
    fn parent(&self, ctx: &ResolverContext<'_>) -> async_graphql::Result<Option<String>> {
        if matches!(self, Join::None) {
            return Ok(None);
        }
        if let Some(r) = ctx.parent_value.downcast_ref::<RecordRow>() {
            return Ok(Some(r.uri.clone()));
        }
        Ok(Some(
            ctx.parent_value.try_downcast_ref::<Actor>()?.did.clone(),
        ))
    }

    /// Adds the join's condition (with its bound value) to `q`.
    fn apply(&self, ctx: &ResolverContext<'_>, q: &mut Query) -> async_graphql::Result<()> {
        let parent = || -> async_graphql::Result<String> {
            if let Some(r) = ctx.parent_value.downcast_ref::<RecordRow>() {
                return Ok(r.uri.clone());
            }
            Ok(ctx.parent_value.try_downcast_ref::<Actor>()?.did.clone())
        };
        match self {
            Join::None => {}
            Join::LinksHere { path } => {
                q.conditions
                    .push("r.uri IN (SELECT source_uri FROM links_to(?) WHERE path = ?)".into());
                q.values.push(duckdb::types::Value::Text(parent()?));
                q.values.push(duckdb::types::Value::Text(path.clone()));
            }
            Join::AuthoredBy => {
                q.by_author(parent()?);
            }
        }
        Ok(())
    }
}

/// A connection field over `collection` (type `tname`), with `first/after`,
/// `last/before`, `did`, `where`, `sortBy` and `order`, restricted by `join`.
fn connection_field(
    name: String,
    tname: &str,
    collection: String,
    pool: Arc<ReadPool>,
    fields: Arc<Vec<(String, String, Kind)>>,
    join: Join,
) -> GqlField {
    GqlField::new(
        name,
        TypeRef::named_nn(format!("{tname}Connection")),
        move |ctx| {
            let (collection, pool, fields, join) = (
                collection.clone(),
                pool.clone(),
                fields.clone(),
                join.clone(),
            );
            FieldFuture::new(async move {
                let int = |name: &str| ctx.args.get(name).map(|v| v.i64()).transpose();
                let text = |name: &str| {
                    ctx.args
                        .get(name)
                        .map(|v| v.string().map(str::to_string))
                        .transpose()
                };
                let (first, last, after, before) =
                    (int("first")?, int("last")?, text("after")?, text("before")?);
                let (n, cursor, backward) = match (first, last, &after, &before) {
                    (Some(_), Some(_), _, _) => return Err("give first or last, not both".into()),
                    (_, Some(_), Some(_), _) | (Some(_), _, _, Some(_)) => {
                        return Err("after goes with first, before with last".into())
                    }
                    (_, Some(n), _, _) => (n, before, true),
                    (_, None, _, Some(_)) => (20, before, true),
                    (n, None, _, None) => (n.unwrap_or(20), after, false),
                };
                if !(0..=MAX_PAGE).contains(&n) {
                    let which = if backward { "last" } else { "first" };
                    return Err(format!("{which} must be between 0 and {MAX_PAGE}").into());
                }
                let mut query = read_query(&ctx, &fields)?;
                if let Some(parent) = join.parent(&ctx)? {
                    // A reverse join: batched with the same field of every
                    // other parent in the response.
                    let spec = ConnSpec {
                        collection,
                        join,
                        query,
                        after: cursor.as_deref().map(decode_gql_cursor).transpose()?,
                        first: n,
                        backward,
                    };
                    let key = ConnKey {
                        fingerprint: Arc::from(format!("{spec:?}")),
                        spec: Arc::new(spec),
                        parent,
                    };
                    let loader = ctx.data::<DataLoader<Connections>>()?;
                    let page = loader
                        .load_one(key)
                        .await
                        .map_err(|e| match e.to_string() {
                            m if m.contains("after") => {
                                async_graphql::Error::new("after does not fit this sortBy")
                            }
                            m => async_graphql::Error::new(m),
                        })?
                        .unwrap_or_default();
                    return Ok(Some(FieldValue::owned_any(page)));
                }
                join.apply(&ctx, &mut query)?;
                let page = fetch_page(&pool, collection, query, cursor, n, backward).await?;
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
        InputValue::new("last", TypeRef::named(TypeRef::INT))
            .description("Page size counting back from `before` (or from the end), at most 100."),
    )
    .argument(
        InputValue::new("before", TypeRef::named(TypeRef::STRING))
            .description("startCursor of the following page."),
    )
    .argument(
        InputValue::new("did", TypeRef::named(TypeRef::STRING))
            .description("Only records of this author DID."),
    )
    .argument(
        InputValue::new("where", TypeRef::named(format!("{tname}Where"))).description(
            "Filters on the record's scalar fields and its author, all of which must hold.",
        ),
    )
    .argument(
        InputValue::new("sortBy", TypeRef::named(format!("{tname}SortField")))
            .description("Order by this field (default: uri); ties by uri."),
    )
    .argument(InputValue::new("order", TypeRef::named("SortOrder")))
}

/// Records by URI for forward joins past the first level: a page
/// prefetches the records its rows link to ([`attach_targets`]); a target
/// that is not among them (a record that a joined record links to, or one
/// not indexed) is loaded here, batched with every other target asked for
/// at the same depth, and comes with its counts and its own targets, so
/// each further level costs one batch.
pub(crate) struct TargetRows(Arc<ReadPool>);

impl async_graphql::dataloader::Loader<String> for TargetRows {
    type Value = RecordRow;
    type Error = Arc<String>;

    async fn load(
        &self,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, RecordRow>, Self::Error> {
        let keys = keys.to_vec();
        self.0
            .with(move |c| {
                let mut rows = records_by_uri(c, keys.iter().map(String::as_str))?;
                attach_counts(c, &mut rows)?;
                attach_targets(c, &mut rows)?;
                Ok(rows.into_iter().map(|r| (r.uri.clone(), r)).collect())
            })
            .await
            .map_err(|e| Arc::new(e.to_string()))
    }
}

/// Loads the records that `rows` link to (with their counts) in two queries
/// and shares them with every row, for forward joins.
fn attach_targets(c: &duckdb::Connection, rows: &mut [RecordRow]) -> duckdb::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    // The AT-URIs the records hold, found as the writer found them (the
    // links table has no index by source), and looked up by URI. AT-URIs
    // contain no spaces.
    let mut targets: Vec<String> = rows
        .iter()
        .flat_map(|r| crate::index::links::extract_links(&r.record))
        .filter(|l| l.target.starts_with("at://"))
        .map(|l| l.target)
        .collect();
    if targets.is_empty() {
        return Ok(());
    }
    targets.sort_unstable();
    targets.dedup();
    let mut found = records_by_uri(c, targets.iter().map(String::as_str))?;
    attach_counts(c, &mut found)?;
    let targets: Arc<types::Targets> =
        Arc::new(found.into_iter().map(|r| (r.uri.clone(), r)).collect());
    for row in rows {
        row.targets = targets.clone();
    }
    Ok(())
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
    let mut stmt = c.prepare_cached(
        "SELECT target, collection, path, n FROM counts_of_any(?) ORDER BY collection, path",
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
    query: Query,
    cursor: Option<String>,
    first: i64,
    backward: bool,
) -> async_graphql::Result<Page> {
    let after = cursor.as_deref().map(decode_gql_cursor).transpose()?;
    let had_cursor = after.is_some();
    // Going backward reads in the opposite order and turns the page around.
    let descending = query.descending != backward;
    let (key, key_is_int) = query.sort.clone().unwrap_or(("r.uri".to_string(), false));
    let page = pool
        .with(move |c| {
            use duckdb::types::Value as V;
            let (from, mut values) = query.source(c)?;
            let mut filter = String::from("r.collection = ?");
            values.push(V::Text(collection));
            for cond in &query.conditions {
                filter.push_str(" AND ");
                filter.push_str(cond);
            }
            values.extend(query.values.iter().cloned());
            let total: i64 = c.query_row(
                &format!("SELECT count(*) FROM {from} WHERE {filter}"),
                duckdb::params_from_iter(values.iter()),
                |r| r.get(0),
            )?;
            let order = seek(
                &after,
                &key,
                key_is_int,
                descending,
                &mut filter,
                &mut values,
            )?;
            values.push(V::BigInt(first + 1));
            // Two steps: the page's URIs and sort keys, then the wide
            // columns of that page only (the record JSON is the costly part
            // of rows found through an index, which are fetched one by one;
            // a record deleted between the two is left out of the page).
            let sql = format!(
                "SELECT r.uri, {key} AS sort_key FROM {from} WHERE {filter}
                 ORDER BY sort_key {order}, r.uri {order} LIMIT ?"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let keys = stmt
                .query_map(duckdb::params_from_iter(values.iter()), |r| {
                    let key = if key_is_int {
                        Value::from(r.get::<_, i64>(1)?)
                    } else {
                        Value::from(r.get::<_, String>(1)?)
                    };
                    Ok((r.get::<_, String>(0)?, key))
                })?
                .collect::<duckdb::Result<Vec<_>>>()?;
            let mut found: std::collections::HashMap<String, RecordRow> =
                records_by_uri(c, keys.iter().map(|(u, _)| u.as_str()))?
                    .into_iter()
                    .map(|r| (r.uri.clone(), r))
                    .collect();
            let mut rows: Vec<(RecordRow, Value)> = keys
                .into_iter()
                .filter_map(|(uri, key)| Some((found.remove(&uri)?, key)))
                .collect();
            let more = rows.len() as i64 > first;
            rows.truncate(first as usize);
            if backward {
                rows.reverse();
            }
            let info = PageInfo {
                has_next: if backward { had_cursor } else { more },
                has_previous: if backward { more } else { had_cursor },
                start_cursor: rows.first().map(|(r, k)| encode_gql_cursor(k, &r.uri)),
                end_cursor: rows.last().map(|(r, k)| encode_gql_cursor(k, &r.uri)),
            };
            let mut rows: Vec<RecordRow> = rows.into_iter().map(|(r, _)| r).collect();
            attach_counts(c, &mut rows)?;
            attach_targets(c, &mut rows)?;
            Ok(Page { rows, total, info })
        })
        .await
        .map_err(|e| match e.to_string() {
            m if m.contains("after") => async_graphql::Error::new("after does not fit this sortBy"),
            m => async_graphql::Error::new(m),
        })?;
    Ok(page)
}

async fn fetch_one(pool: &Arc<ReadPool>, uri: String) -> async_graphql::Result<Option<RecordRow>> {
    pool.with(move |c| {
        let mut stmt = c.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM records r WHERE uri = ?"
        ))?;
        let mut rows = stmt
            .query_map(params![uri], read_row)?
            .collect::<duckdb::Result<Vec<_>>>()?;
        attach_handles(c, rows.iter_mut())?;
        attach_counts(c, &mut rows)?;
        attach_targets(c, &mut rows)?;
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
    let state = state.pinned();
    Metrics::inc(&state.metrics.graphql_requests_total);
    execute(&state, &headers, req.into_inner()).await
}

/// Executes a request and shapes the HTTP answer per GraphQL-over-HTTP: a
/// request that could not run at all (syntax or validation error) is a 400
/// when the client accepts `application/graphql-response+json`.
async fn execute(state: &AppState, headers: &HeaderMap, req: async_graphql::Request) -> Response {
    let schema = state.generation().graphql.clone();
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
        let schema = state.generation().graphql.clone();
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
