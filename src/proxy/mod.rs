//! The cache between the HTTP edge and upstream. One file per thing it promises:
//!
//! - [`tags`]: tag resolution under the freshness policy, revalidation by `HEAD`,
//!   stale-if-error; [`negative`]: remembered "not found" answers;
//! - [`freshness`]: the TTL and stale-window arithmetic, in one home;
//! - [`manifests`]: manifests by digest, verified and kept byte for byte;
//! - [`blobs`]: blobs from the store or one shared upstream fetch (a folder:
//!   the in-flight registry, the leader, followers, the uncached relay, stored files);
//! - [`tag_lists`] and [`referrers`], kept in the [`answers`] cache;
//! - [`access`]: upstream-checked access (who may read a repository, and
//!   which digests are known in it);
//! - [`store_health`]: disk-failure episodes (blobs stream uncached meanwhile);
//! - [`prefetch`]: warming the cache with a whole image;
//! - [`tag_events`]: push events applied; [`maintenance`]: purges, fsck,
//!   maintenance passes and shutdown;
//! - [`flight`]: single-flight, at most one upstream request per key;
//! - [`error`]: the typed error every path returns.
//!
//! Upstream traffic rules kept here:
//! - a tag inside its TTL (or immutable) costs no upstream request;
//! - past the TTL one `HEAD` revalidates it, shared by everyone asking meanwhile;
//! - a manifest is `GET` upstream only when its digest is not stored, and a tag
//!   is `GET` only when nothing is known about it and the client wants the body;
//! - manifests and blobs by digest never talk to upstream once stored;
//! - at most one upstream request per blob digest is in flight;
//! - with checked access, a digest is served under a repository only once
//!   upstream has shown it there (one confirmation, shared, remembered).

pub mod access;
pub(crate) mod answers;
pub mod blobs;
pub mod error;
mod flight;
pub mod freshness;
pub mod maintenance;
mod manifests;
mod negative;
mod prefetch;
pub mod referrers;
mod store_health;
pub mod tag_events;
pub mod tag_lists;
pub mod tags;

pub use access::Refusal;
pub use blobs::{BlobAnswer, ByteStream};
pub use error::{Error, Result};
pub use flight::SingleFlight;
pub use manifests::ManifestMeta;
pub use prefetch::{PrefetchReport, Progress};
pub use referrers::ReferrersAnswer;
pub use tag_events::{EventReport, Outcome};
pub use tag_lists::TagListAnswer;
pub use tags::{Resolved, Source};

use crate::bucket::Bucket;
use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::config::defaults;
use crate::metrics::{Metrics, StoreGauges};
use crate::oci::{Digest, RangeRequest, Reference, RepoName, Tag, TagsPage};
use crate::upstream::{RouteError, Router, Target};
use access::Access;
use answers::Budget;
use blobs::Blobs;
use bytes::Bytes;
use ferry_storage::Store;
use manifests::Manifests;
use referrers::Referrers;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use store_health::StoreHealth;
use tag_lists::TagLists;
use tags::Tags;

/// Who is asking: a cold key is forwarded to its owner only for clients; a
/// peer's request is answered here, never forwarded again (no loops,
/// whatever the membership views).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client, the admin API, the webhook, a background task.
    Client,
    /// Another replica of the cluster.
    Peer,
}

impl Origin {
    /// Whether this asker's requests are passed on: a purge to every
    /// replica, a cold key to its owner.
    pub fn forwards(self) -> bool {
        self == Origin::Client
    }

    /// Whether a cold key of `target` may be asked of its owner: a client's,
    /// unless `target` is fetched with that client's own credentials (a
    /// checked upstream Ferry has none for): the owner could only fetch it
    /// anonymously, so the replica the client asked fetches it itself.
    pub fn forwards_for(self, target: &Target) -> bool {
        self.forwards() && !target.upstream.is_client_view()
    }
}

/// A manifest answer: what a `HEAD` needs, and the body for a `GET`.
pub struct ManifestAnswer {
    /// Its digest.
    pub digest: Digest,
    /// Its media type, as upstream declared it.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// The exact bytes; `None` for a `HEAD`.
    pub body: Option<Bytes>,
    /// For a tag: when upstream last confirmed it (unix ms).
    pub confirmed_ms: Option<u64>,
}

/// The cache. One per process, shared by every connection.
pub struct Proxy {
    router: Router,
    store: Store,
    metrics: Arc<Metrics>,
    clock: Clock,
    manifests: Arc<Manifests>,
    tags: Arc<Tags>,
    blobs: Arc<Blobs>,
    tag_lists: TagLists,
    referrers: Referrers,
    /// Upstream-checked access: decisions, client views, repository links.
    access: Access,
    /// The other replicas, when configured.
    cluster: Option<Arc<Cluster>>,
    /// The shared bucket, when configured (purges delete there too).
    bucket: Option<Arc<Bucket>>,
    /// Push-event ids already applied.
    seen_events: tag_events::SeenIds,
}

impl Proxy {
    /// The cache over `store` (and the shared `bucket`, if any), asking the
    /// upstreams `router` knows, with at most `max_fetches` upstream blob
    /// transfers at once.
    pub fn new(
        store: Store,
        bucket: Option<Arc<Bucket>>,
        cluster: Option<Arc<Cluster>>,
        router: Router,
        metrics: Arc<Metrics>,
        clock: Clock,
        max_fetches: usize,
    ) -> Proxy {
        let bucket_for_purges = bucket.clone();
        let manifests = Arc::new(Manifests::new(
            store.clone(),
            metrics.clone(),
            bucket.clone(),
            cluster.clone(),
        ));
        let health = Arc::new(StoreHealth::new(clock.clone(), metrics.clone()));
        Proxy {
            tags: Arc::new(Tags::new(
                store.clone(),
                clock.clone(),
                metrics.clone(),
                manifests.clone(),
                defaults::NEGATIVE_TAGS,
                cluster.clone(),
            )),
            blobs: Arc::new(Blobs::new(
                store.clone(),
                metrics.clone(),
                health,
                clock.clone(),
                max_fetches,
                bucket,
                cluster.clone(),
            )),
            tag_lists: TagLists::new(
                Budget::DEFAULT,
                clock.clone(),
                metrics.clone(),
                store.clone(),
            ),
            referrers: Referrers::new(
                Budget::DEFAULT,
                clock.clone(),
                metrics.clone(),
                store.clone(),
            ),
            access: Access::new(store.clone(), clock.clone(), metrics.clone()),
            cluster,
            bucket: bucket_for_purges,
            manifests,
            router,
            store,
            metrics,
            clock,
            seen_events: tag_events::SeenIds::default(),
        }
    }

    // ------------------------------------------------------------ routing

    /// The upstream repository a pull-API request is for (`?ns=`, a registry
    /// prefix, or the default upstream).
    pub fn route(&self, ns: Option<&str>, name: &RepoName) -> Result<Target, RouteError> {
        self.router.route(ns, name)
    }

    /// `repo` on the upstream with this name or alias (admin, resolve).
    pub fn target(&self, upstream: &str, repo: RepoName) -> Result<Target, RouteError> {
        self.router.named(upstream, repo)
    }

    // ------------------------------------------------------------ who reads

    /// Whether the client sending `authorization` may read `target`'s
    /// repository: for an upstream with checked access, as the upstream
    /// decides (asked once per client and repository, then remembered);
    /// always for the others (Ferry's own `[[client]]` identities are the
    /// edge's to check).
    pub async fn admit(
        &self,
        target: &Target,
        authorization: Option<&str>,
    ) -> std::result::Result<(), Refusal> {
        self.access.admit(target, authorization).await
    }

    /// The target to fetch with for the client sending `authorization`: a
    /// checked upstream Ferry has no credentials for is fetched with the
    /// client's own.
    pub fn fetch_as(&self, target: Target, authorization: Option<&str>) -> Target {
        self.access.fetch_as(target, authorization)
    }

    // ------------------------------------------------------------ the pull API

    /// A manifest by tag or digest. `head`: only what a `HEAD` answers needs.
    /// With checked access, a digest must be known in the repository.
    pub async fn manifest(
        &self,
        target: &Target,
        reference: &Reference,
        head: bool,
        origin: Origin,
    ) -> Result<ManifestAnswer> {
        if origin == Origin::Peer {
            let kind = match reference {
                Reference::Tag(_) => "tag",
                Reference::Digest(_) => "manifest",
            };
            self.metrics.cluster_role("owner", kind);
        }
        let answer = self
            .manifest_unchecked(target, reference, head, origin)
            .await?;
        self.access
            .saw_manifest(target, &answer.digest, answer.body.as_deref());
        Ok(answer)
    }

    async fn manifest_unchecked(
        &self,
        target: &Target,
        reference: &Reference,
        head: bool,
        origin: Origin,
    ) -> Result<ManifestAnswer> {
        let mut confirmed_ms = None;
        let digest = match reference {
            Reference::Tag(tag) => {
                let resolved = self.tags.resolve(target, tag, !head, origin).await?;
                let meta = resolved.meta;
                if head {
                    return Ok(ManifestAnswer {
                        digest: meta.digest,
                        media_type: meta.media_type,
                        size: meta.size,
                        body: None,
                        confirmed_ms: Some(resolved.confirmed_ms),
                    });
                }
                confirmed_ms = Some(resolved.confirmed_ms);
                meta.digest
            }
            Reference::Digest(d) => {
                let (t, d2) = (target.clone(), d.clone());
                Box::pin(self.access.confirm(target, d, move || async move {
                    t.upstream
                        .head_manifest(&t.repo, &d2.to_string())
                        .await
                        .map(drop)
                        .map_err(Error::from)
                }))
                .await?;
                d.clone()
            }
        };
        let m = self.manifests.by_digest(target, &digest, origin).await?;
        Ok(ManifestAnswer {
            digest,
            media_type: m.media_type,
            size: m.body.len() as u64,
            body: (!head).then_some(m.body),
            confirmed_ms,
        })
    }

    /// Resolves `tag` to a digest exactly as a manifest `HEAD` would.
    pub async fn resolve_tag(&self, target: &Target, tag: &Tag) -> Result<Resolved> {
        self.tags.resolve(target, tag, false, Origin::Client).await
    }

    /// A blob (or a range of it). With checked access, it must be known in
    /// the repository; its confirmation is the blob's own cold `HEAD`.
    pub async fn blob(
        &self,
        target: &Target,
        digest: &Digest,
        range: RangeRequest,
        head: bool,
        origin: Origin,
    ) -> Result<BlobAnswer> {
        if origin == Origin::Peer {
            let kind = if head { "blob_head" } else { "blob" };
            self.metrics.cluster_role("owner", kind);
        }
        let (blobs, t, d) = (self.blobs.clone(), target.clone(), digest.clone());
        self.access
            .confirm(target, digest, move || async move {
                blobs.head_upstream(&t, &d, origin).await.map(drop)
            })
            .await?;
        self.blobs.get(target, digest, range, head, origin).await
    }

    /// A page of tags, rewritten to the client's view.
    pub async fn tags_list(
        &self,
        target: &Target,
        client_name: &RepoName,
        page: &TagsPage,
        ns: Option<&str>,
    ) -> Result<TagListAnswer> {
        self.tag_lists.get(target, client_name, page, ns).await
    }

    /// The referrers index of `digest`.
    pub async fn referrers(
        &self,
        target: &Target,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrersAnswer> {
        self.referrers.get(target, digest, artifact_type).await
    }

    /// Caches an image (a tag or a digest) with every platform and layer,
    /// counting into `progress` as it goes.
    pub async fn prefetch(
        &self,
        target: &Target,
        reference: &Reference,
        progress: &Progress,
    ) -> Result<PrefetchReport> {
        prefetch::run(
            &self.tags,
            &self.manifests,
            &self.blobs,
            target,
            reference,
            progress,
        )
        .await
    }

    /// Replaces the running settings of the upstream `new` names (freshness,
    /// credentials, events): what changed, or why it cannot change without a
    /// restart; `None` for an upstream not running.
    pub fn reconfigure_upstream(
        &self,
        new: &crate::config::UpstreamConfig,
    ) -> Option<std::result::Result<Vec<String>, String>> {
        let up = self
            .router
            .upstreams()
            .iter()
            .find(|u| u.name() == new.name)?;
        Some(up.reconfigure(new))
    }

    /// The events secret of the upstream with this name, if it receives events.
    pub fn events_secret(&self, upstream: &str) -> Option<Vec<u8>> {
        let up = self.router.by_name(upstream)?;
        up.config().events.as_ref().map(|e| e.secret.clone())
    }

    /// Applies the events an upstream posted (see [`tag_events`]).
    pub fn apply_events(
        &self,
        upstream: &str,
        parsed: &crate::events::Parsed,
    ) -> std::result::Result<EventReport, RouteError> {
        let up = self
            .router
            .by_name(upstream)
            .filter(|u| u.config().events.is_some())
            .ok_or_else(|| RouteError::UnknownUpstream(upstream.to_string()))?;
        let cache = tag_events::Cache {
            tags: &self.tags,
            manifests: &self.manifests,
            blobs: &self.blobs,
            tag_lists: &self.tag_lists,
            seen: &self.seen_events,
        };
        Ok(tag_events::apply_post(
            cache,
            up,
            parsed,
            self.clock.now_ms(),
        ))
    }

    /// Blobs and bytes in the store.
    pub fn store_usage(&self) -> (u64, u64) {
        (self.store.blob_count(), self.store.total_bytes())
    }

    /// The other replicas, when configured.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The proxy's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Now, by the proxy's clock (unix ms).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The metrics every layer updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        let stats = self.store.stats();
        self.metrics.render(&StoreGauges {
            bytes: self.store.total_bytes(),
            blobs: self.store.blob_count(),
            max_bytes: self.store.max_size(),
            evictions: stats.evictions.load(Ordering::Relaxed),
            bytes_evicted: stats.bytes_evicted.load(Ordering::Relaxed),
        })
    }

    /// The store itself, for tests and benchmarks that inspect it or inject
    /// faults. Nothing in Ferry's request path goes around the cache this way.
    #[doc(hidden)]
    pub fn store_for_tests(&self) -> &Store {
        &self.store
    }
}
