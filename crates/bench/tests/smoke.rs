//! `lexview-bench` runs its ingest cases end to end on small inputs: the
//! recording (with and without verification and the store) and a small
//! generated corpus and repository. Figures are not checked here (speed is
//! measured in benchmarks, not in tests); that each case runs and counts
//! what it should is.

use std::path::Path;
use std::process::Command;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
}

fn bench(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lexview-bench"))
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .arg("--lexicons")
        .arg(fixtures().join("lexicons"))
        .output()
        .expect("run lexview-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lexview-bench {args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_recording_is_ingested_with_and_without_verification() {
    let frames = fixtures().join("jetstream/frames.bin");
    let frames = frames.to_str().unwrap();
    let out = bench(&["--frames", frames, "--loops", "2"]);
    assert!(
        out.contains("(a) 150 recorded frames x 2 loops: 300 events"),
        "{out}"
    );
    let docs = fixtures().join("jetstream/did_docs.json");
    let out = bench(&[
        "--frames",
        frames,
        "--loops",
        "2",
        "--did-docs",
        docs.to_str().unwrap(),
    ]);
    assert!(out.contains(" 0 rejected"), "{out}");
    assert!(!out.contains(" 0 commits verified"), "{out}");
}

#[test]
fn a_generated_corpus_and_repository_are_ingested() {
    let out = bench(&["--generate", "2000", "--repo", "3000"]);
    assert!(out.contains("(b) 2000 generated commit events"), "{out}");
    assert!(out.contains("3000 records)"), "{out}");
}
