//! The GraphQL schema generated from large real lexicon sets is valid for
//! graphql-js (introspection, buildClientSchema, assertValidSchema).

mod common;

use common::server::Server;

fn check(lexicons: &str, operations: &str) {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let server = Server::start_with(
        &[&format!("replay:{}", empty.display())],
        &dir.path().join("data"),
        &common::fixture(lexicons),
        &dir.path().join("no-queries"),
    );
    common::assert_graphql_conforms(&format!("{}/graphql", server.base), operations);
    assert!(server.stop().success());
}

#[test]
fn the_schema_of_470_fixture_lexicons_is_valid() {
    check(
        "lexicons",
        "{ appBskyFeedPost(first: 3) { nodes { uri embed { __typename } facets { features { __typename } } } } }",
    );
}

#[test]
fn the_schema_of_441_wild_lexicons_is_valid() {
    check("lexicons-wild", "{ __typename }");
}
