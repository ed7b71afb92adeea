//! `Range` requests (RFC 9110 §14), one rule for every backend.
//!
//! Only a `GET` with a single byte range (and no `If-Range`: the server
//! gives no validators to compare it with) is honoured: a range inside
//! the body is answered with `206` and its `Content-Range`, one wholly
//! outside it with `416` and `Content-Range: bytes */<length>`. A
//! malformed header, or one with several ranges, is ignored and the whole
//! body is sent with `200`, as the RFC allows. The header itself is parsed
//! by the `http-range-header` crate.

use hyper::header::{self, HeaderMap};
use hyper::http::response::Builder;
use hyper::{Method, StatusCode};

/// A `Range` header worth answering: a single byte range, not yet
/// resolved against the body's length.
#[derive(Debug, Clone)]
pub(super) struct Requested(http_range_header::ParsedRanges);

impl Requested {
    /// The range a request asks for, if it is to be honoured.
    pub(super) fn of(method: &Method, headers: &HeaderMap) -> Option<Self> {
        if method != Method::GET || headers.contains_key(header::IF_RANGE) {
            return None;
        }
        let mut values = headers.get_all(header::RANGE).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return None;
        };
        let parsed = http_range_header::parse_range_header(value.to_str().ok()?).ok()?;
        (parsed.len() == 1).then_some(Self(parsed))
    }

    /// What to send of a body of `len` bytes.
    pub(super) fn resolve(&self, len: u64) -> ByteRange {
        match self.0.validate(len).as_deref() {
            Ok([range]) => ByteRange::Part {
                start: *range.start(),
                end: *range.end(),
            },
            // A suffix range of an empty body: all of it (nothing).
            Ok(_) => ByteRange::Whole,
            Err(http_range_header::RangeUnsatisfiableError::Unsatisfiable) => {
                ByteRange::Unsatisfiable
            }
            Err(_) => ByteRange::Whole,
        }
    }
}

/// What to send of a body of known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ByteRange {
    /// All of it, with `200`.
    Whole,
    /// Bytes `start..=end`, with `206`.
    Part { start: u64, end: u64 },
    /// Nothing, with `416`: the range lies outside the body.
    Unsatisfiable,
}

impl ByteRange {
    /// What `requested` asks of a body of `len` bytes (the whole body
    /// without a range worth answering).
    pub(super) fn of(requested: Option<&Requested>, len: u64) -> Self {
        requested.map_or(Self::Whole, |r| r.resolve(len))
    }

    /// Sets the status, `Content-Length` and `Content-Range` of a response
    /// with this part of a body of `len` bytes; returns the builder and
    /// the bytes to send, as (offset, count), or `None` for a `416`.
    pub(super) fn respond(self, builder: Builder, len: u64) -> (Builder, Option<(u64, u64)>) {
        match self {
            ByteRange::Whole => (builder.header(header::CONTENT_LENGTH, len), Some((0, len))),
            ByteRange::Part { start, end } => {
                let n = end - start + 1;
                let builder = builder
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
                    .header(header::CONTENT_LENGTH, n);
                (builder, Some((start, n)))
            }
            ByteRange::Unsatisfiable => {
                let builder = builder
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                    .header(header::CONTENT_LENGTH, 0);
                (builder, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn answer(method: Method, headers: &[(&str, &str)], len: u64) -> ByteRange {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        ByteRange::of(Requested::of(&method, &map).as_ref(), len)
    }

    #[test]
    fn ranges() {
        use ByteRange::{Part, Unsatisfiable, Whole};
        let part = |start, end| Part { start, end };
        for (range, len, expected) in [
            ("bytes=0-9", 100, part(0, 9)),
            ("bytes=90-", 100, part(90, 99)),
            ("bytes=90-200", 100, part(90, 99)),
            ("bytes=-10", 100, part(90, 99)),
            ("bytes=-200", 100, part(0, 99)),
            ("bytes=99-99", 100, part(99, 99)),
            ("bytes=0-18446744073709551615", 100, part(0, 99)),
            ("BYTES=1-2", 100, part(1, 2)),
            ("bytes=-1", 1, part(0, 0)),
            // Outside the body: 416.
            ("bytes=100-", 100, Unsatisfiable),
            ("bytes=100-200", 100, Unsatisfiable),
            ("bytes=-0", 100, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=0-0", 0, Unsatisfiable),
            ("bytes=-0", 0, Unsatisfiable),
            // A suffix of an empty body is all of it.
            ("bytes=-5", 0, Whole),
            // Malformed or several ranges: ignored.
            ("bytes=5-1", 100, Whole),
            ("bytes=0-1,5-6", 100, Whole),
            ("bytes=0-1, 200-300", 100, Whole),
            ("bytes=200-300,400-", 100, Whole),
            ("items=0-1", 100, Whole),
            ("bytes=x-1", 100, Whole),
            ("bytes=-", 100, Whole),
            ("bytes=", 100, Whole),
            ("bytes=+1-2", 100, Whole),
            ("bytes=--1", 100, Whole),
            ("bytes=1-2-3", 100, Whole),
            ("bytes=0x10-", 100, Whole),
            ("bytes=\t0-1 0", 100, Whole),
            (&format!("bytes=0-{}", "9".repeat(40)), 100, Whole),
            (&format!("bytes={}", "0-0,".repeat(1000)), 100, Whole),
        ] {
            assert_eq!(
                answer(Method::GET, &[("Range", range)], len),
                expected,
                "{range} of {len}"
            );
        }
    }

    #[test]
    fn only_a_get_with_one_range_header_and_no_if_range() {
        let r = [("Range", "bytes=0-9")];
        assert_eq!(answer(Method::GET, &[], 100), ByteRange::Whole);
        assert_eq!(
            answer(Method::GET, &r, 100),
            ByteRange::Part { start: 0, end: 9 }
        );
        assert_eq!(answer(Method::HEAD, &r, 100), ByteRange::Whole);
        assert_eq!(answer(Method::PUT, &r, 100), ByteRange::Whole);
        let if_range = [("Range", "bytes=0-9"), ("If-Range", "\"x\"")];
        assert_eq!(answer(Method::GET, &if_range, 100), ByteRange::Whole);
        let twice = [("Range", "bytes=0-9"), ("Range", "bytes=0-9")];
        assert_eq!(answer(Method::GET, &twice, 100), ByteRange::Whole);
    }

    #[test]
    fn responses() {
        let respond = |range: ByteRange| {
            let (builder, send) = range.respond(Builder::new(), 100);
            let r = builder.body(()).unwrap();
            let h = |n| {
                r.headers()
                    .get(n)
                    .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
            };
            let headers = (h(header::CONTENT_LENGTH), h(header::CONTENT_RANGE));
            (r.status().as_u16(), headers, send)
        };
        let s = |s: &str| Some(s.to_owned());
        assert_eq!(
            respond(ByteRange::Whole),
            (200, (s("100"), None), Some((0, 100)))
        );
        assert_eq!(
            respond(ByteRange::Part { start: 10, end: 19 }),
            (206, (s("10"), s("bytes 10-19/100")), Some((10, 10)))
        );
        assert_eq!(
            respond(ByteRange::Unsatisfiable),
            (416, (s("0"), s("bytes */100")), None)
        );
    }
}
