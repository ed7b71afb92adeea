//! Benchmarks for nixferry live in `benches/benches`; this crate holds the
//! helpers that generate their input data, shared with the side-by-side
//! comparison against Nix (`compare-with-nix.sh`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A deterministic pseudo-random byte stream (xorshift), so the data does
/// not compress to nothing and every run sees the same bytes.
pub fn fill_pseudo_random(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Writes `count` files of `size` bytes each into `dir` (created).
///
/// # Errors
/// Any I/O error.
pub fn large_files(dir: &Path, count: usize, size: usize) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..count {
        let mut f = io::BufWriter::new(fs::File::create(dir.join(format!("blob-{i}")))?);
        let mut left = size;
        let mut seed = i as u64 + 1;
        while left > 0 {
            let n = left.min(buf.len());
            fill_pseudo_random(&mut buf[..n], seed);
            f.write_all(&buf[..n])?;
            left -= n;
            seed += 1;
        }
    }
    Ok(())
}

/// Writes a tree of `dirs` directories with `files_per_dir` small files
/// each (sizes 0 to 4 KiB, every fifth executable, a symlink per directory),
/// like a typical package's `share/` or `lib/` tree.
///
/// # Errors
/// Any I/O error.
pub fn small_files(root: &Path, dirs: usize, files_per_dir: usize) -> io::Result<()> {
    let mut buf = vec![0u8; 4096];
    for d in 0..dirs {
        let dir = root.join(format!("d{:03}/sub{}", d, d % 7));
        fs::create_dir_all(&dir)?;
        for f in 0..files_per_dir {
            let size = (d * 131 + f * 17) % 4096;
            fill_pseudo_random(&mut buf[..size], (d * 1000 + f) as u64);
            let path = dir.join(format!("file-{f}.txt"));
            fs::write(&path, &buf[..size])?;
            if f % 5 == 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
            }
        }
        std::os::unix::fs::symlink("file-0.txt", dir.join("link"))?;
    }
    Ok(())
}
