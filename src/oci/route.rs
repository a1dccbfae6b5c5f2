//! Parsing a request line into a typed pull-API route.
//!
//! Repository names contain `/`, so the path is split from the right on the
//! endpoint keyword (`manifests`, `blobs`, `tags/list`, `referrers`). Everything
//! invalid is answered here with the spec's error code and never reaches upstream.

use super::digest::Digest;
use super::error::{ErrorCode, OciError};
use super::name::{Reference, ReferenceError, RepoName};
use http::{Method, StatusCode};

/// What a `/v2/...` request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/` (and `/v2`): the API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// The repository as the client named it.
        name: RepoName,
        /// A tag or a digest.
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// The repository as the client named it.
        name: RepoName,
        /// The blob.
        digest: Digest,
    },
    /// `/v2/<name>/tags/list`.
    TagsList {
        /// The repository as the client named it.
        name: RepoName,
        /// `n` and `last`.
        page: TagsPage,
    },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers {
        /// The repository as the client named it.
        name: RepoName,
        /// The subject.
        digest: Digest,
        /// `?artifactType=`.
        artifact_type: Option<String>,
    },
}

/// `?n=` and `?last=` of a tags list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagsPage {
    /// Tags per page.
    pub n: Option<usize>,
    /// The tag the page starts after.
    pub last: Option<String>,
}

/// A parsed pull request: the route, whether it is a `HEAD`, and the mirror
/// namespace (`?ns=`) containerd adds to name the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    /// What is asked for.
    pub route: Route,
    /// A `HEAD`: headers without the body.
    pub head: bool,
    /// `?ns=`: the upstream registry containerd means.
    pub ns: Option<String>,
}

impl PullRequest {
    /// Parses `method path?query` for a path under `/v2`.
    pub fn parse(
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Result<PullRequest, OciError> {
        let rest = match path.strip_prefix("/v2") {
            Some("") | Some("/") => {
                read_only(method)?;
                return Ok(PullRequest {
                    route: Route::Base,
                    head: *method == Method::HEAD,
                    ns: None,
                });
            }
            Some(rest) if rest.starts_with('/') => &rest[1..],
            _ => return Err(not_found()),
        };
        let route = parse_route(method, rest, query)?;
        read_only(method)?;
        Ok(PullRequest {
            route,
            head: *method == Method::HEAD,
            ns: query_param(query, "ns").filter(|ns| !ns.is_empty()),
        })
    }
}

fn parse_route(method: &Method, rest: &str, query: Option<&str>) -> Result<Route, OciError> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        let name = repo(name)?;
        return Ok(Route::TagsList {
            name,
            page: tags_page(query)?,
        });
    }
    // Upload endpoints (`/blobs/uploads/...`) exist only for push: refuse them whole.
    if rest.contains("/blobs/uploads") {
        return Err(unsupported(method));
    }
    let (name, kind, last) = split_endpoint(rest).ok_or_else(not_found)?;
    let name = repo(name)?;
    match kind {
        "manifests" => match Reference::parse(last) {
            Ok(reference) => Ok(Route::Manifest { name, reference }),
            // The conformance suite wants a plain 404 for an invalid tag.
            Err(ReferenceError::InvalidTag) => Err(OciError::new(
                ErrorCode::ManifestUnknown,
                format!("{last:?} is not a valid tag or digest"),
            )),
            Err(ReferenceError::InvalidDigest(e)) => Err(digest_invalid(e)),
        },
        "blobs" => Ok(Route::Blob {
            name,
            digest: last.parse().map_err(digest_invalid)?,
        }),
        "referrers" => Ok(Route::Referrers {
            name,
            digest: last.parse().map_err(digest_invalid)?,
            artifact_type: query_param(query, "artifactType").filter(|t| !t.is_empty()),
        }),
        _ => Err(not_found()),
    }
}

/// Splits `<name>/<kind>/<last>` on the rightmost endpoint keyword.
fn split_endpoint(rest: &str) -> Option<(&str, &str, &str)> {
    let (head, last) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    matches!(kind, "manifests" | "blobs" | "referrers").then_some((name, kind, last))
}

/// Only `GET` and `HEAD` exist on a pull-through cache.
fn read_only(method: &Method) -> Result<(), OciError> {
    if *method == Method::GET || *method == Method::HEAD {
        Ok(())
    } else {
        Err(unsupported(method))
    }
}

fn unsupported(method: &Method) -> OciError {
    OciError::new(
        ErrorCode::Unsupported,
        format!("Ferry is a read-only pull-through cache: {method} is not supported"),
    )
}

fn repo(name: &str) -> Result<RepoName, OciError> {
    RepoName::parse_prefixed(name).ok_or_else(|| {
        OciError::new(
            ErrorCode::NameInvalid,
            format!("invalid repository name {name:?}"),
        )
    })
}

fn digest_invalid(e: impl std::fmt::Display) -> OciError {
    OciError::new(ErrorCode::DigestInvalid, e.to_string())
}

/// Paths that are not part of the pull API (`/v2/_catalog`, `/`, …).
pub fn not_found() -> OciError {
    OciError::new(
        ErrorCode::Unsupported,
        "no such endpoint on a pull-through cache",
    )
    .with_status(StatusCode::NOT_FOUND)
}

fn tags_page(query: Option<&str>) -> Result<TagsPage, OciError> {
    let n = match query_param(query, "n") {
        None => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            OciError::new(
                ErrorCode::PaginationNumberInvalid,
                format!("n={n:?} is not a non-negative integer"),
            )
        })?),
    };
    Ok(TagsPage {
        n,
        last: query_param(query, "last").filter(|l| !l.is_empty()),
    })
}

/// The first value of `key` in a query string, percent-decoded.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";

    fn get(path: &str, query: Option<&str>) -> Result<PullRequest, OciError> {
        PullRequest::parse(&Method::GET, path, query)
    }

    #[test]
    fn base_with_and_without_slash() {
        assert_eq!(get("/v2/", None).unwrap().route, Route::Base);
        assert_eq!(get("/v2", None).unwrap().route, Route::Base);
        assert!(
            PullRequest::parse(&Method::HEAD, "/v2/", None)
                .unwrap()
                .head
        );
    }

    #[test]
    fn nested_names_split_from_the_right() {
        let r = get("/v2/a/b/manifests/c/manifests/latest", None).unwrap();
        let Route::Manifest { name, reference } = r.route else {
            panic!("not a manifest route")
        };
        assert_eq!(name.as_str(), "a/b/manifests/c");
        assert_eq!(reference.to_string(), "latest");
        let r = get(&format!("/v2/docker.io/library/alpine/blobs/{D}"), None).unwrap();
        assert!(
            matches!(r.route, Route::Blob { ref name, .. } if name.as_str() == "docker.io/library/alpine")
        );
    }

    #[test]
    fn ns_is_percent_decoded_in_any_position() {
        let r = get(
            &format!("/v2/x/referrers/{D}"),
            Some("artifactType=application%2Fx&ns=127.0.0.1%3A5001"),
        )
        .unwrap();
        assert_eq!(r.ns.as_deref(), Some("127.0.0.1:5001"));
        assert!(
            matches!(r.route, Route::Referrers { artifact_type: Some(ref t), .. } if t == "application/x")
        );
    }

    #[test]
    fn invalid_input_gets_spec_codes() {
        let e = get("/v2/x/manifests/.INVALID_MANIFEST_NAME", None).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e = get("/v2/x/manifests/sha256:totallywrong", None).unwrap_err();
        assert_eq!(e.code, ErrorCode::DigestInvalid);
        let e = get("/v2/Library/Alpine/manifests/latest", None).unwrap_err();
        assert_eq!(e.code, ErrorCode::NameInvalid);
        let e = get("/v2/x/blobs/sha256:xyz", None).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = get("/v2/x/referrers/sha256:xyz", None).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = get("/v2/_catalog", None).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e = get("/v2/x/tags/list", Some("n=abc")).unwrap_err();
        assert_eq!(e.code, ErrorCode::PaginationNumberInvalid);
        let e = get("/v2/x/tags/list", Some("n=-1")).unwrap_err();
        assert_eq!(e.code, ErrorCode::PaginationNumberInvalid);
    }

    #[test]
    fn writes_are_unsupported() {
        for (m, p) in [
            (Method::PUT, "/v2/x/manifests/1".to_string()),
            (Method::POST, "/v2/x/blobs/uploads/".to_string()),
            (Method::PATCH, "/v2/x/blobs/uploads/abc".to_string()),
            (Method::DELETE, format!("/v2/x/blobs/{D}")),
            (Method::DELETE, "/v2/x/manifests/1".to_string()),
        ] {
            let e = PullRequest::parse(&m, &p, None).unwrap_err();
            assert_eq!(e.code, ErrorCode::Unsupported, "{m} {p}");
            assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        }
    }

    #[test]
    fn tags_pagination() {
        let r = get("/v2/x/tags/list", Some("n=2&last=b")).unwrap();
        assert_eq!(
            r.route,
            Route::TagsList {
                name: RepoName::parse("x").unwrap(),
                page: TagsPage {
                    n: Some(2),
                    last: Some("b".into())
                }
            }
        );
    }
}
