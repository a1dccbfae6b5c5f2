//! The freshness policy as configured: defaults per upstream, immutable-tag
//! patterns, and rules by repository and tag pattern. What the numbers mean for
//! a cached answer (fresh, stale but servable, expired) is worked out in
//! `proxy::freshness`.

use regex::Regex;
use std::time::Duration;

/// How long answers about one tag stay good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Inside it a tag is answered from the cache with no upstream request.
    pub tag_ttl: Duration,
    /// Past the TTL, how much longer a cached answer may be served while upstream fails.
    pub stale_if_error: Duration,
    /// How long an upstream "no such tag" is remembered.
    pub negative_ttl: Duration,
    /// Never revalidated once cached.
    pub immutable: bool,
}

/// Per-upstream freshness: defaults, then the first matching rule's overrides.
#[derive(Debug, Clone)]
pub struct FreshnessPolicy {
    /// What applies when no rule matches.
    pub defaults: Freshness,
    /// Whole-tag regexes of tags never revalidated.
    pub immutable_tags: Vec<Regex>,
    /// Overrides by repository and tag pattern; the first match wins.
    pub rules: Vec<Rule>,
}

/// One `[[upstream.rule]]`, compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Matches the whole upstream repository name; `None` matches any.
    pub repository: Option<Regex>,
    /// Matches the whole tag; `None` matches any.
    pub tag: Option<Regex>,
    /// Overrides `tag_ttl`.
    pub tag_ttl: Option<Duration>,
    /// Overrides `stale_if_error`.
    pub stale_if_error: Option<Duration>,
    /// Overrides `negative_ttl`.
    pub negative_ttl: Option<Duration>,
    /// Overrides immutability.
    pub immutable: Option<bool>,
}

impl FreshnessPolicy {
    /// The freshness for `repo:tag`: the first rule matching both wins.
    pub fn for_tag(&self, repo: &str, tag: &str) -> Freshness {
        let mut f = self.defaults;
        f.immutable = self.immutable_tags.iter().any(|r| r.is_match(tag));
        let rule = self.rules.iter().find(|r| {
            r.repository.as_ref().is_none_or(|re| re.is_match(repo))
                && r.tag.as_ref().is_none_or(|re| re.is_match(tag))
        });
        if let Some(r) = rule {
            f.tag_ttl = r.tag_ttl.unwrap_or(f.tag_ttl);
            f.stale_if_error = r.stale_if_error.unwrap_or(f.stale_if_error);
            f.negative_ttl = r.negative_ttl.unwrap_or(f.negative_ttl);
            f.immutable = r.immutable.unwrap_or(f.immutable);
        }
        f
    }

    /// The freshness of a repository-wide answer (tag lists, referrers): rules
    /// match on the repository; tag patterns have no tag to match, and such an
    /// answer is never immutable (a new tag changes it).
    pub fn for_repository(&self, repo: &str) -> Freshness {
        Freshness {
            immutable: false,
            ..self.for_tag(repo, "")
        }
    }
}
