//! A client for origdst's admin endpoint, as a scraper would use it: plain HTTP/1.1 GETs from
//! inside the namespace, and the few lines of OpenMetrics parsing a test needs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::netns::Netns;

/// Where origdst's admin endpoint listens by default (in each namespace's own loopback).
pub const ADMIN: &str = "127.0.0.1:15000";

/// `GET path` from inside `ns`: (status, body). Panics when the endpoint does not answer.
pub fn get(ns: &Netns, path: &str) -> (u16, String) {
    let addr: SocketAddr = ADMIN.parse().expect("admin address");
    let path = path.to_string();
    ns.run(move || {
        let mut stream =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("admin endpoint {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("send request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .unwrap_or_else(|e| panic!("read {path}: {e}"));
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP head in {response:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        (status, body.to_string())
    })
}

/// The `/metrics` text.
pub fn scrape(ns: &Netns) -> Metrics {
    let (status, body) = get(ns, "/metrics");
    assert_eq!(status, 200, "/metrics answered {status}: {body}");
    Metrics(body)
}

/// One scrape.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample written exactly `series` (name plus `{labels}`, if any); `None`
    /// when absent.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    }

    /// Like `get`, panicking with the scrape when the series is missing.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", self.0))
    }
}
