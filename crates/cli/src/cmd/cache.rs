//! `nixferry cache`: looking after a binary cache.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nixferry::cache::SignOptions;
use nixferry::cache::{
    self, Cache, RepairOptions, RepairReport, VerifyOptions, VerifyProgress, VerifyReport,
};
use nixferry::copy::CopyOptions;
use nixferry::signing::TrustedKeys;

use crate::cli::{CacheCommand, CacheSignArgs, CacheVerifyArgs};
use crate::exit::Failure;

pub(crate) fn run(c: CacheCommand) -> Result<(), Failure> {
    match c {
        CacheCommand::Verify(a) => verify(a),
        CacheCommand::Sign(a) => sign(a),
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
        require_trusted: super::copy::trusted_keys(&args.trusted_keys, &[])?,
    };
    let report = super::paths::runtime()?.block_on(async {
        let report = cache::sign(&cache, &opts).await;
        cache.store().close().await;
        report
    });
    let report = report.with_context(|| format!("signing '{}'", args.url))?;
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
    if report.untrusted.is_empty() && report.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Negative)
    }
}

fn stats(url: &str, json: bool) -> Result<(), Failure> {
    let cache = open(url)?;
    let stats = super::paths::runtime()?.block_on(async {
        let stats = cache::stats(&cache).await;
        cache.store().close().await;
        stats
    });
    let s = stats.with_context(|| format!("reading '{url}'"))?;
    let mut out = super::stdout();
    if json {
        let v = serde_json::json!({
            "paths": s.paths,
            "unreadable": s.unreadable,
            "narBytes": s.nar_bytes,
            "storedBytes": s.stored_bytes,
            "narDirBytes": s.nar_dir_bytes,
            "compressionRatio": s.compression_ratio(),
            "unsigned": s.unsigned,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "paths:             {}", s.paths)?;
        writeln!(out, "unreadable:        {}", s.unreadable)?;
        writeln!(out, "NAR bytes:         {}", s.nar_bytes)?;
        writeln!(out, "stored bytes:      {}", s.stored_bytes)?;
        writeln!(out, "nar/ bytes:        {}", s.nar_dir_bytes)?;
        writeln!(out, "compression ratio: {:.3}", s.compression_ratio())?;
        writeln!(out, "unsigned paths:    {}", s.unsigned)?;
    }
    out.flush()?;
    Ok(())
}

/// Opens a binary cache by URL.
fn open(url: &str) -> anyhow::Result<Cache> {
    Cache::open(url).with_context(|| format!("opening cache '{url}'"))
}

/// The keys `--trusted-key` and `--trusted-key-file` name, else Nix's
/// default key.
fn trusted_keys(keys: &[String], files: &[std::path::PathBuf]) -> anyhow::Result<TrustedKeys> {
    Ok(super::copy::trusted_keys(keys, files)?.unwrap_or_else(TrustedKeys::nix_default))
}

/// A progress line on stderr, redrawn at most a few times a second, when
/// stderr is a terminal.
struct ProgressLine {
    last: Mutex<Option<Instant>>,
}

impl ProgressLine {
    fn show(&self, p: &VerifyProgress) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let done = p.checked == p.total;
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) && !done {
            return;
        }
        *last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[Kchecked {}/{} narinfos, {:.1} MiB of NAR files read, {} problems",
            p.checked,
            p.total,
            p.bytes_read as f64 / (1 << 20) as f64,
            p.problems
        );
        let _ = err.flush();
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
    let mut opts = VerifyOptions {
        trusted_keys: trusted_keys(&args.trusted_keys, &args.trusted_key_files)?,
        paths,
        grace: args.grace,
        ..VerifyOptions::default()
    };
    if let Some(j) = args.jobs {
        opts.jobs = j.max(1);
    }
    let line = (!args.json && std::io::stderr().is_terminal()).then(|| ProgressLine {
        last: Mutex::new(None),
    });
    let from = args.from.as_deref().map(super::paths::open).transpose()?;
    let fix = args.repair || args.delete_broken;
    let result = super::paths::runtime()?.block_on(async {
        let progress = |p: &VerifyProgress| {
            if let Some(line) = &line {
                line.show(p);
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
        if let Some(from) = &from {
            from.close().await;
        }
        result
    });
    if let Some(line) = &line {
        line.finish();
    }
    let (report, repaired) = result.with_context(|| format!("verifying '{}'", args.url))?;
    let mut out = super::stdout();
    if args.json {
        let mut json = report_json(&report);
        if let Some(r) = &repaired {
            json["repair"] = repair_json(r);
        }
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

/// What a repair did, as JSON.
fn repair_json(r: &RepairReport) -> serde_json::Value {
    let unrepaired: Vec<_> = r
        .unrepaired
        .iter()
        .map(|(path, why)| serde_json::json!({"path": path, "reason": why}))
        .collect();
    serde_json::json!({
        "repaired": r.repaired,
        "deleted": r.deleted,
        "unrepaired": unrepaired,
    })
}

/// The report as JSON: counts, and one object per problem.
fn report_json(report: &VerifyReport) -> serde_json::Value {
    let problems: Vec<_> = report
        .problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "kind": p.kind.name(),
                "path": p.path,
                "key": p.key,
                "message": p.message,
            })
        })
        .collect();
    serde_json::json!({
        "narinfos": report.narinfos,
        "narFiles": report.nar_files,
        "bytesRead": report.bytes_read,
        "clean": report.is_clean(),
        "problems": problems,
    })
}
