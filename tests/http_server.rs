//! The HTTP server on a real port: what only a socket shows. A client that
//! never finishes its headers loses its connection after the header
//! deadline, and does not hold the server up meanwhile.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::server::Server;

#[test]
fn a_client_that_trickles_its_headers_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let frames = root.join("tests/fixtures/jetstream/frames.bin");
    let server = Server::start(
        &[&format!("replay:{}", frames.display())],
        dir.path(),
        &root.join("lexicons"),
    );
    let addr = server.base.trim_start_matches("http://").to_string();
    // Slow clients: headers started, never finished.
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /_health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    // Others are served meanwhile.
    assert!(server.health().is_some());
    let started = Instant::now();
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        // The server closes the connection (perhaps after a 408 answer).
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "dropped after the 10 s header deadline, not after {waited:?}"
    );
    assert!(server.stop().success());
}
