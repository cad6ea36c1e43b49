//! Every value in the atproto interop syntax vectors, classified by the
//! format checks that validate lexicon `format`s.

mod common;

use lexview::syntax::Format;

fn values(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(common::fixture(&format!("interop/syntax/{file}")))
        .expect("vector file");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn check(format: Format, prefix: &str) {
    let mut wrong = Vec::new();
    let valid = values(&format!("{prefix}_syntax_valid.txt"));
    let invalid = values(&format!("{prefix}_syntax_invalid.txt"));
    assert!(
        !valid.is_empty() && !invalid.is_empty(),
        "vectors for {prefix} missing"
    );
    for v in &valid {
        if !format.is_valid(v) {
            wrong.push(format!("valid rejected: {v:?}"));
        }
    }
    for v in &invalid {
        if format.is_valid(v) {
            wrong.push(format!("invalid accepted: {v:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{format}: {} of {} vectors wrong:\n{}",
        wrong.len(),
        valid.len() + invalid.len(),
        wrong.join("\n")
    );
}

#[test]
fn did() {
    check(Format::Did, "did");
}

#[test]
fn handle() {
    check(Format::Handle, "handle");
}

#[test]
fn nsid() {
    check(Format::Nsid, "nsid");
}

#[test]
fn at_uri() {
    check(Format::AtUri, "aturi");
}

#[test]
fn at_identifier() {
    check(Format::AtIdentifier, "atidentifier");
}

#[test]
fn tid() {
    check(Format::Tid, "tid");
}

#[test]
fn record_key() {
    check(Format::RecordKey, "recordkey");
}

#[test]
fn cid() {
    check(Format::Cid, "cid");
}

#[test]
fn datetime() {
    check(Format::Datetime, "datetime");
    // Syntactically fine but not real dates or times: the lexicon format rejects them.
    for v in values("datetime_parse_invalid.txt") {
        assert!(!Format::Datetime.is_valid(&v), "accepted {v:?}");
    }
}

#[test]
fn language() {
    check(Format::Language, "language");
    // The lexicon `language` format is a syntax check (as in the reference
    // implementations): tags that are well-formed but fail a full BCP-47
    // parse (duplicate variants or extensions) are accepted by design.
    for v in values("language_parse_invalid.txt") {
        assert!(
            Format::Language.is_valid(&v),
            "syntax check rejected well-formed {v:?}"
        );
    }
}

#[test]
fn uri() {
    check(Format::Uri, "uri");
}
