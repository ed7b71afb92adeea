//! `nixferry copy --from URL --to URL... PATHS...` and `nixferry copy-closure`.
//!
//! `copy` leaves out of pushes to binary caches what an upstream cache
//! (Nix's substituters, or `--upstream`) already serves with a trusted
//! signature: see [`upstreams`] for when.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use nixferry::copy::{self, CancellationToken, CopyOptions, Event};
use nixferry::store::Store;
use nixferry::store_path::StorePath;
use serde_json::json;

use super::{paths, settings};
use crate::cli::{CopyArgs, CopyClosureArgs, CopyTuning, UpstreamArgs};
use crate::exit::Failure;

pub(super) fn run(args: CopyArgs) -> Result<(), Failure> {
    let mut names = args.paths.clone();
    if args.stdin {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading paths from stdin")?;
            if !line.trim().is_empty() {
                names.push(line.trim().to_owned());
            }
        }
    }
    if names.is_empty() {
        return Err(anyhow::anyhow!(if args.stdin {
            "no paths to copy: standard input named none"
        } else {
            "no paths to copy: name store paths (or symlinks to them, such as ./result), or pass them on standard input with --stdin"
        })
        .into());
    }
    if args.preflight && !preflight(&args, &names)? {
        return Err(Failure::Negative);
    }
    let src = paths::open(&args.from)?;
    // With several destinations, one that cannot be opened fails alone:
    // the others are still copied to.
    let mut dsts = Vec::new();
    let mut unopened = Vec::new();
    let delta_bases = args.delta_base.join(",");
    for url in &args.to {
        let opened = if delta_bases.is_empty() || !url.starts_with("ssh://") {
            paths::open(url)
        } else {
            settings::open_store_with(url, &[("delta-base", &delta_bases)])
        };
        match opened {
            Ok(d) => dsts.push(d),
            Err(e) if args.to.len() > 1 => {
                // The cause: the URL is said once, by the summary line.
                let why: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
                unopened.push((url.clone(), why.join(": ")));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if dsts.is_empty() {
        let (url, e) = unopened.swap_remove(0);
        return Err(anyhow::anyhow!("{e}")
            .context(format!("no destination could be opened ({url} first)"))
            .into());
    }
    let roots = paths::resolve(src.store_dir(), &names)?;
    let mut opts = options(&args)?;
    tune(&mut opts, &args.tuning);
    opts.substitute_on_destination = args.substitute_on_destination;
    for (url, e) in upstreams(&args.upstream, &mut opts)? {
        warn_upstream(args.json, None, &url, &e);
    }
    let copied = copy_and_report(src, dsts, roots, &opts, args.json, false);
    for (url, e) in &unopened {
        if args.json {
            let v = json!({"event": "summary", "to": url, "copied": 0, "skipped": 0,
                "upstream": 0, "failed": 0, "narBytes": 0, "seconds": 0.0, "cancelled": false,
                "error": e});
            println!("{v}");
        } else {
            eprintln!("{url}: failed: {e}");
        }
    }
    match copied {
        Ok(()) if !unopened.is_empty() => Err(Failure::Negative),
        other => other,
    }
}

/// `copy --preflight`: checks every destination as `nixferry check`
/// does and shows the reports (on stderr, or as `preflight` events with
/// `--json`); whether the copy may go ahead.
fn preflight(args: &CopyArgs, names: &[String]) -> anyhow::Result<bool> {
    let opts = nixferry::preflight::Options {
        substitute: args.substitute_on_destination,
        secret_keys: settings::secret_keys(&args.keys.secret_key_files)?,
        ..nixferry::preflight::Options::default()
    };
    let reports = super::check::check(&args.from, &args.to, names, &opts)?;
    for r in &reports {
        if args.json {
            let mut v = r.to_json();
            v["event"] = json!("preflight");
            println!("{v}");
        } else {
            eprint!("{}", super::check::table(r));
        }
    }
    let ok = reports.iter().all(nixferry::preflight::Report::ok);
    if !ok && !args.json {
        eprintln!("nixferry: not copying: a destination failed its checks");
    }
    Ok(ok)
}

/// `nixferry copy-closure [--to|--from] HOST PATHS...`: what
/// `nix-copy-closure` does, through the copy engine: the local store and
/// `ssh://HOST`, signatures not checked (SSH access is the trust).
pub(super) fn copy_closure(args: CopyClosureArgs) -> Result<(), Failure> {
    let (host, names) = args
        .args
        .split_first()
        .context("a host and at least one path are needed")?;
    let host = host.strip_prefix("ssh://").unwrap_or(host);
    let mut remote = format!("ssh://{host}");
    if args.gzip {
        remote.push(if remote.contains('?') { '&' } else { '?' });
        remote.push_str("compress=true");
    }
    let (src, dst) = if args.from {
        (paths::open(&remote)?, paths::open("local")?)
    } else {
        (paths::open("local")?, paths::open(&remote)?)
    };
    let mut roots = paths::resolve(src.store_dir(), names)?;
    let mut opts = CopyOptions {
        check_sigs: false,
        substitute_on_destination: args.use_substitutes,
        ..CopyOptions::default()
    };
    tune(&mut opts, &args.tuning);
    let rt = paths::runtime()?;
    if args.include_outputs {
        let outputs = rt
            .block_on(nixferry::closure::derivation_outputs(&*src, &roots))
            .context("finding the outputs of the derivations")?;
        roots.extend(outputs);
    }
    drop(rt);
    copy_and_report(src, vec![dst], roots, &opts, args.json, args.verbose > 0)
}

/// The upstreams of `nixferry copy`, into `opts`: the `--upstream` URLs,
/// else Nix's `substituters` (with `extra-substituters`) when skipping
/// what upstreams serve is on: with `--skip-upstream`, or when
/// `substituters` is configured (set in a file, `NIX_CONFIG` or
/// `--option`: Nix's built-in default, cache.nixos.org, does not switch
/// it on). `--no-skip-upstream` switches it off. Each is opened as any
/// store (netrc file, connect timeout), but tries a failed request once
/// more only (`retries=1`, unless its URL says otherwise): an upstream
/// that is down should cost little, and its paths are pushed all the
/// same. One that cannot be opened is left out, and returned with why,
/// for a warning.
pub(super) fn upstreams(
    args: &UpstreamArgs,
    opts: &mut CopyOptions,
) -> anyhow::Result<Vec<(String, String)>> {
    let secs = args.upstream_timeout;
    if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
        anyhow::bail!("--upstream-timeout must be above 0 and at most 3600 seconds, not {secs}");
    }
    opts.upstream_timeout = Duration::from_secs_f64(secs);
    if args.no_skip_upstream {
        return Ok(Vec::new());
    }
    let urls = if args.upstreams.is_empty() {
        let (substituters, configured) = settings::substituters()?;
        if !(args.skip_upstream || configured) {
            return Ok(Vec::new());
        }
        substituters
    } else {
        args.upstreams.clone()
    };
    let mut unopened = Vec::new();
    for url in urls {
        match settings::open_store_with(&url, &[("retries", "1")]) {
            Ok(store) => opts.upstreams.push(store),
            Err(e) => {
                // The cause: the URL is said by the warning.
                let why: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
                unopened.push((url, why.join(": ")));
            }
        }
    }
    Ok(unopened)
}

/// Says that an upstream is left out: a JSON event, or a warning line
/// (above the progress bar, if there is one).
pub(super) fn warn_upstream(json: bool, bar: Option<&ProgressBar>, url: &str, error: &str) {
    if json {
        let v = json!({"event": "upstreamFailed", "upstream": url, "error": error});
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        return;
    }
    let line =
        format!("nixferry: warning: upstream '{url}' left out ({error}); its paths are pushed");
    match bar {
        Some(bar) => bar.println(line),
        None => eprintln!("{line}"),
    }
}

/// Applies `-j` and `--retries`.
pub(super) fn tune(opts: &mut CopyOptions, tuning: &CopyTuning) {
    if let Some(j) = tuning.jobs {
        opts.jobs = j.max(1);
    }
    opts.retries = tuning.retries;
}

/// Runs the copy with progress, prints a summary per destination, and
/// fails if any path failed anywhere.
pub(super) fn copy_and_report(
    src: Arc<dyn Store>,
    dsts: Vec<Arc<dyn Store>>,
    roots: Vec<StorePath>,
    opts: &CopyOptions,
    json: bool,
    verbose: bool,
) -> Result<(), Failure> {
    let urls: Vec<String> = dsts.iter().map(|d| d.url().to_owned()).collect();
    let progress = Reporter::new(json, verbose, urls);
    let on_event: Arc<dyn Fn(Event) + Send + Sync> = {
        let progress = Arc::clone(&progress);
        Arc::new(move |e| progress.event(e))
    };
    let cancel = CancellationToken::new();
    let rt = paths::runtime()?;
    let summaries = rt.block_on(async {
        let stop = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        });
        copy::copy_to_many(src, dsts, &roots, opts, on_event, cancel).await
    })?;
    progress.finish();

    let many = summaries.len() > 1;
    for s in &summaries {
        let secs = s.elapsed.as_secs_f64();
        let whole = match &s.error {
            Some(e) => format!("failed: {e}"),
            None => {
                let mut line = format!(
                    "copied {} ({}), skipped {}, failed {} in {secs:.2} s",
                    super::count(s.copied, "path", "paths"),
                    super::human_bytes(s.nar_bytes),
                    s.skipped,
                    s.failed.len(),
                );
                if s.upstream > 0 {
                    line.push_str(&format!(
                        ", skipped {} found upstream",
                        super::count(s.upstream, "path", "paths")
                    ));
                }
                line
            }
        };
        if json {
            let v = json!({
                "event": "summary", "to": s.url, "copied": s.copied, "skipped": s.skipped,
                "upstream": s.upstream, "failed": s.failed.len(), "narBytes": s.nar_bytes,
                "seconds": secs, "cancelled": s.cancelled,
                "error": s.error.as_ref().map(ToString::to_string),
            });
            println!("{v}");
        } else {
            for (path, e) in &s.failed {
                if !matches!(e, copy::CopyError::Cancelled) {
                    eprintln!("nixferry: {path}: {e}");
                }
            }
            if many {
                eprintln!("{}: {whole}", s.url);
            } else if let Some(e) = &s.error {
                eprintln!("nixferry: {}: {e}", s.url);
            } else {
                eprintln!("{whole}");
            }
        }
    }
    let untrusted = summaries
        .iter()
        .flat_map(|s| &s.failed)
        .any(|(_, e)| matches!(e, copy::CopyError::Untrusted { .. }));
    if untrusted && !json {
        eprintln!(
            "hint: trust the key that signed them with --trusted-key NAME:KEY (or \
             --trusted-key-file FILE), or copy without signature checks with --no-check-sigs"
        );
    }
    if summaries.iter().any(|s| s.cancelled) {
        return Err(anyhow::anyhow!("interrupted; run the same copy again to finish it").into());
    }
    if summaries.iter().all(copy::Summary::is_complete) {
        Ok(())
    } else {
        Err(Failure::Negative)
    }
}

/// The options of `nixferry copy`: Nix's signature policy
/// ([`CopyOptions`]'s default and builders), with the trusted keys and
/// signing keys of the command line, else of Nix's configuration
/// (`trusted-public-keys`, `secret-key-files`).
fn options(args: &CopyArgs) -> anyhow::Result<CopyOptions> {
    let keys = settings::trusted_keys(&args.keys.trusted_keys, &args.keys.trusted_key_files)?;
    let secret_keys = settings::secret_keys(&args.keys.secret_key_files)?;
    let mut opts = CopyOptions::default()
        .with_trusted_keys(keys)
        .with_secret_keys(secret_keys);
    opts.check_sigs = !args.no_check_sigs;
    Ok(opts)
}

/// Shows events: JSON Lines on stdout, or a progress bar on a terminal.
struct Reporter {
    json: bool,
    /// Whether to say each path as it starts.
    verbose: bool,
    /// The destinations' URLs.
    urls: Vec<String>,
    bar: Option<ProgressBar>,
    counts: Mutex<(usize, usize)>,
}

impl Reporter {
    fn new(json: bool, verbose: bool, urls: Vec<String>) -> Arc<Self> {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Arc::new(Self {
            json,
            verbose,
            urls,
            bar,
            counts: Mutex::new((0, 0)),
        })
    }

    fn event(&self, e: Event) {
        if let Event::UpstreamFailed { upstream, error } = &e {
            // A warning, said the same way as for an upstream that could
            // not be opened.
            warn_upstream(self.json, self.bar.as_ref(), upstream, error);
            return;
        }
        if self.json {
            self.print_json(&e);
        }
        if let (true, Event::Started { path, .. }) = (self.verbose && !self.json, &e) {
            // As nix-copy-closure -v says it.
            let line = match self.urls.as_slice() {
                [url] => format!("copying path '{path}' to '{url}'..."),
                _ => format!("copying path '{path}'..."),
            };
            match &self.bar {
                Some(bar) => bar.println(line),
                None => eprintln!("{line}"),
            }
        }
        let Some(bar) = &self.bar else {
            if let Event::Retrying {
                dest,
                path,
                attempt,
                delay,
                error,
            } = &e
            {
                if !self.json {
                    eprintln!(
                        "nixferry: {}: {path}: {error}; retry {attempt} in {:.1} s",
                        self.urls[*dest],
                        delay.as_secs_f64()
                    );
                }
            }
            return;
        };
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            Event::Planned {
                missing, nar_bytes, ..
            } => {
                counts.1 = missing;
                bar.set_length(nar_bytes);
            }
            Event::Bytes { bytes } => bar.inc(bytes),
            // With several destinations, a path counts once, when it
            // started: bytes measure progress best.
            Event::Started { .. } if self.urls.len() > 1 => counts.0 += 1,
            Event::Copied { .. } | Event::Failed { .. } if self.urls.len() == 1 => counts.0 += 1,
            Event::Retrying {
                dest,
                path,
                attempt,
                error,
                ..
            } => bar.println(format!(
                "{}: {path}: {error}; retry {attempt}",
                self.urls[dest]
            )),
            Event::DestinationFailed { dest, error } => {
                bar.println(format!("{}: {error}", self.urls[dest]));
            }
            _ => {}
        }
        bar.set_message(format!("{}/{} paths", counts.0, counts.1));
    }

    fn print_json(&self, e: &Event) {
        if let Some(v) = event_json(e, &self.urls) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{v}");
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A copy event as the JSON object `--json` prints, `urls` naming the
/// destinations; `None` for events too chatty to print.
pub(super) fn event_json(e: &Event, urls: &[String]) -> Option<serde_json::Value> {
    let to = |dest: &usize| urls.get(*dest).cloned().unwrap_or_default();
    let v = match e {
        Event::Planned {
            closure,
            missing,
            nar_bytes,
        } => {
            json!({"event": "planned", "closure": closure, "missing": missing, "narBytes": nar_bytes})
        }
        Event::Skipped { dest, path } => {
            json!({"event": "skipped", "to": to(dest), "path": path})
        }
        Event::FoundUpstream {
            dest,
            path,
            upstream,
        } => {
            json!({"event": "foundUpstream", "to": to(dest), "path": path, "upstream": upstream})
        }
        Event::Started { path, nar_size } => {
            json!({"event": "started", "path": path, "narSize": nar_size})
        }
        // Byte counts are too chatty for JSON; "copied" carries sizes.
        Event::Bytes { .. } => return None,
        Event::Copied {
            dest,
            path,
            nar_size,
            passthrough,
        } => {
            json!({"event": "copied", "to": to(dest), "path": path, "narSize": nar_size, "passthrough": passthrough})
        }
        Event::Retrying {
            dest,
            path,
            attempt,
            delay,
            error,
        } => {
            json!({"event": "retrying", "to": to(dest), "path": path, "attempt": attempt,
                       "delaySeconds": delay.as_secs_f64(), "error": error})
        }
        Event::Failed { dest, path, error } => {
            json!({"event": "failed", "to": to(dest), "path": path, "error": error})
        }
        Event::DestinationFailed { dest, error } => {
            json!({"event": "destinationFailed", "to": to(dest), "error": error})
        }
        _ => return None,
    };
    Some(v)
}
