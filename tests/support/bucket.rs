//! An in-memory S3 bucket for tests (`object_store`'s `InMemory`) with fault
//! switches, counting what it is asked.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// A bucket replicas can share, whose reads or writes can be made to fail.
#[derive(Debug, Default)]
pub struct TestBucket {
    inner: InMemory,
    /// Every read (`HEAD`, `GET`) fails with a server error.
    pub fail_reads: AtomicBool,
    /// Every write (`PUT`, multipart) fails with a server error.
    pub fail_writes: AtomicBool,
    /// Reads asked (`HEAD` and `GET`), failed ones included.
    pub reads: AtomicUsize,
    /// Writes asked (`PUT`s and multipart starts), failed ones included.
    pub writes: AtomicUsize,
}

impl std::fmt::Display for TestBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestBucket")
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "TestBucket",
        source: format!("injected {what} failure").into(),
    }
}

impl TestBucket {
    pub fn new() -> Arc<TestBucket> {
        Arc::new(TestBucket::default())
    }

    /// The key Ferry uses for a blob (no prefix).
    pub fn blob_key(digest: &str) -> Path {
        Path::from(format!("blobs/{}", digest.replace(':', "/")))
    }

    /// The key Ferry uses for a manifest (no prefix).
    pub fn manifest_key(digest: &str) -> Path {
        Path::from(format!("manifests/{}", digest.replace(':', "/")))
    }

    /// The object's bytes, if there is one.
    pub async fn object(&self, key: &Path) -> Option<Bytes> {
        match self.inner.get(key).await {
            Ok(got) => Some(got.bytes().await.unwrap()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// Puts bytes under a key directly (a corrupt object, another replica's).
    pub async fn put_raw(&self, key: &Path, bytes: Bytes) {
        self.inner.put(key, PutPayload::from(bytes)).await.unwrap();
    }

    /// Every key in the bucket.
    pub async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .inner
            .list(None)
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        keys.sort();
        keys
    }

    /// Every object's SHA-256 matches the hex in its key.
    pub async fn assert_content_addressed(&self) {
        for key in self.keys().await {
            let bytes = self.object(&Path::from(key.as_str())).await.unwrap();
            let hex = key.rsplit('/').next().unwrap();
            assert_eq!(
                crate::support::sha256(&bytes),
                format!("sha256:{hex}"),
                "{key} holds other bytes"
            );
        }
    }

    fn read(&self) -> Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(injected("read"));
        }
        Ok(())
    }

    fn write(&self) -> Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(injected("write"));
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for TestBucket {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.write()?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.write()?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.read()?;
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
