//! Criterion benches of narinfo handling on the real cache.nixos.org
//! corpus: parse, render, sign and verify.

// criterion_group! makes undocumented public functions.
#![allow(missing_docs)]

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use nixferry::narinfo::NarInfo;
use nixferry::signing::{PublicKey, SecretKey, TrustedKeys};

const CACHE_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

/// The narinfos of the repository's `testdata/narinfos`.
fn corpus() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/narinfos/cache-nixos-org.narinfos");
    let text = std::fs::read_to_string(path).unwrap();
    text.split("\n\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| format!("{}\n", d.trim_end_matches('\n')))
        .collect()
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

criterion_group!(benches, narinfo);
criterion_main!(benches);
