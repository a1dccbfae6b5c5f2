//! `ferry prefetch`: caches an image (every platform, every layer) through a
//! running Ferry's admin API, with progress when stderr is a terminal.

use super::admin_client::{admin_post, admin_post_with_progress};
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;

#[derive(Args)]
pub struct PrefetchArgs {
    /// A running Ferry's admin API, e.g. http://127.0.0.1:5001 (its token,
    /// if it has one, from FERRY_ADMIN_TOKEN).
    #[arg(long)]
    admin: String,
    /// Upstream name or alias (e.g. docker.io).
    #[arg(long)]
    upstream: String,
    /// Repository as named upstream (e.g. library/alpine).
    #[arg(long)]
    repository: String,
    /// A tag or a digest.
    #[arg(long, default_value = "latest")]
    reference: String,
}

/// Prints the admin API's final report; exits 1 unless the image was cached.
pub fn run(args: &PrefetchArgs) -> Result<ExitCode> {
    use std::io::IsTerminal as _;
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("upstream", &args.upstream)
        .append_pair("repository", &args.repository)
        .append_pair("reference", &args.reference)
        .finish();
    if std::io::stderr().is_terminal() {
        // On a terminal: progress on stderr as it goes, the report on stdout.
        admin_post_with_progress(&args.admin, "prefetch", &query, progress_line)
    } else {
        admin_post(&args.admin, "prefetch", &query)
    }
}

/// `prefetch: 3/5 blobs, 120.4 MiB, 45.2 MiB/s`.
fn progress_line(v: &serde_json::Value, elapsed: std::time::Duration) -> String {
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let mib = n("bytes") as f64 / (1024.0 * 1024.0);
    let rate = mib / elapsed.as_secs_f64().max(0.001);
    format!(
        "prefetch: {}/{} blobs, {mib:.1} MiB, {rate:.1} MiB/s   ",
        n("blobs_done"),
        n("blobs")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_blobs_bytes_and_rate() {
        let v = serde_json::json!({"blobs_done": 3, "blobs": 5, "bytes": 10 * 1024 * 1024});
        let line = progress_line(&v, std::time::Duration::from_secs(2));
        assert!(
            line.starts_with("prefetch: 3/5 blobs, 10.0 MiB, 5.0 MiB/s"),
            "{line}"
        );
    }
}
