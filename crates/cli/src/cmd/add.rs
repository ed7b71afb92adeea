//! `nixferry add PATH --to file:///dir`

use std::path::Path;

use anyhow::Context as _;
use nixferry::store::file::FileCache;
use nixferry::store_path::StoreDir;

use crate::cli::AddArgs;
use crate::exit::Failure;

pub(super) fn run(args: AddArgs) -> Result<(), Failure> {
    let name = match args.name {
        Some(n) => n,
        None => default_name(&args.path)?,
    };
    let keys = args
        .secret_key_files
        .iter()
        .map(|k| super::key::load_secret_key(k))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache = FileCache::open(&args.to, StoreDir::default())
        .with_context(|| format!("opening '{}'", args.to))?;
    let info = cache
        .add_path(&args.path, &name, &keys)
        .with_context(|| format!("adding '{}'", args.path.display()))?;
    super::print(&format!(
        "{}\n",
        info.store_dir().display(info.store_path())
    ))?;
    Ok(())
}

/// The store path name `nix-store --add` uses: the base name of the path.
pub(super) fn default_name(path: &Path) -> anyhow::Result<String> {
    let canonical =
        std::fs::canonicalize(path).with_context(|| format!("resolving '{}'", path.display()))?;
    // `nix-store --add` names the path after the last component of the
    // absolute path as given, without following a final symlink.
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let name = abs
        .file_name()
        .or(canonical.file_name())
        .and_then(|n| n.to_str())
        .with_context(|| format!("'{}' has no usable name; give --name", path.display()))?;
    Ok(name.to_owned())
}
