//! The server's log: one structured line per request, written once its
//! answer is sent (or abandoned), and lines saying why something failed.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};
use hyper::Method;

use super::handler::Body;
use super::metrics::Metrics;
use super::route::Kind;
use crate::store::json::write_string as json_string;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// `key=value` pairs (logfmt): `method=GET path=/nix-cache-info
    /// status=200 bytes=52 ms=0.1 client=127.0.0.1:41234 end=done`; other
    /// lines as plain text.
    #[default]
    Text,
    /// One JSON object a line: `{"method":"GET",…,"end":"done"}` for a
    /// request, `{"msg":"…"}` for other lines.
    Json,
}

/// The server's log sink, if it has one, and its format.
#[derive(Clone, Default)]
pub(super) struct Log {
    pub(super) sink: Option<super::LogFn>,
    pub(super) format: LogFormat,
}

impl Log {
    /// Logs the line `make` makes, if there is a sink (`make` is not
    /// called otherwise).
    pub(super) fn line(&self, make: impl FnOnce() -> String) {
        if let Some(sink) = &self.sink {
            let text = make();
            match self.format {
                LogFormat::Text => sink(&text),
                LogFormat::Json => {
                    let mut out = String::from("{\"msg\":");
                    json_string(&mut out, &text);
                    out.push('}');
                    sink(&out);
                }
            }
        }
    }

    fn is_on(&self) -> bool {
        self.sink.is_some()
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sink {
            Some(_) => write!(f, "Log({:?})", self.format),
            None => f.write_str("Log(off)"),
        }
    }
}

/// What is known of a request when its answer is ready.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) start: Instant,
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) kind: Kind,
    pub(super) status: u16,
    pub(super) client: Option<SocketAddr>,
}

/// How the sending of an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// All of the body was handed to the connection.
    Done,
    /// Making the body failed part way (the client sees a cut transfer).
    Failed,
    /// The connection went away before the body was sent.
    Gone,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            End::Done => "done",
            End::Failed => "failed",
            End::Gone => "gone",
        }
    }
}

impl Request {
    fn render(&self, format: LogFormat, bytes: u64, end: End) -> String {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let client = self
            .client
            .map_or_else(|| "-".to_owned(), |c| c.to_string());
        let mut out = String::with_capacity(160);
        match format {
            LogFormat::Text => {
                // A path is a request target hyper accepted: printable
                // ASCII without spaces or quotes, so it needs no quoting.
                let _ = write!(
                    out,
                    "method={} path={} status={} bytes={bytes} ms={ms:.2} client={client} kind={} end={}",
                    self.method,
                    self.path,
                    self.status,
                    self.kind.label(),
                    end.label()
                );
            }
            LogFormat::Json => {
                out.push_str("{\"method\":");
                json_string(&mut out, self.method.as_str());
                out.push_str(",\"path\":");
                json_string(&mut out, &self.path);
                let _ = write!(
                    out,
                    ",\"status\":{},\"bytes\":{bytes},\"ms\":{ms:.2},\"client\":\"{client}\",\"kind\":\"{}\",\"end\":\"{}\"}}",
                    self.status,
                    self.kind.label(),
                    end.label()
                );
            }
        }
        out
    }
}

/// A response body that counts what it sends, and logs its request once
/// it is sent, has failed, or was dropped; it holds the request's
/// in-flight permit until then.
pub(super) struct Logged {
    body: Body,
    bytes: u64,
    /// Taken when the line is written.
    request: Option<Request>,
    log: Log,
    metrics: Arc<Metrics>,
    /// What the request holds until it is answered: its in-flight permit
    /// and gauge.
    held: Option<Box<dyn Send>>,
}

impl Logged {
    pub(super) fn new(
        body: Body,
        request: Request,
        log: Log,
        metrics: Arc<Metrics>,
        held: Box<dyn Send>,
    ) -> Self {
        Self {
            body,
            bytes: 0,
            request: Some(request),
            log,
            metrics,
            held: Some(held),
        }
    }

    fn finish(&mut self, end: End) {
        if let Some(request) = self.request.take() {
            if self.log.is_on() {
                let line = request.render(self.log.format, self.bytes, end);
                if let Some(sink) = &self.log.sink {
                    sink(&line);
                }
            }
        }
        self.held = None;
    }
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                    this.metrics.sent(d.len());
                }
                if this.body.is_end_stream() {
                    this.finish(End::Done);
                }
            }
            Some(Err(_)) => this.finish(End::Failed),
            None => this.finish(End::Done),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let end = if self.body.is_end_stream() {
            End::Done
        } else {
            End::Gone
        };
        self.finish(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            start: Instant::now(),
            method: Method::GET,
            path: "/nix-cache-info".to_owned(),
            kind: Kind::CacheInfo,
            status: 200,
            client: Some("127.0.0.1:4000".parse().unwrap()),
        }
    }

    #[test]
    fn request_lines() {
        let text = request().render(LogFormat::Text, 52, End::Done);
        assert!(
            text.starts_with("method=GET path=/nix-cache-info status=200 bytes=52 ms="),
            "{text}"
        );
        assert!(
            text.ends_with(" client=127.0.0.1:4000 kind=cache_info end=done"),
            "{text}"
        );
        let json = request().render(LogFormat::Json, 52, End::Gone);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/nix-cache-info");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 52);
        assert!(v["ms"].is_f64());
        assert_eq!(v["client"], "127.0.0.1:4000");
        assert_eq!(v["end"], "gone");
    }
}
