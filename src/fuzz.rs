//! Mutation fuzzing of every parser of outside input, as unit tests (so they
//! reach crate-private parsers and run in the ordinary test build).
//!
//! Each target starts from its committed seed corpus in
//! `tests/fixtures/fuzz/<target>/` (real headers, paths, manifests, events and
//! configurations, plus every input that ever broke a parser) and runs
//! `FERRY_FUZZ_ITERS` (default 20,000) mutated inputs through the parser:
//! byte flips, insertions of protocol tokens, deletions, duplications,
//! splices of two seeds, truncations. A target fails on a panic or on a
//! broken property (a parsed name that does not parse back to itself, a range
//! outside the blob, …), and prints the input, to be added to the corpus.
//!
//! The mutations are seeded: `FERRY_FUZZ_SEED` (default fixed, so CI is
//! repeatable; any other number explores elsewhere).
//!
//! This is not coverage-guided: cargo-fuzz would need a second, instrumented
//! build of RocksDB (every parser lives in the crate that links it).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Tokens the protocol's parsers split on or look for.
const TOKENS: &[&str] = &[
    "/",
    ":",
    "@",
    "\"",
    ",",
    "=",
    ";",
    "<",
    ">",
    "?",
    "&",
    "%",
    "%00",
    "%2F",
    "\\",
    " ",
    "\t",
    "\r\n",
    "..",
    "-",
    "*",
    "sha256:",
    "sha512:",
    "bytes=",
    "bytes ",
    "realm=",
    "Bearer ",
    "Basic ",
    "service=",
    "scope=",
    "rel=\"next\"",
    "last=",
    "n=",
    "/v2/",
    "/manifests/",
    "/blobs/",
    "/tags/list",
    "/referrers/",
    "?ns=",
    "library/",
    "docker.io/",
    "localhost:5000/",
    "\"mediaType\"",
    "\"manifests\"",
    "\"layers\"",
    "\"digest\"",
    "{",
    "}",
    "[",
    "]",
    "null",
    "0",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
    "-1",
    "é",
    "\u{0}",
    "\u{feff}",
    "[[upstream]]\n",
    "url = ",
    "\"\"\"",
    "'",
    "#",
];

/// A small, fast, seeded generator (xorshift64*), so runs are repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(6) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                let i = rng.below(len + 1);
                input.splice(i..i, t.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let piece: Vec<u8> = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            5 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            6 => input.truncate(rng.below(len + 1)),
            7 => {
                // A long run: lengths and counters at their edges.
                let b = *b"a0/:%\"".get(rng.below(6)).unwrap_or(&b'a');
                let i = rng.below(len + 1);
                input.splice(i..i, std::iter::repeat_n(b, 1 + rng.below(5000)));
            }
            _ if len > 0 => {
                let i = rng.below(len);
                input[i] = b"\0\xff/:@\",=;<>?&%\\ \r\n9a"[rng.below(20)];
            }
            _ => {}
        }
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    let mut seeds: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds.into_iter().map(|(_, b)| b).collect()
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `check` on every seed, then on `FERRY_FUZZ_ITERS` mutations of them.
/// `check` panics (or returns `Err`) on a broken property.
fn fuzz(target: &str, check: impl Fn(&[u8]) -> Result<(), String>) {
    let seeds = corpus(target);
    let iters = env_number("FERRY_FUZZ_ITERS", 20_000);
    let seed = env_number("FERRY_FUZZ_SEED", 0x5eed_f00d) ^ fxhash(target);
    let mut rng = Rng(seed | 1);
    let run = |input: &[u8]| {
        let outcome = catch_unwind(AssertUnwindSafe(|| check(input)));
        let why = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(why)) => why,
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into()),
        };
        panic!(
            "fuzz target {target} broke on {:?} ({} bytes): {why}\n\
             add this input to tests/fixtures/fuzz/{target}/ once fixed",
            String::from_utf8_lossy(input),
            input.len()
        );
    };
    for s in &seeds {
        run(s);
    }
    let mut input = Vec::new();
    for _ in 0..iters {
        input.clear();
        input.extend_from_slice(&seeds[rng.below(seeds.len())]);
        mutate(&mut rng, &mut input, &seeds);
        run(&input);
    }
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

mod targets {
    use super::*;
    use crate::oci::route::Route;
    use crate::oci::{ImageRef, PullRequest, RangeAnswer, RangeRequest, Reference, RepoName};
    use http::Method;

    /// The path and query a client sends to ask for `req`.
    fn request_line(req: &PullRequest) -> (String, Option<String>) {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        let path = match &req.route {
            Route::Base => "/v2/".to_string(),
            Route::Manifest { name, reference } => format!("/v2/{name}/manifests/{reference}"),
            Route::Blob { name, digest } => format!("/v2/{name}/blobs/{digest}"),
            Route::TagsList { name, page } => {
                if let Some(n) = page.n {
                    query.append_pair("n", &n.to_string());
                }
                if let Some(last) = &page.last {
                    query.append_pair("last", last);
                }
                format!("/v2/{name}/tags/list")
            }
            Route::Referrers {
                name,
                digest,
                artifact_type,
            } => {
                if let Some(t) = artifact_type {
                    query.append_pair("artifactType", t);
                }
                format!("/v2/{name}/referrers/{digest}")
            }
        };
        if let Some(ns) = &req.ns {
            query.append_pair("ns", ns);
        }
        let query = query.finish();
        (path, (!query.is_empty()).then_some(query))
    }

    #[test]
    fn route_and_names() {
        fuzz("route", |b| {
            let s = text(b);
            let (path, query) = match s.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (s.as_str(), None),
            };
            for m in [Method::GET, Method::HEAD, Method::PUT] {
                if let Ok(req) = PullRequest::parse(&m, path, query) {
                    if m == Method::PUT {
                        return Err("a PUT was accepted".into());
                    }
                    // What was understood, asked again, is understood the same.
                    let (path, query) = request_line(&req);
                    match PullRequest::parse(&m, &path, query.as_deref()) {
                        Ok(again) if again == req => {}
                        again => {
                            return Err(format!("{req:?} as {path} {query:?} gives {again:?}"))
                        }
                    }
                }
            }
            if let Some(name) = RepoName::parse(path) {
                let again = RepoName::parse(&name.to_string());
                if again.as_ref() != Some(&name) {
                    return Err(format!("{name} does not parse back to itself"));
                }
            }
            if let Ok(r) = Reference::parse(path) {
                let again = Reference::parse(&r.to_string()).map_err(|e| format!("{e:?}"))?;
                if again != r {
                    return Err(format!("reference {r} does not round-trip"));
                }
            }
            Ok(())
        });
    }

    #[test]
    fn image_references() {
        fuzz("image_ref", |b| {
            let s = text(b);
            if let Ok(r) = ImageRef::parse(&s) {
                let full = r.to_string();
                let again = ImageRef::parse(&full).map_err(|e| format!("{full}: {e}"))?;
                if again.to_string() != full {
                    return Err(format!("{s:?} → {full} → {again}"));
                }
            }
            Ok(())
        });
    }

    #[test]
    fn range_headers() {
        fuzz("range", |b| {
            let s = text(b);
            let req = RangeRequest::parse(Some(&s));
            for size in [0u64, 1, 7, 1000, u64::MAX] {
                match req.resolve(size) {
                    RangeAnswer::Partial { start, end } if start > end || end >= size => {
                        return Err(format!("{s:?} on {size} bytes gave {start}-{end}"));
                    }
                    _ => {}
                }
            }
            Ok(())
        });
    }

    #[test]
    fn www_authenticate() {
        fuzz("www_authenticate", |b| {
            let s = text(b);
            for c in crate::upstream::auth::parse_challenges(s.split('\n')) {
                if let crate::upstream::auth::Challenge::Bearer { realm, .. } = c {
                    if realm.is_empty() {
                        return Err("a Bearer challenge without a realm".into());
                    }
                }
            }
            Ok(())
        });
    }

    #[test]
    fn link_retry_after_content_range_and_basic() {
        fuzz("headers", |b| {
            let s = text(b);
            let _ = crate::proxy::tag_lists::link_last(&s);
            if let Some(d) = crate::upstream::send::parse_retry_after(&s, 1_700_000_000_000) {
                let _ = d.as_millis();
            }
            if let Some((start, Some(total))) = crate::upstream::parse_content_range(&s) {
                let _ = total.checked_sub(start);
            }
            let _ = crate::access::clients::parse_basic(&s);
            Ok(())
        });
    }

    #[test]
    fn manifest_probing() {
        fuzz("manifest", |b| {
            let _ = crate::oci::media::manifest_media_type(None, b);
            let _ = crate::oci::media::manifest_media_type(Some(&text(&b[..b.len().min(64)])), b);
            let refs = crate::oci::media::references(b);
            for d in refs.manifests.iter().chain(&refs.blobs) {
                let again: crate::oci::Digest = d.to_string().parse().map_err(|_| "digest")?;
                if &again != d {
                    return Err(format!("{d} does not round-trip"));
                }
            }
            Ok(())
        });
    }

    #[test]
    fn push_events() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-github-event", http::HeaderValue::from_static("package"));
        let none = http::HeaderMap::new();
        fuzz("events", |b| {
            let _ = crate::events::parse(&none, b);
            let _ = crate::events::parse(&headers, b);
            Ok(())
        });
    }

    #[test]
    fn configuration_files() {
        fuzz("config", |b| {
            let s = text(b);
            if let Ok(raw) = crate::config::RawConfig::from_toml(&s) {
                let _ = crate::config::Config::from_raw(raw, crate::config::Overrides::default());
            }
            let _ = crate::config::parse_size(&s);
            Ok(())
        });
    }
}
