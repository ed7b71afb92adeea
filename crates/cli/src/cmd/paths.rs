//! Helpers shared by the commands that take store paths, and the
//! `closure` and `path-info` commands.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use nixferry::store::json::{path_info_json, PathInfoEntry, PathInfoQuery};
use nixferry::store::Store;
use nixferry::store_path::{StoreDir, StorePath};

use crate::cli::{ClosureArgs, PathInfoArgs};
use crate::exit::Failure;

/// A tokio runtime for one command.
pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Turns arguments into store paths: a full store path (or a path inside
/// one, which names the store path), or a symlink into the store such as
/// `./result`.
pub(super) fn resolve(dir: &StoreDir, args: &[String]) -> anyhow::Result<Vec<StorePath>> {
    args.iter()
        .map(|arg| {
            if let Ok((p, _)) = dir.parse_prefix(arg) {
                return Ok(p);
            }
            let target = std::fs::canonicalize(arg)
                .with_context(|| format!("'{arg}' is not a store path"))?;
            let target = target.to_string_lossy();
            let (p, _) = dir
                .parse_prefix(&target)
                .with_context(|| format!("'{arg}' is not in the store '{dir}'"))?;
            Ok(p)
        })
        .collect()
}

/// Opens a store by URL.
pub(super) fn open(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    nixferry::store::open(url).with_context(|| format!("opening store '{url}'"))
}

pub(super) fn closure(args: ClosureArgs) -> Result<(), Failure> {
    let store = open(&args.store)?;
    let dir = store.store_dir().clone();
    let roots = resolve(&dir, &args.paths)?;
    let infos = runtime()?.block_on(async {
        nixferry::closure::compute(&*store, &roots)
            .await
            .map(|c| c.into_infos())
    })?;
    let mut out = super::stdout();
    if args.json {
        let entries: Vec<PathInfoEntry> = infos.iter().cloned().map(PathInfoEntry::from).collect();
        writeln!(out, "{}", path_info_json(&dir, &entries))?;
    } else {
        for info in &infos {
            writeln!(out, "{}", dir.display(&info.path))?;
        }
    }
    if args.size {
        let total: u64 = infos.iter().map(|i| i.nar_size).sum();
        // On stderr: stdout holds only the paths (or the JSON).
        eprintln!(
            "{}, {} ({total} bytes)",
            super::count(infos.len(), "path", "paths"),
            super::human_bytes(total)
        );
    }
    out.flush()?;
    Ok(())
}

pub(super) fn path_info(args: PathInfoArgs) -> Result<(), Failure> {
    let store = open(&args.store)?;
    let dir = store.store_dir().clone();
    let requested = resolve(&dir, &args.paths)?;
    let query = PathInfoQuery {
        recursive: args.recursive,
        closure_size: args.closure_size,
    };
    let entries = runtime()?.block_on(query.run(&*store, &requested))?;
    let mut out = super::stdout();
    if args.json {
        writeln!(out, "{}", path_info_json(&dir, &entries))?;
    }
    let mut all_valid = true;
    for entry in &entries {
        match entry {
            PathInfoEntry::Valid { info, closure } => {
                if !args.json {
                    let size = match closure {
                        Some(c) => format!("\t{}", c.nar_size),
                        None => String::new(),
                    };
                    writeln!(out, "{}\t{}{size}", dir.display(&info.path), info.nar_size)?;
                }
            }
            PathInfoEntry::Invalid(path) => {
                all_valid = false;
                if !args.json {
                    eprintln!(
                        "nixferry: path '{}' is not valid in '{}'",
                        dir.display(path),
                        args.store
                    );
                }
            }
        }
    }
    out.flush()?;
    if all_valid {
        Ok(())
    } else {
        Err(Failure::Negative)
    }
}
