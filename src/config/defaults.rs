//! Every default in one table. The configuration file, `--help` and the store
//! all read them from here, so a default is changed in one place.

use std::time::Duration;

/// Client-facing address.
pub const LISTEN: &str = "127.0.0.1:5000";
/// Where blobs, the index and temp files live.
pub const DATA_DIR: &str = "./ferry-data";
/// Docker Hub's API endpoint, the upstream when none is configured.
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";

/// How long a tag→digest answer is served without asking upstream: short enough
/// that a moved tag is seen within a minute, long enough that a burst of
/// `imagePullPolicy: Always` starts across a cluster costs one `HEAD`.
pub const TAG_TTL: Duration = Duration::from_secs(30);
/// Past the TTL, how long a cached answer may still be served while upstream
/// fails: a day of upstream outage is survivable.
pub const STALE_IF_ERROR: Duration = Duration::from_secs(24 * 3600);
/// The tag TTL of an upstream that sends push events: moves are seen from the
/// events within about a second, so the TTL is only a safety net for an event
/// that never arrived.
pub const EVENTS_TAG_TTL: Duration = Duration::from_secs(3600);
/// Upstream-checked access: how long the upstream's "this client may pull
/// this repository" stands before it is asked again…
pub const ACCESS_TTL: Duration = Duration::from_secs(300);
/// …and its "may not" (short: a fixed pull secret takes effect quickly).
pub const ACCESS_NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// While the upstream cannot be asked, a decision this old still stands;
/// past it, `503`: never an open door.
pub const ACCESS_STALE: Duration = Duration::from_secs(3600);
/// How long an upstream "no such tag" is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(15);

/// Eviction starts above this fraction of the size budget…
pub const HIGH_WATERMARK: f64 = ferry_storage::DEFAULT_HIGH_WATERMARK;
/// …and stops below this one.
pub const LOW_WATERMARK: f64 = ferry_storage::DEFAULT_LOW_WATERMARK;

/// How long a stopping Ferry lets in-flight responses finish and blob fetches
/// land: fits inside Kubernetes' default `terminationGracePeriodSeconds` (30).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// Upstream TCP (and TLS) connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstream: from sending a request to its response headers.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Upstream: the longest silence inside a body before the transfer is
/// abandoned (and resumed with `Range`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- [limits]

/// Concurrent client connections per listener.
pub const MAX_CONNECTIONS: usize = 10_000;
/// A connection must have sent a whole request head this long after it became
/// ready for one (after it opened, and after each response).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request head (request line and headers) read.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Concurrent streams per HTTP/2 connection.
pub const H2_MAX_STREAMS: u32 = 128;
/// HTTP/2 streams a client may open and reset before Ferry handles them (a
/// "rapid reset" flood) before its connection is closed.
pub const H2_MAX_PENDING_RESETS: usize = 20;
/// Concurrent upstream blob transfers; more wait for a slot.
pub const MAX_FETCHES: usize = 64;

// ---------------------------------------------------------------- [bucket]

/// The region requests are signed for when none is set (AWS's default;
/// Garage's is whatever its `s3_region` says, often `garage`).
pub const BUCKET_REGION: &str = "us-east-1";
/// Multipart part size: S3's minimum is 5 MiB; 8 MiB is what the AWS CLI uses.
pub const BUCKET_PART_SIZE: usize = 8 * 1024 * 1024;
/// Uploads at once: bounds upload memory at this × the part size (64 MiB).
pub const BUCKET_MAX_UPLOADS: usize = 8;
/// After a bucket error, how long the bucket is skipped (reads go upstream,
/// uploads are skipped): a dead endpoint costs one timeout per window, not one
/// per request.
pub const BUCKET_BACKOFF: Duration = Duration::from_secs(30);
/// Uploads skipped (no free slot, or the bucket backing off) remembered to be
/// uploaded later from the local disk; past this many, more are forgotten.
pub const BUCKET_BACKLOG: usize = 10_000;
/// How often the remembered uploads are tried, while the bucket is usable and
/// upload slots are free.
pub const BUCKET_CATCH_UP: Duration = Duration::from_secs(1);
/// A bucket request's whole time, connect included…
pub const BUCKET_TIMEOUT: Duration = Duration::from_secs(30);
/// …but a blob read streams for as long as the blob takes (a stalled one is
/// cut by the fetch's idle timeout, and resumed).
pub const BUCKET_STREAM_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

// ---------------------------------------------------------------- [cluster]

/// How often `peers_dns` is resolved again: a replica that became Ready (or
/// stopped being) is seen within this.
pub const CLUSTER_REFRESH: Duration = Duration::from_secs(5);
/// How long a peer that failed a call is left out of ownership (its keys go
/// to the next member meanwhile).
pub const PEER_QUARANTINE: Duration = Duration::from_secs(10);
/// A peer request's connect timeout (peers are in the same cluster network).
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

// ------------------------------------------- what bounds memory (not configurable)
// Every in-memory map is an `ExpiringMap` (src/bounded.rs) with one of these
// capacities. Losing an entry at the bound costs at most one upstream request.

/// Tags remembered as missing upstream.
pub const NEGATIVE_TAGS: usize = 10_000;
/// Bearer tokens kept per upstream.
pub const TOKENS_PER_UPSTREAM: usize = 4_096;
/// Access decisions kept (upstream-checked access).
pub const ACCESS_DECISIONS: usize = 100_000;
/// Clients' own views of checked upstreams Ferry has no credentials for; the
/// least recently used goes first (rebuilding one costs a token request).
pub const CLIENT_VIEWS: usize = 4_096;
/// A client's view unused this long is dropped.
pub const CLIENT_VIEW_IDLE: Duration = Duration::from_secs(3600);
/// Cold blob `HEAD` answers (size) remembered, so a rollout's herd of `HEAD`s
/// arriving in waves costs one upstream request…
pub const BLOB_HEADS: usize = 10_000;
/// …each for this long (short: a blob's size never changes, but a blob
/// deleted upstream should not be announced for long).
pub const BLOB_HEAD_MEMORY: Duration = Duration::from_secs(10);
/// Images warmed at admission remembered, so each is warmed at most once…
pub const WARMED_IMAGES: usize = 4_096;
/// …in this long.
pub const REWARM_AFTER: Duration = Duration::from_secs(600);
/// Push-event ids remembered to skip a sender's retries…
pub const EVENT_IDS: usize = 10_000;
/// …for this long at most.
pub const EVENT_ID_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// Tag-list pages and referrers indexes kept in memory, each cache…
pub const ANSWERS: usize = 1_024;
/// …and the bytes they may hold (an answer over a quarter of it is served but
/// not kept in memory).
pub const ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// `--help` text for a flag that overrides a setting with this default.
pub fn help(what: &str, default: impl std::fmt::Display) -> String {
    format!("{what} [default: {default}]")
}

/// The shortest secret accepted (admin token, peer secret, push-event
/// secret): guessing one must be hopeless.
pub const MIN_SECRET_LEN: usize = 16;

/// A duration as `--help` and `config check` print it (`30s`, `1day`).
pub fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
