//! Tests: closures (`closure`), over an in-memory store that records the
//! batches it is asked: diamonds, self-references, cycles, missing roots
//! and references, one question per level, sizes, and "what is missing".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use nixferry::closure::{self, Closure, ClosureError};
use nixferry::hash::{sha256, NixHash};
use nixferry::narinfo::Compression;
use nixferry::store::{Capabilities, NarFile, NarStream, PathInfo, Store, StoreError};
use nixferry::store_path::{StoreDir, StorePath};
use proptest::prelude::*;

/// A store path named `name`, with a hash part derived from the name.
fn p(name: &str) -> StorePath {
    let digest: [u8; 20] = sha256(name.as_bytes())[..20].try_into().unwrap();
    StorePath::from_digest(&digest, name).unwrap()
}

/// A path info for `name` referring to `refs`, with NAR size `size`.
fn info(name: &str, refs: &[&str], size: u64) -> PathInfo {
    let mut i = PathInfo::new(p(name), NixHash::sha256(sha256(name.as_bytes())), size);
    i.references = refs.iter().map(|r| p(r)).collect();
    i.references.sort();
    i
}

/// An in-memory store that records every batch it is asked.
#[derive(Debug, Default)]
struct Mock {
    infos: BTreeMap<StorePath, PathInfo>,
    info_batches: Mutex<Vec<Vec<StorePath>>>,
    valid_batches: Mutex<Vec<Vec<StorePath>>>,
}

impl Mock {
    /// A store of `(name, references)`, each path of NAR size 10.
    fn new(graph: &[(&str, &[&str])]) -> Self {
        Self::of(graph.iter().map(|(n, refs)| info(n, refs, 10)))
    }

    fn of(infos: impl IntoIterator<Item = PathInfo>) -> Self {
        Self {
            infos: infos.into_iter().map(|i| (i.path.clone(), i)).collect(),
            ..Self::default()
        }
    }

    /// The batches asked so far, as sorted names.
    fn batches(&self) -> Vec<Vec<String>> {
        self.info_batches
            .lock()
            .unwrap()
            .iter()
            .map(|b| {
                let mut names: Vec<String> = b.iter().map(|p| p.name().to_owned()).collect();
                names.sort();
                names
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Store for Mock {
    fn url(&self) -> &str {
        "mock://"
    }
    fn store_dir(&self) -> &StoreDir {
        static DIR: std::sync::OnceLock<StoreDir> = std::sync::OnceLock::new();
        DIR.get_or_init(StoreDir::default)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn query_path_infos(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        self.info_batches.lock().unwrap().push(paths.to_vec());
        Ok(paths
            .iter()
            .filter_map(|p| self.infos.get(p).map(|i| (p.clone(), i.clone())))
            .collect())
    }
    async fn query_valid_paths(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        self.valid_batches.lock().unwrap().push(paths.to_vec());
        Ok(paths
            .iter()
            .filter(|p| self.infos.contains_key(*p))
            .cloned()
            .collect())
    }
    async fn nar(&self, _info: &PathInfo) -> Result<NarStream, StoreError> {
        unimplemented!("closures never read NARs")
    }
    async fn add_path(&self, _info: &PathInfo, _nar: NarStream) -> Result<(), StoreError> {
        unimplemented!("closures never add paths")
    }
}

fn names(closure: &Closure) -> Vec<&str> {
    closure.paths().map(StorePath::name).collect()
}

/// Asserts that every path comes after its references (other than itself)
/// that are in the list.
fn assert_topological(infos: &[PathInfo]) {
    let in_list: BTreeSet<&StorePath> = infos.iter().map(|i| &i.path).collect();
    let mut seen = BTreeSet::new();
    for i in infos {
        for r in &i.references {
            if r != &i.path && in_list.contains(r) {
                assert!(seen.contains(r), "{} before its reference {r}", i.path);
            }
        }
        assert!(seen.insert(&i.path), "{} twice", i.path);
    }
}

#[tokio::test]
async fn diamond_is_walked_level_by_level() {
    // top -> left, right; left -> bottom; right -> bottom.
    let store = Mock::new(&[
        ("top", &["left", "right"]),
        ("left", &["bottom"]),
        ("right", &["bottom"]),
        ("bottom", &[]),
        ("unrelated", &["bottom"]),
    ]);
    let c = closure::compute(&store, &[p("top")]).await.unwrap();
    assert_eq!(names(&c), ["bottom", "left", "right", "top"]);
    assert_topological(c.infos());
    // One question per level; `bottom` is asked once although two paths
    // refer to it.
    assert_eq!(
        store.batches(),
        [vec!["top"], vec!["left", "right"], vec!["bottom"]]
    );
    assert_eq!((c.len(), c.nar_size()), (4, 40));
}

#[tokio::test]
async fn self_references_are_allowed() {
    let store = Mock::new(&[("me", &["me", "lib"]), ("lib", &["lib"])]);
    let c = closure::compute(&store, &[p("me")]).await.unwrap();
    assert_eq!(names(&c), ["lib", "me"]);
    assert_eq!(store.batches(), [vec!["me"], vec!["lib"]]);
    let mut both = vec![p("lib"), p("me")];
    both.sort();
    assert_eq!(c.infos()[1].references, both, "kept as they are");
}

#[tokio::test]
async fn cycles_are_errors_naming_their_paths() {
    // A cycle of three, reachable from a root through a path outside it.
    let store = Mock::new(&[
        ("root", &["x"]),
        ("x", &["y", "leaf"]),
        ("y", &["z"]),
        ("z", &["x"]),
        ("leaf", &[]),
    ]);
    let e = closure::compute(&store, &[p("root")]).await.unwrap_err();
    let ClosureError::Cycle { paths } = &e else {
        panic!("expected a cycle, got {e}")
    };
    let mut cycle: Vec<&str> = paths.iter().map(StorePath::name).collect();
    cycle.sort_unstable();
    assert_eq!(cycle, ["x", "y", "z"]);
    // Each path of the cycle refers to the next.
    for (i, path) in paths.iter().enumerate() {
        let next = &paths[(i + 1) % paths.len()];
        assert!(
            store.infos[path].references.contains(next),
            "{path} -> {next}"
        );
    }
    let msg = e.to_string();
    for name in ["-x", "-y", "-z"] {
        assert!(msg.contains(name), "{msg}");
    }
    assert!(!msg.contains("-root") && !msg.contains("-leaf"), "{msg}");

    // Two paths referring to each other, sorted directly.
    let e = closure::topo_sort([info("p", &["q"], 1), info("q", &["p", "q"], 1)]).unwrap_err();
    assert!(
        matches!(&e, ClosureError::Cycle { paths } if paths.len() == 2),
        "{e}"
    );
}

#[tokio::test]
async fn a_missing_root_is_not_found() {
    let store = Mock::new(&[("here", &[])]);
    let e = closure::compute(&store, &[p("here"), p("gone")])
        .await
        .unwrap_err();
    let ClosureError::Store(StoreError::NotFound { store: url, path }) = &e else {
        panic!("expected NotFound, got {e}")
    };
    assert_eq!(url, "mock://");
    assert_eq!(path, &format!("/nix/store/{}", p("gone")));
    assert!(
        e.to_string()
            .contains("-gone' is not valid in store 'mock://'"),
        "{e}"
    );
}

#[tokio::test]
async fn a_missing_reference_names_its_referrer() {
    let store = Mock::new(&[("root", &["mid"]), ("mid", &["hole"])]);
    let e = closure::compute(&store, &[p("root")]).await.unwrap_err();
    let ClosureError::MissingReference { path, referrer, .. } = &e else {
        panic!("expected MissingReference, got {e}")
    };
    assert!(path.ends_with("-hole") && referrer.ends_with("-mid"), "{e}");
    assert!(path.starts_with("/nix/store/"), "{path}");
}

#[tokio::test]
async fn wide_closures_take_one_question_per_level() {
    // A root referring to 50 paths, each referring to one of 5 leaves.
    let mids: Vec<String> = (0..50).map(|i| format!("mid{i:02}")).collect();
    let leaves: Vec<String> = (0..5).map(|i| format!("leaf{i}")).collect();
    let mut infos = vec![info(
        "root",
        &mids.iter().map(String::as_str).collect::<Vec<_>>(),
        1,
    )];
    for (i, m) in mids.iter().enumerate() {
        infos.push(info(m, &[leaves[i % 5].as_str()], 1));
    }
    for l in &leaves {
        infos.push(info(l, &[], 1));
    }
    let store = Mock::of(infos);
    let c = closure::compute(&store, &[p("root")]).await.unwrap();
    assert_eq!(c.len(), 56);
    assert_topological(c.infos());
    let sizes: Vec<usize> = store.batches().iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 50, 5]);
}

#[tokio::test]
async fn roots_inside_each_others_closures() {
    let store = Mock::new(&[("app", &["lib"]), ("lib", &["libc"]), ("libc", &[])]);
    let c = closure::compute(&store, &[p("libc"), p("app"), p("app")])
        .await
        .unwrap();
    assert_eq!(names(&c), ["libc", "lib", "app"]);
    // `libc` is known from the first question; `lib` is the only new path
    // of the second, and nothing is left for a third.
    assert_eq!(store.batches(), [vec!["app", "libc"], vec!["lib"]]);

    let none = closure::compute(&store, &[]).await.unwrap();
    assert!(none.is_empty() && none.nar_size() == 0);
    assert_eq!(store.batches().len(), 2, "no question for no roots");
}

#[test]
fn topo_sort_is_deterministic_and_sorts_parts_of_closures() {
    let infos = [
        info("d", &["b", "c"], 1),
        info("c", &["a"], 1),
        info("b", &["a", "outside"], 1),
        info("a", &[], 1),
        info("e", &[], 1),
    ];
    let sorted = closure::topo_sort(infos.clone()).unwrap();
    let order: Vec<&str> = sorted.iter().map(|i| i.path.name()).collect();
    // Among the paths that could come next, the smallest base name does.
    assert_eq!(sorted[0].path, p("a").min(p("e")));
    assert_eq!(order.len(), 5);
    assert_topological(&sorted);
    let mut reversed = infos.clone();
    reversed.reverse();
    assert_eq!(closure::topo_sort(reversed).unwrap(), sorted);
    // References outside the set (`outside`) are ignored.
    assert!(order.contains(&"b"));
    // A path given twice counts once.
    let twice = closure::topo_sort(infos.iter().chain(&infos).cloned()).unwrap();
    assert_eq!(twice, sorted);
    assert!(closure::topo_sort([]).unwrap().is_empty());
}

#[test]
fn sizes() {
    let with_file = |name: &str, nar: u64, file: Option<u64>| {
        let mut i = info(name, &[], nar);
        i.file = Some(NarFile {
            url: format!("nar/{name}.nar.xz"),
            compression: Compression::Xz,
            file_hash: None,
            file_size: file,
        });
        i
    };
    let all_known =
        Closure::from_infos([with_file("a", 100, Some(40)), with_file("b", 200, Some(60))])
            .unwrap();
    assert_eq!(
        (all_known.nar_size(), all_known.download_size()),
        (300, Some(100))
    );
    let one_unknown =
        Closure::from_infos([with_file("a", 100, Some(40)), with_file("b", 200, None)]).unwrap();
    assert_eq!(one_unknown.download_size(), None);
    let no_file = Closure::from_infos([with_file("a", 100, Some(40)), info("b", &[], 1)]).unwrap();
    assert_eq!((no_file.nar_size(), no_file.download_size()), (101, None));
    let empty = Closure::default();
    assert_eq!((empty.nar_size(), empty.download_size()), (0, Some(0)));
}

#[tokio::test]
async fn missing_asks_once_and_keeps_the_order() {
    let dest = Mock::new(&[("b", &[]), ("d", &[])]);
    let asked = [p("e"), p("b"), p("a"), p("e"), p("d")];
    let missing = closure::missing(&dest, &asked).await.unwrap();
    assert_eq!(missing, [p("e"), p("a")]);
    let batches = dest.valid_batches.lock().unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(
        batches[0],
        [p("e"), p("b"), p("a"), p("d")],
        "without duplicates"
    );
    assert!(dest.info_batches.lock().unwrap().is_empty());
}

proptest! {
    /// Random DAGs (a path refers only to paths with a smaller index, and
    /// maybe to itself), listed in any order: the sort is a permutation,
    /// topological, and independent of the input order; the closure of
    /// every path matches a plain graph search.
    #[test]
    fn random_dags(
        edges in proptest::collection::vec((0usize..30, 0usize..30), 0..80),
        shuffle in any::<u64>(),
    ) {
        let n = 30;
        let mut refs: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
        for (x, y) in edges {
            let (hi, lo) = if x >= y { (x, y) } else { (y, x) };
            refs[hi].insert(lo);
        }
        let name = |i: usize| format!("n{i}");
        let infos: Vec<PathInfo> = (0..n)
            .map(|i| {
                let r: Vec<String> = refs[i].iter().map(|&j| name(j)).collect();
                info(&name(i), &r.iter().map(String::as_str).collect::<Vec<_>>(), 1)
            })
            .collect();
        let sorted = closure::topo_sort(infos.clone()).unwrap();
        prop_assert_eq!(sorted.len(), n);
        assert_topological(&sorted);
        let mut shuffled = infos.clone();
        let len = shuffled.len();
        shuffled.rotate_left((shuffle % len as u64) as usize);
        shuffled.swap(0, len - 1);
        prop_assert_eq!(closure::topo_sort(shuffled).unwrap(), sorted);

        let store = Mock::of(infos);
        let root = n - 1;
        let mut expected = BTreeSet::from([root]);
        let mut todo = vec![root];
        while let Some(i) = todo.pop() {
            for &j in &refs[i] {
                if expected.insert(j) {
                    todo.push(j);
                }
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let c = rt.block_on(closure::compute(&store, &[p(&name(root))])).unwrap();
        let got: BTreeSet<StorePath> = c.paths().cloned().collect();
        let want: BTreeSet<StorePath> = expected.iter().map(|&i| p(&name(i))).collect();
        prop_assert_eq!(got, want);
    }
}
