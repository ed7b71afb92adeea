//! Tests: the copy engine (`copy`) over in-memory stores with injected
//! faults: fan-out reads each NAR once, a failing destination does not stop
//! the others, transient failures are retried, lasting ones are not, and
//! stores that need references first get them first.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nixferry::copy::{self, CancellationToken, CopyError, CopyOptions, Event, Summary};
use nixferry::hash::{sha256, NixHash};
use nixferry::signing::{SecretKey, TrustedKeys};
use nixferry::store::{Capabilities, NarStream, PathInfo, Store, StoreError};
use nixferry::store_path::{StoreDir, StorePath};
use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};

/// A store path named `name`.
fn p(name: &str) -> StorePath {
    let digest: [u8; 20] = sha256(name.as_bytes())[..20].try_into().unwrap();
    StorePath::from_digest(&digest, name).unwrap()
}

/// The "NAR" of a path in these tests: any bytes do, the engine only
/// checks their hash and size. Large enough to take several chunks.
fn nar_of(name: &str) -> Vec<u8> {
    name.bytes().cycle().take(700_000 + name.len()).collect()
}

fn info(name: &str, refs: &[&str]) -> PathInfo {
    let nar = nar_of(name);
    let mut i = PathInfo::new(p(name), NixHash::sha256(sha256(&nar)), nar.len() as u64);
    i.references = refs.iter().map(|r| p(r)).collect();
    i.references.sort();
    i
}

fn dir() -> &'static StoreDir {
    static DIR: std::sync::OnceLock<StoreDir> = std::sync::OnceLock::new();
    DIR.get_or_init(StoreDir::default)
}

fn connection_error(url: &str) -> StoreError {
    StoreError::Connection {
        store: url.to_owned(),
        message: "connection reset by peer".to_owned(),
    }
}

/// An in-memory store with faults to order.
#[derive(Debug, Default)]
struct Mem {
    url: String,
    ordered: bool,
    /// With `ordered`: takes a path while its references are still coming
    /// and holds it back until they are there.
    pending_refs: bool,
    paths: Mutex<BTreeMap<StorePath, (PathInfo, Vec<u8>)>>,
    /// The order paths were added in.
    added: Mutex<Vec<String>>,
    /// NARs handed out.
    nar_reads: AtomicUsize,
    /// This many adds fail (retryably) after reading part of the NAR.
    flaky_adds: AtomicUsize,
    /// This many NAR reads fail (retryably) half-way.
    flaky_reads: AtomicUsize,
    /// Every add fails, retryably: a host that went away.
    down: bool,
    /// Questions fail, retryably: a host that cannot be reached.
    unreachable: bool,
    /// Questions are never answered: a host that hangs.
    hangs: bool,
    /// Questions asked.
    queries: AtomicUsize,
    /// This many questions fail, retryably.
    flaky_queries: AtomicUsize,
    /// Serve this NAR instead of the real one: a tampered source.
    tampered: Option<Vec<u8>>,
    /// The store's `max_parallel_adds`.
    max_parallel: Option<usize>,
    /// Adding the path of this name panics: a bug in a store.
    panics_on: Option<&'static str>,
    /// Adds running now, and the most that ever ran at once.
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

impl Mem {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            ..Self::default()
        }
    }

    /// A source holding `graph` (name, references).
    fn with(url: &str, graph: &[(&str, &[&str])]) -> Self {
        let store = Self::new(url);
        for (name, refs) in graph {
            store
                .paths
                .lock()
                .unwrap()
                .insert(p(name), (info(name, refs), nar_of(name)));
        }
        store
    }

    fn names(&self) -> BTreeSet<String> {
        self.paths
            .lock()
            .unwrap()
            .keys()
            .map(|p| p.name().to_owned())
            .collect()
    }

    fn check_contents(&self) {
        for (path, (info, nar)) in self.paths.lock().unwrap().iter() {
            assert_eq!(nar, &nar_of(path.name()), "{}", self.url);
            assert_eq!(info.nar_size, nar.len() as u64);
        }
    }
}

/// A stream that fails with a connection error after `good` bytes.
struct Broken {
    data: io::Cursor<Vec<u8>>,
    good: u64,
}

impl AsyncRead for Broken {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.data.position() >= self.good {
            let e = connection_error("mem://source");
            return std::task::Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, e)));
        }
        std::pin::Pin::new(&mut self.data).poll_read(cx, buf)
    }
}

fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait::async_trait]
impl Store for Mem {
    fn url(&self) -> &str {
        &self.url
    }
    fn store_dir(&self) -> &StoreDir {
        dir()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            needs_references_first: self.ordered,
            accepts_pending_references: self.pending_refs,
            trusted_source: true,
            max_parallel_adds: self.max_parallel,
            ..Capabilities::default()
        }
    }
    async fn query_path_infos(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        if self.hangs {
            std::future::pending::<()>().await;
        }
        if self.unreachable || take_one(&self.flaky_queries) {
            return Err(connection_error(&self.url));
        }
        let have = self.paths.lock().unwrap();
        Ok(paths
            .iter()
            .filter_map(|p| have.get(p).map(|(i, _)| (p.clone(), i.clone())))
            .collect())
    }
    async fn nar(&self, info: &PathInfo) -> Result<NarStream, StoreError> {
        self.nar_reads.fetch_add(1, Ordering::SeqCst);
        let nar = match &self.tampered {
            Some(t) => t.clone(),
            None => self.paths.lock().unwrap()[&info.path].1.clone(),
        };
        if take_one(&self.flaky_reads) {
            let good = nar.len() as u64 / 2;
            return Ok(Box::pin(Broken {
                data: io::Cursor::new(nar),
                good,
            }));
        }
        Ok(Box::pin(io::Cursor::new(nar)))
    }
    async fn add_path(&self, info: &PathInfo, nar: NarStream) -> Result<(), StoreError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        // Long enough for other adds to overlap, if the engine allows them.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let result = self.add(info, nar).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

impl Mem {
    async fn add(&self, info: &PathInfo, mut nar: NarStream) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        assert!(
            self.panics_on != Some(info.path.name()),
            "{}: a bug adding {}",
            self.url,
            info.path.name()
        );
        if self.down || take_one(&self.flaky_adds) {
            let _ = nar.read(&mut [0; 1000]).await;
            return Err(connection_error(&self.url));
        }
        nar.read_to_end(&mut bytes)
            .await
            .map_err(|e| StoreError::from_stream(e, "reading", &self.url))?;
        if self.pending_refs {
            let missing = || {
                let have = self.paths.lock().unwrap();
                info.references
                    .iter()
                    .any(|r| *r != info.path && !have.contains_key(r))
            };
            for _ in 0..1000 {
                if !missing() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if self.ordered {
            let have = self.paths.lock().unwrap();
            for r in &info.references {
                assert!(
                    *r == info.path || have.contains_key(r),
                    "{}: {} before its reference {}",
                    self.url,
                    info.path,
                    r
                );
            }
        }
        self.added.lock().unwrap().push(info.path.name().to_owned());
        self.paths
            .lock()
            .unwrap()
            .insert(info.path.clone(), (info.clone(), bytes));
        Ok(())
    }
}

/// A chain with a diamond: top -> {left, right} -> base; left -> left.
const GRAPH: &[(&str, &[&str])] = &[
    ("base", &[]),
    ("left", &["base", "left"]),
    ("right", &["base"]),
    ("top", &["left", "right"]),
];

fn all_names() -> BTreeSet<String> {
    GRAPH.iter().map(|(n, _)| (*n).to_owned()).collect()
}

fn fast_retries() -> CopyOptions {
    CopyOptions {
        retries: 3,
        retry_delay: Duration::from_millis(1),
        ..CopyOptions::default()
    }
}

/// Copies `top`'s closure from `src` to `dsts`, returning the summaries
/// and the events.
async fn run(src: &Arc<Mem>, dsts: &[Arc<Mem>], opts: &CopyOptions) -> (Vec<Summary>, Vec<Event>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let summaries = copy::copy_to_many(
        Arc::clone(src) as Arc<dyn Store>,
        dsts.iter()
            .map(|d| Arc::clone(d) as Arc<dyn Store>)
            .collect(),
        &[p("top")],
        opts,
        Arc::new(move |e| sink.lock().unwrap().push(e)),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let events = std::mem::take(&mut *events.lock().unwrap());
    (summaries, events)
}

#[tokio::test]
async fn fan_out_reads_each_nar_once() {
    let src = Arc::new(Mem::with("mem://src", GRAPH));
    let dsts: Vec<Arc<Mem>> = (0..3)
        .map(|i| {
            let mut d = Mem::new(&format!("mem://d{i}"));
            d.ordered = i != 1;
            Arc::new(d)
        })
        .collect();
    // One destination has a path already.
    dsts[2]
        .paths
        .lock()
        .unwrap()
        .insert(p("base"), (info("base", &[]), nar_of("base")));
    let (summaries, events) = run(&src, &dsts, &CopyOptions::default()).await;
    for (d, s) in dsts.iter().zip(&summaries) {
        assert!(s.is_complete(), "{}: {s:?}", d.url);
        assert_eq!(s.url, d.url);
        assert_eq!(d.names(), all_names());
        d.check_contents();
    }
    assert_eq!(
        summaries
            .iter()
            .map(|s| (s.copied, s.skipped))
            .collect::<Vec<_>>(),
        [(4, 0), (4, 0), (3, 1)]
    );
    assert_eq!(src.nar_reads.load(Ordering::SeqCst), 4);
    assert!(events.contains(&Event::Planned {
        closure: 4,
        missing: 4,
        nar_bytes: GRAPH.iter().map(|(n, _)| nar_of(n).len() as u64).sum(),
    }));
    let copied = events
        .iter()
        .filter(|e| matches!(e, Event::Copied { .. }))
        .count();
    assert_eq!(copied, 11);
}

#[tokio::test]
async fn a_failing_destination_does_not_stop_the_others() {
    let src = Arc::new(Mem::with("mem://src", GRAPH));
    let good = Arc::new(Mem::new("mem://good"));
    let mut down = Mem::new("mem://down");
    down.ordered = true;
    down.down = true;
    let down = Arc::new(down);
    let mut unreachable = Mem::new("mem://unreachable");
    unreachable.unreachable = true;
    let unreachable = Arc::new(unreachable);
    let dsts = [
        Arc::clone(&good),
        Arc::clone(&down),
        Arc::clone(&unreachable),
    ];
    let (summaries, events) = run(&src, &dsts, &fast_retries()).await;

    assert!(summaries[0].is_complete());
    assert_eq!(good.names(), all_names());

    // The host that went away: its only path without references is
    // retried and fails; the paths above it are not attempted.
    let s = &summaries[1];
    assert_eq!((s.copied, s.failed.len()), (0, 4), "{s:?}");
    assert!(down.names().is_empty());
    let reasons: BTreeMap<String, String> = s
        .failed
        .iter()
        .map(|(p, e)| (p.name().to_owned(), e.to_string()))
        .collect();
    assert!(reasons["base"].contains("connection reset"), "{reasons:?}");
    assert!(
        reasons["top"].contains("because its reference"),
        "{reasons:?}"
    );
    let retries = events
        .iter()
        .filter(|e| matches!(e, Event::Retrying { dest: 1, .. }))
        .count();
    assert_eq!(retries, 3, "{events:?}");

    // The host that cannot be asked: retried, then given up on as a whole.
    let s = &summaries[2];
    assert!(s.error.as_ref().unwrap().is_retryable());
    assert_eq!((s.copied, s.failed.len()), (0, 0));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::DestinationFailed { dest: 2, .. })));

    // Through `copy_closure`, a destination that cannot be asked is an
    // error of the whole copy.
    let e = copy::copy_closure(
        Arc::clone(&src) as Arc<dyn Store>,
        unreachable as Arc<dyn Store>,
        &[p("top")],
        &fast_retries(),
        Arc::new(|_| {}),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("mem://unreachable"), "{e}");
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let src = Mem::with("mem://src", GRAPH);
    src.flaky_reads.store(2, Ordering::SeqCst);
    let src = Arc::new(src);
    let a = Mem::new("mem://a");
    a.flaky_adds.store(2, Ordering::SeqCst);
    let mut b = Mem::new("mem://b");
    b.ordered = true;
    b.flaky_adds.store(1, Ordering::SeqCst);
    let dsts = [Arc::new(a), Arc::new(b)];
    let (summaries, events) = run(&src, &dsts, &fast_retries()).await;
    for (d, s) in dsts.iter().zip(&summaries) {
        assert!(s.is_complete(), "{s:?}");
        assert_eq!(d.names(), all_names());
        d.check_contents();
    }
    assert!(events.iter().any(|e| matches!(e, Event::Retrying { .. })));

    // A source that fails to answer at first.
    let src = Mem::with("mem://src", GRAPH);
    src.flaky_queries.store(2, Ordering::SeqCst);
    let dst = Arc::new(Mem::new("mem://d"));
    let (summaries, _) = run(&Arc::new(src), std::slice::from_ref(&dst), &fast_retries()).await;
    assert!(summaries[0].is_complete());
    assert_eq!(dst.names(), all_names());

    // Without retries, the same faults fail paths.
    let src = Mem::with("mem://src", GRAPH);
    src.flaky_reads.store(1, Ordering::SeqCst);
    let dst = Arc::new(Mem::new("mem://c"));
    let opts = CopyOptions {
        retries: 0,
        ..fast_retries()
    };
    let (summaries, _) = run(&Arc::new(src), &[dst], &opts).await;
    assert_eq!(summaries[0].failed.len(), 1);
}

#[tokio::test]
async fn a_tampered_nar_fails_everywhere_without_retries() {
    let mut src = Mem::with("mem://src", &[("top", &[])]);
    src.tampered = Some(b"not the NAR the path info describes".to_vec());
    let src = Arc::new(src);
    let dsts = [Arc::new(Mem::new("mem://a")), Arc::new(Mem::new("mem://b"))];
    let (summaries, events) = run(&src, &dsts, &fast_retries()).await;
    for (d, s) in dsts.iter().zip(&summaries) {
        assert_eq!(s.failed.len(), 1);
        let e = &s.failed[0].1;
        assert!(
            matches!(e, CopyError::Store(_)) && e.to_string().contains("mismatch"),
            "{e}"
        );
        assert!(d.names().is_empty());
    }
    assert_eq!(src.nar_reads.load(Ordering::SeqCst), 1);
    assert!(!events.iter().any(|e| matches!(e, Event::Retrying { .. })));
}

#[tokio::test]
async fn a_panicking_task_is_a_failed_path() {
    let src = Arc::new(Mem::with("mem://src", GRAPH));
    // Alone, and beside a healthy destination (whose adds run in tasks of
    // their own).
    for others in [0, 1] {
        let mut buggy = Mem::new("mem://buggy");
        buggy.panics_on = Some("right");
        let mut dsts = vec![Arc::new(buggy)];
        dsts.extend((0..others).map(|i| Arc::new(Mem::new(&format!("mem://ok{i}")))));
        let (summaries, events) = run(&src, &dsts, &fast_retries()).await;
        let buggy = &summaries[0];
        assert!(!buggy.is_complete(), "{buggy:?}");
        let failed: Vec<_> = buggy.failed.iter().map(|(p, _)| p.name()).collect();
        assert_eq!(failed, ["right"], "{buggy:?}");
        let message = buggy.failed[0].1.to_string();
        assert!(
            message.contains("panicked") && message.contains("a bug adding right"),
            "{message}"
        );
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Failed { dest: 0, path, .. } if path.ends_with("-right")
        )));
        assert_eq!(buggy.copied, 3, "{buggy:?}");
        for healthy in &summaries[1..] {
            assert!(healthy.is_complete(), "{healthy:?}");
            assert_eq!(healthy.copied, 4);
        }
    }
}

/// Cancelling a copy ends its wait for a retry. The clock is paused: it
/// only moves when everything waits for a timer, straight to that timer,
/// so a wait that the cancellation did not end shows as time gone by.
#[tokio::test(start_paused = true)]
async fn cancelling_stops_the_copy() {
    let src = Arc::new(Mem::with("mem://src", GRAPH));
    let mut dst = Mem::new("mem://a");
    dst.down = true;
    let dst = Arc::new(dst);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let opts = CopyOptions {
        retries: 100,
        retry_delay: Duration::from_secs(10),
        ..CopyOptions::default()
    };
    let on_event = Arc::new(move |e| {
        if matches!(e, Event::Retrying { .. }) {
            stop.cancel();
        }
    });
    let start = tokio::time::Instant::now();
    let summary = copy::copy_closure(src, dst, &[p("top")], &opts, on_event, cancel)
        .await
        .unwrap();
    assert!(summary.cancelled);
    let waited = start.elapsed();
    assert!(waited < opts.retry_delay, "waited {waited:?} for the retry");
}

#[tokio::test]
async fn destinations_can_limit_paths_at_once() {
    let graph: Vec<(String, Vec<&str>)> = (0..12).map(|i| (format!("leaf{i}"), vec![])).collect();
    let mut all: Vec<(&str, &[&str])> = graph
        .iter()
        .map(|(n, r)| (n.as_str(), r.as_slice()))
        .collect();
    let leaves: Vec<&str> = graph.iter().map(|(n, _)| n.as_str()).collect();
    all.push(("top", &leaves));
    let src = Arc::new(Mem::with("mem://src", &all));
    for (limit, want) in [(None, 8), (Some(2), 2)] {
        let mut dst = Mem::new("mem://dst");
        dst.max_parallel = limit;
        let dst = Arc::new(dst);
        let opts = CopyOptions {
            jobs: 8,
            ..CopyOptions::default()
        };
        let (summaries, _) = run(&src, std::slice::from_ref(&dst), &opts).await;
        assert!(summaries[0].is_complete());
        let peak = dst.peak.load(Ordering::SeqCst);
        assert!(peak <= want && peak >= 2, "{limit:?}: {peak} at once");
    }
}

/// The key upstreams sign with in these tests.
fn upstream_key() -> SecretKey {
    SecretKey::from_seed("upstream-1", &[7; 32]).unwrap()
}

/// An upstream cache holding the paths `names` of [`GRAPH`], each signed
/// with `key` (unsigned for `None`).
fn upstream(url: &str, names: &[&str], key: Option<&SecretKey>) -> Mem {
    let store = Mem::new(url);
    for (name, refs) in GRAPH.iter().filter(|(n, _)| names.contains(n)) {
        let mut i = info(name, refs);
        if let Some(key) = key {
            let sig = key.sign(i.fingerprint(dir()).as_bytes()).to_string();
            i.signatures.push(sig);
        }
        store
            .paths
            .lock()
            .unwrap()
            .insert(p(name), (i, nar_of(name)));
    }
    store
}

/// Copy options trusting [`upstream_key`] only, with `upstreams`.
fn with_upstreams(upstreams: &[&Arc<Mem>]) -> CopyOptions {
    fast_retries()
        .with_trusted_keys(TrustedKeys::from_keys([upstream_key().public()]))
        .with_upstreams(upstreams.iter().map(|u| Arc::clone(u) as Arc<dyn Store>))
}

fn names_of(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn found_upstream(events: &[Event]) -> BTreeSet<(usize, String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::FoundUpstream {
                dest,
                path,
                upstream,
            } => Some((
                *dest,
                path.rsplit('-').next().unwrap().to_owned(),
                upstream.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn planned(events: &[Event]) -> (usize, usize, u64) {
    events
        .iter()
        .find_map(|e| match e {
            Event::Planned {
                closure,
                missing,
                nar_bytes,
            } => Some((*closure, *missing, *nar_bytes)),
            _ => None,
        })
        .expect("a Planned event")
}

fn nar_bytes(names: &[&str]) -> u64 {
    names.iter().map(|n| nar_of(n).len() as u64).sum()
}

#[tokio::test]
async fn a_cache_leaves_out_what_an_upstream_serves_signed() {
    let src = Arc::new(Mem::with("mem://src", GRAPH));
    let key = upstream_key();
    let up = Arc::new(upstream("mem://up", &["base", "right"], Some(&key)));
    let cache = Arc::new(Mem::new("mem://cache"));
    let (summaries, events) = run(&src, &[Arc::clone(&cache)], &with_upstreams(&[&up])).await;
    let s = &summaries[0];
    assert!(s.is_complete(), "{s:?}");
    assert_eq!((s.copied, s.skipped, s.upstream), (2, 0, 2), "{s:?}");
    // `left` and `top` refer to paths found upstream, and are pushed.
    assert_eq!(cache.names(), names_of(&["left", "top"]));
    assert_eq!(
        found_upstream(&events),
        [(0, "base", "mem://up"), (0, "right", "mem://up")]
            .map(|(d, p, u)| (d, p.to_owned(), u.to_owned()))
            .into()
    );
    // The plan counts what is copied.
    assert_eq!(planned(&events), (4, 2, nar_bytes(&["left", "top"])));
    assert_eq!(src.nar_reads.load(Ordering::SeqCst), 2);

    // A Nix store beside the cache needs the whole closure: it gets every
    // path, the cache still only those no upstream serves.
    let cache = Arc::new(Mem::new("mem://cache"));
    let mut nix = Mem::new("mem://nix");
    nix.ordered = true;
    let nix = Arc::new(nix);
    let dsts = [Arc::clone(&cache), Arc::clone(&nix)];
    let (summaries, events) = run(&src, &dsts, &with_upstreams(&[&up])).await;
    let counts: Vec<_> = summaries
        .iter()
        .map(|s| (s.copied, s.skipped, s.upstream))
        .collect();
    assert_eq!(counts, [(2, 0, 2), (4, 0, 0)]);
    assert_eq!(cache.names(), names_of(&["left", "top"]));
    assert_eq!(nix.names(), all_names());
    nix.check_contents();
    assert!(found_upstream(&events).iter().all(|(d, _, _)| *d == 0));
    assert_eq!(
        planned(&events),
        (4, 4, nar_bytes(&["base", "left", "right", "top"]))
    );

    // A Nix store alone: upstreams are not even asked.
    let queries = up.queries.load(Ordering::SeqCst);
    let mut nix = Mem::new("mem://nix");
    nix.ordered = true;
    let (summaries, events) = run(&src, &[Arc::new(nix)], &with_upstreams(&[&up])).await;
    assert_eq!(summaries[0].copied, 4);
    assert!(found_upstream(&events).is_empty());
    assert_eq!(up.queries.load(Ordering::SeqCst), queries);

    // What the destination has is skipped, not found upstream, and a
    // destination that has everything asks no upstream.
    let (summaries, events) = run(&src, &[Arc::clone(&cache)], &with_upstreams(&[&up])).await;
    let s = &summaries[0];
    assert_eq!((s.copied, s.skipped, s.upstream), (0, 2, 2), "{s:?}");
    assert_eq!(found_upstream(&events).len(), 2);
    let full = Arc::new(Mem::with("mem://full", GRAPH));
    let queries = up.queries.load(Ordering::SeqCst);
    let (summaries, _) = run(&src, &[full], &with_upstreams(&[&up])).await;
    assert_eq!((summaries[0].skipped, summaries[0].upstream), (4, 0));
    assert_eq!(up.queries.load(Ordering::SeqCst), queries);
}

#[tokio::test]
async fn only_a_trusted_signature_upstream_counts() {
    let src = Arc::new(Mem::with("mem://src", GRAPH));
    let other = SecretKey::from_seed("other-1", &[9; 32]).unwrap();
    let untrusted = Arc::new(upstream(
        "mem://untrusted",
        &["base", "right"],
        Some(&other),
    ));
    let unsigned = Arc::new(upstream("mem://unsigned", &["left", "top"], None));
    // Even a copy that does not check signatures only trusts an upstream's
    // path with a trusted signature: a client does.
    let opts = CopyOptions {
        check_sigs: false,
        ..with_upstreams(&[&untrusted, &unsigned])
    };
    let cache = Arc::new(Mem::new("mem://cache"));
    let (summaries, events) = run(&src, &[Arc::clone(&cache)], &opts).await;
    let s = &summaries[0];
    assert!(s.is_complete(), "{s:?}");
    assert_eq!((s.copied, s.upstream), (4, 0));
    assert_eq!(cache.names(), all_names());
    assert!(found_upstream(&events).is_empty());
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::UpstreamFailed { .. })));

    // With a second upstream that signs with the trusted key, the first
    // in the order given that does is named.
    let key = upstream_key();
    let good = Arc::new(upstream("mem://good", &["base"], Some(&key)));
    let also = Arc::new(upstream("mem://also", &["base", "top"], Some(&key)));
    let cache = Arc::new(Mem::new("mem://cache"));
    let opts = with_upstreams(&[&untrusted, &good, &also]);
    let (summaries, events) = run(&src, &[Arc::clone(&cache)], &opts).await;
    assert_eq!(summaries[0].upstream, 2);
    assert_eq!(cache.names(), names_of(&["left", "right"]));
    assert_eq!(
        found_upstream(&events),
        [(0, "base", "mem://good"), (0, "top", "mem://also")]
            .map(|(d, p, u)| (d, p.to_owned(), u.to_owned()))
            .into()
    );
}

#[tokio::test]
async fn a_failing_upstream_is_left_out_and_paths_pushed() {
    let src = Arc::new(Mem::with("mem://src", GRAPH));
    let key = upstream_key();
    let mut down = upstream("mem://down", &["base", "left", "right", "top"], Some(&key));
    down.unreachable = true;
    let down = Arc::new(down);
    let good = Arc::new(upstream("mem://good", &["base"], Some(&key)));
    let cache = Arc::new(Mem::new("mem://cache"));
    let (summaries, events) = run(
        &src,
        &[Arc::clone(&cache)],
        &with_upstreams(&[&down, &good]),
    )
    .await;
    let s = &summaries[0];
    assert!(s.is_complete(), "{s:?}");
    assert_eq!((s.copied, s.upstream), (3, 1), "{s:?}");
    assert_eq!(cache.names(), names_of(&["left", "right", "top"]));
    let failed: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::UpstreamFailed { upstream, error } => Some((upstream.as_str(), error.as_str())),
            _ => None,
        })
        .collect();
    assert!(
        matches!(failed[..], [("mem://down", e)] if e.contains("connection reset")),
        "{failed:?}"
    );
    // Asked once: an upstream is not retried.
    assert_eq!(down.queries.load(Ordering::SeqCst), 1);
}

/// An upstream that never answers costs one timeout. The clock is
/// paused, so the wait takes no time.
#[tokio::test(start_paused = true)]
async fn an_upstream_that_does_not_answer_is_left_out() {
    let src = Arc::new(Mem::with("mem://src", GRAPH));
    let key = upstream_key();
    let mut hung = upstream("mem://hung", &["base"], Some(&key));
    hung.hangs = true;
    let hung = Arc::new(hung);
    let cache = Arc::new(Mem::new("mem://cache"));
    let opts = CopyOptions {
        upstream_timeout: Duration::from_secs(5),
        ..with_upstreams(&[&hung])
    };
    let start = tokio::time::Instant::now();
    let (summaries, events) = run(&src, &[Arc::clone(&cache)], &opts).await;
    assert!(summaries[0].is_complete());
    assert_eq!(cache.names(), all_names());
    assert!(events.iter().any(|e| matches!(
        e,
        Event::UpstreamFailed { upstream, error } if upstream == "mem://hung" && error.contains("no answer in 5 s")
    )));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_destination_is_not_its_own_upstream() {
    let src = Arc::new(Mem::with("mem://src", GRAPH));
    let key = upstream_key();
    // The destination's own URL, as when it is among Nix's substituters.
    let itself = Arc::new(upstream("mem://cache", &["base"], Some(&key)));
    let cache = Arc::new(Mem::new("mem://cache"));
    let (summaries, events) = run(&src, &[Arc::clone(&cache)], &with_upstreams(&[&itself])).await;
    assert_eq!((summaries[0].copied, summaries[0].upstream), (4, 0));
    assert!(found_upstream(&events).is_empty());
    assert_eq!(itself.queries.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn many_paths_are_asked_in_batches() {
    // Small NARs: the test is about questions.
    let small = |name: &str, refs: &[StorePath]| {
        let nar = name.as_bytes().to_vec();
        let mut i = PathInfo::new(p(name), NixHash::sha256(sha256(&nar)), nar.len() as u64);
        i.references = refs.to_vec();
        i.references.sort();
        (i, nar)
    };
    let leaves: Vec<String> = (0..600).map(|i| format!("p{i}")).collect();
    let src = Mem::new("mem://src");
    let up = Mem::new("mem://up");
    let key = upstream_key();
    for (n, name) in leaves.iter().enumerate() {
        let (mut i, nar) = small(name, &[]);
        src.paths
            .lock()
            .unwrap()
            .insert(p(name), (i.clone(), nar.clone()));
        if n % 2 == 0 {
            i.signatures
                .push(key.sign(i.fingerprint(dir()).as_bytes()).to_string());
            up.paths.lock().unwrap().insert(p(name), (i, nar));
        }
    }
    let refs: Vec<StorePath> = leaves.iter().map(|n| p(n)).collect();
    src.paths
        .lock()
        .unwrap()
        .insert(p("top"), small("top", &refs));
    let (src, up) = (Arc::new(src), Arc::new(up));
    let cache = Arc::new(Mem::new("mem://cache"));
    let (summaries, _) = run(&src, &[Arc::clone(&cache)], &with_upstreams(&[&up])).await;
    let s = &summaries[0];
    assert!(s.is_complete(), "{s:?}");
    assert_eq!((s.copied, s.upstream), (301, 300));
    // 601 paths in batches of 256.
    assert_eq!(up.queries.load(Ordering::SeqCst), 3);
    assert_eq!(copy::UPSTREAM_BATCH, 256);
}

/// A destination that takes paths while their references are still coming
/// gets the whole graph at once; one that needs them there first gets it
/// level by level. Both end up with every path after its references.
#[tokio::test]
async fn references_in_flight_are_enough_where_the_store_allows() {
    for pending_refs in [false, true] {
        let src = Arc::new(Mem::with("mem://src", GRAPH));
        let mut dst = Mem::new("mem://dst");
        dst.ordered = true;
        dst.pending_refs = pending_refs;
        let dst = Arc::new(dst);
        let (summaries, _) = run(&src, std::slice::from_ref(&dst), &fast_retries()).await;
        assert!(summaries[0].is_complete(), "{:?}", summaries[0]);
        assert_eq!(dst.names(), all_names());
        let peak = dst.peak.load(Ordering::SeqCst);
        if pending_refs {
            assert_eq!(peak, GRAPH.len(), "all four paths at once");
        } else {
            assert!(peak <= 2, "{peak} at once, before their references");
        }
    }
}
