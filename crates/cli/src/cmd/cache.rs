//! `nixferry cache`: looking after a binary cache.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nixferry::cache::{self, Cache, RepairOptions, VerifyOptions, VerifyProgress};
use nixferry::cache::{GcOptions, SignOptions};
use nixferry::copy::CopyOptions;
use nixferry::signing::TrustedKeys;

use crate::cli::{CacheCommand, CacheGcArgs, CachePinArgs, CacheSignArgs, CacheVerifyArgs};
use crate::exit::Failure;

pub(crate) fn run(c: CacheCommand) -> Result<(), Failure> {
    match c {
        CacheCommand::Verify(a) => verify(a),
        CacheCommand::Sign(a) => sign(a),
        CacheCommand::Pin(a) => pin(a),
        CacheCommand::Pins { url, json } => list_pins(&url, json),
        CacheCommand::Unpin {
            url,
            name,
            generation,
        } => unpin(&url, &name, generation),
        CacheCommand::Gc(a) => gc(a),
        CacheCommand::Stats { url, json } => stats(&url, json),
    }
}

fn sign(args: CacheSignArgs) -> Result<(), Failure> {
    let cache = open(&args.url)?;
    let keys = args
        .secret_key_files
        .iter()
        .map(|f| super::key::load_secret_key(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = SignOptions {
        keys,
        remove_signatures_by: args.remove_signatures_by,
        require_trusted: super::settings::flag_trusted_keys(&args.trusted_keys, &[])?,
    };
    let line = ProgressLine::new(args.json);
    let progress = |done, total| {
        if let Some(line) = &line {
            line.count("signed", done, total);
        }
    };
    let report = with_cache(&cache, cache::sign_with_progress(&cache, &opts, &progress));
    if let Some(line) = &line {
        line.finish();
    }
    let report = report?.with_context(|| format!("signing '{}'", args.url))?;
    if args.json {
        super::print(&format!("{}\n", report.to_json()))?;
    } else {
        for key in &report.untrusted {
            eprintln!("not signed: {key}: no valid signature by a trusted key");
        }
        for (key, why) in &report.failed {
            eprintln!("failed: {key}: {why}");
        }
        eprintln!(
            "{} narinfos: {} rewritten, {} unchanged, {} left alone, {} failed",
            report.narinfos,
            report.rewritten,
            report.unchanged,
            report.untrusted.len(),
            report.failed.len()
        );
    }
    if report.untrusted.is_empty() && report.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Negative)
    }
}

/// Runs `f` on the cache, then closes it.
fn with_cache<T>(cache: &Cache, f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    Ok(super::paths::runtime()?.block_on(async {
        let out = f.await;
        cache.store().close().await;
        out
    }))
}

fn pin(args: CachePinArgs) -> Result<(), Failure> {
    let cache = open(&args.url)?;
    let paths = super::paths::resolve(cache.store_dir(), &args.paths)?;
    let pin = with_cache(&cache, cache::pin(&cache, &args.name, &paths, args.keep))?
        .with_context(|| format!("pinning in '{}'", args.url))?;
    if args.json {
        super::print(&format!("{}\n", pin.to_json(None)))?;
    } else if let Some(g) = pin.generations.last() {
        eprintln!(
            "pinned {} as generation {} of '{}' (keeping the last {})",
            super::count(g.paths.len(), "path", "paths"),
            g.number,
            pin.name,
            pin.keep
        );
    }
    Ok(())
}

fn unpin(url: &str, name: &str, generation: Option<u64>) -> Result<(), Failure> {
    let cache = open(url)?;
    with_cache(&cache, cache::unpin(&cache, name, generation))?
        .with_context(|| format!("unpinning in '{url}'"))?;
    Ok(())
}

fn list_pins(url: &str, json: bool) -> Result<(), Failure> {
    let cache = open(url)?;
    let listed = with_cache(&cache, cache::pins_with_sizes(&cache))?
        .with_context(|| format!("reading the pins of '{url}'"))?;
    if listed.is_empty() && !json {
        eprintln!("no pins in '{url}'");
    }
    let mut out = super::stdout();
    if json {
        writeln!(out, "{}", cache::pins_json(&listed))?;
    } else {
        for (pin, sizes) in &listed {
            writeln!(out, "{} (keeps {}):", pin.name, pin.keep)?;
            for (g, s) in pin.generations.iter().zip(sizes) {
                let missing = if s.missing > 0 {
                    format!(", {} MISSING", s.missing)
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "  generation {}  {}  {}, {} ({} stored){missing}",
                    g.number,
                    super::utc(g.time),
                    super::count(s.paths, "path", "paths"),
                    super::human_bytes(s.nar_bytes),
                    super::human_bytes(s.file_bytes),
                )?;
                for p in &g.paths {
                    writeln!(out, "    {p}")?;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn gc(args: CacheGcArgs) -> Result<(), Failure> {
    let cache = open(&args.url)?;
    let opts = GcOptions {
        keep_newer_than: args.keep_newer_than,
        max_size: args.max_size,
        grace: args.grace,
        dry_run: args.dry_run,
        jobs: args.jobs.max(1),
    };
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    // Text lines are printed as files go (a gc of a big cache deletes
    // many); JSON needs them all at the end.
    let collected = Mutex::new(Vec::new());
    let printed = Mutex::new((
        std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
        None::<std::io::Error>,
    ));
    let on_deleted = |d: &cache::Deleted| {
        if args.json {
            collected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(d.clone());
            return;
        }
        let mut printed = printed.lock().unwrap_or_else(|e| e.into_inner());
        let what = d.path.as_deref().unwrap_or(&d.key);
        let line = format!("{verb} {}: {what} ({} bytes)\n", d.kind.name(), d.size);
        if printed.1.is_none() {
            if let Err(e) = printed.0.write_all(line.as_bytes()) {
                printed.1 = Some(e);
            }
        }
    };
    let report = with_cache(&cache, cache::gc(&cache, &opts, &on_deleted))?
        .with_context(|| format!("collecting garbage in '{}'", args.url))?;
    let (mut out, failed) = printed.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = failed {
        return Err(anyhow::Error::from(e).into());
    }
    if args.json {
        let deleted = collected.into_inner().unwrap_or_else(|e| e.into_inner());
        writeln!(out, "{}", report.to_json(&deleted))?;
    }
    out.flush()?;
    for p in &report.pinned_missing {
        eprintln!("nixferry: warning: pinned path '{p}' is not in the cache");
    }
    for u in &report.unparsable {
        eprintln!("nixferry: warning: left alone, does not parse: {u}");
    }
    for (k, why) in &report.failed {
        eprintln!("nixferry: could not delete '{k}': {why}");
    }
    eprintln!(
        "{verb} {} of {} and {}, {} freed; kept {} ({} pinned by {}), {}",
        report.deleted_paths,
        super::count(report.narinfos, "path", "paths"),
        super::count(report.deleted_files, "file", "files"),
        super::human_bytes(report.freed_bytes),
        super::count(report.kept, "path", "paths"),
        report.pinned,
        super::count(report.pins, "pin", "pins"),
        super::human_bytes(report.kept_bytes),
    );
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Negative)
    }
}

fn stats(url: &str, json: bool) -> Result<(), Failure> {
    let cache = open(url)?;
    let line = ProgressLine::new(json);
    let progress = |done, total| {
        if let Some(line) = &line {
            line.count("read", done, total);
        }
    };
    let s = with_cache(&cache, cache::stats_with_progress(&cache, &progress));
    if let Some(line) = &line {
        line.finish();
    }
    let s = s?.with_context(|| format!("reading '{url}'"))?;
    let mut out = super::stdout();
    if json {
        writeln!(out, "{}", s.to_json())?;
    } else {
        writeln!(out, "paths:             {}", s.paths)?;
        writeln!(out, "unreadable:        {}", s.unreadable)?;
        writeln!(out, "NAR bytes:         {}", s.nar_bytes)?;
        writeln!(out, "stored bytes:      {}", s.stored_bytes)?;
        writeln!(out, "nar/ bytes:        {}", s.nar_dir_bytes)?;
        writeln!(out, "compression ratio: {:.3}", s.compression_ratio())?;
        writeln!(out, "unsigned paths:    {}", s.unsigned)?;
        writeln!(out, "pins:              {}", s.pins)?;
    }
    out.flush()?;
    Ok(())
}

/// Opens a binary cache by URL.
fn open(url: &str) -> anyhow::Result<Cache> {
    Cache::open(url).with_context(|| format!("opening cache '{url}'"))
}

/// The keys `--trusted-key` and `--trusted-key-file` name, else Nix's
/// `trusted-public-keys`.
fn trusted_keys(keys: &[String], files: &[std::path::PathBuf]) -> anyhow::Result<TrustedKeys> {
    super::settings::trusted_keys(keys, files)
}

/// A progress line on stderr, redrawn at most a few times a second;
/// drawn only when stderr is a terminal and no JSON is asked for.
struct ProgressLine {
    last: Mutex<Option<Instant>>,
}

impl ProgressLine {
    /// A line, if one should be drawn: not for `json`, nor off a terminal.
    fn new(json: bool) -> Option<Self> {
        (!json && std::io::stderr().is_terminal()).then(|| Self {
            last: Mutex::new(None),
        })
    }

    /// Draws `text()` unless the line was drawn very recently and this is
    /// not the last update (`done`).
    fn show(&self, done: bool, text: impl FnOnce() -> String) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) && !done {
            return;
        }
        *last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{}", text());
        let _ = err.flush();
    }

    /// Shows `what done/total narinfos`.
    fn count(&self, what: &str, done: usize, total: usize) {
        self.show(done == total, || format!("{what} {done}/{total} narinfos"));
    }

    fn verify(&self, p: &VerifyProgress) {
        self.show(p.checked == p.total, || {
            format!(
                "checked {}/{} narinfos, {:.1} MiB of NAR files read, {} problems",
                p.checked,
                p.total,
                p.bytes_read as f64 / (1 << 20) as f64,
                p.problems
            )
        });
    }

    /// Ends the line, if one was drawn.
    fn finish(&self) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.take().is_some() {
            eprintln!();
        }
    }
}

fn verify(args: CacheVerifyArgs) -> Result<(), Failure> {
    let cache = open(&args.url)?;
    let paths = super::paths::resolve(cache.store_dir(), &args.paths)?;
    let upstreams = args
        .upstreams
        .iter()
        .map(|u| super::paths::open(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut opts = VerifyOptions {
        trusted_keys: trusted_keys(&args.trusted_keys, &args.trusted_key_files)?,
        paths,
        grace: args.grace,
        upstreams: upstreams.clone(),
        ..VerifyOptions::default()
    };
    if let Some(j) = args.jobs {
        opts.jobs = j.max(1);
    }
    let line = ProgressLine::new(args.json);
    let from = args.from.as_deref().map(super::paths::open).transpose()?;
    let fix = args.repair || args.delete_broken;
    let result = super::paths::runtime()?.block_on(async {
        let progress = |p: &VerifyProgress| {
            if let Some(line) = &line {
                line.verify(p);
            }
        };
        let result = async {
            let report = cache::verify(&cache, &opts, &progress).await?;
            if !fix || report.is_clean() {
                return Ok((report, None));
            }
            if let Some(line) = &line {
                line.finish();
            }
            let repair_opts = RepairOptions {
                from: from.clone(),
                delete_broken: args.delete_broken,
                copy: CopyOptions::default().with_trusted_keys(opts.trusted_keys.clone()),
            };
            let repaired = cache::repair(&cache, &report, &repair_opts).await?;
            // What is left.
            let report = cache::verify(&cache, &opts, &progress).await?;
            Ok::<_, nixferry::store::StoreError>((report, Some(repaired)))
        }
        .await;
        cache.store().close().await;
        for store in from.iter().chain(&upstreams) {
            store.close().await;
        }
        result
    });
    if let Some(line) = &line {
        line.finish();
    }
    let (report, repaired) = result.with_context(|| format!("verifying '{}'", args.url))?;
    let mut out = super::stdout();
    if args.json {
        let json = match &repaired {
            Some(r) => report.to_json_with_repair(r),
            None => report.to_json(),
        };
        writeln!(out, "{json}")?;
    } else {
        if let Some(r) = &repaired {
            for p in &r.repaired {
                writeln!(out, "repaired: {p}")?;
            }
            for p in &r.deleted {
                writeln!(out, "deleted: {p}")?;
            }
            for (p, why) in &r.unrepaired {
                writeln!(out, "not repaired: {p}: {why}")?;
            }
        }
        for p in &report.problems {
            let what = p.path.as_deref().unwrap_or(&p.key);
            writeln!(out, "{}: {what}: {}", p.kind.name(), p.message)?;
        }
    }
    out.flush()?;
    if !args.json {
        eprintln!(
            "{} narinfos checked, {} NAR files read ({} bytes), {} problems",
            report.narinfos,
            report.nar_files,
            report.bytes_read,
            report.problems.len()
        );
    }
    if report.is_clean() {
        Ok(())
    } else {
        Err(Failure::Negative)
    }
}
