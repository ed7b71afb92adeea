//! `nixferry push`: closures from the local store to caches, at once or
//! as paths appear (`--watch`), through a durable queue that `--enqueue`
//! adds to.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use nixferry::copy::{self, CancellationToken, CopyOptions};
use nixferry::push::{self, at_destination, Event, PushOptions, Queue, QueueError};
use nixferry::store::local::LocalStore;
use nixferry::store::{Scheme, Store, StoreUrl};
use nixferry::store_path::{StoreDir, StorePath};
use serde_json::json;

use super::{paths, settings};
use crate::cli::PushArgs;
use crate::exit::Failure;

pub(super) fn run(args: PushArgs) -> Result<(), Failure> {
    if args.enqueue {
        return Ok(enqueue(&args)?);
    }
    let opts = options(&args)?;
    if args.watch {
        return Ok(watch(&args, opts)?);
    }
    if args.paths.is_empty() {
        return Err(anyhow::anyhow!(
            "nothing to push: name store paths (or symlinks to them, such as ./result), \
             or give --watch to push them as they appear"
        )
        .into());
    }
    let src = paths::open(&args.from)?;
    let dsts = destinations(&args)?;
    let roots = paths::resolve(src.store_dir(), &args.paths)?;
    super::copy::copy_and_report(src, dsts, roots, &opts, args.json, false)
}

/// The options of every push: the signing keys of the command line,
/// else of Nix's `secret-key-files`; the trusted keys likewise, else
/// Nix's `trusted-public-keys`; the upstreams whose paths are left out,
/// as for `copy` (an upstream that cannot be opened is said, and left
/// out); the copy tuning.
fn options(args: &PushArgs) -> anyhow::Result<CopyOptions> {
    let trusted = settings::trusted_keys(&args.keys.trusted_keys, &args.keys.trusted_key_files)?;
    let secret_keys = settings::secret_keys(&args.keys.secret_key_files)?;
    let mut opts = CopyOptions::default()
        .with_trusted_keys(trusted)
        .with_secret_keys(secret_keys);
    super::copy::tune(&mut opts, &args.tuning);
    for (url, e) in super::copy::upstreams(&args.upstream, &mut opts)? {
        super::copy::warn_upstream(args.json, None, &url, &e);
    }
    Ok(opts)
}

/// Opens every `--to` store; one that cannot be opened is an error.
fn destinations(args: &PushArgs) -> anyhow::Result<Vec<Arc<dyn Store>>> {
    args.to.iter().map(|url| paths::open(url)).collect()
}

/// The queue of `--state-dir`, else of the user's state directory.
fn queue(args: &PushArgs) -> anyhow::Result<Queue> {
    let queue = match &args.state_dir {
        Some(dir) => Queue::open_in(dir).map_err(anyhow::Error::from),
        None => Queue::open_default().map_err(|e| match e {
            QueueError::NoStateDir => anyhow::anyhow!("{e}: give --state-dir DIR"),
            e => e.into(),
        }),
    };
    queue.context("opening the push queue")
}

/// `--enqueue`: queues the paths (or those Nix gives its
/// post-build-hook) and returns, without contacting any cache: Nix waits
/// for its post-build-hook before it builds anything else.
fn enqueue(args: &PushArgs) -> anyhow::Result<()> {
    let url = StoreUrl::parse(&args.from)?;
    let dir = match url.param("store") {
        Some(dir) => StoreDir::new(dir).with_context(|| format!("--from '{}'", args.from))?,
        None => StoreDir::default(),
    };
    let roots = if args.paths.is_empty() {
        hook_outputs(&url, &dir)?
    } else {
        paths::resolve(&dir, &args.paths)?
    };
    let queue = queue(args)?;
    for root in &roots {
        queue
            .push(root)
            .with_context(|| format!("queueing '{}'", dir.display(root)))?;
    }
    Ok(())
}

/// The paths Nix's post-build-hook is told were built: `$OUT_PATHS`
/// (separated by spaces); else, as Nix 2.8.0 leaves it empty
/// (NixOS/nix#6446), the outputs of `$DRV_PATH` that the store's
/// database knows.
fn hook_outputs(url: &StoreUrl, dir: &StoreDir) -> anyhow::Result<Vec<StorePath>> {
    let var = |name| std::env::var(name).unwrap_or_default();
    let out_paths: Vec<String> = var("OUT_PATHS")
        .split_ascii_whitespace()
        .map(str::to_owned)
        .collect();
    if !out_paths.is_empty() {
        return paths::resolve(dir, &out_paths);
    }
    let drv_path = var("DRV_PATH");
    if drv_path.is_empty() {
        bail!(
            "nothing to queue: name store paths, or set OUT_PATHS (space-separated) or \
             DRV_PATH, as Nix does for its post-build-hook"
        );
    }
    let drv = paths::resolve(dir, &[drv_path])?;
    let store = LocalStore::open(url).with_context(|| format!("opening store '{url}'"))?;
    let outputs = paths::runtime()?
        .block_on(store.query_derivation_outputs(&drv))
        .context("finding the outputs of DRV_PATH")?;
    if outputs.is_empty() {
        bail!("DRV_PATH '{}' has no valid outputs", dir.display(&drv[0]));
    }
    Ok(outputs)
}

/// `--watch`: pushes what is queued and what appears, until a signal.
fn watch(args: &PushArgs, copy: CopyOptions) -> anyhow::Result<()> {
    let queue = queue(args)?;
    let url = StoreUrl::parse(&args.from)?;
    if url.scheme() != Scheme::Local {
        bail!(
            "--watch pushes from a Nix store on this machine: --from local (the default) or \
             local?root=DIR, not '{}'",
            args.from
        );
    }
    let src =
        Arc::new(LocalStore::open(&url).with_context(|| format!("opening store '{}'", args.from))?);
    let dsts = destinations(args)?;
    for root in paths::resolve(src.store_dir(), &args.paths)? {
        queue.push(&root)?;
    }
    let opts = PushOptions {
        copy,
        follow: !args.no_follow,
        since: args.since_id,
        max_retry_delay: args.max_retry_delay,
        ..PushOptions::default()
    };
    let log = Log {
        json: args.json,
        urls: args.to.clone(),
        queue: queue.dir().display().to_string(),
    };
    let on_event: Arc<dyn Fn(Event) + Send + Sync> = Arc::new(move |e| log.event(&e));
    paths::runtime()?.block_on(async {
        let cancel = CancellationToken::new();
        let signal = super::serve::shutdown_signal();
        let stop = cancel.clone();
        tokio::spawn(async move {
            signal.await;
            stop.cancel();
        });
        push::watch(src, dsts, &queue, &opts, on_event, cancel).await
    })?;
    Ok(())
}

/// The watcher's log: a line per event on stderr, and with `--json` a
/// JSON object per event on stdout.
struct Log {
    json: bool,
    /// The destinations' URLs.
    urls: Vec<String>,
    /// The queue directory, for messages.
    queue: String,
}

impl Log {
    fn event(&self, e: &Event) {
        if let Event::Copy(copy::Event::UpstreamFailed { upstream, error }) = e {
            // Said as `copy` says it: a warning, and an event.
            super::copy::warn_upstream(false, None, upstream, error);
            if self.json {
                super::copy::warn_upstream(true, None, upstream, error);
            }
            return;
        }
        if let Some(line) = self.line(e) {
            eprintln!("{line}");
        }
        if self.json {
            if let Some(v) = self.json(e) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{v}");
                let _ = out.flush();
            }
        }
    }

    fn line(&self, e: &Event) -> Option<String> {
        let to = |dest: &usize| self.urls.get(*dest).map_or("", String::as_str);
        Some(match e {
            Event::Started { queued, cursor } => {
                let waiting = super::count(*queued, "path waits", "paths wait");
                let urls = self.urls.join(", ");
                match cursor {
                    Some(id) => format!(
                        "pushing to {urls} what the local store registers after row {id}, \
                         and the queue in {} ({waiting})",
                        self.queue
                    ),
                    None => format!("pushing to {urls} the queue in {} ({waiting})", self.queue),
                }
            }
            Event::Queued { path } => format!("queued {path}"),
            Event::Pushing { paths } => match paths.as_slice() {
                [one] => format!("pushing {one}"),
                many => format!("pushing {}", super::count(many.len(), "path", "paths")),
            },
            Event::Copy(copy::Event::Retrying {
                dest,
                path,
                attempt,
                delay,
                error,
            }) => {
                let what = if path.is_empty() {
                    error.clone()
                } else {
                    format!("{path}: {error}")
                };
                format!(
                    "{}; retry {attempt} in {:.1} s",
                    at_destination(to(dest), &what),
                    delay.as_secs_f64()
                )
            }
            Event::Copy(copy::Event::Failed { dest, path, error }) => {
                at_destination(to(dest), format!("{path}: failed: {error}"))
            }
            // A destination that fails fails the push, said next.
            Event::Copy(_) => return None,
            Event::Pushed {
                paths,
                copied,
                upstream,
                nar_bytes,
                elapsed,
            } => {
                let mut what = format!(
                    "{} copied ({}) in {:.2} s",
                    super::count(*copied, "path", "paths"),
                    super::human_bytes(*nar_bytes),
                    elapsed.as_secs_f64()
                );
                if *upstream > 0 {
                    what.push_str(&format!(
                        ", {} found upstream",
                        super::count(*upstream, "path", "paths")
                    ));
                }
                match paths.as_slice() {
                    [one] => format!("pushed {one}: {what}"),
                    many => format!(
                        "pushed {}: {what}\n  {}",
                        super::count(many.len(), "path", "paths"),
                        many.join("\n  ")
                    ),
                }
            }
            Event::Dropped { path, reason } => format!("dropped {path} from the queue: {reason}"),
            Event::Retrying {
                attempt,
                delay,
                queued,
                error,
            } => format!(
                "push failed: {error}; {} in the queue, retry {attempt} in {:.1} s",
                super::count(*queued, "path waits", "paths wait"),
                delay.as_secs_f64()
            ),
            Event::Stopped { queued } => format!(
                "stopped; {} in the queue",
                super::count(*queued, "path waits", "paths wait")
            ),
            _ => return None,
        })
    }

    fn json(&self, e: &Event) -> Option<serde_json::Value> {
        Some(match e {
            Event::Started { queued, cursor } => {
                json!({"event": "watching", "queue": self.queue, "queued": queued,
                       "cursor": cursor, "to": self.urls})
            }
            Event::Queued { path } => json!({"event": "queued", "path": path}),
            Event::Pushing { paths } => json!({"event": "pushing", "paths": paths}),
            Event::Copy(e) => return super::copy::event_json(e, &self.urls),
            Event::Pushed {
                paths,
                copied,
                upstream,
                nar_bytes,
                elapsed,
            } => json!({"event": "pushed", "paths": paths, "copied": copied,
                        "upstream": upstream, "narBytes": nar_bytes,
                        "seconds": elapsed.as_secs_f64()}),
            Event::Dropped { path, reason } => {
                json!({"event": "dropped", "path": path, "reason": reason})
            }
            Event::Retrying {
                attempt,
                delay,
                queued,
                error,
            } => json!({"event": "pushFailed", "error": error, "queued": queued,
                        "attempt": attempt, "delaySeconds": delay.as_secs_f64()}),
            Event::Stopped { queued } => json!({"event": "stopped", "queued": queued}),
            _ => return None,
        })
    }
}
