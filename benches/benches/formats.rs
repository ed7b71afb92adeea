//! Criterion benches of the format layer: NAR encode+hash (large files and
//! many small files), NAR decode+validate, narinfo parse, sign and verify.

// criterion_group! makes undocumented public functions.
#![allow(missing_docs)]

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use nixferry::nar;
use nixferry::narinfo::NarInfo;
use nixferry::signing::{PublicKey, SecretKey, TrustedKeys};

const CACHE_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

fn shared() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("NIXFERRY_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../../shared"))
}

fn corpus() -> Vec<String> {
    let text = std::fs::read_to_string(shared().join("testdata/cache-nixos-org.narinfos")).unwrap();
    text.split("\n\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| format!("{}\n", d.trim_end_matches('\n')))
        .collect()
}

fn nar_encode(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let large = tmp.path().join("large");
    nixferry_benches::large_files(&large, 4, 64 << 20).unwrap();
    let small = tmp.path().join("small");
    nixferry_benches::small_files(&small, 200, 50).unwrap();

    let mut g = c.benchmark_group("nar_encode_hash");
    g.sample_size(10);
    let size = nar::hash_path(&large).unwrap().nar_size;
    g.throughput(Throughput::Bytes(size));
    g.bench_function("large_files_256MiB", |b| {
        b.iter(|| nar::hash_path(&large).unwrap())
    });
    g.throughput(Throughput::Elements(200 * 50));
    g.bench_function("small_files_10k", |b| {
        b.iter(|| nar::hash_path(&small).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("nar_decode_validate");
    g.sample_size(10);
    let mut large_nar = Vec::new();
    nar::dump(&large, &mut large_nar).unwrap();
    let mut small_nar = Vec::new();
    nar::dump(&small, &mut small_nar).unwrap();
    g.throughput(Throughput::Bytes(large_nar.len() as u64));
    g.bench_function("large_files_256MiB", |b| {
        b.iter(|| nar::validate(&large_nar[..]).unwrap())
    });
    g.throughput(Throughput::Elements(200 * 50));
    g.bench_function("small_files_10k", |b| {
        b.iter(|| nar::validate(&small_nar[..]).unwrap())
    });
    g.finish();
}

fn narinfo(c: &mut Criterion) {
    let docs = corpus();
    let infos: Vec<NarInfo> = docs.iter().map(|d| NarInfo::parse(d).unwrap()).collect();
    let mut g = c.benchmark_group("narinfo");
    g.throughput(Throughput::Elements(docs.len() as u64));
    g.bench_function("parse_corpus", |b| {
        b.iter(|| {
            for d in &docs {
                std::hint::black_box(NarInfo::parse(d).unwrap());
            }
        })
    });
    g.bench_function("render_corpus", |b| {
        b.iter(|| {
            for i in &infos {
                std::hint::black_box(i.render());
            }
        })
    });
    let trusted = TrustedKeys::from_keys([PublicKey::parse(CACHE_KEY).unwrap()]);
    g.bench_function("verify_corpus", |b| {
        b.iter(|| {
            for i in &infos {
                i.verify(&trusted).unwrap();
            }
        })
    });
    let key = SecretKey::generate("bench-1").unwrap();
    g.bench_function("sign_corpus", |b| {
        b.iter_batched(
            || infos.clone(),
            |mut v| {
                for i in &mut v {
                    i.sign(&key);
                }
                v
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, nar_encode, narinfo);
criterion_main!(benches);
