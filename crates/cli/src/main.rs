//! The `nixferry` command: parses arguments and dispatches to the library.

mod cli;
mod cmd;
mod exit;

use clap::error::ErrorKind;
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    match cli::Cli::try_parse() {
        Ok(args) => exit::report(cmd::run(args)),
        Err(e) => usage_error(&e),
    }
}

/// Prints what clap found wrong with the arguments in nixferry's own form,
/// `nixferry: <what>: <why>`, then the usage clap gives, and exits with 2;
/// help and version requests print as clap prints them.
fn usage_error(e: &clap::Error) -> std::process::ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or_default();
    let why = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("nixferry: invalid arguments: {why}");
    for line in lines {
        eprintln!("{line}");
    }
    std::process::ExitCode::from(2)
}
