//! Endpoint URLs: where one endpoint sends, and how that is shown without leaking the token.
//!
//! A leaf module (it imports nothing of the crate but `category` in tests): `config` validates
//! URLs with it, `endpoint` sends with it, `httpcli` redacts with it.
//!
//! DataKit's rule (`protocol.md`): the configured URL's path is ignored and its query (which
//! holds `token=`) is appended to every API URL, so `https://h?token=t` writes metrics to
//! `https://h/v1/write/metric?token=t`.

use std::fmt;
use std::path::PathBuf;

/// A parsed endpoint URL.
#[derive(Clone, PartialEq, Eq)]
pub enum EndpointUrl {
    /// A Dataway server.
    Http {
        /// `scheme://host[:port]`, no trailing slash.
        origin: String,
        /// The configured query string without `?` (holds the token); may be empty.
        query: String,
    },
    /// A directory: each category's line protocol is appended to `DIR/<category>.lp`.
    File { dir: PathBuf },
}

/// Why a URL cannot be an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{url}`: {reason}")]
pub struct BadUrl {
    /// The URL with its token redacted.
    pub url: String,
    pub reason: String,
}

impl EndpointUrl {
    /// Parses `http(s)://host[:port][/ignored]?token=…` or `file://DIR` (DIR relative to the
    /// working directory, or absolute as in `file:///var/lib/dataway`).
    pub fn parse(s: &str) -> Result<EndpointUrl, BadUrl> {
        let bad = |reason: &str| BadUrl {
            url: redact(s),
            reason: reason.to_string(),
        };
        if let Some(dir) = s.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(bad("file:// needs a directory, like file://dataway-out"));
            }
            return Ok(EndpointUrl::File {
                dir: PathBuf::from(dir),
            });
        }
        let u = url::Url::parse(s).map_err(|e| bad(&format!("not a URL ({e})")))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(bad("scheme must be http, https or file"));
        }
        let host = match u.host_str() {
            Some(h) if !h.is_empty() => h,
            _ => return Err(bad("no host")),
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let origin = match u.port() {
            Some(p) => format!("{}://{host}:{p}", u.scheme()),
            None => format!("{}://{host}", u.scheme()),
        };
        Ok(EndpointUrl::Http {
            origin,
            query: u.query().unwrap_or("").to_string(),
        })
    }

    /// The full URL of an API path (`/v1/write/metric`), with the configured query and,
    /// if given, the caller's own query appended after it.
    pub fn api_url(&self, path: &str, extra_query: Option<&str>) -> Option<String> {
        let EndpointUrl::Http { origin, query } = self else {
            return None;
        };
        let extra = extra_query.filter(|q| !q.is_empty());
        Some(match (query.is_empty(), extra) {
            (true, None) => format!("{origin}{path}"),
            (false, None) => format!("{origin}{path}?{query}"),
            (true, Some(x)) => format!("{origin}{path}?{x}"),
            (false, Some(x)) => format!("{origin}{path}?{query}&{x}"),
        })
    }
}

/// Shows the endpoint with every query value masked: safe for logs and `dataway check`.
impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointUrl::Http { origin, query } if query.is_empty() => f.write_str(origin),
            EndpointUrl::Http { origin, query } => write!(f, "{origin}?{}", redact_query(query)),
            EndpointUrl::File { dir } => write!(f, "file://{}", dir.display()),
        }
    }
}

impl fmt::Debug for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Redacts the query of any URL-like string (used for URLs that failed to parse, too).
pub fn redact(s: &str) -> String {
    match s.split_once('?') {
        Some((head, q)) => format!("{head}?{}", redact_query(q)),
        None => s.to_string(),
    }
}

/// Masks each query value, keeping a token's well-known prefix (`tkn_`, `token_`, `tokn_`)
/// so an operator can still tell which kind of token is configured.
fn redact_query(q: &str) -> String {
    q.split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => {
                let prefix = ["tkn_", "token_", "tokn_"]
                    .into_iter()
                    .find(|p| v.starts_with(p))
                    .unwrap_or("");
                format!("{k}={prefix}***")
            }
            None => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "tkn_0123456789abcdef0123456789abcdef";

    #[test]
    fn api_urls_use_origin_plus_path_plus_configured_query() {
        let e = EndpointUrl::parse(&format!(
            "https://openway.example.com/ignored/path?token={TOKEN}"
        ))
        .unwrap();
        assert_eq!(
            e.api_url("/v1/write/metric", None).unwrap(),
            format!("https://openway.example.com/v1/write/metric?token={TOKEN}")
        );
        assert_eq!(
            e.api_url("/v1/query/raw", Some("q=1")).unwrap(),
            format!("https://openway.example.com/v1/query/raw?token={TOKEN}&q=1")
        );
        let e = EndpointUrl::parse("http://127.0.0.1:9528").unwrap();
        assert_eq!(
            e.api_url("/v1/write/logging", None).unwrap(),
            "http://127.0.0.1:9528/v1/write/logging"
        );
        let e = EndpointUrl::parse("http://[::1]:9528?token=x").unwrap();
        assert_eq!(
            e.api_url("/v1/ntp", None).unwrap(),
            "http://[::1]:9528/v1/ntp?token=x"
        );
    }

    #[test]
    fn every_category_gets_its_own_write_url() {
        let e = EndpointUrl::parse(&format!("http://127.0.0.1:9528?token={TOKEN}")).unwrap();
        for c in crate::category::Category::ALL {
            assert_eq!(
                e.api_url(c.write_path(), None).unwrap(),
                format!("http://127.0.0.1:9528/v1/write/{}?token={TOKEN}", c.name())
            );
        }
    }

    #[test]
    fn display_and_errors_never_show_the_token() {
        let e = EndpointUrl::parse(&format!("https://h?token={TOKEN}&x=secret")).unwrap();
        let shown = e.to_string();
        assert_eq!(shown, "https://h?token=tkn_***&x=***");
        assert_eq!(format!("{e:?}"), shown);
        let err = EndpointUrl::parse(&format!("ftp://h?token={TOKEN}")).unwrap_err();
        assert!(!err.to_string().contains(TOKEN), "{err}");
    }

    #[test]
    fn file_urls_name_a_directory() {
        assert_eq!(
            EndpointUrl::parse("file://dataway-out").unwrap(),
            EndpointUrl::File {
                dir: "dataway-out".into()
            }
        );
        assert_eq!(
            EndpointUrl::parse("file:///var/lib/x").unwrap(),
            EndpointUrl::File {
                dir: "/var/lib/x".into()
            }
        );
        assert!(EndpointUrl::parse("file://").is_err());
        assert!(EndpointUrl::parse("http://").is_err());
        assert!(EndpointUrl::parse("nonsense").is_err());
    }
}
