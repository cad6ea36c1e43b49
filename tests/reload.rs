//! SIGHUP reloads the lexicons: the GraphQL schema is rebuilt and swapped,
//! and a newly added record type is served without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::server::Server;

fn copy_dir(from: &Path, to: &Path, skip: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target, skip);
        } else if !path.ends_with(skip) {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn query_fields(server: &Server) -> Vec<String> {
    let gql = server.graphql("{ __type(name: \"Query\") { fields { name } } }");
    gql["data"]["__type"]["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("{gql}"))
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sighup_swaps_in_a_new_record_type() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let lexicons = dir.path().join("lexicons");
    let post = Path::new("app/bsky/feed/post.json");
    copy_dir(&root.join("lexicons"), &lexicons, post);
    // The production frames, paced so that most arrive after the reload.
    let frames = common::fixture("jetstream/frames.bin");
    let server = Server::start(
        &[&format!("replay:{}?rate=20", frames.display())],
        &dir.path().join("data"),
        &lexicons,
    );
    let before = query_fields(&server);
    let gql = server.graphql("{ appBskyFeedLike { totalCount } }");
    assert!(gql.get("errors").is_none(), "{gql}");
    assert!(
        before.contains(&"appBskyFeedLike".to_string()),
        "{before:?}"
    );
    assert!(
        !before.contains(&"appBskyFeedPost".to_string()),
        "{before:?}"
    );

    std::fs::copy(root.join("lexicons").join(post), lexicons.join(post)).unwrap();
    // A broken file does not stop the reload; it is reported and skipped.
    std::fs::write(lexicons.join("broken.json"), "{ not json").unwrap();
    server.hangup();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let fields = query_fields(&server);
        if fields.contains(&"appBskyFeedPost".to_string()) {
            assert!(fields.contains(&"appBskyFeedLike".to_string()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no appBskyFeedPost after SIGHUP: {fields:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ingest follows the new catalog: posts arriving after the reload are indexed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let gql = server.graphql("{ appBskyFeedPost { totalCount } }");
        if gql["data"]["appBskyFeedPost"]["totalCount"]
            .as_i64()
            .unwrap_or(0)
            > 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no post indexed after the reload: {gql}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The query methods came through the reload too.
    let (status, _) = server.get("/xrpc/dev.lexview.books.getBookStats");
    assert_eq!(status, 200);
    assert!(server.stop().success());
}
