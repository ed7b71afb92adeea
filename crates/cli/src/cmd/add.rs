//! `nixferry add PATH --to URL`

use std::path::Path;

use anyhow::Context as _;

use crate::cli::AddArgs;
use crate::exit::Failure;

pub(super) fn run(args: AddArgs) -> Result<(), Failure> {
    let name = match args.name {
        Some(n) => n,
        None => default_name(&args.path)?,
    };
    let keys = super::settings::secret_keys(&args.secret_key_files)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (store, info) = runtime.block_on(async {
        let store = super::settings::open_store(&args.to)?;
        let info = nixferry::store::add_to_store(&*store, &args.path, &name, &keys)
            .await
            .with_context(|| format!("adding '{}'", args.path.display()))?;
        anyhow::Ok((store, info))
    })?;
    if args.json {
        let dir = store.store_dir();
        let entry = nixferry::store::json::PathInfoEntry::from(info.clone());
        super::print(&format!(
            "{}\n",
            nixferry::store::json::path_info_json(dir, &[entry])
        ))?;
    } else {
        super::print(&format!("{}\n", store.store_dir().display(&info.path)))?;
    }
    let caps = store.capabilities();
    if info.signatures.is_empty() && caps.keeps_signatures && !caps.signs {
        eprintln!(
            "nixferry: note: the narinfo is unsigned (Nix accepts the path by its content \
             address; give --secret-key-file K to sign it)"
        );
    }
    Ok(())
}

/// The store path name `nix-store --add` uses: the base name of the path.
pub(super) fn default_name(path: &Path) -> anyhow::Result<String> {
    nixferry::store_path::added_name(path)
        .context("getting the current directory")?
        .with_context(|| format!("'{}' has no usable name; give --name", path.display()))
}
