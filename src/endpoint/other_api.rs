//! What of a caller's "other API" request (`/v1/query/raw`, `/v1/election`, …) goes
//! upstream, for [`super::Endpoint::request`], and what of Dataway's answer comes back.
//!
//! In: the query string and headers of a request that whoever reaches the ingest port (or an
//! embedding program) sent. Out: the query without any `token` parameter, and only the
//! headers of [`FORWARDED_HEADERS`]. The endpoint's configured token is the only credential
//! that reaches Dataway: a client must not add a second `token` (which one a server reads is
//! its choice) nor smuggle cookies, `X-Forwarded-*` or other headers the Dataway APIs do not
//! use.
//!
//! Back ([`passed_back`]): the answer's status and body, only the headers of
//! [`PASSED_BACK_HEADERS`], and an error instead of a body cut at
//! [`httpcli::MAX_RESPONSE_BODY`]. The upstream is not trusted either: it must not set
//! cookies on, or send other headers to, the daemon's clients.

use reqwest::header::{HeaderMap, HeaderName};

use crate::httpcli::{self, Response};

/// The request headers forwarded to Dataway, as DataKit sends them to these APIs
/// (GuanceCloud/datakit `internal/io/dataway/dwapis.go`, the `profile` and `rum` inputs):
///
/// - `Content-Type`: the JSON of `/v1/query/raw`, the multipart bodies (with their boundary)
///   of `/v1/upload/profiling` and `/v1/write/rum/replay`;
/// - `Content-Encoding`: a compressed body must keep saying so;
/// - `Accept-Encoding`: Go's HTTP client, which DataKit uses, sends it on every request, and
///   the answer is passed back as it came;
/// - `X-Global-Tags`, `X-Global-Tags-V2`: the sinker routing headers DataKit adds to every
///   request to these APIs (with `enable_sinker`);
/// - `X-Datakit-ProfileID`, `X-Datakit-Version`, `X-Datakit-UnixNano`: profiling uploads;
/// - `Host-Name`: `/v1/log` uploads.
///
/// Not forwarded: `User-Agent` (every request carries the daemon's own), `Authorization`
/// (the ingest token is not Dataway's), connection headers (`Host`, `Connection`,
/// `Content-Length`, …: they describe the client's hop), cookies, `X-Forwarded-*` and any
/// other header.
pub const FORWARDED_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "accept-encoding",
    "x-global-tags",
    "x-global-tags-v2",
    "x-datakit-profileid",
    "x-datakit-version",
    "x-datakit-unixnano",
    "host-name",
];

/// The headers of `from` that [`FORWARDED_HEADERS`] lists, every value of each.
pub fn forwarded_headers(from: &HeaderMap) -> HeaderMap {
    only(from, FORWARDED_HEADERS)
}

/// The headers of Dataway's answer passed back to the client: those that say how to read
/// the body, and when to retry.
///
/// - `Content-Type`: the APIs answer JSON (multipart or other types pass as they are);
/// - `Content-Encoding`: the client's `Accept-Encoding` is forwarded and the body is passed
///   back as it came, so a compressed body must keep saying so;
/// - `Retry-After`: with a 429 or 503, when to ask again.
///
/// Not passed back: `Set-Cookie` (Dataway's cookies are not for the daemon's clients),
/// connection headers (`Connection`, `Content-Length`, `Transfer-Encoding`, …: they describe
/// the upstream hop; the daemon's server sets its own), `Server`, `Date` and any other
/// header.
pub const PASSED_BACK_HEADERS: &[&str] = &["content-type", "content-encoding", "retry-after"];

/// Why Dataway's answer was not passed back.
#[derive(Debug, thiserror::Error)]
#[error(
    "Dataway's answer to {path} is over {limit} bytes, the most the daemon passes back; \
     ask for less (a narrower query or a smaller limit)"
)]
pub struct AnswerTooLarge {
    pub path: String,
    pub limit: usize,
}

/// What of Dataway's answer to `path` goes back to the client: its status and body, with
/// only the headers of [`PASSED_BACK_HEADERS`]; an error if its body was over
/// [`httpcli::MAX_RESPONSE_BODY`] (a cut body must not pass for the whole).
pub fn passed_back(path: &str, resp: Response) -> Result<Response, AnswerTooLarge> {
    if resp.truncated {
        let e = AnswerTooLarge {
            path: path.to_string(),
            limit: httpcli::MAX_RESPONSE_BODY,
        };
        tracing::warn!(status = %resp.status, "{e}; answered 502");
        return Err(e);
    }
    Ok(Response {
        headers: only(&resp.headers, PASSED_BACK_HEADERS),
        ..resp
    })
}

/// The headers of `from` named in `names` (lower case), every value of each.
fn only(from: &HeaderMap, names: &[&str]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in from {
        // `HeaderName`s are lower case.
        if names.contains(&name.as_str()) {
            out.append(HeaderName::clone(name), value.clone());
        }
    }
    out
}

/// The caller's query without its `token` parameters; `None` when nothing is left.
///
/// A parameter is dropped when its name, percent- and `+`-decoded as a server decodes it,
/// is `token` in any case; a parameter holding `;` is dropped when any `;`-separated part of
/// it is named so (older servers split on `;` too). The rest is kept byte for byte.
pub fn query_without_token(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.split(';').any(names_token))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

fn names_token(param: &str) -> bool {
    let name = param.split_once('=').map_or(param, |(k, _)| k);
    url::form_urlencoded::parse(name.as_bytes())
        .next()
        .is_some_and(|(k, _)| k.eq_ignore_ascii_case("token"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn token_parameters_are_dropped_however_spelled() {
        for (given, kept) in [
            (None, None),
            (Some(""), None),
            (Some("token=tkn_ATTACKER"), None),
            (Some("q=1&token=tkn_ATTACKER"), Some("q=1")),
            (Some("token=a&q=1&token=b"), Some("q=1")),
            (Some("TOKEN=a&q=1"), Some("q=1")),
            (Some("%74oken=a&q=1"), Some("q=1")),
            (Some("%54%4f%4b%45%4e=a&q=1"), Some("q=1")),
            (Some("token&q=1"), Some("q=1")),
            (Some("q=1;token=a&r=2"), Some("r=2")),
            (
                Some("q=a%20b&tokens=1&my_token=2"),
                Some("q=a%20b&tokens=1&my_token=2"),
            ),
            (Some("q=token%3Dx"), Some("q=token%3Dx")),
            (Some("namespace=ns&id=1"), Some("namespace=ns&id=1")),
            (Some("&&q=1&"), Some("q=1")),
        ] {
            assert_eq!(query_without_token(given).as_deref(), kept, "{given:?}");
        }
    }

    #[test]
    fn only_listed_headers_are_forwarded_with_all_their_values() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("x-global-tags", "a=1"),
            ("x-global-tags", "b=2"),
            ("cookie", "session=1"),
            ("x-forwarded-host", "evil.example.com"),
            ("x-custom", "yes"),
            ("authorization", "Bearer x"),
            ("user-agent", "curl/8"),
            ("host", "127.0.0.1"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let out = forwarded_headers(&h);
        assert_eq!(out.len(), 3);
        assert_eq!(out["content-type"], "application/json");
        let tags: Vec<_> = out.get_all("x-global-tags").iter().collect();
        assert_eq!(tags, ["a=1", "b=2"]);
    }

    fn answer(truncated: bool) -> Response {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("retry-after", "3"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("connection", "close"),
            ("content-length", "2"),
            ("x-custom", "yes"),
            ("server", "dataway"),
        ] {
            headers.append(k, HeaderValue::from_static(v));
        }
        Response {
            status: reqwest::StatusCode::TOO_MANY_REQUESTS,
            headers,
            body: bytes::Bytes::from_static(b"{}"),
            truncated,
        }
    }

    #[test]
    fn only_listed_answer_headers_are_passed_back() {
        let out = passed_back("/v1/query/raw", answer(false)).unwrap();
        assert_eq!(out.status, 429);
        assert_eq!(&out.body[..], b"{}");
        let names: Vec<_> = out.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "content-encoding", "retry-after"]);
    }

    #[test]
    fn a_cut_answer_is_an_error_naming_the_limit() {
        let e = passed_back("/v1/query/raw", answer(true)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/v1/query/raw"), "{msg}");
        assert!(msg.contains("33554432 bytes"), "{msg}");
    }
}
