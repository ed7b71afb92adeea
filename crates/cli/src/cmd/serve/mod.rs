//! `nixferry serve`: a store served as a binary cache over HTTP (docs/formats.md §3).
//!
//! Two backends: a `file://` cache is served file by file as it lies on
//! disk (and can take uploads with `--write`); the local Nix store gets
//! narinfos made from its database, signed on the fly, and NARs dumped
//! (and optionally zstd-compressed) on the fly. Other binary caches
//! (`s3://`, `http(s)://`) are served like the local store: narinfos
//! looked up by hash part and signed with the server's keys, NARs
//! decompressed from the cache and sent as the server compresses them.
//!
//! The server speaks HTTP/1.1 (hyper). On SIGTERM or Ctrl-C it stops
//! accepting connections and gives requests in flight a few seconds.

mod handler;
mod metrics;
mod range;
mod route;
mod upload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use nixferry::narinfo::Compression;
use nixferry::store::file::FileStore;
use nixferry::store::local::LocalStore;
use nixferry::store::StoreUrl;

use crate::cli::{ServeArgs, ServeCompression};
use crate::exit::Failure;
use handler::{Backend, Server};

/// How long requests in flight get after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn run(args: ServeArgs) -> Result<(), Failure> {
    let server = Arc::new(setup(&args)?);
    let runtime = super::paths::runtime()?;
    runtime.block_on(serve(server, args.listen))?;
    Ok(())
}

/// Opens the store and reads the keys and token.
fn setup(args: &ServeArgs) -> anyhow::Result<Server> {
    let keys = args
        .secret_key_files
        .iter()
        .map(|k| super::key::load_secret_key(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let token = match &args.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file '{}'", f.display()))?;
            let t = t.trim().to_owned();
            if t.is_empty() {
                bail!("the token file '{}' is empty", f.display());
            }
            Some(t)
        }
        None => None,
    };
    if args.write && token.is_none() {
        bail!("--write needs --token-file");
    }
    let url = StoreUrl::parse(&args.store).with_context(|| format!("store '{}'", args.store))?;
    let store = nixferry::store::open(&args.store)
        .with_context(|| format!("opening store '{}'", args.store))?;
    let store_dir = store.store_dir().clone();
    let backend = match url.scheme().name() {
        "file" => {
            let files =
                FileStore::open(&url).with_context(|| format!("opening store '{}'", args.store))?;
            let root = files.root().to_path_buf();
            let root = std::fs::canonicalize(&root)
                .with_context(|| format!("opening the cache directory '{}'", root.display()))?;
            if !keys.is_empty() {
                bail!("--secret-key-file only applies to served Nix stores; sign a file:// cache when filling it");
            }
            Backend::Files { root }
        }
        "local" => {
            if args.write {
                bail!("--write needs a file:// store");
            }
            let local = LocalStore::open(&url)
                .with_context(|| format!("opening store '{}'", args.store))?;
            let compression = serve_compression(args.compression);
            Backend::Store(Box::new(handler::StoreBackend::new(
                store,
                Some(local.real_store_dir().to_path_buf()),
                keys,
                compression,
            )))
        }
        "s3" | "http" | "https" => {
            if args.write {
                bail!("--write needs a file:// store");
            }
            Backend::Store(Box::new(handler::StoreBackend::new(
                store,
                None,
                keys,
                serve_compression(args.compression),
            )))
        }
        other => bail!(
            "cannot serve a store of type '{other}': only local, file://, s3:// and http(s):// stores"
        ),
    };
    Ok(Server {
        backend,
        store_dir,
        want_mass_query: args.want_mass_query,
        priority: args.priority,
        token,
        write: args.write,
        verbose: args.verbose,
        recent: handler::RecentNarinfos::default(),
        metrics: metrics::Metrics::default(),
    })
}

/// How NARs of a served store are compressed on the fly.
fn serve_compression(c: ServeCompression) -> Compression {
    match c {
        ServeCompression::None => Compression::None,
        ServeCompression::Zstd => Compression::Zstd,
    }
}

/// Accepts connections until a shutdown signal, then drains them.
async fn serve(server: Arc<Server>, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    eprintln!("listening on http://{addr}");
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a
                        // little rather than spin.
                        if server.verbose {
                            eprintln!("accept failed: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let server = Arc::clone(&server);
                let service = hyper::service::service_fn(move |req| {
                    let server = Arc::clone(&server);
                    async move { Ok::<_, std::convert::Infallible>(server.handle(req).await) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    // A client going away mid-request is not the server's
                    // business.
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if server.verbose {
        eprintln!("shutting down");
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
