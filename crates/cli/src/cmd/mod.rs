//! One function per subcommand; each is a thin shell over the library.

mod add;
mod cache;
mod check;
mod config;
mod copy;
mod key;
mod nar;
mod narinfo;
mod paths;
mod push;
mod remote;
mod serve;
mod settings;
mod store_path;

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use anyhow::Context as _;
use nixferry::human_bytes;

use crate::cli::{Cli, Command};
use crate::exit::Failure;

/// Runs the parsed command.
pub(crate) fn run(cli: Cli) -> Result<(), Failure> {
    settings::set_options(
        cli.options
            .chunks_exact(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect(),
    );
    match cli.command {
        Command::Nar(c) => nar::run(c),
        Command::StorePath(c) => store_path::run(c),
        Command::Key(c) => key::run(c),
        Command::Narinfo(c) => narinfo::run(c),
        Command::Copy(a) => copy::run(a),
        Command::CopyClosure(a) => copy::copy_closure(a),
        Command::Check(a) => check::run(a),
        Command::Push(a) => push::run(a),
        Command::Closure(a) => paths::closure(a),
        Command::PathInfo(a) => paths::path_info(a),
        Command::Add(a) => add::run(a),
        Command::Config { json } => config::run(json),
        Command::Serve(a) => serve::run(a),
        Command::Remote { store, spool_dir } => remote::run(&store, spool_dir),
        Command::Cache(c) => cache::run(c),
    }
}

/// Opens a file for reading, or stdin for `-`. Unbuffered: the library's
/// readers buffer their input themselves.
fn open_input(path: &Path) -> anyhow::Result<Box<dyn Read>> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(io::stdin().lock()));
    }
    let f = File::open(path).with_context(|| format!("opening '{}'", path.display()))?;
    Ok(Box::new(f))
}

/// Reads a whole text file (or stdin for `-`).
fn read_text(path: &Path) -> anyhow::Result<String> {
    let mut s = String::new();
    open_input(path)?
        .read_to_string(&mut s)
        .with_context(|| format!("reading '{}'", path.display()))?;
    Ok(s)
}

/// Stdout, buffered.
fn stdout() -> BufWriter<io::StdoutLock<'static>> {
    BufWriter::with_capacity(256 * 1024, io::stdout().lock())
}

/// Writes `s` to stdout.
fn print(s: &str) -> anyhow::Result<()> {
    let mut out = stdout();
    out.write_all(s.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// A moment in UTC for people: `2026-12-02 10:09:00 UTC`.
fn utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // The civil date of a day count (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `n` and the noun, singular or plural: `1 path`, `3 paths`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::{count, human_bytes, utc};

    #[test]
    fn utc_dates() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |s| utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_796_206_140), "2026-12-02 10:09:00 UTC");
    }

    #[test]
    fn sizes_and_counts_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(280), "280 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12_900_000), "12.30 MiB");
        assert_eq!(human_bytes(1_717_986_918), "1.60 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(count(1, "path", "paths"), "1 path");
        assert_eq!(count(0, "path", "paths"), "0 paths");
    }
}
