//! Positional reads of blob files, the committed ones and the temp file a
//! fetch is writing. A read the page cache can answer happens right on the
//! async worker (a hop to the blocking pool costs more than the copy); anything
//! else goes to the blocking pool.

use bytes::Bytes;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Up to `len` bytes at `pos` if the kernel has them cached, without blocking:
/// `preadv2(RWF_NOWAIT)` fails with `EAGAIN` rather than wait for the disk.
pub(super) fn read_if_cached(file: &File, pos: u64, len: usize) -> Option<Bytes> {
    let mut buf = vec![0u8; len];
    let flags = rustix::io::ReadWriteFlags::NOWAIT;
    match rustix::io::preadv2(file, &mut [io::IoSliceMut::new(&mut buf)], pos, flags) {
        Ok(n) if n > 0 => {
            buf.truncate(n);
            Some(Bytes::from(buf))
        }
        _ => None,
    }
}

/// Exactly `len` bytes at `pos` (blocking); `UnexpectedEof` if the file is shorter.
pub(super) fn read_exact_at(file: &File, pos: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = file.read_at(&mut buf[filled..], pos + filled as u64)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob file shorter than expected",
            ));
        }
        filled += n;
    }
    Ok(Bytes::from(buf))
}

/// `len` bytes at `pos`: from the page cache in place, else on the blocking pool.
pub(super) async fn read_at(file: &Arc<File>, pos: u64, len: usize) -> io::Result<Bytes> {
    if let Some(bytes) = read_if_cached(file, pos, len) {
        return Ok(bytes);
    }
    let file = file.clone();
    tokio::task::spawn_blocking(move || read_exact_at(&file, pos, len))
        .await
        .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_bytes_are_read_in_place_at_their_offset() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        // Just written, so in the page cache.
        let b = read_if_cached(&f, 1000, 5000).expect("page-cache hit");
        assert_eq!(&b[..], &data[1000..6000]);
        let b = read_if_cached(&f, 299_990, 5000).expect("page-cache hit");
        assert_eq!(&b[..], &data[299_990..], "short read at the end");
        assert!(read_if_cached(&f, 300_000, 10).is_none(), "end of file");
        assert_eq!(&read_exact_at(&f, 10, 20).unwrap()[..], &data[10..30]);
        assert!(read_exact_at(&f, 299_990, 20).is_err(), "short file");
    }
}
