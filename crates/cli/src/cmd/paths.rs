//! Helpers shared by the commands that take store paths, and the
//! `closure` and `path-info` commands.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use nixferry::store::{PathInfo, Store};
use nixferry::store_path::{StoreDir, StorePath};
use serde_json::{json, Map, Value};

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

/// A path info as `nix path-info --json` prints it (docs/formats.md §3.5), fields in
/// Nix's order; `closure` adds `closureSize` (and `closureDownloadSize` for
/// binary caches).
pub(super) fn info_json(dir: &StoreDir, info: &PathInfo, closure: Option<&[PathInfo]>) -> Value {
    let mut m = Map::new();
    m.insert("path".into(), json!(dir.full(&info.path)));
    m.insert("narHash".into(), json!(info.nar_hash.to_sri()));
    m.insert("narSize".into(), json!(info.nar_size));
    let refs: Vec<String> = info.references.iter().map(|r| dir.full(r)).collect();
    m.insert("references".into(), json!(refs));
    if let Some(ca) = &info.ca {
        m.insert("ca".into(), json!(ca.to_string()));
    }
    if let Some(c) = closure {
        m.insert(
            "closureSize".into(),
            json!(c.iter().map(|i| i.nar_size).sum::<u64>()),
        );
    }
    if let Some(d) = &info.deriver {
        m.insert("deriver".into(), json!(dir.full(d)));
    }
    if info.registration_time != 0 {
        m.insert("registrationTime".into(), json!(info.registration_time));
    }
    if info.ultimate {
        m.insert("ultimate".into(), json!(true));
    }
    if !info.signatures.is_empty() {
        m.insert("signatures".into(), json!(info.signatures));
    }
    if let Some(f) = &info.file {
        m.insert("url".into(), json!(f.url));
        if let Some(h) = &f.file_hash {
            m.insert("downloadHash".into(), json!(h.to_sri()));
        }
        if let Some(s) = f.file_size {
            m.insert("downloadSize".into(), json!(s));
        }
        if let Some(c) = closure {
            let sizes: Option<u64> = c
                .iter()
                .map(|i| i.file.as_ref().and_then(|f| f.file_size))
                .sum();
            if let Some(total) = sizes {
                m.insert("closureDownloadSize".into(), json!(total));
            }
        }
    }
    Value::Object(m)
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
        let list: Vec<Value> = infos.iter().map(|i| info_json(&dir, i, None)).collect();
        writeln!(out, "{}", Value::Array(list))?;
    } else {
        for info in &infos {
            writeln!(out, "{}", dir.display(&info.path))?;
        }
    }
    if args.size {
        let total: u64 = infos.iter().map(|i| i.nar_size).sum();
        let msg = format!("{} paths, {total} bytes", infos.len());
        if args.json {
            eprintln!("{msg}");
        } else {
            writeln!(out, "{msg}")?;
        }
    }
    out.flush()?;
    Ok(())
}

pub(super) fn path_info(args: PathInfoArgs) -> Result<(), Failure> {
    let store = open(&args.store)?;
    let dir = store.store_dir().clone();
    let requested = resolve(&dir, &args.paths)?;
    let rt = runtime()?;
    let infos: Vec<Option<PathInfo>> = if args.recursive {
        rt.block_on(nixferry::closure::compute(&*store, &requested))?
            .into_infos()
            .into_iter()
            .map(Some)
            .collect()
    } else {
        let mut found = rt.block_on(store.query_path_infos(&requested))?;
        requested.iter().map(|p| found.remove(p)).collect()
    };
    let mut values = Vec::new();
    let mut out = super::stdout();
    let mut all_valid = true;
    for (i, info) in infos.iter().enumerate() {
        let Some(info) = info else {
            all_valid = false;
            let path = dir.full(&requested[i]);
            values.push(json!({"path": path, "valid": false}));
            if !args.json {
                eprintln!("nixferry: path '{path}' is not valid in '{}'", args.store);
            }
            continue;
        };
        let closure = if args.closure_size {
            Some(
                rt.block_on(nixferry::closure::compute(
                    &*store,
                    std::slice::from_ref(&info.path),
                ))?
                .into_infos(),
            )
        } else {
            None
        };
        if args.json {
            values.push(info_json(&dir, info, closure.as_deref()));
        } else {
            let size = match &closure {
                Some(c) => format!("\t{}", c.iter().map(|i| i.nar_size).sum::<u64>()),
                None => String::new(),
            };
            writeln!(out, "{}\t{}{size}", dir.display(&info.path), info.nar_size)?;
        }
    }
    if args.json {
        writeln!(out, "{}", Value::Array(values))?;
    }
    out.flush()?;
    if all_valid {
        Ok(())
    } else {
        Err(Failure::Negative)
    }
}
