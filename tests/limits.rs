//! `[limits]`: what one client, or many, may cost. Each limit is driven to its
//! edge over raw sockets, and the connections within it must keep being served.

use crate::support::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET_V2: &[u8] = b"GET /v2/ HTTP/1.1\r\nHost: ferry\r\n\r\n";

/// Reads one response head (and its small body) from a keep-alive connection;
/// `None` if the connection closed or nothing came within `within`.
async fn response(sock: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(text);
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, sock.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Whether the peer closed the connection within `within`.
async fn closed_within(sock: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    let deadline = Instant::now() + within;
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        match tokio::time::timeout(left, sock.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a 408 or similar before the close
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed_after_header_timeout() {
    let up = FakeRegistry::start().await;
    let p = Proxied::with_toml(&up, "[limits]\nheader_timeout = \"1s\"\n").await;

    // Sends nothing at all (stuck before HTTP/1 vs HTTP/2 is even known).
    let mut silent = TcpStream::connect(p.addr).await.unwrap();
    // Slowloris: a header byte every 200 ms, never finishing.
    let mut slow = TcpStream::connect(p.addr).await.unwrap();
    let dripping = tokio::spawn(async move {
        for b in b"GET /v2/ HTTP/1.1\r\nHost: ferry\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa".iter() {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        slow
    });
    // Keep-alive: one request answered, then idle.
    let mut idle = TcpStream::connect(p.addr).await.unwrap();
    idle.write_all(GET_V2).await.unwrap();
    let first = response(&mut idle, Duration::from_secs(5)).await.unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    // Meanwhile a normal client is served at once.
    let started = Instant::now();
    assert_eq!(p.get("/v2/").await.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(500));

    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "silent"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "idle keep-alive"
    );
    let mut slow = dripping.await.unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(3)).await,
        "slowloris"
    );
}

#[tokio::test]
async fn at_max_connections_newcomers_wait_and_open_ones_keep_being_served() {
    let up = FakeRegistry::start().await;
    let p = Proxied::with_toml(&up, "[limits]\nmax_connections = 2\n").await;
    let mut a = TcpStream::connect(p.addr).await.unwrap();
    let mut b = TcpStream::connect(p.addr).await.unwrap();
    for s in [&mut a, &mut b] {
        s.write_all(GET_V2).await.unwrap();
        assert!(response(s, Duration::from_secs(5)).await.is_some());
    }
    // The third connects (the kernel's backlog) but is not served…
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    c.write_all(GET_V2).await.unwrap();
    assert!(
        response(&mut c, Duration::from_millis(700)).await.is_none(),
        "served past max_connections"
    );
    // …while the two open ones still are.
    for s in [&mut a, &mut b] {
        s.write_all(GET_V2).await.unwrap();
        assert!(response(s, Duration::from_secs(5)).await.is_some());
    }
    // One closes: the waiting one is accepted and answered.
    drop(a);
    let answered = response(&mut c, Duration::from_secs(5))
        .await
        .expect("accepted once a slot freed");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
}

#[tokio::test]
async fn a_request_head_over_max_header_bytes_is_refused_with_431() {
    let up = FakeRegistry::start().await;
    let p = Proxied::with_toml(&up, "[limits]\nmax_header_bytes = \"8KiB\"\n").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let big = "a".repeat(20_000);
    s.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: ferry\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = response(&mut s, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    // A head within the limit is fine.
    let ok = p.get_with("/v2/", &[("x-small", &"b".repeat(2000))]).await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn past_max_fetches_a_cold_blob_waits_for_a_transfer_slot() {
    let up = FakeRegistry::start().await;
    let first = up.add_blob(bytes_of(64 * 1024, 1));
    let second = up.add_blob(bytes_of(64 * 1024, 2));
    let gate = up.gate(1024);
    let p = Proxied::with_toml(&up, "[limits]\nmax_fetches = 1\n").await;
    let (c1, u1) = (p.client.clone(), p.url(&format!("/v2/r/blobs/{first}")));
    let one = tokio::spawn(async move { c1.get(u1).send().await.unwrap().bytes().await.unwrap() });
    // Wait until the first transfer holds the only slot.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count("GET", |r| r.is_blob()) < 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (c2, u2) = (p.client.clone(), p.url(&format!("/v2/r/blobs/{second}")));
    let two = tokio::spawn(async move { c2.get(u2).send().await.unwrap().bytes().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        up.count("GET", |r| r.is_blob()),
        1,
        "the second waits for the slot"
    );
    assert_eq!(p.metric("ferry_fetches_queued"), 1);
    gate.release();
    assert_eq!(sha256(&one.await.unwrap()), first);
    assert_eq!(sha256(&two.await.unwrap()), second);
    assert_eq!(up.count("GET", |r| r.is_blob()), 2);
    assert_eq!(p.metric("ferry_fetches_queued"), 0);
}
