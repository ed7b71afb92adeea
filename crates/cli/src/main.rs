//! The `nixferry` command: parses arguments and dispatches to the library.

mod cli;
mod cmd;
mod exit;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    exit::report(cmd::run(args))
}
