//! `lexview backfill` from a real PDS (listRepos + getRepo, commits verified
//! against the in-memory PLC) gives exactly the index the live stream gave,
//! and a second run resumes (skips what is done) without changing it.

mod common;

use std::path::{Path, PathBuf};

use common::pds::Pds;
use common::server::{command, sql, Server};
use serde_json::json;

/// The index, without `records.rev`: a live record carries the rev of the
/// commit that wrote it, a backfilled one the rev of the snapshot it came
/// from (a repository does not say which commit wrote each record). That
/// difference is on purpose; `revs` checks it.
fn dump(data: &Path) -> String {
    let mut out = String::new();
    for q in [
        "SELECT uri, cid, record::VARCHAR FROM records ORDER BY uri",
        "SELECT source_uri, path, target FROM links ORDER BY ALL",
        "SELECT target, collection, path, n FROM link_counts ORDER BY ALL",
        "SELECT uri, reason FROM quarantine ORDER BY ALL",
    ] {
        let (ok, stdout, stderr) = sql(data, q);
        assert!(ok, "sql failed: {stderr}");
        out.push_str(&stdout);
    }
    out
}

fn backfill(pds: &Pds, data: &Path) -> String {
    let lexicons = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    let out = command(
        &[
            "backfill", "--host", &pds.url, "--verify", "full", "--plc", &pds.plc,
        ],
        data,
        &lexicons,
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "backfill failed: {stderr}");
    stderr + &String::from_utf8_lossy(&out.stdout)
}

#[test]
fn a_backfill_from_the_pds_equals_the_live_index_and_resumes() {
    let mut pds = Pds::start();
    let live = tempfile::tempdir().unwrap();
    let lexicons = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    let server = Server::start_full(
        &[&format!("{}?cursor=0", pds.firehose)],
        live.path(),
        &lexicons,
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("queries"),
        &["--plc", &pds.plc, "--handle-resolver", &pds.url],
    );

    let alice = pds.cmd(json!({"op": "createAccount", "handle": "alice.test"}))["did"].clone();
    let bob = pds.cmd(json!({"op": "createAccount", "handle": "bob.test"}))["did"].clone();
    let now = "2026-11-24T12:00:00.000Z";
    let post = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
        "record": {"text": "backfilled or live, the same", "createdAt": now}}),
    );
    let gone = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
        "record": {"text": "soon deleted", "createdAt": now}}),
    );
    pds.cmd(
        json!({"op": "create", "did": bob, "collection": "app.bsky.feed.like",
        "record": {"subject": {"uri": post["uri"], "cid": post["cid"]}, "createdAt": now}}),
    );
    pds.cmd(
        json!({"op": "create", "did": bob, "collection": "app.bsky.graph.follow",
        "record": {"subject": alice, "createdAt": now}}),
    );
    pds.cmd(
        json!({"op": "put", "did": bob, "collection": "app.bsky.actor.profile", "rkey": "self",
        "record": {"displayName": "Bob"}}),
    );
    pds.cmd(
        json!({"op": "put", "did": bob, "collection": "app.bsky.actor.profile", "rkey": "self",
        "record": {"displayName": "Bob B."}}),
    );
    pds.cmd(
        json!({"op": "create", "did": bob, "collection": "xyz.statusphere.status",
        "record": {"status": "not one grapheme", "createdAt": now}}),
    );
    let last = pds.cmd(
        json!({"op": "delete", "did": alice, "collection": "app.bsky.feed.post",
        "rkey": gone["rkey"]}),
    );
    server.wait_for_cursor(last["seq"].as_i64().unwrap());
    assert!(server.stop().success());
    let expected = dump(live.path());
    assert!(expected.contains("backfilled or live"), "{expected}");

    let filled = tempfile::tempdir().unwrap();
    let log = backfill(&pds, filled.path());
    assert!(
        log.contains("backfilled 2 repositories (0 failed)"),
        "{log}"
    );
    common::assert_lines_eq(&expected, &dump(filled.path()));

    let (ok, revs, _) = sql(
        filled.path(),
        "SELECT count(*) FROM records r JOIN backfill_repos b USING (did) WHERE r.rev <> b.rev",
    );
    assert!(
        ok && revs.lines().nth(2).map(str::trim) == Some("0"),
        "{revs}"
    );

    // Again: nothing to do, nothing changed.
    let log = backfill(&pds, filled.path());
    assert!(
        log.contains("2 already backfilled at their current rev"),
        "{log}"
    );
    assert!(
        log.contains("backfilled 0 repositories (0 failed)"),
        "{log}"
    );
    common::assert_lines_eq(&expected, &dump(filled.path()));

    // Audit: both indexes match each repository (the PDS found through the
    // DID document in the PLC)...
    let plc = pds.plc.clone();
    let audit = |did: &serde_json::Value, data: &Path| {
        let out = command(
            &["audit", did.as_str().unwrap(), "--plc", &plc],
            data,
            &lexicons,
        )
        .output()
        .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    for did in [&alice, &bob] {
        for data in [live.path(), filled.path()] {
            let (ok, report) = audit(did, data);
            assert!(ok && report.contains(": 0 differences"), "{report}");
        }
    }
    // ...and report what changed in a repository since.
    let late = pds.cmd(
        json!({"op": "create", "did": alice, "collection": "app.bsky.feed.post",
        "record": {"text": "written while nothing was indexing", "createdAt": now}}),
    );
    pds.cmd(json!({"op": "delete", "did": alice, "collection": "app.bsky.feed.post", "rkey": post["rkey"]}));
    let (ok, report) = audit(&alice, live.path());
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!("missing  {}", late["uri"].as_str().unwrap())),
        "{report}"
    );
    assert!(
        report.contains(&format!("extra    {}", post["uri"].as_str().unwrap())),
        "{report}"
    );
    assert!(report.contains(": 2 differences"), "{report}");
    // A backfill catches up with alice's new rev (only hers) and the audit is clean.
    let log = backfill(&pds, filled.path());
    assert!(
        log.contains("1 already backfilled") && log.contains("backfilled 1 repositories"),
        "{log}"
    );
    let (ok, report) = audit(&alice, filled.path());
    assert!(ok && report.contains(": 0 differences"), "{report}");
}

/// `serve --backfill`: a lexview that starts after the history was written
/// indexes it (listed on the PDS, fetched through the DID documents, each
/// repository a snapshot while its live events wait), takes the live
/// writes made meanwhile, and ends with exactly what a backfill of the
/// final repositories gives: no gap, no double count.
#[test]
fn serve_backfill_cuts_over_to_the_live_stream() {
    let mut pds = Pds::start();
    let now = "2026-11-24T12:00:00.000Z";
    let mut dids = Vec::new();
    for name in ["ann", "ben", "cat", "dan"] {
        dids.push(
            pds.cmd(json!({"op": "createAccount", "handle": format!("{name}.test")}))["did"]
                .clone(),
        );
    }
    let mut posts = Vec::new();
    for (i, did) in dids.iter().enumerate() {
        for j in 0..3 {
            posts.push(pds.cmd(
                json!({"op": "create", "did": did, "collection": "app.bsky.feed.post",
                "record": {"text": format!("history {i}.{j}"), "createdAt": now}}),
            ));
        }
    }
    for did in &dids {
        for p in posts.iter().step_by(2) {
            pds.cmd(
                json!({"op": "create", "did": did, "collection": "app.bsky.feed.like",
                "record": {"subject": {"uri": p["uri"], "cid": p["cid"]}, "createdAt": now}}),
            );
        }
        pds.cmd(
            json!({"op": "create", "did": did, "collection": "app.bsky.graph.follow",
            "record": {"subject": dids[0], "createdAt": now}}),
        );
    }

    let data = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // Live from now on (no cursor): the history comes only from the backfill.
    let server = Server::start_full(
        &[&pds.firehose],
        data.path(),
        &root.join("lexicons"),
        &root.join("queries"),
        &[&["--backfill"][..], &pds.verify_args()].concat(),
    );
    // Live writes while the backfill runs: likes, a delete, new posts.
    let mut last = 0;
    for (i, did) in dids.iter().enumerate() {
        let p = &posts[i * 3 + 1];
        pds.cmd(
            json!({"op": "create", "did": did, "collection": "app.bsky.feed.like",
            "record": {"subject": {"uri": p["uri"], "cid": p["cid"]}, "createdAt": now}}),
        );
        pds.cmd(
            json!({"op": "delete", "did": did, "collection": "app.bsky.feed.post",
            "rkey": posts[i * 3]["rkey"]}),
        );
        last = pds.cmd(
            json!({"op": "create", "did": did, "collection": "app.bsky.feed.post",
            "record": {"text": format!("live {i}"), "createdAt": now}}),
        )["seq"]
            .as_i64()
            .unwrap();
    }
    server.wait_for_cursor(last);
    let start = std::time::Instant::now();
    while server.counter("resyncs_done_total") < dids.len() as u64 {
        assert!(start.elapsed() < std::time::Duration::from_secs(60));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    server.wait_for(std::time::Duration::from_secs(30), |h| {
        h["sources"][0]["cursor"].as_i64() >= Some(last)
    });
    assert_eq!(
        server.counter("backfill_repos_listed_total"),
        dids.len() as u64
    );
    assert_eq!(server.counter("resyncs_failed_total"), 0);
    assert_eq!(server.counter("commits_rejected_total"), 0);
    assert!(server.stop().success());

    // The same as a backfill of the repositories as they are now.
    let fresh = tempfile::tempdir().unwrap();
    backfill(&pds, fresh.path());
    common::assert_lines_eq(&dump(fresh.path()), &dump(data.path()));
    let (ok, exact, err) = sql(
        data.path(),
        "SELECT count(*) FROM (SELECT target, source_collection AS collection, path, count(*) AS n
           FROM links GROUP BY ALL) l FULL JOIN link_counts c
           ON l.target = c.target AND l.collection = c.collection AND l.path = c.path
         WHERE l.n IS DISTINCT FROM c.n",
    );
    assert!(
        ok && exact.lines().nth(2).map(str::trim) == Some("0"),
        "{exact}{err}"
    );
}

/// A backfill killed (SIGKILL) halfway resumes: the second run skips the
/// repositories the first one committed and ends with exactly the index of
/// an uninterrupted run.
#[test]
fn a_backfill_killed_halfway_resumes_and_ends_identical() {
    use std::io::BufRead;
    let mut pds = Pds::start();
    let now = "2026-11-24T12:00:00.000Z";
    let mut first = None;
    for i in 0..12 {
        let did = pds.cmd(json!({"op": "createAccount", "handle": format!("user{i}.test")}))["did"]
            .clone();
        let post = pds.cmd(
            json!({"op": "create", "did": did, "collection": "app.bsky.feed.post",
            "record": {"text": format!("post {i}"), "createdAt": now}}),
        );
        let target = first.get_or_insert(post.clone()).clone();
        pds.cmd(
            json!({"op": "create", "did": did, "collection": "app.bsky.feed.like",
            "record": {"subject": {"uri": target["uri"], "cid": target["cid"]}, "createdAt": now}}),
        );
    }
    let lexicons = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    let killed = tempfile::tempdir().unwrap();
    // Paced to 4 repositories a second, so the kill lands mid-way.
    let mut child = command(
        &[
            "backfill", "--host", &pds.url, "--verify", "full", "--plc", &pds.plc,
        ],
        killed.path(),
        &lexicons,
    )
    .args(["--concurrency", "1", "--max-repos-per-second", "4"])
    .stderr(std::process::Stdio::piped())
    .stdout(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut applied = 0;
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.starts_with('[') && line.contains(" records ") {
            applied += 1;
            if applied == 3 {
                break;
            }
        }
    }
    assert_eq!(applied, 3, "the backfill printed its progress");
    child.kill().unwrap();
    child.wait().unwrap();
    let (ok, out, err) = sql(killed.path(), "SELECT count(*) FROM backfill_repos");
    assert!(ok, "{err}");
    let partial: usize = out.lines().nth(2).unwrap().trim().parse().unwrap();
    assert!(
        (3..12).contains(&partial),
        "killed halfway: {partial} of 12 done"
    );

    let log = backfill(&pds, killed.path());
    assert!(
        log.contains(&format!(
            "{partial} already backfilled at their current rev"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "backfilled {} repositories (0 failed)",
            12 - partial
        )),
        "{log}"
    );
    let clean = tempfile::tempdir().unwrap();
    backfill(&pds, clean.path());
    common::assert_lines_eq(&dump(clean.path()), &dump(killed.path()));
    let (_, likes, _) = sql(
        killed.path(),
        "SELECT n FROM link_counts WHERE collection = 'app.bsky.feed.like'",
    );
    assert_eq!(likes.lines().nth(2).map(str::trim), Some("12"), "{likes}");
}
