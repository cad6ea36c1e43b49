//! Reading records for GraphQL: the SQL of a connection's filters and sort
//! (`read_query`), pages and their cursors (`fetch_page`), aggregates, and
//! the records a page links to (forward joins).

use super::*;

#[derive(Clone, Default)]
pub(super) struct Page {
    pub(super) rows: Vec<RecordRow>,
    pub(super) total: i64,
    pub(super) info: PageInfo,
}

/// Relay's page info.
#[derive(Clone, Default)]
pub(super) struct PageInfo {
    pub(super) has_next: bool,
    pub(super) has_previous: bool,
    pub(super) start_cursor: Option<String>,
    pub(super) end_cursor: Option<String>,
}

/// A scalar lexicon field that `where` and `sortBy` can use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kind {
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
pub(super) fn field_expr(prop: &str, kind: Kind) -> String {
    match kind {
        Kind::Str | Kind::Datetime => format!("(r.record ->> '{prop}')"),
        Kind::Int => format!("TRY_CAST(r.record ->> '{prop}' AS BIGINT)"),
        Kind::Bool => format!("TRY_CAST(r.record ->> '{prop}' AS BOOLEAN)"),
    }
}

/// The filters and order of one connection request.
#[derive(Default, Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Query {
    /// SQL conditions with `?` placeholders, and their values in order.
    pub(super) conditions: Vec<String>,
    pub(super) values: Vec<Bound>,
    /// Only records of this author (a DID or a handle): looked up through
    /// the DID index (`records_by`, schema/006), not as a condition, which
    /// would scan the table.
    pub(super) author: Option<String>,
    /// The sort key expression (never NULL) and whether it is an integer.
    pub(super) sort: Option<(String, bool)>,
    pub(super) descending: bool,
}

impl Query {
    /// Only records of `did`.
    pub(super) fn by_author(&mut self, did: String) {
        if self.author.is_none() {
            self.author = Some(did);
        } else {
            self.conditions.push("r.did = ?".into());
            self.values.push(Bound::Text(did));
        }
    }

    /// The table the conditions filter, aliased `r`, with its bound values:
    /// the author's records when there is an author, else all records.
    pub(super) fn source(
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
    pub(super) fn author_did(&self, c: &duckdb::Connection) -> duckdb::Result<Option<String>> {
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

pub(super) fn db_value(
    v: &async_graphql::dynamic::ValueAccessor<'_>,
    kind: Kind,
) -> async_graphql::Result<Bound> {
    Ok(match kind {
        Kind::Str | Kind::Datetime => Bound::Text(v.string()?.to_string()),
        Kind::Int => Bound::Int(v.i64()?),
        Kind::Bool => Bound::Bool(v.boolean()?),
    })
}

/// A value bound to a `?` of a GraphQL read: comparable and hashable, so
/// that requests that bind the same values are known to be the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Bound {
    Text(String),
    Int(i64),
    Bool(bool),
}

impl From<Bound> for duckdb::types::Value {
    fn from(b: Bound) -> duckdb::types::Value {
        match b {
            Bound::Text(s) => duckdb::types::Value::Text(s),
            Bound::Int(n) => duckdb::types::Value::BigInt(n),
            Bound::Bool(b) => duckdb::types::Value::Boolean(b),
        }
    }
}

/// Reads `where`, `sortBy` and `order` into SQL with bound values.
pub(super) fn read_query(
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
            q.values.push(Bound::Text(target.string()?.to_string()));
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
pub(super) struct Group {
    pub(super) keys: Vec<Option<String>>,
    pub(super) count: i64,
}

/// Runs a `...Aggregate` field: `count(*)` grouped by up to three fields.
pub(super) async fn aggregate(
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
            values.extend(query.values.iter().cloned().map(Into::into));
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
        .map_err(store_error)?;
    Ok(groups)
}

/// The position after which a page starts, typed for the sort (an integer
/// or a string key): a cursor of another sort is the client's error.
pub(super) fn after_position(
    after: Option<(Value, String)>,
    key_is_int: bool,
) -> async_graphql::Result<Option<(Bound, String)>> {
    let Some((key, uri)) = after else {
        return Ok(None);
    };
    let key = match (key, key_is_int) {
        (Value::Number(n), true) => n.as_i64().map(Bound::Int),
        (Value::String(s), false) => Some(Bound::Text(s)),
        _ => None,
    };
    match key {
        Some(k) => Ok(Some((k, uri))),
        None => Err(bad_request("after does not fit this sortBy")),
    }
}

/// An opaque page position: the sort key and URI of the last row.
pub(super) fn encode_gql_cursor(key: &Value, uri: &str) -> String {
    data_encoding::BASE64URL_NOPAD.encode(serde_json::json!([key, uri]).to_string().as_bytes())
}

pub(super) fn decode_gql_cursor(raw: &str) -> async_graphql::Result<(Value, String)> {
    let bad = || bad_request("after is not a cursor this server issued");
    let bytes = data_encoding::BASE64URL_NOPAD
        .decode(raw.as_bytes())
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    match v.as_array().map(Vec::as_slice) {
        Some([key, Value::String(uri)]) => Ok((key.clone(), uri.clone())),
        _ => Err(bad()),
    }
}

/// Records by URI for forward joins past the first level: a page
/// prefetches the records its rows link to ([`attach_targets`]); a target
/// that is not among them (a record that a joined record links to, or one
/// not indexed) is loaded here, batched with every other target asked for
/// at the same depth, and comes with its counts and its own targets, so
/// each further level costs one batch.
pub(crate) struct TargetRows(pub(super) Arc<ReadPool>);

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
            .map_err(loader_error)
    }
}

/// Loads the records that `rows` link to (with their counts) in two queries
/// and shares them with every row, for forward joins.
pub(super) fn attach_targets(c: &duckdb::Connection, rows: &mut [RecordRow]) -> duckdb::Result<()> {
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
pub(super) fn attach_counts(c: &duckdb::Connection, rows: &mut [RecordRow]) -> duckdb::Result<()> {
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

pub(super) async fn fetch_page(
    pool: &Arc<ReadPool>,
    collection: String,
    query: Query,
    cursor: Option<String>,
    first: i64,
    backward: bool,
) -> async_graphql::Result<Page> {
    let (key, key_is_int) = query.sort.clone().unwrap_or(("r.uri".to_string(), false));
    let after = after_position(
        cursor.as_deref().map(decode_gql_cursor).transpose()?,
        key_is_int,
    )?;
    let had_cursor = after.is_some();
    // Going backward reads in the opposite order and turns the page around.
    let descending = query.descending != backward;
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
            values.extend(query.values.iter().cloned().map(Into::into));
            let total: i64 = c.query_row(
                &format!("SELECT count(*) FROM {from} WHERE {filter}"),
                duckdb::params_from_iter(values.iter()),
                |r| r.get(0),
            )?;
            let order = seek(&after, &key, descending, &mut filter, &mut values);
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
        .map_err(store_error)?;
    Ok(page)
}

pub(super) async fn fetch_one(
    pool: &Arc<ReadPool>,
    uri: String,
) -> async_graphql::Result<Option<RecordRow>> {
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
    .map_err(store_error)
}
