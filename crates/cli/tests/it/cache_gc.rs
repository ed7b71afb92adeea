//! `nixferry cache pin` and `cache gc`: what a gc keeps and deletes, in
//! caches Nix wrote and in the S3 server; Nix copying pinned closures
//! back out; a gc racing copies, and gcs killed half-way.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::cache::{hash_part, nix_cache, verify};
use crate::common::{
    add_signed, assert_success, build_closure, build_input_addressed, generate_key, have_nix, nix,
    nix_closure_infos, nixferry, run, stderr,
};
use crate::s3;

/// Sets the modification time of every file under `dir` to `ago` before
/// now, as if the cache had been written then.
fn age(dir: &Path, ago: Duration) {
    let when = SystemTime::now() - ago;
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            age(&path, ago);
        } else {
            fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
    }
}

const DAY: Duration = Duration::from_secs(86_400);

/// The store paths of the closure of `top` (in the local store).
fn closure(top: &str) -> BTreeSet<String> {
    nix_closure_infos(None, top)
        .into_iter()
        .map(|i| i.0)
        .collect()
}

/// Runs `cache gc --json` with `args`; the report, after checking that it
/// succeeded.
fn gc(cmd: &mut Command, args: &[&str]) -> serde_json::Value {
    let out = cmd
        .args(["cache", "gc", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The store paths a gc report says were deleted (as paths).
fn deleted_paths(report: &serde_json::Value) -> BTreeSet<String> {
    report["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["path"].as_str().map(str::to_owned))
        .collect()
}

/// The keys of the files a gc report says were deleted, of one kind.
fn deleted_keys(report: &serde_json::Value, kind: &str) -> BTreeSet<String> {
    report["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| d["key"].as_str().unwrap().to_owned())
        .collect()
}

/// The narinfos of the cache in `dir`, as hash parts.
fn narinfos(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".narinfo").map(str::to_owned)
        })
        .collect()
}

fn hashes<'a>(paths: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    paths.into_iter().map(|p| hash_part(p).to_owned()).collect()
}

/// A cache Nix wrote, two days old: the pinned closures stay, what no
/// pin keeps goes (narinfo, NAR file and listing), generations beyond a
/// pin's count stop counting, recent paths stay as asked; Nix copies the
/// pinned closures out of the cache afterwards and finds collected paths
/// gone.
#[test]
fn gc_keeps_what_pins_keep_and_nix_copies_it_out() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "gc-nix-1");
    let pk = pk.trim();
    let web = build_closure("gc-web");
    let db = build_closure("gc-db");
    let stray = build_input_addressed("gc-stray");
    let c = tmp.path().join("c");
    nix_cache(&c, &sk, &[&web, &db, &stray]);
    age(&c, 2 * DAY);
    let url = format!("file://{}", c.display());
    let (web_closure, db_closure) = (closure(&web), closure(&db));
    assert_eq!((web_closure.len(), db_closure.len()), (3, 3));

    // Without pins, a gc refuses to delete everything.
    let out = nixferry().args(["cache", "gc", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no pins"), "{}", stderr(&out));

    // A path the cache lacks cannot be pinned.
    let absent = build_input_addressed("gc-absent");
    let out = nixferry()
        .args(["cache", "pin", &url, "web", &absent])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not in the cache"),
        "{}",
        stderr(&out)
    );

    run(nixferry().args(["cache", "pin", &url, "web", &web]));
    let out = run(nixferry().args(["cache", "pin", &url, "db", &db, "--keep", "1", "--json"]));
    let pin: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&pin["name"], &pin["keep"]), (&"db".into(), &1.into()));
    assert_eq!(pin["generations"][0]["paths"][0], db.as_str());
    let out = run(nixferry().args(["cache", "pins", "--json", &url]));
    let pins: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pins[0]["name"], "db");
    assert_eq!(pins[1]["name"], "web");
    assert_eq!(pins[1]["keep"], 3);
    assert_eq!(pins[1]["generations"][0]["generation"], 1);
    assert_eq!(pins[1]["generations"][0]["closurePaths"], 3);
    assert_eq!(pins[1]["generations"][0]["paths"][0], web.as_str());

    // A dry run says what would go, and deletes nothing.
    let before = narinfos(&c);
    let report = gc(&mut nixferry(), &[&url, "--dry-run"]);
    assert_eq!(report["dryRun"], true);
    assert_eq!(deleted_paths(&report), BTreeSet::from([stray.clone()]));
    assert_eq!(
        deleted_keys(&report, "listing"),
        BTreeSet::from([format!("{}.ls", hash_part(&stray))])
    );
    assert_eq!(deleted_keys(&report, "nar-file").len(), 1);
    assert_eq!(narinfos(&c), before);

    // A second generation of `db` (which keeps one) drops the first.
    run(nixferry().args(["cache", "pin", &url, "db", &stray]));
    let report = gc(&mut nixferry(), &[&url]);
    assert_eq!(report["pins"], 2);
    assert_eq!(report["pinned"], 4);
    let db_only: BTreeSet<_> = db_closure.difference(&web_closure).cloned().collect();
    assert_eq!(deleted_paths(&report), db_only);
    assert_eq!(deleted_keys(&report, "nar-file").len(), db_only.len());
    assert_eq!(deleted_keys(&report, "listing").len(), db_only.len());
    let freed: u64 = report["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["size"].as_u64().unwrap())
        .sum();
    assert_eq!(report["freedBytes"].as_u64(), Some(freed));
    let kept = hashes(web_closure.iter().chain([&stray]));
    assert_eq!(narinfos(&c), kept);

    // What is left is whole.
    let (code, problems, out) = verify(
        &mut nixferry(),
        &[&url, "--trusted-key", pk, "--grace", "0s"],
    );
    assert_eq!((code, problems), (0, BTreeSet::new()), "{}", stderr(&out));

    // Nix copies every pinned closure out, and finds collected paths gone.
    let store = tmp.path().join("store");
    run(nix("nix")
        .args(["copy", "--from", &url, "--to"])
        .arg(&store)
        .args(["--option", "trusted-public-keys", pk])
        .args([&web, &stray]));
    crate::common::assert_same_closure(&store, &web);
    let out = nix("nix")
        .args(["path-info", "--store", &url, &db])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));

    // A path just uploaded is kept by --keep-newer-than, and by the grace
    // period, and goes without either.
    let fresh = build_input_addressed("gc-fresh");
    run(nixferry()
        .args([
            "copy",
            "--to",
            &format!("{url}?secret-key={}", sk.display()),
            &fresh,
        ])
        .arg("--no-check-sigs"));
    let report = gc(
        &mut nixferry(),
        &[&url, "--grace", "0s", "--keep-newer-than", "1d"],
    );
    assert_eq!(deleted_paths(&report), BTreeSet::new());
    let report = gc(&mut nixferry(), &[&url]);
    assert_eq!(deleted_paths(&report), BTreeSet::new());
    let report = gc(&mut nixferry(), &[&url, "--grace", "0s"]);
    assert_eq!(deleted_paths(&report), BTreeSet::from([fresh]));

    // Unpinned, a closure goes.
    run(nixferry().args(["cache", "unpin", &url, "web"]));
    let report = gc(&mut nixferry(), &[&url, "--grace", "0s"]);
    assert_eq!(deleted_paths(&report), web_closure);
    assert_eq!(narinfos(&c), hashes([&stray]));
    let out = nixferry()
        .args(["cache", "unpin", &url, "web"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no pin named 'web'"),
        "{}",
        stderr(&out)
    );
}

/// `--max-size` drops the least recently uploaded paths first, never a
/// pinned one, until the cache fits.
#[test]
fn gc_max_size_drops_the_least_recently_uploaded() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, _) = generate_key(tmp.path(), "gc-size-1");
    let c = tmp.path().join("c");
    fs::create_dir(&c).unwrap();
    let url = format!("file://{}", c.display());
    let mut paths = Vec::new();
    for i in 0..4 {
        let src = tmp.path().join(format!("src{i}"));
        fs::write(&src, format!("content {i}\n").repeat(1000 * (i + 1))).unwrap();
        paths.push(add_signed(&src, &url, &sk));
    }
    // Uploaded 4, 3, 2 and 1 days ago.
    for (i, p) in paths.iter().enumerate() {
        let hash = hash_part(p);
        let info = fs::read_to_string(c.join(format!("{hash}.narinfo"))).unwrap();
        let nar = info.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
        let when = SystemTime::now() - DAY * (4 - i as u32);
        for f in [c.join(format!("{hash}.narinfo")), c.join(nar)] {
            fs::OpenOptions::new()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
    }
    let size_of = |p: &String| {
        let hash = hash_part(p);
        let info = c.join(format!("{hash}.narinfo"));
        let text = fs::read_to_string(&info).unwrap();
        let nar = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
        fs::metadata(&info).unwrap().len() + fs::metadata(c.join(nar)).unwrap().len()
    };
    let sizes: Vec<u64> = paths.iter().map(size_of).collect();

    // Room for the two newest: the two oldest go, oldest first.
    let max = (sizes[2] + sizes[3]).to_string();
    let report = gc(&mut nixferry(), &[&url, "--max-size", &max, "--dry-run"]);
    assert_eq!(
        deleted_paths(&report),
        BTreeSet::from([paths[0].clone(), paths[1].clone()])
    );
    assert!(deleted_keys(&report, "over-size").len() == 2);

    // A pinned path stays, however old: the next oldest goes instead.
    run(nixferry().args(["cache", "pin", &url, "old", &paths[0]]));
    let max = (sizes[0] + sizes[3]).to_string();
    let report = gc(&mut nixferry(), &[&url, "--max-size", &max]);
    assert_eq!(
        deleted_paths(&report),
        BTreeSet::from([paths[1].clone(), paths[2].clone()])
    );
    assert_eq!(narinfos(&c), hashes([&paths[0], &paths[3]]));
    assert!(report["keptBytes"].as_u64().unwrap() <= sizes[0] + sizes[3]);
}

/// In a bucket: pins, a gc that keeps the pinned closure and deletes the
/// rest, and a bucket that verifies clean after it.
#[test]
fn gc_in_a_bucket() {
    if !s3::ready() {
        return;
    }
    let server = s3::S3::start();
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "gc-bucket-1");
    let web = build_closure("gc-s3-web");
    let db = build_closure("gc-s3-db");
    let signing = server.url("cache/gc", &format!("secret-key={}", sk.display()));
    run(server
        .nixferry()
        .args(["copy", "--to", &signing, &web, &db]));
    let url = server.url("cache/gc", "");
    run(server.nixferry().args(["cache", "pin", &url, "web", &web]));
    let out = run(server.nixferry().args(["cache", "pins", &url]));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("generation 1") && text.contains("3 paths"),
        "{text}"
    );

    // An upload a writer began and never finished, and one outside the
    // cache's prefix.
    server.begin_upload("cache", "gc/nar/1abc.nar.xz");
    server.begin_upload("cache", "other/nar/2def.nar.xz");

    // Everything is new: the grace period keeps it all (the server dates
    // its uploads long ago, so the upload goes).
    let report = gc(&mut server.nixferry(), &[&url]);
    assert_eq!(deleted_paths(&report), BTreeSet::new());
    assert_eq!(
        deleted_keys(&report, "unfinished-upload"),
        BTreeSet::from(["nar/1abc.nar.xz".to_owned()])
    );
    let left: Vec<_> = server
        .uploads("cache")
        .iter()
        .map(|u| u["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, ["other/nar/2def.nar.xz"]);
    let report = gc(&mut server.nixferry(), &[&url, "--grace", "0s"]);
    let web_closure = closure(&web);
    let db_only: BTreeSet<_> = closure(&db).difference(&web_closure).cloned().collect();
    assert_eq!(deleted_paths(&report), db_only);
    assert_eq!(deleted_keys(&report, "nar-file").len(), db_only.len());
    let keys = server.keys("cache");
    let left: BTreeSet<_> = keys
        .iter()
        .filter_map(|k| k.strip_prefix("gc/")?.strip_suffix(".narinfo"))
        .map(str::to_owned)
        .collect();
    assert_eq!(left, hashes(&web_closure));
    assert!(
        keys.contains(&"gc/nixferry/pins/web.json".to_owned()),
        "{keys:?}"
    );
    let (code, problems, out) = verify(
        &mut server.nixferry(),
        &[&url, "--trusted-key", pk.trim(), "--grace", "0s"],
    );
    assert_eq!((code, problems), (0, BTreeSet::new()), "{}", stderr(&out));
    let out = run(server.nixferry().args(["cache", "stats", "--json", &url]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["paths"].as_u64(), v["pins"].as_u64()),
        (Some(3), Some(1))
    );
}

/// Copies into a cache while gcs run over and over: every path a copy
/// reported done is there afterwards with its closure, though the paths
/// those copies skipped were old and unpinned when the copies began.
#[test]
fn gc_racing_copies_loses_nothing_they_reported_done() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "gc-race-1");
    let tops: Vec<String> = (0..6)
        .map(|i| build_closure(&format!("gc-race-{i}")))
        .collect();
    let c = tmp.path().join("c");
    let url = format!("file://{}", c.display());
    let signing = format!("{url}?secret-key={}", sk.display());
    // The bases of every closure, old and unpinned: garbage, until a copy
    // needs them again.
    let bases: Vec<String> = tops
        .iter()
        .map(|t| {
            closure(t)
                .into_iter()
                .find(|p| p.ends_with("-base"))
                .unwrap()
        })
        .collect();
    run(nixferry().args(["copy", "--to", &signing]).args(&bases));
    let keeper = build_input_addressed("gc-race-pinned");
    run(nixferry().args(["copy", "--to", &signing, &keeper]));
    run(nixferry().args(["cache", "pin", &url, "keeper", &keeper]));
    age(&c, 2 * DAY);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gcs = {
        let (url, stop) = (url.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || runs < 3 {
                // Only what is older than a minute is garbage.
                gc(&mut nixferry(), &[&url, "--grace", "60s"]);
                runs += 1;
            }
            runs
        })
    };
    let mut done = BTreeSet::new();
    for top in &tops {
        let out = nixferry()
            .args(["copy", "--json", "--to", &signing, top])
            .output()
            .unwrap();
        assert_success(&out);
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["event"] == "copied" || v["event"] == "skipped" {
                done.insert(v["path"].as_str().unwrap().to_owned());
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = gcs.join().unwrap();
    assert!(runs >= 3);
    let all: BTreeSet<String> = tops.iter().flat_map(|t| closure(t)).collect();
    assert_eq!(done, all);
    assert!(hashes(&all).is_subset(&narinfos(&c)));
    let mut args = vec![url.as_str(), "--trusted-key", pk.trim()];
    args.extend(tops.iter().map(String::as_str));
    let (code, problems, out) = verify(&mut nixferry(), &args);
    assert_eq!((code, problems), (0, BTreeSet::new()), "{}", stderr(&out));
}

/// gcs killed at many points leave a cache in which every narinfo still
/// has its NAR file and references (what is left over is garbage a later
/// gc removes).
#[test]
fn a_gc_killed_half_way_leaves_a_consistent_cache() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = generate_key(tmp.path(), "gc-kill-1");
    let pk = pk.trim();
    let tops: Vec<String> = (0..3)
        .map(|i| build_closure(&format!("gc-kill-{i}")))
        .collect();
    let c = tmp.path().join("c");
    let url = format!("file://{}", c.display());
    let signing = format!("{url}?secret-key={}", sk.display());
    run(nixferry().args(["copy", "--to", &signing]).args(&tops));
    for i in 0..300 {
        let src = tmp.path().join(format!("f{i}"));
        fs::write(&src, format!("{i}\n")).unwrap();
        add_signed(&src, &signing, &sk);
    }
    run(nixferry().args(["cache", "pin", &url, "keep", &tops[0]]));
    age(&c, 2 * DAY);
    let garbage = ["orphan-nar", "orphan-listing", "temporary-file"];
    for delay_ms in [5, 15, 30, 60, 100] {
        let mut child = nixferry()
            .args(["cache", "gc", &url, "-j", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        let (code, problems, out) = verify(
            &mut nixferry(),
            &[&url, "--trusted-key", pk, "--grace", "0s"],
        );
        assert!(code == 0 || code == 1, "{}", stderr(&out));
        let broken: Vec<_> = problems
            .iter()
            .filter(|(k, _)| !garbage.contains(&k.as_str()))
            .collect();
        assert!(broken.is_empty(), "after {delay_ms} ms: {broken:?}");
    }
    let report = gc(&mut nixferry(), &[&url]);
    assert!(report["failed"].as_array().unwrap().is_empty());
    let (code, problems, out) = verify(
        &mut nixferry(),
        &[&url, "--trusted-key", pk, "--grace", "0s"],
    );
    assert_eq!((code, problems), (0, BTreeSet::new()), "{}", stderr(&out));
    assert_eq!(narinfos(&c), hashes(&closure(&tops[0])));
}
