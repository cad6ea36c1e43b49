//! A tiny Jetstream server for tests: serves recorded Jetstream JSON events in
//! `time_us` order with Jetstream's playback semantics (events at or after
//! `cursor`, commits only of the `wantedCollections`), closes each of the
//! first `drops` connections after `close_after` events, and records each
//! request URI. With a dictionary, a request with `compress=true` gets each
//! event as a zstd frame in a binary message, as Jetstream sends them, after
//! one message that is not zstd at all. (Every connection cannot be dropped: a consumer resumes a
//! couple of seconds back, which covers this whole recording.)
#![allow(dead_code)]
// tungstenite's handshake callback type has a large error variant; not ours to change.
#![allow(clippy::result_large_err)]

use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

pub struct Jetstream {
    pub url: String,
    pub requests: Arc<Mutex<Vec<String>>>,
    /// The largest `time_us` served.
    pub last_time_us: i64,
}

pub fn start(lines: Vec<String>, close_after: usize, drops: usize) -> Jetstream {
    start_with(lines, close_after, drops, None)
}

pub fn start_with(
    lines: Vec<String>,
    close_after: usize,
    drops: usize,
    dictionary: Option<Vec<u8>>,
) -> Jetstream {
    let dictionary = Arc::new(dictionary);
    let mut events: Vec<(i64, Option<String>, String)> = lines
        .into_iter()
        .map(|l| {
            let v: Value = serde_json::from_str(&l).expect("JSON line");
            let collection = v["commit"]["collection"].as_str().map(str::to_string);
            (v["time_us"].as_i64().expect("time_us"), collection, l)
        })
        .collect();
    events.sort_by_key(|e| e.0);
    let last_time_us = events.last().map(|e| e.0).unwrap_or(0);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    let events = Arc::new(events);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (events, log, dictionary) = (events.clone(), log.clone(), dictionary.clone());
                let drop_this = log.lock().unwrap().len() < drops;
                tokio::spawn(async move {
                    let mut cursor: Option<i64> = None;
                    let mut wanted: Vec<String> = Vec::new();
                    let mut compress = false;
                    let ws = tokio_tungstenite::accept_hdr_async(
                        stream,
                        |req: &Request, resp: Response| {
                            log.lock().unwrap().push(req.uri().to_string());
                            for kv in req.uri().query().unwrap_or("").split('&') {
                                match kv.split_once('=') {
                                    Some(("cursor", c)) => cursor = c.parse().ok(),
                                    Some(("wantedCollections", c)) => wanted.push(c.to_string()),
                                    Some(("compress", "true")) => compress = true,
                                    _ => {}
                                }
                            }
                            Ok(resp)
                        },
                    )
                    .await;
                    let Ok(mut ws) = ws else { return };
                    let mut compressor = match dictionary.as_ref() {
                        Some(d) if compress => {
                            if ws
                                .send(Message::Binary(b"garbage".to_vec().into()))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            Some(zstd::bulk::Compressor::with_dictionary(3, d).unwrap())
                        }
                        _ => None,
                    };
                    let mut sent = 0;
                    for (time_us, collection, line) in events.iter() {
                        if cursor.is_some_and(|c| *time_us < c) {
                            continue;
                        }
                        if let Some(c) = collection {
                            if !wanted.is_empty() && !wanted.contains(c) {
                                continue;
                            }
                        }
                        let msg = match compressor.as_mut() {
                            Some(c) => Message::Binary(c.compress(line.as_bytes()).unwrap().into()),
                            None => Message::Text(line.clone().into()),
                        };
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                        sent += 1;
                        if drop_this && sent == close_after {
                            let _ = ws.close(None).await;
                            return;
                        }
                    }
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });
    });
    Jetstream {
        url,
        requests,
        last_time_us,
    }
}
