//! `nixferry::cache`: the raw files of a `file://` cache, and
//! [`cache::verify`] on problems the command-line tests do not make.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use nixferry::cache::{self, Cache, ProblemKind, VerifyOptions};
use nixferry::signing::{SecretKey, TrustedKeys};
use nixferry::store::add_to_store;

/// A `file://` cache in `dir/c` with one path per name, each holding its
/// name; returns the cache and the paths, in the order of `names`.
async fn cache_with(dir: &Path, names: &[&str]) -> (Cache, Vec<String>) {
    let url = format!(
        "file://{}?compression=none&write-nar-listing=true",
        dir.join("c").display()
    );
    let store = nixferry::store::open(&url).unwrap();
    let key = SecretKey::generate("cache-test-1").unwrap();
    let mut paths = Vec::new();
    for name in names {
        let src = dir.join(name);
        fs::write(&src, name.repeat(100)).unwrap();
        let info = add_to_store(&*store, &src, name, std::slice::from_ref(&key))
            .await
            .unwrap();
        paths.push(store.store_dir().full(&info.path));
    }
    (Cache::open(&url).unwrap(), paths)
}

fn hash_part(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

fn narinfo_file(dir: &Path, path: &str) -> std::path::PathBuf {
    dir.join("c").join(format!("{}.narinfo", hash_part(path)))
}

fn nar_key(dir: &Path, path: &str) -> String {
    let text = fs::read_to_string(narinfo_file(dir, path)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned()
}

fn opts() -> VerifyOptions {
    VerifyOptions {
        trusted_keys: TrustedKeys::new(),
        grace: Duration::ZERO,
        jobs: 3,
        ..VerifyOptions::default()
    }
}

#[tokio::test]
async fn files_are_listed_read_written_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, paths) = cache_with(dir.path(), &["one", "two"]).await;
    let files = cache.files();
    assert!(files.can_list());
    let keys: BTreeSet<_> = files
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    for p in &paths {
        let h = hash_part(p);
        assert!(keys.contains(&format!("{h}.narinfo")), "{keys:?}");
        assert!(keys.contains(&format!("{h}.ls")), "{keys:?}");
        assert!(keys.contains(&nar_key(dir.path(), p)), "{keys:?}");
    }
    assert!(keys.contains("nix-cache-info"));
    let nars = files.list("nar/").await.unwrap();
    assert_eq!(nars.len(), 2);
    assert!(nars.iter().all(|e| e.key.starts_with("nar/") && e.size > 0));

    let key = format!("{}.narinfo", hash_part(&paths[0]));
    let text = files.read_small(&key, 4096).await.unwrap().unwrap();
    assert!(files.read_small(&key, 10).await.is_err());
    files.write("extra", b"x".to_vec()).await.unwrap();
    assert_eq!(
        files.read_small("extra", 10).await.unwrap().as_deref(),
        Some(&b"x"[..])
    );
    files.delete("extra").await.unwrap();
    files.delete("extra").await.unwrap();
    assert_eq!(files.read_small("extra", 10).await.unwrap(), None);
    assert!(files.open("nar/none.nar").await.unwrap().is_none());
    for bad in ["../x", "/etc/passwd", "nar/../../x", ""] {
        assert!(files.read_small(bad, 10).await.is_err(), "{bad}");
        assert!(files.delete(bad).await.is_err(), "{bad}");
    }
    assert_eq!(fs::read(narinfo_file(dir.path(), &paths[0])).unwrap(), text);
}

#[tokio::test]
async fn verify_names_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["clean", "garbled", "listing", "size", "corrupt", "copied"];
    let (cache, paths) = cache_with(dir.path(), &names).await;
    let d = dir.path();
    let c = d.join("c");
    // Content-addressed paths: trusted without signatures.
    let report = cache::verify(&cache, &opts(), &|_| {}).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!((report.narinfos, report.nar_files), (6, 6));

    let garbled_nar = nar_key(d, &paths[1]);
    fs::write(narinfo_file(d, &paths[1]), "StorePath: nonsense\n").unwrap();
    fs::write(c.join(format!("{}.ls", hash_part(&paths[2]))), "{}").unwrap();
    let edit = |path: &str, f: &dyn Fn(&str) -> Option<String>| {
        let file = narinfo_file(d, path);
        let text = fs::read_to_string(&file).unwrap();
        let new: String = text.lines().filter_map(f).map(|l| l + "\n").collect();
        fs::write(&file, new).unwrap();
    };
    edit(&paths[3], &|l| {
        Some(match l.strip_prefix("NarSize: ") {
            Some(n) => format!("NarSize: {}", n.parse::<u64>().unwrap() + 1),
            None => l.to_owned(),
        })
    });
    // Not a NAR, and no FileHash or FileSize to tell.
    fs::write(c.join(nar_key(d, &paths[4])), b"not a NAR at all").unwrap();
    edit(&paths[4], &|l| {
        (!l.starts_with("FileHash: ") && !l.starts_with("FileSize: ")).then(|| l.to_owned())
    });
    let other = "00000000000000000000000000000000.narinfo";
    fs::copy(narinfo_file(d, &paths[5]), c.join(other)).unwrap();

    let report = cache::verify(&cache, &opts(), &|_| {}).await.unwrap();
    let found: BTreeSet<_> = report
        .problems
        .iter()
        .map(|p| (p.kind, p.path.clone().unwrap_or_else(|| p.key.clone())))
        .collect();
    let expected: BTreeSet<_> = [
        (
            ProblemKind::Unparsable,
            format!("{}.narinfo", hash_part(&paths[1])),
        ),
        (ProblemKind::OrphanNar, garbled_nar),
        (ProblemKind::ListingMismatch, paths[2].clone()),
        (ProblemKind::NarMismatch, paths[3].clone()),
        (ProblemKind::NarCorrupt, paths[4].clone()),
        (ProblemKind::WrongName, paths[5].clone()),
    ]
    .into();
    assert_eq!(found, expected, "{:#?}", report.problems);

    // With the closure of given paths, only theirs.
    let store_dir = cache.store_dir().clone();
    let only = VerifyOptions {
        paths: vec![
            store_dir.parse(&paths[0]).unwrap(),
            store_dir.parse(&paths[3]).unwrap(),
        ],
        ..opts()
    };
    let report = cache::verify(&cache, &only, &|_| {}).await.unwrap();
    let kinds: Vec<_> = report.problems.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [ProblemKind::NarMismatch]);
    assert_eq!(report.narinfos, 2);
}

#[test]
fn only_binary_caches_open() {
    assert!(Cache::open("local").is_err());
    assert!(Cache::open("file:///nonexistent/cache/dir").is_err());
    assert!(!Path::new("/nonexistent/cache/dir").exists());
}
