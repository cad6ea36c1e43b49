//! A TCP proxy on loopback that can be taken down and brought back: while
//! down, every connection is accepted and closed at once (what a client
//! sees of a directory or host outage: a connection that ends before an
//! answer). For outage tests.
#![allow(dead_code)]

use std::io::copy;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct Proxy {
    pub url: String,
    up: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards to `target` (`host:port`), starting down or up.
    pub fn start(target: &str, up: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let flag = Arc::new(AtomicBool::new(up));
        let (state, target) = (flag.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !state.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let (mut c1, mut s1) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = copy(&mut c1, &mut s1);
                    let _ = s1.shutdown(std::net::Shutdown::Write);
                });
                let (mut c2, mut s2) = (client, server);
                std::thread::spawn(move || {
                    let _ = copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Proxy { url, up: flag }
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}
