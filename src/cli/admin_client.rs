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

/// POSTs to a running Ferry's admin API, prints the JSON answer, and exits
/// non-zero unless it succeeded.
pub fn admin_post(admin: &str, endpoint: &str, query: &str) -> Result<ExitCode> {
    let url = endpoint_url(admin, endpoint, query);
    let (status, body) = super::small_runtime()?.block_on(async {
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
/// stdout, as is a refusal's body (`401`, `400`, `503`: OCI error JSON).
/// Exits non-zero unless it ended with `done`.
pub fn admin_post_with_progress(
    admin: &str,
    endpoint: &str,
    query: &str,
    progress: impl Fn(&serde_json::Value, Duration) -> String,
) -> Result<ExitCode> {
    let url = endpoint_url(admin, endpoint, query);
    super::small_runtime()?
        .block_on(async {
            let mut resp = with_admin_token(reqwest::Client::new().post(&url))
                .header("accept", "application/x-ndjson")
                .send()
                .await?;
            if !resp.status().is_success() {
                // A refusal: its whole body, as it came.
                println!("{}", resp.text().await?.trim_end());
                return Ok(ExitCode::from(1));
            }
            let started = Instant::now();
            let mut lines = Lines::default();
            let mut last = None;
            let mut show = |line: &[u8]| match Line::of(line) {
                Some(Line::Progress(v)) => eprint!("\r{}", progress(&v, started.elapsed())),
                Some(Line::Final(text, done)) => last = Some((text, done)),
                None => {}
            };
            while let Some(chunk) = resp.chunk().await? {
                for line in lines.push(&chunk) {
                    show(&line);
                }
            }
            if let Some(rest) = lines.rest() {
                show(&rest);
            }
            eprintln!();
            let done = last.as_ref().is_some_and(|(_, done)| *done);
            if let Some((text, _)) = last {
                println!("{text}");
            }
            Ok::<_, reqwest::Error>(if done {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        })
        .map_err(Into::into)
}

/// A streamed body cut into lines; the last may come without its newline.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// The whole lines `chunk` completes.
    fn push(&mut self, chunk: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.pending.extend_from_slice(chunk);
        std::iter::from_fn(|| {
            let nl = self.pending.iter().position(|&b| b == b'\n')?;
            Some(self.pending.drain(..=nl).collect())
        })
    }

    /// What is left after the body ended, unless blank.
    fn rest(self) -> Option<Vec<u8>> {
        (!self.pending.trim_ascii().is_empty()).then_some(self.pending)
    }
}

/// One line of an NDJSON answer.
#[derive(Debug, PartialEq)]
enum Line {
    /// A progress object, to show as it goes.
    Progress(serde_json::Value),
    /// The answer to print: the final object, with whether it is `done`, or
    /// a line that is not progress (an `error` object, or not JSON).
    Final(String, bool),
}

impl Line {
    /// `None` for a blank line.
    fn of(line: &[u8]) -> Option<Line> {
        if line.trim_ascii().is_empty() {
            return None;
        }
        Some(match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) if v.get("done").is_some() => Line::Final(v.to_string(), true),
            Ok(v) if v.get("error").is_none() => Line::Progress(v),
            _ => Line::Final(String::from_utf8_lossy(line).trim().to_string(), false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_line_without_its_newline_is_kept() {
        let mut lines = Lines::default();
        let got: Vec<_> = lines.push(b"{\"blobs\":1}\n{\"err").collect();
        assert_eq!(got, vec![b"{\"blobs\":1}\n".to_vec()]);
        assert_eq!(lines.push(b"ors\":[]}").count(), 0);
        assert_eq!(lines.rest(), Some(b"{\"errors\":[]}".to_vec()));
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"{}\n\n").count(), 2);
        assert_eq!(lines.rest(), None);
    }

    #[test]
    fn progress_is_shown_the_end_printed_and_blank_lines_skipped() {
        assert_eq!(
            Line::of(b"{\"blobs\":2}\n"),
            Some(Line::Progress(serde_json::json!({"blobs": 2})))
        );
        assert_eq!(
            Line::of(b"{\"done\":true}\n"),
            Some(Line::Final("{\"done\":true}".into(), true))
        );
        assert_eq!(
            Line::of(b"{\"error\":\"gone\"}"),
            Some(Line::Final("{\"error\":\"gone\"}".into(), false))
        );
        assert_eq!(
            Line::of(b"not json"),
            Some(Line::Final("not json".into(), false))
        );
        assert_eq!(
            Line::of(b"  \n"),
            None,
            "a stray newline after done changes nothing"
        );
    }
}
