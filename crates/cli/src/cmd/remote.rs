//! `nixferry remote [--store STORE]`: the far end of an `ssh://` copy.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use nixferry::store::local::LocalStore;
use nixferry::store::serve::ferry::{serve_remote, RemoteOptions};
use nixferry::store::StoreUrl;

use crate::exit::Failure;

pub(super) fn run(store: &str, spool_dir: Option<PathBuf>) -> Result<(), Failure> {
    let url = StoreUrl::parse(store).with_context(|| format!("opening the store '{store}'"))?;
    let store = LocalStore::open(&url).with_context(|| format!("opening the store '{store}'"))?;
    let mut options = RemoteOptions::new();
    if let Some(dir) = spool_dir {
        options.spool_dir = dir;
    }
    let runtime = super::paths::runtime()?;
    runtime
        .block_on(serve_remote(
            tokio::io::stdin(),
            tokio::io::stdout(),
            Arc::new(store),
            options,
        ))
        .context("nixferry remote")?;
    Ok(())
}
