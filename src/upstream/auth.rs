//! Registry authentication: `WWW-Authenticate` challenges and bearer tokens.

use std::collections::HashMap;

/// One challenge from a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// A bearer token is fetched from `realm`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` to ask a token for.
        service: Option<String>,
        /// The scope the registry named, if any.
        scope: Option<String>,
    },
    /// HTTP Basic.
    Basic,
}

/// Parses every challenge in every `WWW-Authenticate` value. Handles several
/// challenges in one header (Quay sends `Basic realm="quay.io", Bearer realm=…`),
/// quoted and unquoted parameters, and commas inside quotes.
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for value in values {
        let mut scheme: Option<String> = None;
        let mut params: HashMap<String, String> = HashMap::new();
        let mut rest = value.trim();
        while !rest.is_empty() {
            rest = rest.trim_start_matches([' ', ',']);
            if rest.is_empty() {
                break;
            }
            // A token followed by '=' is a parameter; otherwise a new scheme.
            let tok_end = rest.find(['=', ' ', ',']).unwrap_or(rest.len());
            let token = &rest[..tok_end];
            let after = rest[tok_end..].trim_start_matches(' ');
            if after.starts_with('=') && scheme.is_some() {
                let (val, remaining) = parse_value(&after[1..]);
                params.insert(token.to_ascii_lowercase(), val);
                rest = remaining;
            } else {
                if let Some(s) = scheme.take() {
                    out.extend(build(&s, std::mem::take(&mut params)));
                }
                scheme = Some(token.to_ascii_lowercase());
                rest = after;
            }
        }
        if let Some(s) = scheme {
            out.extend(build(&s, params));
        }
    }
    out
}

fn parse_value(s: &str) -> (String, &str) {
    let s = s.trim_start();
    if let Some(q) = s.strip_prefix('"') {
        let mut val = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(n);
                    }
                }
                '"' => return (val, &q[i + 1..]),
                c => val.push(c),
            }
        }
        (val, "")
    } else {
        let end = s.find([',', ' ']).unwrap_or(s.len());
        (s[..end].to_string(), &s[end..])
    }
}

fn build(scheme: &str, mut params: HashMap<String, String>) -> Option<Challenge> {
    match scheme {
        "bearer" => Some(Challenge::Bearer {
            // A realm is where the token comes from: without one (or with an
            // empty one, `realm=""`) the challenge cannot be answered.
            realm: params.remove("realm").filter(|r| !r.is_empty())?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        }),
        "basic" => Some(Challenge::Basic),
        _ => None,
    }
}

/// Prefers Bearer over Basic when a server offers both.
pub fn preferred(challenges: &[Challenge]) -> Option<&Challenge> {
    challenges
        .iter()
        .find(|c| matches!(c, Challenge::Bearer { .. }))
        .or_else(|| challenges.first())
}

/// A token endpoint's answer (`token` and `access_token` are synonyms).
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    /// The token.
    pub token: Option<String>,
    /// The same, under its OAuth2 name.
    pub access_token: Option<String>,
    /// Seconds; the spec's default when absent is 60.
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and its lifetime in seconds.
    pub fn into_token(self) -> Option<(String, u64)> {
        let token = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        Some((token, self.expires_in.unwrap_or(60).max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_challenge() {
        let c = parse_challenges([
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        ]);
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            }]
        );
    }

    #[test]
    fn a_bearer_challenge_with_an_empty_realm_is_not_answerable() {
        // Found by the fuzzer (tests/fixtures/fuzz/www_authenticate/empty-realm).
        assert_eq!(parse_challenges(["Nee,* Bearer realm=\""]), vec![]);
        assert_eq!(parse_challenges([r#"Bearer realm="""#]), vec![]);
    }

    #[test]
    fn quay_sends_basic_and_bearer_in_one_header() {
        let c = parse_challenges([
            r#"Basic realm="quay.io", Bearer realm="https://quay.io/v2/auth",service="quay.io""#,
        ]);
        assert_eq!(c.len(), 2);
        assert!(
            matches!(preferred(&c), Some(Challenge::Bearer { realm, .. }) if realm == "https://quay.io/v2/auth")
        );
    }

    #[test]
    fn separate_headers_unquoted_values_and_commas_in_quotes() {
        let c = parse_challenges([
            "Basic realm=x",
            r#"Bearer realm=https://r/token, service=svc, scope="repository:a/b:pull,push""#,
        ]);
        assert_eq!(
            preferred(&c),
            Some(&Challenge::Bearer {
                realm: "https://r/token".into(),
                service: Some("svc".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
    }

    #[test]
    fn token_response_variants() {
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"a"}"#).unwrap();
        assert_eq!(t.into_token(), Some(("a".into(), 60)));
        let t: TokenResponse =
            serde_json::from_str(r#"{"token":"t","access_token":"a","expires_in":300}"#).unwrap();
        assert_eq!(t.into_token(), Some(("t".into(), 300)));
        let t: TokenResponse = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(t.into_token(), None);
    }
}
