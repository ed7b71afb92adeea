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

/// Opens a store by URL, with the defaults Nix's configuration gives
/// ([`super::settings::open_store`]).
pub(super) fn open(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    super::settings::open_store(url)
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
    let mut names = args.args.as_slice();
    let url = match (&args.store, names.first()) {
        (Some(url), _) => url.clone(),
        (None, Some(first)) if is_store_url(first) && names.len() > 1 => {
            names = &names[1..];
            first.clone()
        }
        _ => "local".to_owned(),
    };
    let store = open(&url)?;
    let dir = store.store_dir().clone();
    let requested = resolve(&dir, names)?;
    let query = PathInfoQuery {
        recursive: args.recursive,
        closure_size: args.closure_size,
    };
    let mut entries = runtime()?.block_on(query.run(&*store, &requested))?;
    let mut out = super::stdout();
    if args.json {
        writeln!(out, "{}", path_info_json(&dir, &entries))?;
    }
    // In Nix's order, each path padded to the longest when more follows.
    nix_order(&mut entries);
    let width = entries
        .iter()
        .map(|e| dir.full(e.path()).len())
        .max()
        .unwrap_or(0);
    let size = |n: u64| nix_size(n, args.human_readable);
    let mut all_valid = true;
    for entry in &entries {
        match entry {
            PathInfoEntry::Valid { info, closure } => {
                if args.json {
                    continue;
                }
                let path = dir.full(&info.path);
                let mut line = path.clone();
                if args.size || args.closure_size || args.sigs {
                    line.push_str(&" ".repeat(width - path.len()));
                }
                if args.size {
                    line.push_str(&size(info.nar_size));
                }
                if let (true, Some(c)) = (args.closure_size, closure) {
                    line.push_str(&size(c.nar_size));
                }
                if args.sigs {
                    let mut sigs = Vec::new();
                    if info.ultimate {
                        sigs.push("ultimate".to_owned());
                    }
                    if let Some(ca) = &info.ca {
                        sigs.push(format!("ca:{ca}"));
                    }
                    sigs.extend(info.signatures.iter().cloned());
                    line.push('\t');
                    line.push_str(&sigs.join(" "));
                }
                writeln!(out, "{line}")?;
            }
            PathInfoEntry::Invalid(path) => {
                all_valid = false;
                if !args.json {
                    eprintln!(
                        "nixferry: path '{}' is not valid in '{url}'",
                        dir.display(path),
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

/// Puts `entries` in the order `nix path-info` prints paths: references
/// before their referrers, from a depth-first walk over the paths in
/// sorted order, each path's references in sorted order (Nix's
/// `topoSortPaths`, reversed).
fn nix_order(entries: &mut [PathInfoEntry]) {
    use std::collections::{BTreeMap, BTreeSet};
    let refs: BTreeMap<StorePath, BTreeSet<StorePath>> = entries
        .iter()
        .map(|e| {
            let refs = match e {
                PathInfoEntry::Valid { info, .. } => info.references.iter().cloned().collect(),
                PathInfoEntry::Invalid(_) => BTreeSet::new(),
            };
            (e.path().clone(), refs)
        })
        .collect();
    let mut order: Vec<StorePath> = Vec::with_capacity(refs.len());
    let mut visited: BTreeSet<&StorePath> = BTreeSet::new();
    for root in refs.keys() {
        // Each frame: a path, and the references still to visit.
        let mut stack: Vec<(&StorePath, Vec<&StorePath>)> = Vec::new();
        let children = |p: &StorePath| -> Vec<&StorePath> {
            refs[p]
                .iter()
                .rev()
                .filter(|r| *r != p)
                .filter_map(|r| refs.get_key_value(r).map(|(k, _)| k))
                .collect()
        };
        if visited.insert(root) {
            stack.push((root, children(root)));
        }
        while let Some((path, pending)) = stack.last_mut() {
            match pending.pop() {
                Some(next) => {
                    if visited.insert(next) {
                        let frame = (next, children(next));
                        stack.push(frame);
                    }
                }
                None => {
                    order.push((*path).clone());
                    stack.pop();
                }
            }
        }
    }
    let rank: BTreeMap<&StorePath, usize> = order.iter().enumerate().map(|(i, p)| (p, i)).collect();
    entries.sort_by_key(|e| rank.get(e.path()).copied().unwrap_or(usize::MAX));
}

/// Whether `arg` names a store rather than a path: `local`, `daemon`,
/// `auto`, or a URL with a scheme.
fn is_store_url(arg: &str) -> bool {
    matches!(arg, "local" | "daemon" | "auto") || arg.contains("://") || arg.starts_with("local?")
}

/// A size as `nix path-info` prints it: a tab, then the bytes right-aligned
/// in 11 columns, or with `human`, `%6.1f` and a unit (` `, `K`, `M`…).
fn nix_size(n: u64, human: bool) -> String {
    if !human {
        return format!("\t{n:>11}");
    }
    const UNITS: [char; 9] = [' ', 'K', 'M', 'G', 'T', 'P', 'E', 'Z', 'Y'];
    let mut value = n as f64;
    let mut power = 0;
    while value > 1024.0 && power < UNITS.len() - 1 {
        value /= 1024.0;
        power += 1;
    }
    format!("\t{value:>6.1}{}", UNITS[power])
}
