//! The uncached relay: a blob streamed straight from upstream without caching,
//! for when the local disk is failing. A whole body is still verified (its last
//! chunk is held back until the digest checks out); a range is relayed as
//! upstream sends it.

use super::body::ByteStream;
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::proxy::error::{Error, Result};
use crate::upstream::{Target, Upstream};
use bytes::Bytes;
use std::io;
use std::sync::Arc;

/// Streams a blob from upstream, from `start` to `end` (exclusive, or the end).
/// With a `hasher` (holding bytes `[0, start)`), the body is hashed as it goes
/// and its last chunk held back until the whole blob verifies; without one (a
/// range) it is relayed as is. Returns the blob's total size, when known.
pub(crate) async fn passthrough(
    target: &Target,
    digest: &Digest,
    start: u64,
    end: Option<u64>,
    hasher: Option<ferry_storage::Hasher>,
    metrics: Arc<Metrics>,
) -> Result<(Option<u64>, ByteStream)> {
    let resp = target
        .upstream
        .get_blob(&target.repo, digest, start)
        .await
        .map_err(Error::from)?;
    metrics.uncached_passthrough.inc();
    let total = resp.total;
    struct Relay {
        upstream: Arc<Upstream>,
        resp: reqwest::Response,
        hasher: Option<ferry_storage::Hasher>,
        digest: Digest,
        held: Option<Bytes>,
        pos: u64,
        end: Option<u64>,
        metrics: Arc<Metrics>,
        done: bool,
    }
    let relay = Relay {
        hasher: hasher.filter(|_| end.is_none_or(|e| Some(e) == total)),
        upstream: target.upstream.clone(),
        resp: resp.response,
        digest: digest.clone(),
        held: None,
        pos: start,
        end,
        metrics,
        done: false,
    };
    let stream = futures_util::stream::unfold(relay, |mut r| async move {
        if r.done {
            return None;
        }
        loop {
            let chunk = match r.upstream.next_chunk(&mut r.resp).await {
                Ok(c) => c,
                Err(e) => {
                    r.done = true;
                    return Some((Err(io::Error::other(e.to_string())), r));
                }
            };
            let Some(mut chunk) = chunk else {
                r.done = true;
                let last = r.held.take();
                if let Some(h) = r.hasher.take() {
                    if h.finish() != r.digest {
                        r.metrics.integrity_failures.inc();
                        let e =
                            Error::Integrity(format!("upstream bytes do not hash to {}", r.digest));
                        return Some((Err(io::Error::other(e)), r));
                    }
                }
                return last.map(|b| (Ok(b), r));
            };
            if let Some(end) = r.end {
                let room = end.saturating_sub(r.pos) as usize;
                chunk.truncate(room);
            }
            r.pos += chunk.len() as u64;
            r.metrics.bytes_fetched.inc_by(chunk.len() as u64);
            if let Some(h) = r.hasher.as_mut() {
                h.update(&chunk);
                // Hold the newest chunk back until the end proves the digest.
                if let Some(prev) = r.held.replace(chunk) {
                    return Some((Ok(prev), r));
                }
                continue;
            }
            if chunk.is_empty() && r.end.is_some_and(|e| r.pos >= e) {
                return None;
            }
            return Some((Ok(chunk), r));
        }
    });
    Ok((total, Box::pin(stream)))
}
