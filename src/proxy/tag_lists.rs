//! Tag lists (`/tags/list`, polled by image-update bots such as Flux and
//! Renovate), kept in the [answer cache](super::answers) per query (`n`,
//! `last`) under the repository's freshness policy. Each answer is rewritten
//! to the client's view: its `name`, and a `Link` to the next page that keeps
//! the client's `ns`.

use super::answers::{Answers, Budget, Weigh};
use super::error::{Error, Result};
use crate::clock::Clock;
use crate::metrics::{Kind, Metrics};
use crate::oci::{RepoName, TagsPage};
use crate::upstream::{Target, UpstreamError};
use bytes::Bytes;
use std::sync::Arc;

/// (upstream, repository, `n`, `last`).
type Key = (String, String, Option<usize>, Option<String>);

/// Upstream's page: body and `Link` header.
#[derive(Clone)]
struct Page(Bytes, Option<String>);

impl Weigh for Page {
    fn weight(&self) -> usize {
        self.0.len() + self.1.as_ref().map_or(0, String::len)
    }
}

/// A page as the client gets it.
pub struct TagListAnswer {
    /// `{"name": …, "tags": […]}`.
    pub body: Bytes,
    /// `Link: <…>; rel="next"` when there is a next page.
    pub link: Option<String>,
}

/// The tag-list cache.
pub(crate) struct TagLists {
    answers: Arc<Answers<Key, Page>>,
}

impl TagLists {
    pub fn new(budget: Budget, clock: Clock, metrics: Arc<Metrics>) -> TagLists {
        TagLists {
            answers: Arc::new(Answers::new(Kind::TagList, budget, clock, metrics)),
        }
    }

    /// A page of tags of `target`, as the client (who named the repository
    /// `client_name`, with `ns`) should see it.
    pub async fn get(
        &self,
        target: &Target,
        client_name: &RepoName,
        page: &TagsPage,
        ns: Option<&str>,
    ) -> Result<TagListAnswer> {
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        if page.n == Some(0) {
            let body = serde_json::json!({ "name": client_name.as_str(), "tags": [] });
            return Ok(TagListAnswer {
                body: Bytes::from(body.to_string()),
                link: None,
            });
        }
        let policy = target
            .upstream
            .config()
            .policy
            .for_repository(target.repo.as_str());
        let key = (
            target.upstream.name().to_string(),
            target.repo.to_string(),
            page.n,
            page.last.clone(),
        );
        let (t, p) = (target.clone(), page.clone());
        let Page(body, link) = self
            .answers
            .get(key, policy, move || async move {
                let (body, link) = t
                    .upstream
                    .tags_list(&t.repo, p.n, p.last.as_deref())
                    .await?;
                Ok(Page(body, link))
            })
            .await?;
        let list: TagList = serde_json::from_slice(&body).map_err(|_| {
            Error::Upstream(UpstreamError::Invalid("an unreadable tag list".into()))
        })?;
        let mut tags = list.tags.unwrap_or_default();
        let upstream_next = link.as_deref().and_then(link_last);
        let mut next = None;
        if upstream_next.is_none() {
            // Upstream did not paginate: apply `last` and `n` here, so an upstream
            // that ignores them still gives a correct page.
            tags.sort();
            if let Some(last) = &page.last {
                tags.retain(|t| t > last);
            }
            if let Some(n) = page.n.filter(|&n| tags.len() > n) {
                tags.truncate(n);
                next = tags.last().cloned();
            }
        } else {
            next = upstream_next;
        }
        let link = next.map(|last| {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(n) = page.n {
                q.append_pair("n", &n.to_string());
            }
            q.append_pair("last", &last);
            if let Some(ns) = ns {
                q.append_pair("ns", ns);
            }
            format!("</v2/{client_name}/tags/list?{}>; rel=\"next\"", q.finish())
        });
        let body = serde_json::json!({ "name": client_name.as_str(), "tags": tags });
        Ok(TagListAnswer {
            body: Bytes::from(body.to_string()),
            link,
        })
    }

    /// Drops the pages kept for a repository.
    pub fn forget(&self, upstream: &str, repo: &str) {
        self.answers.forget(|(u, r, ..)| u == upstream && r == repo);
    }
}

/// The `last` parameter of a `Link: <...?last=x&n=y>; rel="next"` header.
fn link_last(link: &str) -> Option<String> {
    let target = link.split('<').nth(1)?.split('>').next()?;
    let query = target.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "last")
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_parsing() {
        assert_eq!(
            link_last("</v2/x/tags/list?last=b&n=2>; rel=\"next\"").as_deref(),
            Some("b")
        );
        assert_eq!(link_last("garbage"), None);
    }
}
