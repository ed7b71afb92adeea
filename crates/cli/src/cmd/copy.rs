//! `nixferry copy --from URL --to URL PATHS...`

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use nixferry::copy::{self, CancellationToken, CopyOptions, Event};
use nixferry::signing::{PublicKey, TrustedKeys};
use serde_json::json;

use super::paths;
use crate::cli::CopyArgs;
use crate::exit::Failure;

/// The key Nix trusts by default (`trusted-public-keys`).
const CACHE_NIXOS_ORG: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

pub(super) fn run(args: CopyArgs) -> Result<(), Failure> {
    let src = paths::open(&args.from)?;
    let dst = paths::open(&args.to)?;
    let mut names = args.paths.clone();
    if args.stdin {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading paths from stdin")?;
            if !line.trim().is_empty() {
                names.push(line.trim().to_owned());
            }
        }
    }
    let roots = paths::resolve(src.store_dir(), &names)?;
    let opts = options(&args)?;

    let progress = Reporter::new(args.json);
    let on_event: Arc<dyn Fn(Event) + Send + Sync> = {
        let progress = Arc::clone(&progress);
        Arc::new(move |e| progress.event(e))
    };
    let cancel = CancellationToken::new();
    let rt = paths::runtime()?;
    let summary = rt.block_on(async {
        let stop = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        });
        copy::copy_closure(src, dst, &roots, &opts, on_event, cancel).await
    })?;
    progress.finish();

    let secs = summary.elapsed.as_secs_f64();
    let line = format!(
        "copied {} paths ({:.1} MiB), skipped {}, failed {} in {secs:.2} s",
        summary.copied,
        summary.nar_bytes as f64 / (1024.0 * 1024.0),
        summary.skipped,
        summary.failed.len(),
    );
    if args.json {
        let v = json!({
            "event": "summary", "copied": summary.copied, "skipped": summary.skipped,
            "failed": summary.failed.len(), "narBytes": summary.nar_bytes,
            "seconds": secs, "cancelled": summary.cancelled,
        });
        println!("{v}");
    } else {
        for (path, e) in &summary.failed {
            eprintln!("nixferry: {}: {e}", path);
        }
        eprintln!("{line}");
    }
    if summary.cancelled {
        return Err(anyhow::anyhow!("interrupted; run the same copy again to finish it").into());
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Negative)
    }
}

fn options(args: &CopyArgs) -> anyhow::Result<CopyOptions> {
    let mut trusted = TrustedKeys::new();
    let keys = if args.trusted_keys.is_empty() {
        vec![CACHE_NIXOS_ORG.to_owned()]
    } else {
        args.trusted_keys.clone()
    };
    for k in &keys {
        trusted.add(PublicKey::parse(k).with_context(|| format!("trusted key '{k}'"))?);
    }
    let secret_keys = args
        .secret_key_files
        .iter()
        .map(|f| super::key::load_secret_key(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Like Nix, the public halves of our own signing keys are trusted.
    for k in &secret_keys {
        trusted.add(k.public());
    }
    let mut opts = CopyOptions {
        check_sigs: !args.no_check_sigs,
        trusted_keys: trusted,
        secret_keys,
        ..CopyOptions::default()
    };
    if let Some(j) = args.jobs {
        opts.jobs = j.max(1);
    }
    Ok(opts)
}

/// Shows events: JSON Lines on stdout, or a progress bar on a terminal.
struct Reporter {
    json: bool,
    bar: Option<ProgressBar>,
    counts: Mutex<(usize, usize)>,
}

impl Reporter {
    fn new(json: bool) -> Arc<Self> {
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
            bar,
            counts: Mutex::new((0, 0)),
        })
    }

    fn event(&self, e: Event) {
        if self.json {
            self.print_json(&e);
        }
        let Some(bar) = &self.bar else {
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
            Event::Copied { .. } | Event::Failed { .. } => counts.0 += 1,
            _ => {}
        }
        bar.set_message(format!("{}/{} paths", counts.0, counts.1));
    }

    fn print_json(&self, e: &Event) {
        let v = match e {
            Event::Planned {
                closure,
                missing,
                nar_bytes,
            } => {
                json!({"event": "planned", "closure": closure, "missing": missing, "narBytes": nar_bytes})
            }
            Event::Skipped { path } => json!({"event": "skipped", "path": path}),
            Event::Started { path, nar_size } => {
                json!({"event": "started", "path": path, "narSize": nar_size})
            }
            // Byte counts are too chatty for JSON; "copied" carries sizes.
            Event::Bytes { .. } => return,
            Event::Copied {
                path,
                nar_size,
                passthrough,
            } => {
                json!({"event": "copied", "path": path, "narSize": nar_size, "passthrough": passthrough})
            }
            Event::Failed { path, error } => {
                json!({"event": "failed", "path": path, "error": error})
            }
            _ => return,
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
