//! GraphQL's `search` root field over the full-text index.

use super::*;

/// One page of search hits with their records.
pub(super) struct SearchPage {
    pub(super) total: usize,
    pub(super) hits: Vec<(f32, RecordRow)>,
}

/// `search(...)`: full-text search over every searched record type, and the
/// types it returns.
/// Long on purpose: the field, its arguments and its result types are
/// declared together, as the schema shows them.
pub(super) fn search_field(search: Arc<crate::index::search::Search>) -> (GqlField, Vec<Object>) {
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
                .map_err(store_error)?;
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
