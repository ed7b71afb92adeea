//! `PUT`: uploads into a `file://` cache, for writable servers.
//!
//! Files are written crash-safely: to a temporary file beside the target,
//! flushed to disk, renamed into place, and the directory flushed.
//!
//! Nothing unverified is published. A NAR file is kept only if its content
//! hashes to the name it is uploaded under (`nar/<FileHash>.nar<ext>`), so
//! a NAR file of the cache is always what its name says. A narinfo is
//! refused unless the NAR file it names is there (Nix uploads the NAR
//! first) and decompresses to a valid NAR of the narinfo's `NarHash` and
//! `NarSize`, with the narinfo's `FileHash` and `FileSize`: so the cache
//! never holds a narinfo without its NAR, nor one whose NAR is another.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, Response, StatusCode};
use tokio::io::AsyncWriteExt as _;

use super::auth::Scope;
use super::handler::{self, Backend, Body, State};
use super::route::{self, Route};
use crate::atomic::AtomicFile;
use crate::hash::{HashAlgo, Hasher};
use crate::narinfo::{CacheInfo, NarInfo};
use crate::store::verify;

/// The largest narinfo or `nix-cache-info` accepted.
const MAX_SMALL: u64 = 64 * 1024;
/// The largest listing or log accepted.
const MAX_MEDIUM: u64 = 256 << 20;

/// Answers a `PUT`.
pub(super) async fn put(server: &State, route: &Route, req: Request<Incoming>) -> Response<Body> {
    if !server.write {
        return handler::method_not_allowed(
            "GET, HEAD",
            "this cache is read-only: the server takes no uploads\n",
        );
    }
    let Backend::Files { root } = &server.backend else {
        return handler::method_not_allowed(
            "GET, HEAD",
            "uploads need a file:// store behind the server\n",
        );
    };
    let scope = server.auth.scope(req.headers().get(header::AUTHORIZATION));
    if scope != Some(Scope::Write) {
        return handler::unauthorized("a valid token is needed\n");
    }
    let Some(rel) = route.relative() else {
        return handler::method_not_allowed("GET, HEAD", "method not allowed\n");
    };
    let result = match route {
        Route::NarInfo(hash) => put_narinfo(server, root, &rel, hash, req.into_body()).await,
        Route::CacheInfo => match read_body(server, req.into_body(), MAX_SMALL).await {
            Ok(body) => match std::str::from_utf8(&body).ok().map(CacheInfo::parse) {
                Some(Ok(_)) => write_small(root, &rel, &body).await,
                _ => Err(Refusal::Bad("invalid nix-cache-info\n")),
            },
            Err(e) => Err(e),
        },
        Route::Nar {
            path: None, hash, ..
        } => {
            let body = req.into_body();
            write_streamed(server, root, &rel, body, u64::MAX, Some(hash)).await
        }
        // A binary cache names its NAR files by their hash alone.
        Route::Nar { path: Some(_), .. } => Err(Refusal::Bad(
            "NAR files are named nar/<file hash>.nar[.<ext>]\n",
        )),
        _ => write_streamed(server, root, &rel, req.into_body(), MAX_MEDIUM, None).await,
    };
    match result {
        Ok(()) => handler::text(StatusCode::OK, ""),
        Err(Refusal::Bad(message)) => handler::text(StatusCode::BAD_REQUEST, message),
        Err(Refusal::Mismatch(message)) => {
            server
                .log
                .line(|| format!("PUT /{rel}: refused: {message}"));
            handler::text(StatusCode::BAD_REQUEST, format!("{message}\n"))
        }
        Err(Refusal::TooLarge) => handler::text(StatusCode::PAYLOAD_TOO_LARGE, "too large\n"),
        Err(Refusal::Io(e)) => {
            server.log.line(|| format!("PUT /{rel}: {e}"));
            handler::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not store the file\n",
            )
        }
    }
}

/// Why an upload was not stored.
#[derive(Debug)]
enum Refusal {
    Bad(&'static str),
    /// An upload that is not what it says it is.
    Mismatch(String),
    TooLarge,
    Io(io::Error),
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        Refusal::Io(e)
    }
}

async fn read_body(server: &State, mut body: Incoming, limit: u64) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Refusal::Io(io::Error::other(e)))?;
        if let Some(d) = frame.data_ref() {
            server.metrics.received(d.len());
            if (out.len() + d.len()) as u64 > limit {
                return Err(Refusal::TooLarge);
            }
            out.extend_from_slice(d);
        }
    }
    Ok(out)
}

async fn put_narinfo(
    server: &State,
    root: &Path,
    rel: &str,
    hash: &str,
    body: Incoming,
) -> Result<(), Refusal> {
    let body = read_body(server, body, MAX_SMALL).await?;
    let text = std::str::from_utf8(&body).map_err(|_| Refusal::Bad("narinfo is not UTF-8\n"))?;
    let info = NarInfo::parse_in(text, &server.store_dir)
        .map_err(|_| Refusal::Bad("invalid narinfo\n"))?;
    if info.store_path().hash_part() != hash {
        return Err(Refusal::Bad("the narinfo is for another store path\n"));
    }
    // Only NAR files of this cache can be checked, so a narinfo must name
    // one.
    let nar_rel = match route::parse(&format!("/{}", info.url())) {
        Some(r @ Route::Nar { path: None, .. }) => r.relative(),
        _ => None,
    };
    let Some(nar_rel) = nar_rel else {
        return Err(Refusal::Bad(
            "the narinfo's URL is not a NAR file name of this cache\n",
        ));
    };
    let Some((file, _)) = handler::open_in(root, &nar_rel).await? else {
        return Err(Refusal::Bad(
            "the narinfo's NAR file has not been uploaded\n",
        ));
    };
    let file = file.into_std().await;
    let store_dir = server.store_dir.clone();
    let checked = handler::blocking(move || {
        Ok(verify::verify_nar_file(
            io::BufReader::new(file),
            &info,
            &store_dir,
        ))
    })
    .await?;
    if let Err(e) = checked {
        return Err(Refusal::Mismatch(format!(
            "the narinfo does not match its NAR file: {e}"
        )));
    }
    write_small(root, rel, &body).await
}

async fn write_small(root: &Path, rel: &str, data: &[u8]) -> Result<(), Refusal> {
    let mut tmp = TempFile::create(root, rel).await?;
    tmp.file.write_all(data).await?;
    tmp.commit().await
}

/// Streams an upload into place. With `named_hash` (a NAR file), the
/// content must hash (SHA-256, in Nix's base-32) to that name, or nothing
/// is kept.
async fn write_streamed(
    server: &State,
    root: &Path,
    rel: &str,
    mut body: Incoming,
    limit: u64,
    named_hash: Option<&str>,
) -> Result<(), Refusal> {
    let mut tmp = TempFile::create(root, rel).await?;
    let mut hasher = named_hash.map(|_| Hasher::new(HashAlgo::Sha256));
    let mut written: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Refusal::Io(io::Error::other(e)))?;
        if let Ok(data) = frame.into_data() {
            let data: Bytes = data;
            server.metrics.received(data.len());
            written = written.saturating_add(data.len() as u64);
            if written > limit {
                return Err(Refusal::TooLarge);
            }
            if let Some(h) = &mut hasher {
                h.update(&data);
            }
            tmp.file.write_all(&data).await?;
        }
    }
    if let (Some(h), Some(named)) = (hasher, named_hash) {
        let got = h.finish().to_nix32();
        if got != named {
            return Err(Refusal::Mismatch(format!(
                "the NAR file's content hashes to {got}, not to the {named} of its name"
            )));
        }
    }
    tmp.commit().await
}

/// An upload's temporary file beside its target: the shared
/// [`AtomicFile`], written through an async handle, flushed to disk and
/// renamed into place (the directory flushed too) when committed.
struct TempFile {
    tmp: AtomicFile,
    file: tokio::fs::File,
    target: PathBuf,
}

impl TempFile {
    async fn create(root: &Path, rel: &str) -> Result<Self, Refusal> {
        let target = root.join(rel);
        let Some(dir) = target.parent() else {
            return Err(Refusal::Bad("bad file name\n"));
        };
        tokio::fs::create_dir_all(dir).await?;
        // `nar/` or `log/` may be a symlink out of the cache: refuse to
        // write through it.
        let real_dir = tokio::fs::canonicalize(dir).await?;
        if !real_dir.starts_with(root) {
            return Err(Refusal::Bad("bad file name\n"));
        }
        let Some(name) = target.file_name() else {
            return Err(Refusal::Bad("bad file name\n"));
        };
        let target = real_dir.join(name);
        let tmp = handler::blocking({
            let target = target.clone();
            move || AtomicFile::create(&target).map_err(io::Error::from)
        })
        .await?;
        let file = tokio::fs::File::from_std(tmp.as_file().try_clone()?);
        Ok(Self { tmp, file, target })
    }

    async fn commit(mut self) -> Result<(), Refusal> {
        self.file.flush().await?;
        let Self { tmp, target, .. } = self;
        handler::blocking(move || tmp.commit(&target, true).map_err(io::Error::from)).await?;
        Ok(())
    }
}
