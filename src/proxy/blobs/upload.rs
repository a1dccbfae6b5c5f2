//! The bucket upload of a blob fetched from upstream: one more follower of
//! the fetch, reading what the leader wrote (memory while it keeps up, else
//! the temp file), so it never slows the download or its clients.
//!
//! Verification is unchanged by it. Like every follower it gets the blob's
//! last byte only once the digest has checked, so:
//! - every part but the one holding the last byte may go up while the blob
//!   downloads (each a full `part_size`);
//! - the last part and the multipart completion happen only after the digest
//!   checks; a blob smaller than a part is one `PUT` after verification;
//! - a mismatch, a broken transfer or a failed disk ends the stream with an
//!   error and the upload is aborted; a kill leaves it uncompleted. Either way
//!   no object appears under the key (the bucket's lifecycle rule, or
//!   `garage bucket cleanup-incomplete-uploads`, drops the parts).
//!
//! Memory: one part buffered per upload, at most `max_uploads` uploads; past
//! that an upload is skipped (counted) and remembered, to be made later from
//! the local disk (`Proxy::catch_up_uploads`).

use super::body::ByteStream;
use crate::bucket::{Bucket, Object};
use crate::oci::Digest;
use bytes::BytesMut;
use futures_util::StreamExt;
use object_store::{MultipartUpload, PutPayload};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// Uploads the blob `body` streams (the whole of it, verified last byte
/// included) under `digest`'s key. Runs in its own task.
pub(super) fn start(
    bucket: Arc<Bucket>,
    slot: OwnedSemaphorePermit,
    digest: Digest,
    body: ByteStream,
) {
    tokio::spawn(async move {
        let _slot = slot;
        run(&bucket, &digest, body).await;
    });
}

async fn run(bucket: &Bucket, digest: &Digest, mut body: ByteStream) {
    let part_size = bucket.part_size();
    let mut buf = BytesMut::new();
    let mut upload: Option<Box<dyn MultipartUpload>> = None;
    let mut sent = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // The fetch failed (mismatch, broken transfer, disk): nothing
                // verified, nothing may be completed.
                tracing::debug!(%digest, error = %e, "bucket upload abandoned with its fetch");
                abort(bucket, upload).await;
                return;
            }
        };
        buf.extend_from_slice(&chunk);
        while buf.len() >= part_size {
            let part = buf.split_to(part_size).freeze();
            if upload.is_none() {
                match bucket.begin_upload(digest).await {
                    Some(u) => upload = Some(u),
                    None => return,
                }
            }
            let Some(u) = upload.as_mut() else { return };
            if let Err(e) = u.put_part(PutPayload::from(part)).await {
                bucket.upload_failed(&e);
                bucket.defer(Object::Blob, digest);
                let _ = u.abort().await;
                return;
            }
            sent += part_size as u64;
        }
    }
    // The stream ended cleanly: the digest has checked.
    match upload {
        None => {
            if !bucket.put(Object::Blob, digest, buf.freeze(), None).await {
                bucket.defer(Object::Blob, digest);
            }
        }
        Some(mut u) => {
            let last = buf.len() as u64;
            let finished = async {
                if last > 0 {
                    u.put_part(PutPayload::from(buf.freeze())).await?;
                }
                u.complete().await
            };
            match finished.await {
                Ok(_) => bucket.wrote(Object::Blob, sent + last),
                Err(e) => {
                    bucket.upload_failed(&e);
                    bucket.defer(Object::Blob, digest);
                    let _ = u.abort().await;
                }
            }
        }
    }
}

async fn abort(bucket: &Bucket, upload: Option<Box<dyn MultipartUpload>>) {
    bucket.upload_aborted();
    if let Some(mut u) = upload {
        if let Err(e) = u.abort().await {
            tracing::debug!(error = %e, "could not abort a multipart upload; the bucket's lifecycle rule will");
        }
    }
}
