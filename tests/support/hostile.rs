//! A scripted upstream for the hostile-registry tests: raw HTTP/1.1 on a TCP
//! socket, so it can say what no well-behaved server would (lying lengths,
//! endless bodies, bodies that drip). Each request is answered by the script
//! from its method and path; every request is recorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How to answer one request.
pub enum Answer {
    /// These bytes (head and body as written), then close.
    Raw(Vec<u8>),
    /// `head`, then one byte every `every` for as long as the peer reads.
    Drip { head: String, every: Duration },
    /// `head`, then `chunk` over and over, as fast as the peer reads.
    Endless { head: String, chunk: Vec<u8> },
}

impl Answer {
    /// A complete response: status line, headers (`Content-Length` added), body.
    pub fn full(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        Answer::Raw(raw)
    }

    /// A redirect to `location`.
    pub fn redirect(location: &str) -> Answer {
        Answer::full("302 Found", &[("Location", location)], b"")
    }
}

type Script = dyn Fn(&str, &str) -> Answer + Send + Sync;

/// The running server.
pub struct Hostile {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Hostile {
    /// Serves `script(method, path)` for every request but `/v2/`, which is
    /// always answered `200 {}`.
    pub async fn start(script: impl Fn(&str, &str) -> Answer + Send + Sync + 'static) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let seen = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (script, seen) = (script.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut byte = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut byte).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&byte[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let mut first = head.lines().next().unwrap_or("").split(' ');
                    let (method, path) = (
                        first.next().unwrap_or("").to_string(),
                        first.next().unwrap_or("").to_string(),
                    );
                    let range = head
                        .lines()
                        .find(|l| l.to_ascii_lowercase().starts_with("range:"))
                        .map(|l| format!(" [{}]", l.trim()))
                        .unwrap_or_default();
                    seen.lock().unwrap().push(format!("{method} {path}{range}"));
                    let answer = if path == "/v2/" {
                        Answer::full("200 OK", &[("Content-Type", "application/json")], b"{}")
                    } else {
                        script(&method, &path)
                    };
                    match answer {
                        Answer::Raw(bytes) => {
                            let _ = sock.write_all(&bytes).await;
                        }
                        Answer::Drip { head, every } => {
                            if sock.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            loop {
                                tokio::time::sleep(every).await;
                                if sock.write_all(b"x").await.is_err() {
                                    return;
                                }
                            }
                        }
                        Answer::Endless { head, chunk } => {
                            if sock.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            while sock.write_all(&chunk).await.is_ok() {}
                        }
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        Hostile { addr, requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, as `METHOD PATH [Range: …]`, `/v2/` excluded.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !r.ends_with(" /v2/"))
            .cloned()
            .collect()
    }
}
