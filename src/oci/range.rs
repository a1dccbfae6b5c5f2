//! `Range` request headers (RFC 9110 §14) resolved against a blob's size.
//!
//! Ferry serves single byte ranges. A multi-range request is answered with the
//! whole body (200), never 416: containers/image splits a full body itself.

/// How to answer a request given its `Range` header and the blob size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole body (no header, a multi-range, or a header we ignore).
    Full,
    /// 206 with bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// A single range as written, before the blob size is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` or `bytes=a-` (`end` = None).
    From {
        /// First byte.
        start: u64,
        /// Last byte (inclusive); `None`: to the end.
        end: Option<u64>,
    },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// What a `Range` header asks for, independent of size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// Absent, multi-range, or a unit other than bytes: serve the whole body.
    Whole,
    /// One range of bytes.
    One(ByteRange),
    /// Syntactically a single range that can never be satisfied (`bytes=500-0`).
    Invalid,
}

impl RangeRequest {
    /// Parses a `Range` header value.
    pub fn parse(header: Option<&str>) -> RangeRequest {
        let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
            return RangeRequest::Whole;
        };
        if spec.contains(',') {
            return RangeRequest::Whole;
        }
        let Some((a, b)) = spec.trim().split_once('-') else {
            return RangeRequest::Invalid;
        };
        let num = |s: &str| {
            let s = s.trim();
            (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        match (a.trim().is_empty(), b.trim().is_empty()) {
            (true, true) => RangeRequest::Invalid,
            (true, false) => match num(b) {
                Some(n) => RangeRequest::One(ByteRange::Suffix(n)),
                None => RangeRequest::Invalid,
            },
            (false, true) => match num(a) {
                Some(start) => RangeRequest::One(ByteRange::From { start, end: None }),
                None => RangeRequest::Invalid,
            },
            (false, false) => match (num(a), num(b)) {
                (Some(start), Some(end)) if start <= end => RangeRequest::One(ByteRange::From {
                    start,
                    end: Some(end),
                }),
                _ => RangeRequest::Invalid,
            },
        }
    }

    /// Resolves against a known `size`.
    pub fn resolve(self, size: u64) -> RangeAnswer {
        match self {
            RangeRequest::Whole => RangeAnswer::Full,
            RangeRequest::Invalid => RangeAnswer::Unsatisfiable,
            RangeRequest::One(ByteRange::From { start, end }) => {
                if start >= size {
                    return RangeAnswer::Unsatisfiable;
                }
                let end = end.map_or(size - 1, |e| e.min(size - 1));
                RangeAnswer::Partial { start, end }
            }
            RangeRequest::One(ByteRange::Suffix(n)) => {
                if n == 0 || size == 0 {
                    return RangeAnswer::Unsatisfiable;
                }
                RangeAnswer::Partial {
                    start: size.saturating_sub(n),
                    end: size - 1,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(h: &str) -> RangeAnswer {
        RangeRequest::parse(Some(h)).resolve(2048)
    }

    #[test]
    fn conformance_table() {
        assert_eq!(
            answer("bytes=500-1499"),
            RangeAnswer::Partial {
                start: 500,
                end: 1499
            }
        );
        assert_eq!(
            answer("bytes=500-"),
            RangeAnswer::Partial {
                start: 500,
                end: 2047
            }
        );
        assert_eq!(
            answer("bytes=-500"),
            RangeAnswer::Partial {
                start: 1548,
                end: 2047
            }
        );
        assert_eq!(
            answer("bytes=2000-5000"),
            RangeAnswer::Partial {
                start: 2000,
                end: 2047
            }
        );
        assert_eq!(answer("bytes=500-0"), RangeAnswer::Unsatisfiable);
        assert_eq!(answer("bytes=5000-10000"), RangeAnswer::Unsatisfiable);
    }

    #[test]
    fn multi_range_and_other_units_get_the_whole_body() {
        assert_eq!(answer("bytes=0-9,100-109"), RangeAnswer::Full);
        assert_eq!(answer("items=0-9"), RangeAnswer::Full);
        assert_eq!(RangeRequest::parse(None).resolve(10), RangeAnswer::Full);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(
            answer("bytes=-5000"),
            RangeAnswer::Partial {
                start: 0,
                end: 2047
            }
        );
        assert_eq!(answer("bytes=-0"), RangeAnswer::Unsatisfiable);
        assert_eq!(answer("bytes=abc-"), RangeAnswer::Unsatisfiable);
        assert_eq!(
            answer("bytes=2047-"),
            RangeAnswer::Partial {
                start: 2047,
                end: 2047
            }
        );
        assert_eq!(
            RangeRequest::parse(Some("bytes=0-")).resolve(0),
            RangeAnswer::Unsatisfiable
        );
    }
}
