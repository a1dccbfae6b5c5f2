//! Committed blobs streamed from the store in large chunks: page-cache-hot
//! chunks are read in place, the rest on the blocking pool. The open file pins
//! the blob, so eviction cannot remove it mid-response.

use super::body::{ByteStream, READ_CHUNK};
use super::pread;
use ferry_storage::BlobFile;

/// Streams bytes `[start, end)` of a committed blob.
pub(super) fn stream(file: BlobFile, start: u64, end: u64) -> ByteStream {
    struct Reader {
        /// Open (so pinned) while the response lives.
        blob: BlobFile,
        pos: u64,
        end: u64,
    }
    let r = Reader {
        blob: file,
        pos: start,
        end,
    };
    Box::pin(futures_util::stream::unfold(r, |mut r| async move {
        if r.pos >= r.end {
            return None;
        }
        let len = (r.end - r.pos).min(READ_CHUNK as u64) as usize;
        match pread::read_at(&r.blob.file, r.pos, len).await {
            Ok(bytes) => {
                r.pos += bytes.len() as u64;
                Some((Ok(bytes), r))
            }
            Err(e) => {
                r.pos = r.end;
                Some((Err(e), r))
            }
        }
    }))
}
