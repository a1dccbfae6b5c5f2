//! A client for a running Ferry's admin API (`POST /admin/<endpoint>`), as
//! `ferry purge --admin` and `ferry prefetch` use it: the bearer token from
//! `FERRY_ADMIN_TOKEN`, the JSON report on stdout, exit 1 unless it succeeded.

use anyhow::Result;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The admin API's bearer token, from `FERRY_ADMIN_TOKEN` when set.
fn with_admin_token(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match std::env::var("FERRY_ADMIN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => req.bearer_auth(t.trim()),
        _ => req,
    }
}

/// `ADMIN/admin/ENDPOINT?QUERY`.
fn endpoint_url(admin: &str, endpoint: &str, query: &str) -> String {
    format!("{}/admin/{endpoint}?{query}", admin.trim_end_matches('/'))
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// POSTs to a running Ferry's admin API, prints the JSON answer, and exits
/// non-zero unless it succeeded.
pub fn admin_post(admin: &str, endpoint: &str, query: &str) -> Result<ExitCode> {
    let url = endpoint_url(admin, endpoint, query);
    let (status, body) = runtime()?.block_on(async {
        let resp = with_admin_token(reqwest::Client::new().post(&url))
            .send()
            .await?;
        let status = resp.status();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    })?;
    println!("{body}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Like [`admin_post`], asking for the answer as it goes (NDJSON): each
/// progress object is shown on stderr as `progress` renders it (one line,
/// rewritten in place), and the final one (`done` or `error`) is printed on
/// stdout. Exits non-zero unless it ended with `done`.
pub fn admin_post_with_progress(
    admin: &str,
    endpoint: &str,
    query: &str,
    progress: impl Fn(&serde_json::Value, Duration) -> String,
) -> Result<ExitCode> {
    let url = endpoint_url(admin, endpoint, query);
    runtime()?
        .block_on(async {
            let mut resp = with_admin_token(reqwest::Client::new().post(&url))
                .header("accept", "application/x-ndjson")
                .send()
                .await?;
            let started = Instant::now();
            let mut pending = Vec::new();
            let mut last = None;
            while let Some(chunk) = resp.chunk().await? {
                pending.extend_from_slice(&chunk);
                while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
                        continue;
                    };
                    if v.get("done").is_some() || v.get("error").is_some() {
                        last = Some(v);
                    } else {
                        eprint!("\r{}", progress(&v, started.elapsed()));
                    }
                }
            }
            eprintln!();
            let ok = last.as_ref().is_some_and(|v| v.get("done").is_some());
            if let Some(v) = last {
                println!("{v}");
            }
            Ok::<_, reqwest::Error>(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        })
        .map_err(Into::into)
}
