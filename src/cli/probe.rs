//! `ferry probe URL`: a health check for images without curl.

use anyhow::Result;
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;

/// How long the probed URL has to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct ProbeArgs {
    /// e.g. http://127.0.0.1:5000/readyz
    url: String,
}

/// Exit 0 if the URL answers 2xx within [`TIMEOUT`]; 1 on any other status,
/// a refused connection or a timeout.
pub fn run(args: &ProbeArgs) -> Result<ExitCode> {
    let ok = super::small_runtime()?.block_on(async {
        let client = reqwest::Client::builder().timeout(TIMEOUT).build()?;
        Ok::<_, reqwest::Error>(client.get(&args.url).send().await?.status().is_success())
    });
    Ok(match ok {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) | Err(_) => ExitCode::from(1),
    })
}
