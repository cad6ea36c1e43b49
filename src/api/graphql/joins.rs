//! Reverse joins: on every record type (and `Actor`), the records of each
//! other type that link to it, with their counts, batched per page through
//! data loaders (`Connections`, `ActorCounts`).

use super::*;

/// A record type as the source of reverse joins.
pub(super) struct JoinSource {
    pub(super) nsid: String,
    pub(super) tname: String,
    pub(super) fields: Arc<Vec<(String, String, Kind)>>,
    /// (path in the backlink index, whether it holds a DID rather than an AT-URI).
    pub(super) paths: Vec<(String, bool)>,
}

/// The paths at which a record type's lexicon puts AT-URIs (`format: at-uri`,
/// or the `uri` of a strongRef-like object) and DIDs, as the backlink index
/// writes them: top-level fields and fields of objects one level down
/// (`.subject.uri`, `.reply.parent.uri`, `.subject`). Arrays and unions are
/// not followed (their paths vary per element).
pub(super) fn link_paths(
    catalog: &Catalog,
    schema: &crate::lexicon::ObjectSchema,
) -> Vec<(String, bool)> {
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
pub(super) fn path_name(path: &str) -> String {
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
pub(super) fn add_reverse_joins(
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
                            .map_err(loaded_error)?
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
pub(super) struct ActorCountKey {
    pub(super) did: String,
    pub(super) collection: String,
    pub(super) path: Option<String>,
}

/// Loads the actor counts of a response together (async-graphql's
/// DataLoader batches the keys requested in the same tick).
pub(super) struct ActorCounts(pub(super) Arc<ReadPool>);

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
            .map_err(loader_error)
    }
}

/// Everything of a reverse-join connection request but its parent. Two
/// requests are the same when their fields are (`after` by its cursor).
#[derive(Debug)]
pub(super) struct ConnSpec {
    pub(super) collection: String,
    pub(super) join: Join,
    pub(super) query: Query,
    /// The cursor as given, and `after` decoded from it.
    pub(super) cursor: Option<String>,
    pub(super) after: Option<(Bound, String)>,
    pub(super) first: i64,
    pub(super) backward: bool,
}

impl ConnSpec {
    /// What makes two requests the same (`after` is decoded from `cursor`).
    fn identity(&self) -> impl PartialEq + std::hash::Hash + '_ {
        (
            &self.collection,
            &self.join,
            &self.query,
            &self.cursor,
            self.first,
            self.backward,
        )
    }
}

impl PartialEq for ConnSpec {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for ConnSpec {}

impl std::hash::Hash for ConnSpec {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

/// One parent's page of a reverse-join connection; requests with the same
/// spec (the same field and arguments) are loaded together.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct ConnKey {
    pub(super) spec: Arc<ConnSpec>,
    pub(super) parent: String,
}

/// Loads the pages of a reverse-join connection for all its parents in a
/// response at once: per distinct request, one count query and one
/// windowed page query (each parent's first rows by `row_number()`), then
/// the backlink counts and forward targets of all rows together.
pub(super) struct Connections(pub(super) Arc<ReadPool>);

impl async_graphql::dataloader::Loader<ConnKey> for Connections {
    type Value = Page;
    type Error = Arc<String>;

    async fn load(
        &self,
        keys: &[ConnKey],
    ) -> Result<std::collections::HashMap<ConnKey, Page>, Self::Error> {
        let mut groups: std::collections::HashMap<Arc<ConnSpec>, Vec<ConnKey>> =
            std::collections::HashMap::new();
        for k in keys {
            groups.entry(k.spec.clone()).or_default().push(k.clone());
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
            .map_err(loader_error)
    }
}

/// Keyset pagination: adds to `filter` (and its values) the condition for
/// rows after the cursor `after` in the order of `key` then URI, and returns
/// that order's SQL direction.
pub(super) fn seek(
    after: &Option<(Bound, String)>,
    key: &str,
    descending: bool,
    filter: &mut String,
    values: &mut Vec<duckdb::types::Value>,
) -> &'static str {
    let (cmp, order) = if descending {
        ("<", "DESC")
    } else {
        (">", "ASC")
    };
    if let Some((k, uri)) = after {
        filter.push_str(&format!(
            " AND ({key} {cmp} ? OR ({key} = ? AND r.uri {cmp} ?))"
        ));
        values.push(k.clone().into());
        values.push(k.clone().into());
        values.push(duckdb::types::Value::Text(uri.clone()));
    }
    order
}

/// The pages of `spec` for each of `parents` (URIs or DIDs, no spaces).
/// Long on purpose: one statement for many pages (a window per parent),
/// with its SQL built and its rows split in one place.
pub(super) fn batch_pages(
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
    values.extend(spec.query.values.iter().cloned().map(Into::into));
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
    let order = seek(&spec.after, &key, descending, &mut filter, &mut values);
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Join {
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
    pub(super) fn parent(
        &self,
        ctx: &ResolverContext<'_>,
    ) -> async_graphql::Result<Option<String>> {
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
    pub(super) fn apply(
        &self,
        ctx: &ResolverContext<'_>,
        q: &mut Query,
    ) -> async_graphql::Result<()> {
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
                q.values.push(Bound::Text(parent()?));
                q.values.push(Bound::Text(path.clone()));
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
pub(super) fn connection_field(
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
                    let after = after_position(
                        cursor.as_deref().map(decode_gql_cursor).transpose()?,
                        query.sort.as_ref().is_some_and(|(_, int)| *int),
                    )?;
                    let spec = ConnSpec {
                        collection,
                        join,
                        query,
                        after,
                        cursor: cursor.clone(),
                        first: n,
                        backward,
                    };
                    let key = ConnKey {
                        spec: Arc::new(spec),
                        parent,
                    };
                    let loader = ctx.data::<DataLoader<Connections>>()?;
                    let page = loader
                        .load_one(key)
                        .await
                        .map_err(loaded_error)?
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
