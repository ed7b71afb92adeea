//! `nixferry check --to URL... PATHS...` and `nixferry copy --preflight`:
//! checks every destination before a copy, with
//! [`nixferry::preflight::check`].

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use nixferry::preflight::{self, Options, Report, Status};

use super::{paths, settings};
use crate::cli::CheckArgs;
use crate::exit::Failure;

pub(super) fn run(args: CheckArgs) -> Result<(), Failure> {
    let opts = Options {
        substitute: args.substitute_on_destination,
        secret_keys: settings::secret_keys(&args.secret_key_files)?,
        timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let reports = check(&args.from, &args.to, &args.paths, &opts)?;
    let mut out = super::stdout();
    for r in &reports {
        if args.json {
            writeln!(out, "{}", r.to_json())?;
        } else {
            write!(out, "{}", table(r))?;
        }
    }
    out.flush()?;
    if reports.iter().all(Report::ok) {
        Ok(())
    } else {
        Err(Failure::Negative)
    }
}

/// Checks the copy of `names` from `from` to each of `to`; the reports
/// name the destinations as given.
///
/// # Errors
/// A URL that does not parse, a source that cannot be opened, paths that
/// are not store paths, a closure that cannot be computed.
pub(super) fn check(
    from: &str,
    to: &[String],
    names: &[String],
    opts: &Options,
) -> anyhow::Result<Vec<Report>> {
    let src = paths::open(from)?;
    let roots = paths::resolve(src.store_dir(), names)?;
    let urls = to
        .iter()
        .map(|u| settings::store_url(u).with_context(|| format!("store URL '{u}'")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut reports = paths::runtime()?
        .block_on(preflight::check(&*src, &roots, &urls, opts))
        .context("computing the closure to copy")?;
    for (r, url) in reports.iter_mut().zip(to) {
        r.url.clone_from(url);
    }
    Ok(reports)
}

/// A destination's report for people: a heading with the verdict, then a
/// line per check.
pub(super) fn table(r: &Report) -> String {
    let verdict = match r.status() {
        Status::Ok => "ok",
        Status::Warn => "ok, with warnings",
        Status::Fail => "FAIL",
    };
    let mut s = format!("{}: {verdict}\n", r.url);
    for c in &r.checks {
        let status = match c.status {
            Status::Fail => "FAIL",
            other => other.name(),
        };
        let message = c.message.replace('\n', "\n                    ");
        s.push_str(&format!("  {:<12} {status:<5} {message}\n", c.name));
    }
    s
}
