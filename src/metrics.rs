//! Prometheus metrics: the counters every layer updates, rendered at `GET /metrics`.
//!
//! Hot, label-free counters are atomics; labelled ones share one mutex-guarded map
//! (a few label sets each, updated once per request).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// What a cache lookup was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Tag,
    Manifest,
    Blob,
    TagList,
    Referrers,
}

impl Kind {
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

#[derive(Default)]
pub struct Metrics {
    /// (route, method, status) → count.
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    /// (upstream, method, status or "error") → count.
    upstream: Mutex<BTreeMap<(String, &'static str, String), u64>>,
    /// upstream → last `ratelimit-remaining` seen.
    ratelimit_remaining: Mutex<BTreeMap<String, u64>>,
    hits: [AtomicU64; 5],
    misses: [AtomicU64; 5],
    pub bytes_served: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub stale_answers: AtomicU64,
    pub negative_hits: AtomicU64,
    pub coalesced: AtomicU64,
    pub inflight_fetches: AtomicI64,
    pub inflight_waiters: AtomicI64,
    pub fetch_resumes: AtomicU64,
    pub integrity_failures: AtomicU64,
    pub store_write_errors: AtomicU64,
    pub uncached_passthrough: AtomicU64,
    /// Problems found by the last fsck run through the admin API.
    pub fsck_findings: AtomicU64,
}

/// Values that live elsewhere (the store), read when rendering.
pub struct StoreGauges {
    pub bytes: u64,
    pub blobs: u64,
    pub max_bytes: Option<u64>,
    pub evictions: u64,
    pub bytes_evicted: u64,
}

impl Metrics {
    pub fn request(&self, route: &'static str, method: &'static str, status: u16) {
        *lock(&self.requests)
            .entry((route, method, status))
            .or_insert(0) += 1;
    }

    pub fn upstream_request(&self, upstream: &str, method: &'static str, status: Option<u16>) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        *lock(&self.upstream)
            .entry((upstream.to_string(), method, status))
            .or_insert(0) += 1;
    }

    pub fn ratelimit_remaining(&self, upstream: &str, remaining: u64) {
        lock(&self.ratelimit_remaining).insert(upstream.to_string(), remaining);
    }

    pub fn hit(&self, kind: Kind) {
        self.hits[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn miss(&self, kind: Kind) {
        self.misses[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Total upstream requests so far, for tests and logs.
    pub fn upstream_total(&self) -> u64 {
        lock(&self.upstream).values().sum()
    }

    pub fn render(&self, store: &StoreGauges) -> String {
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "ferry_http_requests_total",
            "counter",
            "Client requests by route, method and status.",
        );
        for ((route, method, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(out, "ferry_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}");
        }
        header(
            &mut out,
            "ferry_cache_hits_total",
            "counter",
            "Answers from the cache, by kind.",
        );
        header(
            &mut out,
            "ferry_cache_misses_total",
            "counter",
            "Lookups that needed upstream, by kind.",
        );
        for kind in [
            Kind::Tag,
            Kind::Manifest,
            Kind::Blob,
            Kind::TagList,
            Kind::Referrers,
        ] {
            let i = kind as usize;
            let _ = writeln!(
                out,
                "ferry_cache_hits_total{{kind=\"{}\"}} {}",
                kind.label(),
                self.hits[i].load(Ordering::Relaxed)
            );
            let _ = writeln!(
                out,
                "ferry_cache_misses_total{{kind=\"{}\"}} {}",
                kind.label(),
                self.misses[i].load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "ferry_upstream_requests_total",
            "counter",
            "Requests sent upstream, by upstream, method and status.",
        );
        for ((up, method, status), n) in lock(&self.upstream).iter() {
            let _ = writeln!(out, "ferry_upstream_requests_total{{upstream=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}", escape(up));
        }
        header(
            &mut out,
            "ferry_upstream_ratelimit_remaining",
            "gauge",
            "Last ratelimit-remaining header seen from each upstream.",
        );
        for (up, n) in lock(&self.ratelimit_remaining).iter() {
            let _ = writeln!(
                out,
                "ferry_upstream_ratelimit_remaining{{upstream=\"{}\"}} {n}",
                escape(up)
            );
        }
        let counters: [(&str, &str, u64); 10] = [
            (
                "ferry_bytes_served_total",
                "Body bytes sent to clients.",
                self.bytes_served.load(Ordering::Relaxed),
            ),
            (
                "ferry_bytes_fetched_total",
                "Body bytes received from upstreams.",
                self.bytes_fetched.load(Ordering::Relaxed),
            ),
            (
                "ferry_stale_answers_total",
                "Tag answers served stale because upstream failed.",
                self.stale_answers.load(Ordering::Relaxed),
            ),
            (
                "ferry_negative_hits_total",
                "Tag lookups answered 404 from the negative cache.",
                self.negative_hits.load(Ordering::Relaxed),
            ),
            (
                "ferry_coalesced_requests_total",
                "Requests that joined an upstream request already in flight.",
                self.coalesced.load(Ordering::Relaxed),
            ),
            (
                "ferry_fetch_resumes_total",
                "Blob transfers resumed with a Range request after a dropped connection.",
                self.fetch_resumes.load(Ordering::Relaxed),
            ),
            (
                "ferry_integrity_failures_total",
                "Upstream content that did not match its digest or size.",
                self.integrity_failures.load(Ordering::Relaxed),
            ),
            (
                "ferry_store_write_errors_total",
                "Blob writes or commits that failed on the local disk.",
                self.store_write_errors.load(Ordering::Relaxed),
            ),
            (
                "ferry_uncached_passthrough_total",
                "Blob responses streamed from upstream without caching (disk failing).",
                self.uncached_passthrough.load(Ordering::Relaxed),
            ),
            (
                "ferry_evictions_total",
                "Blobs evicted to keep the store under its budget.",
                store.evictions,
            ),
        ];
        for (name, help, v) in counters {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
        let gauges: [(&str, &str, i64); 6] = [
            (
                "ferry_fsck_findings",
                "Problems found by the last fsck through the admin API.",
                self.fsck_findings.load(Ordering::Relaxed) as i64,
            ),
            (
                "ferry_inflight_fetches",
                "Blob fetches from upstream in progress.",
                self.inflight_fetches.load(Ordering::Relaxed),
            ),
            (
                "ferry_inflight_waiters",
                "Client responses streaming from an in-progress fetch.",
                self.inflight_waiters.load(Ordering::Relaxed),
            ),
            (
                "ferry_store_bytes",
                "Bytes of blobs in the store.",
                store.bytes as i64,
            ),
            (
                "ferry_store_blobs",
                "Blobs in the store.",
                store.blobs as i64,
            ),
            (
                "ferry_store_max_bytes",
                "The store's size budget (0 = unbounded).",
                store.max_bytes.unwrap_or(0) as i64,
            ),
        ];
        for (name, help, v) in gauges {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {v}");
        }
        header(
            &mut out,
            "ferry_evicted_bytes_total",
            "counter",
            "Bytes evicted to keep the store under its budget.",
        );
        let _ = writeln!(out, "ferry_evicted_bytes_total {}", store.bytes_evicted);
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
