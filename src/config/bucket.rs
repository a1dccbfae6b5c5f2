//! `[bucket]`: an S3-compatible bucket shared by every replica, as a second
//! tier behind the local store (see `crate::bucket`). Absent: Ferry is one
//! disk, exactly as without it.

use super::defaults;
use super::parse::{err, secret_from, ConfigError};
use super::raw::RawBucket;
use super::units::{duration_or, parse_size};
use std::time::Duration;
use url::Url;

/// S3's smallest part (all but the last part of a multipart upload).
const MIN_PART: u64 = 5 * 1024 * 1024;
/// S3's largest part.
const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;

/// `[bucket]`, validated.
#[derive(Clone, PartialEq, Eq)]
pub struct BucketConfig {
    /// The S3 API endpoint (`http://garage.garage.svc:3900`).
    pub endpoint: Url,
    /// The bucket's name.
    pub bucket: String,
    /// The region requests are signed for (`garage` for Garage).
    pub region: String,
    /// Prepended to every key: `""`, or ending in `/`.
    pub prefix: String,
    /// `https://endpoint/bucket/key` (true) or `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// The access key id.
    pub access_key: String,
    /// The secret access key (never printed).
    pub secret_key: String,
    /// Bytes per multipart part; blobs smaller than one part are one `PUT`.
    pub part_size: usize,
    /// Uploads at once; past it an upload is skipped (counted) and made later
    /// from the local disk.
    pub max_uploads: usize,
    /// After a bucket error, how long the bucket is left alone.
    pub backoff: Duration,
}

impl std::fmt::Debug for BucketConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketConfig")
            .field("endpoint", &self.endpoint.as_str())
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("part_size", &self.part_size)
            .field("max_uploads", &self.max_uploads)
            .field("backoff", &self.backoff)
            .finish()
    }
}

pub(crate) fn from_raw(b: &RawBucket) -> Result<BucketConfig, ConfigError> {
    let endpoint = Url::parse(&b.endpoint)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .map_or_else(
            || {
                err(format!(
                    "bucket.endpoint: {:?} is not an http(s) URL like http://127.0.0.1:3900",
                    b.endpoint
                ))
            },
            Ok,
        )?;
    if !valid_bucket_name(&b.bucket) {
        return err(format!(
            "bucket.bucket: {:?} is not a bucket name (3 to 63 of a-z, 0-9, '.', '-')",
            b.bucket
        ));
    }
    let prefix = match b.prefix.as_deref().map(|p| p.trim_matches('/')) {
        None | Some("") => String::new(),
        Some(p) if p.split('/').all(valid_key_part) => format!("{p}/"),
        Some(p) => {
            return err(format!(
                "bucket.prefix: {p:?} may hold only letters, digits and '/', '-', '_', '.' (no empty or '.' parts)"
            ))
        }
    };
    let part_size = match b.part_size.as_deref() {
        Some(s) => parse_size(s).map_err(|e| ConfigError(format!("bucket.part_size: {e}")))?,
        None => defaults::BUCKET_PART_SIZE as u64,
    };
    if !(MIN_PART..=MAX_PART).contains(&part_size) {
        return err("bucket.part_size must be between 5MiB and 5GiB (S3's part limits)");
    }
    let max_uploads = b.max_uploads.unwrap_or(defaults::BUCKET_MAX_UPLOADS);
    if max_uploads == 0 {
        return err("bucket.max_uploads must be at least 1");
    }
    let (access_key, secret_key) = credentials(b)?;
    Ok(BucketConfig {
        endpoint,
        bucket: b.bucket.clone(),
        region: b
            .region
            .clone()
            .unwrap_or_else(|| defaults::BUCKET_REGION.into()),
        prefix,
        path_style: b.path_style.unwrap_or(true),
        access_key,
        secret_key,
        part_size: part_size as usize,
        max_uploads,
        backoff: duration_or(&b.backoff, "bucket.backoff", defaults::BUCKET_BACKOFF)?,
    })
}

/// The key pair: from files (a Kubernetes Secret mounted as files), else from
/// environment variables (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` unless named).
fn credentials(b: &RawBucket) -> Result<(String, String), ConfigError> {
    let one = |file: &Option<std::path::PathBuf>,
               env: &Option<String>,
               what: &str,
               default_env: &str| {
        if let Some(v) = secret_from(&format!("bucket.{what}"), file, env)? {
            return Ok(v);
        }
        match std::env::var(default_env) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => err(format!(
                "bucket: the {what} comes from the environment variable {default_env}, which is not set (or set {what}_file or {what}_env)"
            )),
        }
    };
    Ok((
        one(
            &b.access_key_file,
            &b.access_key_env,
            "access_key",
            "AWS_ACCESS_KEY_ID",
        )?,
        one(
            &b.secret_key_file,
            &b.secret_key_env,
            "secret_key",
            "AWS_SECRET_ACCESS_KEY",
        )?,
    ))
}

fn valid_bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn valid_key_part(part: &str) -> bool {
    !part.is_empty()
        && part != "."
        && part != ".."
        && part
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}
