//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use lexview::lexicon::Catalog;

/// A file under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The lexicon catalog of a fixture directory; panics on any load error.
pub fn catalog(rel: &str) -> Arc<Catalog> {
    let (catalog, errors) = Catalog::load_dir(&fixture(rel)).expect("read lexicon dir");
    assert!(errors.is_empty(), "lexicon load errors: {errors:#?}");
    Arc::new(catalog)
}

/// The bundled lexicons of the product (`./lexicons`).
pub fn bundled_catalog() -> Arc<Catalog> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    let (catalog, errors) = Catalog::load_dir(&dir).expect("read lexicon dir");
    assert!(
        errors.is_empty(),
        "bundled lexicon load errors: {errors:#?}"
    );
    Arc::new(catalog)
}

/// The frames of a recorded frames file.
pub fn frames(rel: &str) -> Vec<Vec<u8>> {
    let data = std::fs::read(fixture(rel)).expect("read frames");
    let (frames, truncated) = lexview::source::replay::split_frames(&data);
    assert!(truncated.is_none());
    frames.into_iter().map(<[u8]>::to_vec).collect()
}

/// Readable diff of two multi-line strings: the first differing lines.
pub fn assert_lines_eq(expected: &str, got: &str) {
    if expected == got {
        return;
    }
    for (i, (e, g)) in expected.lines().zip(got.lines()).enumerate() {
        if e != g {
            panic!(
                "first difference at line {}:\n  expected: {e}\n       got: {g}",
                i + 1
            );
        }
    }
    panic!(
        "line counts differ: expected {} lines, got {}",
        expected.lines().count(),
        got.lines().count()
    );
}
pub mod pds;
pub mod relay;
pub mod server;
