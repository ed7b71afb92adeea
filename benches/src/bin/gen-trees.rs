//! Generates the trees `compare-with-nix.sh` times: `DIR/large` (4 files of
//! 256 MiB) and `DIR/small` (20,000 small files in 400 directories).

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "target/bench-data".into());
    nixferry_benches::large_files(&dir.join("large"), 4, 256 << 20)?;
    nixferry_benches::small_files(&dir.join("small"), 400, 50)?;
    Ok(())
}
