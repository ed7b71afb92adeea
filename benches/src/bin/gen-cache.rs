//! Generates the synthetic binary cache `cache-scale.sh` works on: a valid,
//! signed `file://` cache of COUNT store paths, each a tiny NAR (one
//! regular file with its own contents), uncompressed.
//!
//!     gen-cache DIR COUNT SECRET_KEY_FILE [PATHS_FILE]
//!
//! The paths form a DAG in groups of 1,000, as the closures of separate
//! machines do: the first 10 paths are a shared base (each referring to
//! the one before), and every other path refers to one base path and to up
//! to 3 earlier paths of its group; every fourth refers to itself. The
//! closure of a group's last path is about that group and the base. Each
//! narinfo has `NarHash`, `NarSize`, `FileHash`, `FileSize`, `References`,
//! a `Deriver`, a `System` and a signature by the key given. The same
//! COUNT always gives the same paths.
//!
//! With PATHS_FILE, every store path is written there, one a line, in the
//! order made (the last line is the last group's last path). The work is
//! shared among the CPUs.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use nixferry::hash::{HashAlgo, NixHash};
use nixferry::nar::NarWriter;
use nixferry::narinfo::{CacheInfo, Compression, NarInfo, NarInfoFields};
use nixferry::signing::SecretKey;
use nixferry::store_path::{StoreDir, StorePath};

/// Paths of the shared base.
const BASE: u64 = 10;
/// Paths per group.
const GROUP: u64 = 1000;
/// References to earlier paths of the group, at most.
const GROUP_REFS: u64 = 3;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The store path of path `i` (`drv` for its deriver).
fn store_path(i: u64, drv: bool) -> StorePath {
    let seed = format!("nixferry gen-cache {i} {drv}");
    let d = NixHash::digest(HashAlgo::Sha256, seed.as_bytes());
    let digest: [u8; 20] = d.as_bytes()[..20].try_into().expect("20 of 32 bytes");
    let name = if drv {
        format!("synth-{}-{i}.drv", i / GROUP)
    } else {
        format!("synth-{}-{i}", i / GROUP)
    };
    StorePath::from_digest(&digest, &name).expect("a valid name")
}

/// xorshift64: the references are pseudo-random, the same each run.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The indices path `i` refers to (other than itself).
fn references(i: u64) -> Vec<u64> {
    if i < BASE {
        return i.checked_sub(1).into_iter().collect();
    }
    let mut refs = vec![i % BASE];
    let start = (i / GROUP * GROUP).max(BASE);
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    if i > start {
        for _ in 0..GROUP_REFS.min(i - start) {
            let j = start + next(&mut x) % (i - start);
            if !refs.contains(&j) {
                refs.push(j);
            }
        }
    }
    refs
}

/// Writes the NAR file and the narinfo of path `i`.
fn write_path(dir: &Path, key: &SecretKey, i: u64) -> Result<(), Error> {
    let path = store_path(i, false);
    let contents = format!("synthetic store path {i} ({})\n", path.as_str());
    let mut w = NarWriter::new(Vec::with_capacity(contents.len() + 128));
    w.regular_bytes(i.is_multiple_of(7), contents.as_bytes())?;
    let (nar, summary) = w.finish()?;
    let url = format!("nar/{}.nar", summary.nar_hash.to_nix32());
    std::fs::write(dir.join(&url), &nar)?;

    let mut refs: Vec<StorePath> = references(i)
        .into_iter()
        .map(|r| store_path(r, false))
        .collect();
    if i.is_multiple_of(4) {
        refs.push(path.clone());
    }
    let mut info = NarInfo::new(NarInfoFields {
        compression: Compression::None,
        file_hash: Some(summary.nar_hash),
        file_size: Some(summary.nar_size),
        references: refs,
        deriver: Some(store_path(i, true)),
        system: Some("x86_64-linux".to_owned()),
        ..NarInfoFields::new(path.clone(), url, summary.nar_hash, summary.nar_size)
    })?;
    info.sign(key);
    std::fs::write(
        dir.join(format!("{}.narinfo", path.hash_part())),
        info.render(),
    )?;
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, count, key_file, rest @ ..] = &args[..] else {
        return Err("usage: gen-cache DIR COUNT SECRET_KEY_FILE [PATHS_FILE]".into());
    };
    let dir = PathBuf::from(dir);
    let count: u64 = count.parse()?;
    let key = SecretKey::from_file(key_file)?;
    std::fs::create_dir_all(dir.join("nar"))?;
    let mut cache_info = CacheInfo::new(StoreDir::default());
    cache_info.want_mass_query = true;
    std::fs::write(dir.join("nix-cache-info"), cache_info.render())?;

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (dir, key) = (&dir, &key);
                s.spawn(move || -> Result<(), Error> {
                    let mut i = t;
                    while i < count {
                        write_path(dir, key, i)?;
                        i += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| Error::from("a worker panicked"))?)
    })?;

    if let Some(file) = rest.first() {
        let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
        for i in 0..count {
            writeln!(out, "{}", StoreDir::default().full(&store_path(i, false)))?;
        }
        out.flush()?;
    }
    Ok(())
}
