//! Where nixferry keeps what outlives a run (the S3 upload journal, the
//! push queue): `$XDG_STATE_HOME/nixferry`, else
//! `~/.local/state/nixferry`, as the XDG base directory specification
//! places state.

use std::path::PathBuf;

/// This user's nixferry state directory, if it has a state or home
/// directory; it need not exist yet.
pub(crate) fn dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let state = var("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("nixferry"))
}
