//! What the server answered to a request it refused or failed: the status
//! and the `Code` and `Message` of its S3 error document.
//!
//! `object_store` tells a few statuses apart by its error variants
//! (`NotFound` for 404, `PermissionDenied` for 403, `Unauthenticated` for
//! 401, and those of conditional requests), but keeps the status of any
//! other answer in a type it does not export, and the error document only
//! in the text of its message. So that errors are classified by what the
//! server answered rather than by the wording of messages, the client's
//! connections are wrapped ([`Connector`]): an answer about the bucket
//! with a status of 300 or more (but 304, 409 and 412, which belong to
//! conditional requests and which `object_store` itself interprets)
//! becomes an [`HttpError`] whose source is a [`Failure`], found again in
//! the error's causes by [`Failure::of`]. Retries do not change: the
//! `HttpError` is of a kind `object_store` retries exactly when it would
//! have retried the answer (5xx, 408 and 429), and of one it does not retry
//! otherwise.

use std::error::Error as StdError;
use std::fmt;

use futures_util::StreamExt as _;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::ClientOptions;

/// The most of an error document that is read; the rest is dropped.
const MAX_DOCUMENT: usize = 64 << 10;

/// An answer with an error status, as the server gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    /// The HTTP status.
    pub(super) status: u16,
    /// The status's reason phrase, if it has a standard one.
    reason: Option<&'static str>,
    /// The `Code` of the S3 error document (`NoSuchKey`,
    /// `SignatureDoesNotMatch`, …), if the answer had one.
    pub(super) code: Option<String>,
    /// Its `Message`.
    message: Option<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        if let Some(reason) = self.reason {
            write!(f, " {reason}")?;
        }
        if let Some(code) = &self.code {
            write!(f, ": {code}")?;
        }
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl StdError for Failure {}

impl Failure {
    /// The failure an answer with `status` and body `document` describes.
    fn new(status: u16, reason: Option<&'static str>, document: &[u8]) -> Self {
        let document = String::from_utf8_lossy(document);
        let (code, message) = error_document(&document);
        Self {
            status,
            reason,
            code,
            message,
        }
    }

    /// The failure among the causes of `e`, if the server answered it.
    pub(super) fn of<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a Failure> {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if let Some(f) = c.downcast_ref::<Failure>() {
                return Some(f);
            }
            cause = c.source();
        }
        None
    }
}

/// Whether an answer with `status` may be different if asked again, as
/// `object_store` retries them: 5xx, 408 (timeout) and 429 (throttled).
pub(super) fn transient(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// The status the server answered a failed request with, if it answered.
pub(super) fn status(e: &object_store::Error) -> Option<u16> {
    if let Some(f) = Failure::of(e) {
        return Some(f.status);
    }
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => Some(404),
        E::PermissionDenied { .. } => Some(403),
        E::Unauthenticated { .. } => Some(401),
        E::AlreadyExists { .. } => Some(409),
        E::Precondition { .. } => Some(412),
        E::NotModified { .. } => Some(304),
        _ => None,
    }
}

/// The `Code` and `Message` of an S3 error document
/// (`<Error><Code>…</Code><Message>…</Message>…</Error>`).
fn error_document(document: &str) -> (Option<String>, Option<String>) {
    let Some(start) = document.find("<Error>") else {
        return (None, None);
    };
    let root = &document[start..];
    let root = &root[..root.find("</Error>").unwrap_or(root.len())];
    let field = |name: &str| {
        let open = format!("<{name}>");
        let at = root.find(&open)? + open.len();
        let len = root[at..].find(&format!("</{name}>"))?;
        let text = unescape(root[at..at + len].trim());
        (!text.is_empty()).then_some(text)
    };
    (field("Code"), field("Message"))
}

/// XML text with its predefined entities replaced.
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Makes `object_store`'s usual connections, wrapped so that answers with
/// an error status about the bucket become [`Failure`]s (see the
/// [module docs](self)). Requests elsewhere (for credentials) are left
/// alone.
#[derive(Debug)]
pub(super) struct Connector {
    /// The URL every request about the bucket starts with.
    bucket_url: String,
}

impl Connector {
    /// For the bucket `bucket` at `endpoint` (a URL), addressed path-style.
    pub(super) fn new(endpoint: &str, bucket: &str) -> Self {
        Self {
            bucket_url: format!("{}/{bucket}", endpoint.trim_end_matches('/')),
        }
    }
}

impl Connector {
    /// The URL every request about the bucket starts with.
    pub(super) fn bucket_url(&self) -> &str {
        &self.bucket_url
    }
}

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Service {
            inner,
            bucket_url: self.bucket_url.clone(),
        }))
    }
}

#[derive(Debug)]
struct Service {
    inner: HttpClient,
    bucket_url: String,
}

/// Whether a request to `uri` is about the bucket at `bucket_url`.
fn about_bucket(bucket_url: &str, uri: &str) -> bool {
    uri.strip_prefix(bucket_url)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
}

#[async_trait::async_trait]
impl HttpService for Service {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let about_bucket = about_bucket(&self.bucket_url, &request.uri().to_string());
        let response = self.inner.execute(request).await?;
        let status = response.status();
        let code = status.as_u16();
        if !about_bucket || code < 300 || matches!(code, 304 | 409 | 412) {
            return Ok(response);
        }
        let reason = status.canonical_reason();
        // The document, as far as it arrives: a body that breaks off
        // leaves the status to go by.
        let mut document = Vec::new();
        let mut body = response.into_body().bytes_stream();
        while let Some(Ok(chunk)) = body.next().await {
            let room = MAX_DOCUMENT - document.len();
            document.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if document.len() == MAX_DOCUMENT {
                break;
            }
        }
        let kind = if transient(code) {
            // Retried whatever the method, as the answer would have been.
            HttpErrorKind::Request
        } else {
            HttpErrorKind::Unknown
        };
        Err(HttpError::new(kind, Failure::new(code, reason, &document)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_documents() {
        let doc = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code>\
                    <Message>The request signature &amp; the key do not match.</Message>\
                    <RequestId>1</RequestId></Error>";
        let f = Failure::new(403, Some("Forbidden"), doc);
        assert_eq!(f.code.as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(
            f.to_string(),
            "403 Forbidden: SignatureDoesNotMatch: The request signature & the key do not match."
        );
        // No document (HEAD), or a body that is not one.
        for body in [&b""[..], b"<html>Not Found</html>", b"<Code>X</Code>"] {
            let f = Failure::new(404, Some("Not Found"), body);
            assert_eq!((f.code, f.message), (None, None));
        }
        assert_eq!(
            Failure::new(599, None, b"<Error><Code>X</Code></Error>").to_string(),
            "599: X"
        );
    }

    #[test]
    fn statuses() {
        assert!(transient(500) && transient(503) && transient(408) && transient(429));
        assert!(!transient(400) && !transient(403) && !transient(404) && !transient(301));
        let nested = object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(
                HttpErrorKind::Unknown,
                Failure::new(400, None, b""),
            )),
        };
        assert_eq!(status(&nested), Some(400));
        let not_found = object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        assert_eq!(status(&not_found), Some(404));
        let other = object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        };
        assert_eq!(status(&other), None);
    }

    #[test]
    fn bucket_requests() {
        let at = Connector::new("http://127.0.0.1:9000/", "cache").bucket_url;
        assert!(about_bucket(&at, "http://127.0.0.1:9000/cache/nar/x.nar"));
        assert!(about_bucket(&at, "http://127.0.0.1:9000/cache?list-type=2"));
        assert!(!about_bucket(&at, "http://127.0.0.1:9000/cache2/x"));
        assert!(!about_bucket(
            &at,
            "http://169.254.169.254/latest/api/token"
        ));
    }
}
