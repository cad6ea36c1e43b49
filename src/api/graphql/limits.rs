//! What a GraphQL request may ask for, checked before async-graphql parses
//! or runs it (over HTTP and over WebSocket alike: [`Limited`] is the
//! executor both use).
//!
//! async-graphql's parser recurses once per nesting level of the query
//! text and checks its own depth limit only after parsing, so a 4 KB value
//! literal nested 2,000 deep overflowed a worker's stack; the text is
//! scanned first ([`MAX_NESTING`]). Its complexity limit counts fields
//! once each, whatever page size they ask for, and the dynamic schema
//! cannot weigh a field: the cost here counts each field as many times as
//! the pages around it can repeat it ([`MAX_COST`]), and the number of root
//! fields and fields in all (aliases included) is capped.

use std::collections::HashSet;
use std::sync::Arc;

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Field, Selection, SelectionSet,
};
use async_graphql::{Data, Executor, Request, Response, ServerError};
use futures::stream::BoxStream;

/// The longest query text.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// The deepest nesting of `{`, `[` and `(` in the query text.
pub const MAX_NESTING: usize = 64;
/// Root fields (aliases included) in one operation.
pub const MAX_ROOT_FIELDS: usize = 50;
/// Fields in one operation (fragments expanded, aliases included).
pub const MAX_FIELDS: usize = 2_000;
/// Fields weighed by the pages that repeat them: a field inside a
/// connection of `first: 100` counts 100 times.
pub const MAX_COST: u64 = 50_000;
/// The page size a connection is weighed with when it asks for none.
const DEFAULT_PAGE: u64 = 20;

/// Why a request is refused, for the client.
pub fn refused(message: String) -> Response {
    let mut err = ServerError::new(message, None);
    let mut ext = async_graphql::ErrorExtensionValues::default();
    ext.set("code", "InvalidRequest");
    err.extensions = Some(ext);
    Response::from_errors(vec![err])
}

/// Checks `req` against the limits above; `Err` says why it is refused.
pub fn check(req: &Request) -> Result<(), String> {
    if req.query.len() > MAX_QUERY_BYTES {
        return Err(format!("the query is longer than {MAX_QUERY_BYTES} bytes"));
    }
    let depth = nesting(&req.query);
    if depth > MAX_NESTING {
        return Err(format!("the query nests deeper than {MAX_NESTING} levels"));
    }
    // Safe to parse now: the parser's recursion is bounded by the scan.
    let Ok(doc) = async_graphql::parser::parse_query(&req.query) else {
        // async-graphql reports the syntax error itself.
        return Ok(());
    };
    let variables = serde_json::to_value(&req.variables).unwrap_or_default();
    let operations: Vec<&SelectionSet> = match &doc.operations {
        DocumentOperations::Single(op) => vec![&op.node.selection_set.node],
        DocumentOperations::Multiple(ops) => match &req.operation_name {
            Some(name) => ops
                .get(name.as_str())
                .map(|op| vec![&op.node.selection_set.node])
                .unwrap_or_default(),
            None => ops.values().map(|op| &op.node.selection_set.node).collect(),
        },
    };
    for set in operations {
        let mut weigh = Weigh {
            doc: &doc,
            variables: &variables,
            fields: 0,
            cost: 0,
        };
        let roots = weigh.set(set, 1, 0, &mut HashSet::new());
        if roots > MAX_ROOT_FIELDS {
            return Err(format!(
                "{roots} root fields in one operation; at most {MAX_ROOT_FIELDS}"
            ));
        }
        if weigh.fields > MAX_FIELDS {
            return Err(format!(
                "{} fields in one operation; at most {MAX_FIELDS}",
                weigh.fields
            ));
        }
        if weigh.cost > MAX_COST {
            return Err(format!(
                "the query would read up to {} values (fields times the page sizes around them); at most {MAX_COST}: ask for smaller pages or fewer fields",
                weigh.cost
            ));
        }
    }
    Ok(())
}

/// The deepest nesting of brackets in `query`, outside strings and
/// comments, scanned without recursion.
fn nesting(query: &str) -> usize {
    let b = query.as_bytes();
    let (mut i, mut depth, mut max) = (0, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if b[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < b.len() && !b[i..].starts_with(b"\"\"\"") {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    max
}

/// A walk over an operation's selections that counts fields and their
/// weight.
struct Weigh<'a> {
    doc: &'a ExecutableDocument,
    variables: &'a serde_json::Value,
    fields: usize,
    cost: u64,
}

impl Weigh<'_> {
    /// Weighs `set`, whose fields each repeat `times`; returns how many
    /// fields it selects directly (fragments expanded).
    fn set(
        &mut self,
        set: &SelectionSet,
        times: u64,
        depth: usize,
        fragments: &mut HashSet<String>,
    ) -> usize {
        if depth > MAX_NESTING || self.fields > MAX_FIELDS {
            return 0;
        }
        let mut direct = 0;
        for sel in &set.items {
            match &sel.node {
                Selection::Field(f) => {
                    direct += 1;
                    self.field(&f.node, times, depth, fragments);
                }
                Selection::InlineFragment(fr) => {
                    direct += self.set(&fr.node.selection_set.node, times, depth + 1, fragments);
                }
                Selection::FragmentSpread(sp) => {
                    let name = sp.node.fragment_name.node.to_string();
                    // A fragment spread inside itself is the validator's
                    // error; here it is counted once.
                    if !fragments.insert(name.clone()) {
                        continue;
                    }
                    if let Some(fr) = self.doc.fragments.get(&sp.node.fragment_name.node) {
                        direct +=
                            self.set(&fr.node.selection_set.node, times, depth + 1, fragments);
                    }
                    fragments.remove(&name);
                }
            }
        }
        direct
    }

    fn field(&mut self, f: &Field, times: u64, depth: usize, fragments: &mut HashSet<String>) {
        self.fields += 1;
        self.cost = self.cost.saturating_add(times);
        let children = &f.selection_set.node;
        if children.items.is_empty() {
            return;
        }
        let page = self.page_size(f, children);
        self.set(children, times.saturating_mul(page), depth + 1, fragments);
    }

    /// How many times a field's selections repeat: its `first` or `last`
    /// (a literal or a variable), [`DEFAULT_PAGE`] for a connection that
    /// asks for none, else once.
    fn page_size(&self, f: &Field, children: &SelectionSet) -> u64 {
        for (name, value) in &f.arguments {
            if !matches!(name.node.as_str(), "first" | "last") {
                continue;
            }
            let resolved = value.node.clone().into_const_with(|name| {
                self.variables
                    .get(name.as_str())
                    .and_then(|v| async_graphql::Value::from_json(v.clone()).ok())
                    .ok_or(())
            });
            let n = match resolved {
                Ok(async_graphql::Value::Number(n)) => n.as_u64(),
                _ => None,
            };
            if let Some(n) = n {
                return n.max(1);
            }
        }
        let connection = children.items.iter().any(|s| {
            matches!(&s.node, Selection::Field(c)
                if matches!(c.node.name.node.as_str(), "nodes" | "edges" | "hits"))
        });
        if connection {
            DEFAULT_PAGE
        } else {
            1
        }
    }
}

/// The schema, with every request checked against the limits first (the
/// executor of HTTP requests and WebSocket operations alike).
#[derive(Clone)]
pub struct Limited(pub async_graphql::dynamic::Schema);

impl Executor for Limited {
    async fn execute(&self, request: Request) -> Response {
        match check(&request) {
            Ok(()) => self.0.execute(request).await,
            Err(why) => refused(why),
        }
    }

    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        use futures::StreamExt;
        match check(&request) {
            Ok(()) => self
                .0
                .execute_stream_with_session_data(request, session_data.unwrap_or_default()),
            Err(why) => futures::stream::once(async move { refused(why) }).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(q: &str) -> Request {
        Request::new(q)
    }

    #[test]
    fn nesting_is_measured_outside_strings_and_comments() {
        assert_eq!(nesting("{ a { b } }"), 2);
        assert_eq!(nesting(r#"{ a(x: "{{{{[[[") }"#), 2);
        assert_eq!(nesting("# {{{{{{\n{ a }"), 1);
        assert_eq!(nesting(r#"{ a(x: """ {{{ \""" {{ """) }"#), 2);
        let deep = format!("{{ a(x: {}1{}) }}", "[".repeat(2_000), "]".repeat(2_000));
        assert!(check(&req(&deep)).unwrap_err().contains("nests deeper"));
    }

    #[test]
    fn cost_counts_fields_times_the_pages_around_them() {
        // 100 x 100 nodes, 2 fields each: 20,000 + 100 + 2 ...
        let ok = "{ a(first: 100) { nodes { uri b(first: 100) { nodes { uri } } } } }";
        assert!(check(&req(ok)).is_ok(), "{:?}", check(&req(ok)));
        let big = "{ a(first: 100) { nodes { b(first: 100) { nodes { c(first: 100) { nodes { uri } } } } } } }";
        assert!(check(&req(big)).unwrap_err().contains("values"));
        // The page size may come from a variable.
        let mut r = req("query($n: Int) { a(first: $n) { nodes { b(first: $n) { nodes { c(first: $n) { nodes { uri } } } } } } }");
        r = r.variables(async_graphql::Variables::from_json(
            serde_json::json!({"n": 100}),
        ));
        assert!(check(&r).is_err());
        // Aliases: many root fields.
        let many: String = (0..60).map(|i| format!("a{i}: a {{ x }} ")).collect();
        assert!(check(&req(&format!("{{ {many} }}")))
            .unwrap_err()
            .contains("root fields"));
        // Fragments count where they are spread.
        let frag = "query { a(first: 100) { nodes { ...F } } } fragment F on T { b(first: 100) { nodes { c(first: 100) { nodes { uri } } } } }";
        assert!(check(&req(frag)).is_err());
    }
}
