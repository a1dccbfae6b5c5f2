//! Referrers indexes (signatures, SBOMs, attestations), asked by
//! signature-verifying admission controllers on every pod start. Kept in the
//! [answer cache](super::answers) per subject and `artifactType` under the
//! repository's freshness policy. Upstream's referrers API is used when it has
//! one, else the `sha256-<hex>` fallback tag, else the answer is an empty index.

use super::answers::{repo_prefix, Answer, AnswerKey, Answers, Budget, Space};
use super::error::Result;
use crate::clock::Clock;
use crate::metrics::{Kind, Metrics};
use crate::oci::media;
use crate::oci::Digest;
use crate::upstream::{Target, UpstreamError};
use bytes::Bytes;
use ferry_storage::Store;
use std::sync::Arc;

/// (upstream, repository, subject, `artifactType`).
type Key = (String, String, Digest, Option<String>);

impl AnswerKey for Key {
    fn index_key(&self) -> Vec<u8> {
        let mut k = repo_prefix(Space::Referrers, &self.0, &self.1);
        k.extend_from_slice(
            serde_json::json!([self.2.as_str(), self.3])
                .to_string()
                .as_bytes(),
        );
        k
    }
}

/// A referrers index and whether an `artifactType` filter was applied.
#[derive(Clone)]
pub struct ReferrersAnswer {
    /// The OCI image index body.
    pub body: Bytes,
    /// Send `OCI-Filters-Applied: artifactType`.
    pub filtered: bool,
}

impl Answer for ReferrersAnswer {
    fn weight(&self) -> usize {
        self.body.len()
    }

    /// One byte (filtered or not), then the body.
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + self.body.len());
        v.push(u8::from(self.filtered));
        v.extend_from_slice(&self.body);
        v
    }

    fn decode(b: &[u8]) -> Option<ReferrersAnswer> {
        let (&filtered, body) = b.split_first()?;
        Some(ReferrersAnswer {
            body: Bytes::copy_from_slice(body),
            filtered: filtered == 1,
        })
    }
}

/// The referrers cache.
pub(crate) struct Referrers {
    answers: Arc<Answers<Key, ReferrersAnswer>>,
}

impl Referrers {
    pub fn new(budget: Budget, clock: Clock, metrics: Arc<Metrics>, store: Store) -> Referrers {
        Referrers {
            answers: Arc::new(Answers::new(Kind::Referrers, budget, clock, metrics, store)),
        }
    }

    /// The referrers of `digest` in `target`, optionally of one artifact type.
    pub async fn get(
        &self,
        target: &Target,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<ReferrersAnswer> {
        let policy = target.freshness(None);
        let artifact_type = artifact_type.map(str::to_owned);
        let key = (
            target.upstream.name().to_string(),
            target.repo.to_string(),
            digest.clone(),
            artifact_type.clone(),
        );
        let (t, d) = (target.clone(), digest.clone());
        self.answers
            .get(key, policy, move || fetch(t, d, artifact_type))
            .await
    }

    /// Drops the indexes kept for a repository.
    pub fn forget(&self, upstream: &str, repo: &str) {
        self.answers.forget(
            &repo_prefix(Space::Referrers, upstream, repo),
            |(u, r, ..)| u == upstream && r == repo,
        );
    }
}

/// The referrers index for `digest` from upstream.
async fn fetch(
    target: Target,
    digest: Digest,
    artifact_type: Option<String>,
) -> std::result::Result<ReferrersAnswer, UpstreamError> {
    let (up, repo) = (&target.upstream, &target.repo);
    let artifact_type = artifact_type.as_deref();
    let (descriptors, filtered) = match up.referrers(repo, &digest, artifact_type).await? {
        Some((body, filtered)) => (descriptors_of(&body), filtered),
        None => {
            let fallback = format!(
                "{}-{}",
                digest.algorithm().as_str(),
                &digest.hex()[..digest.hex().len().min(64)]
            );
            match up.get_manifest(repo, &fallback).await {
                Ok(m) => (descriptors_of(&m.body), false),
                Err(UpstreamError::NotFound) => (Vec::new(), false),
                Err(e) => return Err(e),
            }
        }
    };
    let descriptors: Vec<serde_json::Value> = match artifact_type {
        Some(t) if !filtered => descriptors
            .into_iter()
            .filter(|d| d.get("artifactType").and_then(|v| v.as_str()) == Some(t))
            .collect(),
        _ => descriptors,
    };
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": descriptors,
    });
    Ok(ReferrersAnswer {
        body: Bytes::from(body.to_string()),
        filtered: artifact_type.is_some(),
    })
}

/// The descriptors of an index body (empty when it is not one).
fn descriptors_of(body: &[u8]) -> Vec<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
        .unwrap_or_default()
}
