//! `nixferry serve`: a store served as a binary cache over HTTP, by the
//! library's server (`nixferry::server`, which documents the backends,
//! the requests and the upload checks).
//!
//! This command reads the keys and the token, starts the server (with
//! its upstream caches, if any, and on the sockets a service manager
//! passed, if it passed some: see [`systemd`]), prints its address on
//! stderr, tells the service manager it is ready, reads the tokens file
//! again on SIGHUP, and on SIGTERM or Ctrl-C stops it gracefully: no new
//! connections, requests in flight given a few seconds.

mod systemd;

use std::time::Duration;

use anyhow::{bail, Context as _};
use nixferry::narinfo::Compression;
use nixferry::server::{LogFormat, Server, ServerBuilder, ServerError};

use crate::cli::{ServeArgs, ServeCompression, ServeLogFormat};
use crate::exit::Failure;

/// The cap on blocking threads: the local store's NAR dumps, the CPU pool
/// and room to spare for short file work.
const BLOCKING_THREADS: usize = nixferry::server::MAX_DUMPS + 32;

/// File descriptors kept for other uses than connections (the store's
/// database and files, the log).
const SPARE_FDS: u64 = 64;

pub(super) fn run(args: ServeArgs) -> Result<(), Failure> {
    // Before anything opens a file: the passed sockets are descriptors
    // 3, 4, ….
    let sockets = systemd::passed_sockets()?;
    // A worker thread per core, and a bounded pool of blocking threads:
    // NARs dumped from a local store (at most
    // nixferry::server::MAX_DUMPS), the CPU pool, and short file work.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, sockets))?;
    Ok(())
}

/// Serves until a shutdown signal, then stops gracefully.
async fn serve(args: ServeArgs, sockets: Vec<std::net::TcpListener>) -> anyhow::Result<()> {
    let keys = super::settings::secret_keys(&args.secret_key_files)?;
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
    let mut builder = Server::builder(args.store.as_str())
        .listen(listen_address(&args.listen)?)
        .secret_keys(keys)
        .writable(args.write)
        .compression(match args.compression {
            ServeCompression::None => Compression::None,
            ServeCompression::Zstd => Compression::Zstd,
        });
    if let Some(t) = token {
        builder = builder.token(t);
    }
    if let Some(f) = &args.tokens_file {
        builder = builder
            .tokens_file(f)
            .public_cache_info(args.public_cache_info);
    }
    if let Some(p) = args.priority {
        builder = builder.priority(p);
    }
    if let Some(w) = args.want_mass_query {
        builder = builder.want_mass_query(w);
    }
    if args.verbose {
        builder = builder.log(|line| eprintln!("{line}"));
    }
    builder = builder.log_format(match args.log_format {
        ServeLogFormat::Text => LogFormat::Text,
        ServeLogFormat::Json => LogFormat::Json,
    });
    let wanted = args.max_connections as u64 + SPARE_FDS;
    let max_connections = match systemd::raise_open_files(wanted) {
        Some(limit) if limit < wanted => {
            let fit = usize::try_from(limit.saturating_sub(SPARE_FDS).max(1)).unwrap_or(1);
            eprintln!(
                "the limit of open files is {limit}: serving at most {fit} connections at once"
            );
            fit
        }
        _ => args.max_connections,
    };
    builder = builder
        .max_connections(max_connections)
        .max_requests(args.max_requests)
        .header_timeout(Duration::from_secs(args.header_timeout.max(1)))
        .io_timeout(Duration::from_secs(args.io_timeout.max(1)));
    let activated = !sockets.is_empty();
    for socket in sockets {
        builder = builder.listener(socket);
    }
    builder = upstreams(builder, &args)?;
    // Listening for signals before the address is printed: whoever reads
    // it may signal at once.
    let signal = shutdown_signal();
    let mut hangups = hangups();
    let server = builder.start().await.map_err(|e| start_error(e, &args))?;
    // The address as bound (`0.0.0.0` stays so), not `Server::url`.
    let from = if activated {
        " (a socket from the service manager)"
    } else {
        ""
    };
    eprintln!("listening on http://{}{from}", server.local_addr());
    systemd::notify("READY=1");
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            () = next_hangup(&mut hangups) => match server.reload_tokens() {
                Ok(n) => eprintln!("SIGHUP: {n} tokens"),
                Err(e) => eprintln!("SIGHUP: {e}; the tokens stay as they were"),
            },
        }
    }
    systemd::notify("STOPPING=1");
    server.shutdown().await?;
    Ok(())
}

/// The upstream settings: `--upstream`, the trusted keys (Nix's default
/// unless given), `--cache-upstream`, `--upstream-timeout`.
fn upstreams(mut builder: ServerBuilder, args: &ServeArgs) -> anyhow::Result<ServerBuilder> {
    for u in &args.upstreams {
        builder = builder.upstream(u.as_str());
    }
    if !args.upstreams.is_empty() {
        builder = builder.trusted_keys(super::settings::trusted_keys(
            &args.trusted_keys,
            &args.trusted_key_files,
        )?);
    }
    if let Some(c) = &args.cache_upstream {
        builder = builder.cache_upstream(c.as_str());
    }
    let secs = args.upstream_timeout;
    if !(secs > 0.0 && secs <= 3600.0) {
        bail!("--upstream-timeout must be above 0 and at most 3600 seconds, not {secs}");
    }
    Ok(builder.upstream_timeout(Duration::from_secs_f64(secs)))
}

/// The address `--listen` names: `HOST:PORT`, the host an address or a
/// name (the first address it resolves to, as a server binding a name
/// does).
fn listen_address(text: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs as _;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut found = text.to_socket_addrs().with_context(|| {
        format!("--listen '{text}': expected HOST:PORT, such as 127.0.0.1:5000 or localhost:8080")
    })?;
    found
        .next()
        .with_context(|| format!("--listen '{text}': the host has no address"))
}

/// SIGHUP, if it can be listened for.
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangups() -> Hangups {}

/// The next SIGHUP; never, where there are none.
async fn next_hangup(h: &mut Hangups) {
    #[cfg(unix)]
    next(h).await;
    #[cfg(not(unix))]
    {
        let () = *h;
        std::future::pending::<()>().await;
    }
}

/// The next delivery of a signal; never, if it cannot be listened for
/// (or no longer can).
#[cfg(unix)]
async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(signal) = s {
        if signal.recv().await.is_some() {
            return;
        }
    }
    *s = None;
    std::future::pending().await
}

/// A server that did not start, in the command line's terms.
fn start_error(e: ServerError, args: &ServeArgs) -> anyhow::Error {
    match e {
        ServerError::WritableNeedsToken => {
            anyhow::anyhow!("--write needs --token-file, or a write token in --tokens-file")
        }
        ServerError::WritableNeedsFileStore => anyhow::anyhow!("--write needs a file:// store"),
        ServerError::KeysForFileStore => anyhow::anyhow!(
            "--secret-key-file only applies to served Nix stores; sign a file:// cache when filling it"
        ),
        ServerError::CacheUpstreamWithoutUpstream => {
            anyhow::anyhow!("--cache-upstream needs --upstream")
        }
        ServerError::Store(_) | ServerError::CacheDir { .. } => {
            anyhow::Error::new(e).context(format!("opening store '{}'", args.store))
        }
        e => e.into(),
    }
}

/// Starts listening for SIGTERM and Ctrl-C (SIGINT); the future resolves
/// when one comes.
pub(super) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        async move {
            tokio::select! {
                () = next(&mut term) => {}
                () = next(&mut int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
