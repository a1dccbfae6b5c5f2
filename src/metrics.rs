//! Prometheus metrics: the families every layer updates, rendered at
//! `GET /metrics` in the OpenMetrics text format by `prometheus-client`.
//!
//! Counters are registered without their `_total` suffix, which the encoder
//! adds: `bytes_served` is exported as `ferry_bytes_served_total`. Latency
//! histograms are in seconds, for clients (by route) and for upstream requests
//! (by upstream and method); people alert on latency, not only on counts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// What a cache lookup was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A tag → digest answer.
    Tag,
    /// A manifest body by digest.
    Manifest,
    /// A blob.
    Blob,
    /// A `tags/list` page.
    TagList,
    /// A referrers index.
    Referrers,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Tag,
        Kind::Manifest,
        Kind::Blob,
        Kind::TagList,
        Kind::Referrers,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Tag => "tag",
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
            Kind::TagList => "tag_list",
            Kind::Referrers => "referrers",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    method: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamMethodLabels {
    upstream: String,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamNameLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    upstream: String,
    format: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccessLabels {
    upstream: String,
    /// `upstream` (asked now), `cached` (a kept decision), `stale` (kept
    /// through an upstream failure).
    source: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketLabels {
    /// `blob` or `manifest`.
    object: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketUploadLabels {
    object: &'static str,
    /// `completed`, `failed` (the bucket refused), `aborted` (the fetch
    /// failed verification or broke), `skipped` (no upload slot, or the
    /// bucket backing off).
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketOpLabels {
    /// `read`, `write` or `delete`.
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    /// `blob`, `blob_head`, `manifest`, `tag`, `event`, `purge`.
    op: &'static str,
    /// `ok`, `not_found`, `loop`, `failed`.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerNameLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    /// `owner` (answered here for a peer), `forwarded` (asked the owner),
    /// `local` (this replica owns it, or a peer could not answer).
    role: &'static str,
    /// `blob`, `blob_head`, `manifest`, `tag`.
    kind: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds from 0.5 ms to about 33 s, doubling: a warm `HEAD` lands in the
/// first buckets, a cold multi-GiB blob in the last.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// Every metric Ferry exports. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Histograms<RouteLabels>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_seconds: Histograms<UpstreamMethodLabels>,
    /// Every upstream request, whatever its labels (not exported).
    upstream_total: Counter,
    ratelimit_remaining: Family<UpstreamNameLabels, Gauge>,
    hits: Family<KindLabels, Counter>,
    misses: Family<KindLabels, Counter>,
    events: Family<EventLabels, Counter>,
    access: Family<AccessLabels, Counter>,
    bucket_reads: Family<BucketLabels, Counter>,
    bucket_hits: Family<BucketLabels, Counter>,
    bucket_uploads: Family<BucketUploadLabels, Counter>,
    bucket_errors: Family<BucketOpLabels, Counter>,
    bucket_skipped: Family<BucketOpLabels, Counter>,
    peer_requests: Family<PeerLabels, Counter>,
    peer_quarantines: Family<PeerNameLabels, Counter>,
    cluster_roles: Family<RoleLabels, Counter>,
    /// Live cluster members in this replica's view (itself included).
    pub cluster_members: Gauge,
    /// Object bytes read from the bucket.
    pub bucket_bytes_read: Counter,
    /// Object bytes written to the bucket (completed uploads).
    pub bucket_bytes_written: Counter,
    /// Body bytes sent to clients.
    pub bytes_served: Counter,
    /// Body bytes received from upstreams.
    pub bytes_fetched: Counter,
    /// Answers served stale because upstream failed.
    pub stale_answers: Counter,
    /// Tag lookups answered 404 from the negative cache.
    pub negative_hits: Counter,
    /// Requests that joined an upstream request already in flight.
    pub coalesced: Counter,
    /// Blob fetches from upstream in progress.
    pub inflight_fetches: Gauge,
    /// Client responses streaming from an in-progress fetch.
    pub inflight_waiters: Gauge,
    /// Blob fetches waiting for a transfer slot (`limits.max_fetches`).
    pub fetches_queued: Gauge,
    /// Blob transfers resumed with `Range` after a dropped connection.
    pub fetch_resumes: Counter,
    /// Upstream content that did not match its digest or size.
    pub integrity_failures: Counter,
    /// Blob writes or commits that failed on the local disk.
    pub store_write_errors: Counter,
    /// Blob responses streamed from upstream without caching (disk failing).
    pub uncached_passthrough: Counter,
    /// Problems found by the last fsck through the admin API.
    pub fsck_findings: Gauge,
    /// Images whose warming started after admission pinned them…
    pub warms_started: Counter,
    /// …and pinned images not warmed again (warmed in the last 10 minutes).
    pub warms_skipped: Counter,
    store_bytes: Gauge,
    store_blobs: Gauge,
    store_max_bytes: Gauge,
    evictions: Counter,
    evicted_bytes: Counter,
}

/// Values that live in the store, copied in at each scrape.
pub struct StoreGauges {
    /// Bytes of blobs in the store.
    pub bytes: u64,
    /// Blobs in the store.
    pub blobs: u64,
    /// The size budget, if any.
    pub max_bytes: Option<u64>,
    /// Blobs evicted so far.
    pub evictions: u64,
    /// Bytes evicted so far.
    pub bytes_evicted: u64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered (and the cache kinds at 0,
    /// so dashboards see them before the first request).
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            upstream_requests: Family::default(),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            upstream_total: Counter::default(),
            ratelimit_remaining: Family::default(),
            hits: Family::default(),
            misses: Family::default(),
            events: Family::default(),
            access: Family::default(),
            bucket_reads: Family::default(),
            bucket_hits: Family::default(),
            bucket_uploads: Family::default(),
            bucket_errors: Family::default(),
            bucket_skipped: Family::default(),
            peer_requests: Family::default(),
            peer_quarantines: Family::default(),
            cluster_roles: Family::default(),
            cluster_members: Gauge::default(),
            bucket_bytes_read: Counter::default(),
            bucket_bytes_written: Counter::default(),
            bytes_served: Counter::default(),
            bytes_fetched: Counter::default(),
            stale_answers: Counter::default(),
            negative_hits: Counter::default(),
            coalesced: Counter::default(),
            inflight_fetches: Gauge::default(),
            inflight_waiters: Gauge::default(),
            fetches_queued: Gauge::default(),
            fetch_resumes: Counter::default(),
            integrity_failures: Counter::default(),
            store_write_errors: Counter::default(),
            uncached_passthrough: Counter::default(),
            fsck_findings: Gauge::default(),
            warms_started: Counter::default(),
            warms_skipped: Counter::default(),
            store_bytes: Gauge::default(),
            store_blobs: Gauge::default(),
            store_max_bytes: Gauge::default(),
            evictions: Counter::default(),
            evicted_bytes: Counter::default(),
        };
        for kind in Kind::ALL {
            let labels = KindLabels { kind: kind.label() };
            drop(m.hits.get_or_create(&labels));
            drop(m.misses.get_or_create(&labels));
        }
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {
                r.register(concat!("ferry_", $name), $help, $metric.clone())
            };
        }
        reg!(
            "http_requests",
            "Client requests by route, method and status.",
            self.requests
        );
        reg!(
            "http_request_duration_seconds",
            "Client request latency until the response headers, by route.",
            self.request_seconds
        );
        reg!("cache_hits", "Answers from the cache, by kind.", self.hits);
        reg!(
            "peer_requests",
            "Requests this replica sent to a peer, by peer, operation and result.",
            self.peer_requests
        );
        reg!(
            "peer_quarantines",
            "Times a peer was left out of ownership after a failed call, by peer.",
            self.peer_quarantines
        );
        reg!(
            "cluster_requests",
            "Cold lookups by role (owner: answered for a peer; forwarded: asked the owner; local: owned here) and kind.",
            self.cluster_roles
        );
        reg!(
            "cluster_members",
            "Live members in this replica's view of the cluster, itself included.",
            self.cluster_members
        );
        reg!(
            "bucket_reads",
            "Local misses looked up in the shared bucket, by object (blob, manifest).",
            self.bucket_reads
        );
        reg!(
            "bucket_hits",
            "Local misses the shared bucket answered, by object.",
            self.bucket_hits
        );
        reg!(
            "bucket_uploads",
            "Uploads of verified objects to the shared bucket, by object and result (completed, failed, aborted, skipped).",
            self.bucket_uploads
        );
        reg!(
            "bucket_errors",
            "Shared-bucket requests that failed, by operation (read, write, delete); each starts a back-off.",
            self.bucket_errors
        );
        reg!(
            "bucket_skipped",
            "Shared-bucket operations skipped while it backs off after an error, by operation.",
            self.bucket_skipped
        );
        reg!(
            "bucket_bytes_read",
            "Object bytes read from the shared bucket.",
            self.bucket_bytes_read
        );
        reg!(
            "bucket_bytes_written",
            "Object bytes written to the shared bucket by completed uploads.",
            self.bucket_bytes_written
        );
        reg!(
            "admission_warms",
            "Images pinned at admission whose warming started.",
            self.warms_started
        );
        reg!(
            "admission_warms_skipped",
            "Images pinned at admission not warmed again (warmed in the last 10 minutes).",
            self.warms_skipped
        );
        reg!(
            "events",
            "Push events received, by upstream, format and outcome (applied, ignored, duplicate, outdated, foreign, invalid, rejected).",
            self.events
        );
        reg!(
            "access_decisions",
            "Upstream-checked access decisions, by upstream, source (upstream, cached, stale) and result (allowed, unauthenticated, forbidden, missing, unavailable).",
            self.access
        );
        reg!(
            "cache_misses",
            "Lookups that needed upstream, by kind.",
            self.misses
        );
        reg!(
            "upstream_requests",
            "Requests sent upstream, by upstream, method and status (\"error\": no response).",
            self.upstream_requests
        );
        reg!(
            "upstream_request_duration_seconds",
            "Upstream latency until the response headers, by upstream and method.",
            self.upstream_seconds
        );
        reg!(
            "upstream_ratelimit_remaining",
            "Last ratelimit-remaining header seen from each upstream.",
            self.ratelimit_remaining
        );
        reg!(
            "bytes_served",
            "Body bytes sent to clients.",
            self.bytes_served
        );
        reg!(
            "bytes_fetched",
            "Body bytes received from upstreams.",
            self.bytes_fetched
        );
        reg!(
            "stale_answers",
            "Answers served stale because upstream failed.",
            self.stale_answers
        );
        reg!(
            "negative_hits",
            "Tag lookups answered 404 from the negative cache.",
            self.negative_hits
        );
        reg!(
            "coalesced_requests",
            "Requests that joined an upstream request already in flight.",
            self.coalesced
        );
        reg!(
            "inflight_fetches",
            "Blob fetches from upstream in progress.",
            self.inflight_fetches
        );
        reg!(
            "fetches_queued",
            "Blob fetches waiting for a transfer slot (limits.max_fetches).",
            self.fetches_queued
        );
        reg!(
            "inflight_waiters",
            "Client responses streaming from an in-progress fetch.",
            self.inflight_waiters
        );
        reg!(
            "fetch_resumes",
            "Blob transfers resumed with a Range request after a dropped connection.",
            self.fetch_resumes
        );
        reg!(
            "integrity_failures",
            "Upstream content that did not match its digest or size.",
            self.integrity_failures
        );
        reg!(
            "store_write_errors",
            "Blob writes or commits that failed on the local disk.",
            self.store_write_errors
        );
        reg!(
            "uncached_passthrough",
            "Blob responses streamed from upstream without caching (disk failing).",
            self.uncached_passthrough
        );
        reg!(
            "fsck_findings",
            "Problems found by the last fsck through the admin API.",
            self.fsck_findings
        );
        reg!(
            "store_bytes",
            "Bytes of blobs in the store.",
            self.store_bytes
        );
        reg!("store_blobs", "Blobs in the store.", self.store_blobs);
        reg!(
            "store_max_bytes",
            "The store's size budget (0 = unbounded).",
            self.store_max_bytes
        );
        reg!(
            "evictions",
            "Blobs evicted to keep the store under its budget.",
            self.evictions
        );
        reg!(
            "evicted_bytes",
            "Bytes evicted to keep the store under its budget.",
            self.evicted_bytes
        );
    }

    /// One client request answered.
    pub fn request(&self, route: &'static str, method: &'static str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }

    /// One request sent upstream; `status` is `None` when no response came.
    pub fn upstream_request(
        &self,
        upstream: &str,
        method: &'static str,
        status: Option<u16>,
        took: Duration,
    ) {
        self.upstream_total.inc();
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_string(),
                method,
                status,
            })
            .inc();
        self.upstream_seconds
            .get_or_create(&UpstreamMethodLabels {
                upstream: upstream.to_string(),
                method,
            })
            .observe(took.as_secs_f64());
    }

    /// The last `ratelimit-remaining` an upstream reported.
    pub fn ratelimit_remaining(&self, upstream: &str, remaining: u64) {
        self.ratelimit_remaining
            .get_or_create(&UpstreamNameLabels {
                upstream: upstream.to_string(),
            })
            .set(remaining.min(i64::MAX as u64) as i64);
    }

    /// `n` push events from `upstream` in `format` ended as `outcome`.
    pub fn event(&self, upstream: &str, format: &'static str, outcome: &'static str, n: u64) {
        self.events
            .get_or_create(&EventLabels {
                upstream: upstream.to_string(),
                format,
                outcome,
            })
            .inc_by(n);
    }

    /// A request this replica sent to `peer`.
    pub fn peer_request(&self, peer: &str, op: &'static str, result: &'static str) {
        self.peer_requests
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
                op,
                result,
            })
            .inc();
    }

    /// `peer` was quarantined.
    pub fn peer_quarantine(&self, peer: &str) {
        self.peer_quarantines
            .get_or_create(&PeerNameLabels {
                peer: peer.to_string(),
            })
            .inc();
    }

    /// A cold lookup of `kind` in `role` (owner, forwarded, local).
    pub fn cluster_role(&self, role: &'static str, kind: &'static str) {
        self.cluster_roles
            .get_or_create(&RoleLabels { role, kind })
            .inc();
    }

    /// A local miss looked up in the bucket (`object`: blob or manifest), and
    /// whether the bucket had it.
    pub fn bucket_read(&self, object: &'static str, hit: bool) {
        let labels = BucketLabels { object };
        self.bucket_reads.get_or_create(&labels).inc();
        if hit {
            self.bucket_hits.get_or_create(&labels).inc();
        }
    }

    /// How an upload to the bucket ended.
    pub fn bucket_upload(&self, object: &'static str, result: &'static str) {
        self.bucket_uploads
            .get_or_create(&BucketUploadLabels { object, result })
            .inc();
    }

    /// A bucket request that failed (`op`: read, write, delete).
    pub fn bucket_error(&self, op: &'static str) {
        self.bucket_errors
            .get_or_create(&BucketOpLabels { op })
            .inc();
    }

    /// A bucket operation skipped while the bucket backs off.
    pub fn bucket_skip(&self, op: &'static str) {
        self.bucket_skipped
            .get_or_create(&BucketOpLabels { op })
            .inc();
    }

    /// An upstream-checked access decision (`proxy::access`).
    pub fn access_decision(&self, upstream: &str, source: &'static str, result: &'static str) {
        self.access
            .get_or_create(&AccessLabels {
                upstream: upstream.to_string(),
                source,
                result,
            })
            .inc();
    }

    /// A lookup answered from the cache.
    pub fn hit(&self, kind: Kind) {
        self.hits
            .get_or_create(&KindLabels { kind: kind.label() })
            .inc();
    }

    /// A lookup that needed upstream.
    pub fn miss(&self, kind: Kind) {
        self.misses
            .get_or_create(&KindLabels { kind: kind.label() })
            .inc();
    }

    /// Total upstream requests so far, for tests and logs.
    pub fn upstream_total(&self) -> u64 {
        self.upstream_total.get()
    }

    /// The OpenMetrics text of every family, with the store's values as of now.
    pub fn render(&self, store: &StoreGauges) -> String {
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        self.store_bytes.set(clamp(store.bytes));
        self.store_blobs.set(clamp(store.blobs));
        self.store_max_bytes
            .set(clamp(store.max_bytes.unwrap_or(0)));
        // Counters only go up: add what the store counted since the last scrape.
        self.evictions
            .inc_by(store.evictions.saturating_sub(self.evictions.get()));
        self.evicted_bytes
            .inc_by(store.bytes_evicted.saturating_sub(self.evicted_bytes.get()));
        let mut out = String::with_capacity(8192);
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
