//! Digest pinning at admission: a Kubernetes mutating webhook (AdmissionReview
//! `admission.k8s.io/v1`) that rewrites `image: repo:tag` to
//! `repo:tag@sha256:…`, resolved through Ferry's own tag cache (the same TTL,
//! single-flight and stale-if-error as a manifest `HEAD`), so every replica of a
//! rollout runs the same code and pinned pods pull by digest with no upstream
//! request at all.
//!
//! It lives at the edge, on its own HTTPS listener (the API server calls only
//! HTTPS, checking the SAN `<service>.<namespace>.svc`):
//! - [`images`]: where the images are in a Pod, a workload's pod template, or
//!   new ephemeral containers;
//! - [`warm`]: once an image is pinned, its blobs are fetched (the prefetch
//!   path, a few at a time), so the pull that follows seconds later is warm.
//!
//! It never blocks a cluster by default: an image that cannot be resolved in
//! time (and has no stale answer) is left as it is, with a `warnings` entry;
//! `on_error = "deny"` refuses the object instead. It answers within the
//! `timeout` the API server puts in the URL.

pub mod images;
pub mod warm;

use crate::config::webhook::{OnError, WebhookConfig};
use crate::oci::image_ref::pin_as_written;
use crate::oci::{route::query_param, ImageRef};
use crate::proxy::Proxy;
use crate::server::responses::{self, Body};
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The largest AdmissionReview read (the API server's own object limit is 3 MiB).
const MAX_REVIEW: usize = 4 * 1024 * 1024;
/// When the URL carries no `timeout`: the API server's default is 10 s.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Kept back from the API server's timeout to answer in time.
const MARGIN: Duration = Duration::from_millis(500);
/// Warnings longer than this are cut (the API server may truncate them).
const MAX_WARNING: usize = 120;

/// The webhook: its settings, the cache it resolves through, and the warmer.
pub struct Admission {
    proxy: Arc<Proxy>,
    config: WebhookConfig,
    warmer: warm::Warmer,
}

impl Admission {
    /// The webhook over `proxy`.
    pub fn new(proxy: Arc<Proxy>, config: WebhookConfig) -> Admission {
        Admission {
            warmer: warm::Warmer::new(proxy.clone(), config.warm_concurrency),
            proxy,
            config,
        }
    }

    /// Answers one request to the webhook listener.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
        }
        let timeout = query_param(req.uri().query(), "timeout")
            .and_then(|t| humantime::parse_duration(&t).ok())
            .unwrap_or(DEFAULT_TIMEOUT);
        let budget = timeout
            .saturating_sub(MARGIN)
            .max(Duration::from_millis(200));
        let body = match http_body_util::Limited::new(req.into_body(), MAX_REVIEW)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "AdmissionReview over 4 MiB\n",
                )
            }
        };
        let review: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("not JSON: {e}\n")),
        };
        if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
            return text(
                StatusCode::BAD_REQUEST,
                "not an admission.k8s.io/v1 AdmissionReview\n",
            );
        }
        let request = &review["request"];
        let Some(uid) = request["uid"].as_str() else {
            return text(
                StatusCode::BAD_REQUEST,
                "AdmissionReview without request.uid\n",
            );
        };
        let response = tokio::time::timeout(budget, self.review(request))
            .await
            .unwrap_or_else(|_| self.too_slow());
        let dry_run = request["dryRun"].as_bool().unwrap_or(false);
        if self.config.warm && !dry_run {
            for (target, digest) in &response.pinned {
                self.warmer.warm(target.clone(), digest.clone());
            }
        }
        responses::json(response.into_review(uid).to_string())
    }

    /// The answer when resolution did not finish in time: nothing pinned, and
    /// with `on_error = "deny"` the object refused, as for any image that
    /// cannot be resolved.
    fn too_slow(&self) -> Verdict {
        let mut v = Verdict::default();
        match self.config.on_error {
            OnError::Allow => v.warn("ferry: no image pinned: the resolution took too long".into()),
            OnError::Deny => v.deny(
                "ferry could not pin the images in time: the resolution took too long".into(),
            ),
        }
        v
    }

    /// Works out the patch for one admission request.
    async fn review(&self, request: &Value) -> Verdict {
        let mut v = Verdict::default();
        let candidates = images::to_pin(request, self.config.workloads);
        let mut jobs = Vec::new();
        for at in candidates {
            let Ok(parsed) = ImageRef::parse(&at.image) else {
                v.warn(format!(
                    "ferry: {:?} is not an image reference; left as is",
                    at.image
                ));
                continue;
            };
            if parsed.digest.is_some() {
                continue; // already pinned
            }
            let full = parsed.to_string();
            if self
                .config
                .exclude
                .iter()
                .any(|re| re.is_match(&full) || re.is_match(&at.image))
            {
                continue;
            }
            let Ok(target) = self
                .proxy
                .target(&parsed.registry, parsed.repository.clone())
            else {
                continue; // a registry Ferry does not proxy
            };
            jobs.push(async move {
                let tag = parsed.tag.clone().expect("no digest, so a tag");
                let r = self.proxy.resolve_tag(&target, &tag).await;
                (at, parsed, target, r)
            });
        }
        for (at, parsed, target, resolved) in futures_util::future::join_all(jobs).await {
            match resolved {
                Ok(r) => {
                    let value = pin_as_written(&at.image, &parsed, &r.meta.digest);
                    if r.source == crate::proxy::Source::StaleIfError {
                        v.warn(format!(
                            "ferry: {} pinned to a stale digest (upstream unavailable)",
                            at.image
                        ));
                    }
                    v.patch
                        .push(json!({"op": "replace", "path": at.pointer, "value": value}));
                    v.pinned.push((target, r.meta.digest));
                }
                Err(e) => {
                    let why = crate::server::errors::cache_error(
                        &e,
                        crate::server::errors::Asked::Manifest,
                    );
                    match self.config.on_error {
                        OnError::Allow => {
                            v.warn(format!("ferry: {} not pinned: {}", at.image, why.message))
                        }
                        OnError::Deny => {
                            v.deny(format!("ferry could not pin {}: {}", at.image, why.message))
                        }
                    }
                }
            }
        }
        v
    }
}

/// The outcome of one review.
#[derive(Default)]
struct Verdict {
    patch: Vec<Value>,
    warnings: Vec<String>,
    /// `Some(why)`: refuse the object (`on_error = "deny"`); every image that
    /// could not be pinned is named.
    denied: Option<String>,
    /// What was pinned, to warm.
    pinned: Vec<(crate::upstream::Target, crate::oci::Digest)>,
}

impl Verdict {
    fn deny(&mut self, why: String) {
        self.denied = Some(match self.denied.take() {
            Some(before) => format!("{before}; {why}"),
            None => why,
        });
    }

    fn warn(&mut self, mut w: String) {
        if w.len() > MAX_WARNING {
            let mut cut = MAX_WARNING - 1;
            while !w.is_char_boundary(cut) {
                cut -= 1;
            }
            w.truncate(cut);
            w.push('…');
        }
        self.warnings.push(w);
    }

    fn into_review(self, uid: &str) -> Value {
        let mut response = json!({"uid": uid, "allowed": self.denied.is_none()});
        if let Some(why) = &self.denied {
            response["status"] = json!({"code": 403, "message": why});
        } else if !self.patch.is_empty() {
            let patch = Value::Array(self.patch).to_string();
            response["patchType"] = "JSONPatch".into();
            response["patch"] = base64::engine::general_purpose::STANDARD
                .encode(patch)
                .into();
        }
        if !self.warnings.is_empty() {
            response["warnings"] = json!(self.warnings);
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = responses::sized(
        http::HeaderValue::from_static("text/plain"),
        Bytes::from(body.to_string()),
        false,
    );
    *r.status_mut() = status;
    r
}
