//! Exit codes and error printing, in one place.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (for `narinfo verify`: every narinfo verified) |
//! | 1 | a negative answer: a signature did not verify |
//! | 2 | an error: bad input, bad arguments, I/O failure |

use std::process::ExitCode;

/// What a command ended with, when it did not simply succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A negative answer that is not an error (exit 1); already reported.
    Negative,
    /// An error (exit 2).
    Error(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Error(e.into())
    }
}

/// Prints the error chain as `nixferry: ...` and picks the exit code.
/// A closed stdout (`nixferry nar dump x | head`) is not an error.
pub(crate) fn report(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Negative) => ExitCode::from(1),
        Err(Failure::Error(e)) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(Failure::Error(e)) => {
            eprintln!("nixferry: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the
/// message already contains (thiserror messages often embed their source).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use nixferry::nar::NarError;
    let broken = |io: &std::io::Error| io.kind() == std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        // `NarError::Io` is transparent, so its io::Error is not in the chain.
        c.downcast_ref::<std::io::Error>().is_some_and(broken)
            || matches!(c.downcast_ref::<NarError>(), Some(NarError::Io(io)) if broken(io))
    })
}
