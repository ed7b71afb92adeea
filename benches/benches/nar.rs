//! Criterion benches of the NAR codec: encode+hash of a tree of large files
//! and of many small files, and decode+validate of their NARs.

// criterion_group! makes undocumented public functions.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nixferry::nar;

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

criterion_group!(benches, nar_encode);
criterion_main!(benches);
