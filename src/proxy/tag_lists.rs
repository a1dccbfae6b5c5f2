//! Tag lists (`/tags/list`, polled by image-update bots such as Flux and
//! Renovate), kept in the [answer cache](super::answers) per query (`n`,
//! `last`) under the repository's freshness policy. Each answer is rewritten
//! to the client's view: its `name`, and a `Link` to the next page that keeps
//! the client's `ns`.

use super::answers::{repo_prefix, Answer, AnswerKey, Answers, Budget, Space};
use super::error::{Error, Result};
use crate::clock::Clock;
use crate::metrics::{Kind, Metrics};
use crate::oci::{RepoName, TagsPage};
use crate::upstream::{Target, UpstreamError};
use bytes::Bytes;
use ferry_storage::Store;
use std::sync::Arc;

/// (upstream, repository, `n`, `last`).
type Key = (String, String, Option<usize>, Option<String>);

impl AnswerKey for Key {
    fn index_key(&self) -> Vec<u8> {
        let mut k = repo_prefix(Space::TagLists, &self.0, &self.1);
        k.extend_from_slice(serde_json::json!([self.2, self.3]).to_string().as_bytes());
        k
    }
}

/// Upstream's page: body and `Link` header.
#[derive(Clone)]
struct Page(Bytes, Option<String>);

impl Answer for Page {
    fn weight(&self) -> usize {
        self.0.len() + self.1.as_ref().map_or(0, String::len)
    }

    /// The `Link` header's length (u32 LE; `u32::MAX`: none), the header, the body.
    fn encode(&self) -> Vec<u8> {
        let link = self.1.as_deref().unwrap_or("");
        let len = if self.1.is_some() {
            link.len() as u32
        } else {
            u32::MAX
        };
        let mut v = Vec::with_capacity(4 + link.len() + self.0.len());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(link.as_bytes());
        v.extend_from_slice(&self.0);
        v
    }

    fn decode(b: &[u8]) -> Option<Page> {
        let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
        if len == u32::MAX {
            return Some(Page(Bytes::copy_from_slice(&b[4..]), None));
        }
        let end = 4 + len as usize;
        let link = std::str::from_utf8(b.get(4..end)?).ok()?.to_string();
        Some(Page(Bytes::copy_from_slice(&b[end..]), Some(link)))
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
    pub fn new(budget: Budget, clock: Clock, metrics: Arc<Metrics>, store: Store) -> TagLists {
        TagLists {
            answers: Arc::new(Answers::new(Kind::TagList, budget, clock, metrics, store)),
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
        let policy = target.freshness(None);
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
        self.answers.forget(
            &repo_prefix(Space::TagLists, upstream, repo),
            |(u, r, ..)| u == upstream && r == repo,
        );
    }
}

/// The `last` parameter of a `Link: <...?last=x&n=y>; rel="next"` header.
pub(crate) fn link_last(link: &str) -> Option<String> {
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
    fn pages_round_trip_through_the_index_encoding() {
        for p in [
            Page(Bytes::from_static(b"{\"tags\":[]}"), None),
            Page(
                Bytes::from_static(b"{}"),
                Some("</v2/x/tags/list?last=b>; rel=\"next\"".into()),
            ),
            Page(Bytes::new(), Some(String::new())),
        ] {
            let back = Page::decode(&p.encode()).unwrap();
            assert_eq!((back.0, back.1), (p.0, p.1));
        }
        assert!(Page::decode(b"\x01").is_none());
    }

    #[test]
    fn link_parsing() {
        assert_eq!(
            link_last("</v2/x/tags/list?last=b&n=2>; rel=\"next\"").as_deref(),
            Some("b")
        );
        assert_eq!(link_last("garbage"), None);
    }
}
