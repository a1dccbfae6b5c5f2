//! What a blob response body is, and how much of it is read at once.

use bytes::Bytes;
use futures_util::Stream;
use std::io;
use std::pin::Pin;

/// A response body produced by the cache.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// Largest chunk a client response reads at once.
pub(super) const READ_CHUNK: usize = 256 * 1024;
