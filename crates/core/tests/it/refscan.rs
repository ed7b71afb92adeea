//! Tests: refscan.

use std::collections::BTreeSet;

use nixferry::narinfo::NarInfo;
use nixferry::refscan::RefScanner;
use nixferry::store_path::StorePath;

use crate::common::{read_vector, vector};

/// Scanning each uncompressed NAR of the cache Nix wrote finds exactly the
/// references Nix recorded in its narinfo, out of every path in the cache.
#[test]
fn scan_finds_the_references_nix_recorded() {
    let dir = vector("binary-cache/none-with-listings");
    let infos: Vec<NarInfo> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .map(|p| NarInfo::parse(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    assert_eq!(infos.len(), 3);
    let candidates: Vec<StorePath> = infos.iter().map(|i| i.store_path().clone()).collect();
    for info in &infos {
        let nar = read_vector(&format!("binary-cache/none-with-listings/{}", info.url()));
        let mut scan = RefScanner::new(&candidates);
        // Odd chunk sizes so matches straddle chunk boundaries.
        for chunk in nar.chunks(7) {
            scan.update(chunk);
        }
        let found: BTreeSet<StorePath> = scan.into_found().into_iter().collect();
        let want: BTreeSet<StorePath> = info.references().iter().cloned().collect();
        assert_eq!(found, want, "{}", info.store_path());
    }
}
