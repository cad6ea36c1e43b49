//! SQL-defined query methods: files are checked at load, parameters are bound
//! (never spliced), and answers that do not match the lexicon are refused.

mod common;

use std::path::PathBuf;

use common::server::Server;
use lexview::api::repo::queries;
use lexview::index::store::Store;
use serde_json::json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shipped_methods_load_and_bad_files_are_reported_with_their_path() {
    let catalog = common::bundled_catalog();
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let (methods, errors) = queries::load(&root().join("queries"), &catalog, &store.readers());
    assert!(errors.is_empty(), "{errors:#?}");
    let mut names: Vec<&str> = methods.names().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "dev.lexview.books.getBookStats",
            "dev.lexview.calendar.getUpcomingEvents",
            "dev.lexview.graph.getMutualFollows"
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, sql: &str| std::fs::write(dir.path().join(name), sql).unwrap();
    write(
        "dev.lexview.graph.getMutualFollows.sql",
        "SELECT $nope AS did",
    );
    write("com.example.nothing.sql", "SELECT 1");
    write(
        "dev.lexview.books.getBookStats.sql",
        "SELEC hiveId FROM records",
    );
    write("app.bsky.feed.like.sql", "SELECT 1");
    write(
        "dev.lexview.calendar.getUpcomingEvents.sql",
        "SELECT uri FROM records LIMIT $limit;\n",
    );
    let (methods, errors) = queries::load(dir.path(), &catalog, &store.readers());
    let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(messages.len(), 4, "{messages:#?}");
    let find = |file: &str| {
        messages
            .iter()
            .find(|m| m.contains(file))
            .unwrap_or_else(|| panic!("no error for {file}: {messages:#?}"))
            .clone()
    };
    assert!(find("getMutualFollows.sql").contains("$nope is not a parameter"));
    assert!(find("com.example.nothing.sql").contains("no `type: query` lexicon"));
    assert!(find("getBookStats.sql").contains("does not prepare"));
    assert!(find("app.bsky.feed.like.sql").contains("no `type: query` lexicon"));
    assert_eq!(
        methods.names().collect::<Vec<_>>(),
        ["dev.lexview.calendar.getUpcomingEvents"],
        "the good file is served, with its trailing semicolon"
    );
}

#[test]
fn an_answer_that_does_not_match_the_lexicon_is_a_500_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("queries");
    std::fs::create_dir(&q).unwrap();
    std::fs::write(
        q.join("dev.lexview.graph.getMutualFollows.sql"),
        "SELECT 'not a did' AS did, $actor AS handle LIMIT $limit",
    )
    .unwrap();
    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let server = Server::start_with(
        &[&format!("replay:{}", empty.display())],
        &dir.path().join("data"),
        &root().join("lexicons"),
        &q,
    );
    let (status, body) =
        server.get("/xrpc/dev.lexview.graph.getMutualFollows?actor=alice.test&limit=3");
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "InternalServerError");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Output.mutuals[0].did"),
        "{body}"
    );
    // Parameters are still checked first.
    let (status, body) = server.get("/xrpc/dev.lexview.graph.getMutualFollows?limit=3");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("InvalidRequest"))
    );
    assert!(
        body["message"].as_str().unwrap().contains("actor"),
        "{body}"
    );
    let (status, body) =
        server.get("/xrpc/dev.lexview.graph.getMutualFollows?actor=alice.test&limit=ten");
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("InvalidRequest"))
    );
    assert!(
        body["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
    assert_eq!(
        server.get("/xrpc/dev.lexview.books.getBookStats").1["error"],
        json!("MethodNotImplemented"),
        "a method whose SQL file is absent is not served"
    );
    assert!(server.stop().success());
}
