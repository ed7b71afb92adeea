use std::io::{Cursor, Read, Write};

use super::*;

const KINDS: [DeltaKind; 2] = [DeltaKind::ZstdRef, DeltaKind::Block];

/// Deterministic pseudo-random bytes (xorshift64*).
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A store hash: 32 characters of Nix's base-32 alphabet.
fn store_hash(seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    random_bytes(seed, 32)
        .iter()
        .map(|b| ALPHABET[usize::from(b % 32)])
        .collect()
}

/// A base and a target as after a rebuild: the same bytes but for the
/// store hashes of four dependencies, one every `every` bytes.
fn rebuild_pair(len: usize, every: usize) -> (Vec<u8>, Vec<u8>) {
    let mut base = random_bytes(1, len);
    let mut target = base.clone();
    let old: Vec<_> = (0..4).map(store_hash).collect();
    let new: Vec<_> = (10..14).map(store_hash).collect();
    for (i, at) in (every / 2..len.saturating_sub(32))
        .step_by(every)
        .enumerate()
    {
        base[at..at + 32].copy_from_slice(&old[i % 4]);
        target[at..at + 32].copy_from_slice(&new[i % 4]);
    }
    (base, target)
}

fn error_of(base: &[u8], delta: &[u8]) -> DeltaError {
    match decode(base, delta) {
        Ok(_) => panic!("the delta decoded"),
        Err(e) => e,
    }
}

#[test]
fn round_trips() {
    let text = b"some NAR bytes, some NAR bytes, and more".repeat(500);
    let other = random_bytes(7, 30_000);
    let cases: [(&[u8], &[u8]); 6] = [
        (b"", b""),
        (b"", &text),
        (&text, b""),
        (&text, &text),
        (&other, &text),
        (&text[..100], &other),
    ];
    for kind in KINDS {
        for (base, target) in cases {
            let delta = encode(base, target, kind, 3).unwrap();
            assert_eq!(decode(base, &delta).unwrap(), target, "{kind:?}");
        }
    }
}

#[test]
fn a_target_equal_to_its_base_is_a_few_bytes() {
    let base = random_bytes(3, 1 << 20);
    for kind in KINDS {
        let delta = encode(&base, &base, kind, 3).unwrap();
        assert!(delta.len() < HEADER_LEN + 400, "{kind:?}: {}", delta.len());
        assert_eq!(decode(&base, &delta).unwrap(), base);
    }
}

#[test]
fn rebuilds_make_small_deltas() {
    let (base, target) = rebuild_pair(4 << 20, 4 << 10);
    let delta = encode(&base, &target, DeltaKind::ZstdRef, 3).unwrap();
    assert!(delta.len() < target.len() / 100, "kind 1: {}", delta.len());
    assert_eq!(decode(&base, &delta).unwrap(), target);

    // Blocks of 2 KiB: with a changed hash every 16 KiB, one block in 8
    // goes as literals (random, so incompressible).
    let (base, target) = rebuild_pair(4 << 20, 16 << 10);
    let delta = encode(&base, &target, DeltaKind::Block, 3).unwrap();
    assert!(delta.len() < target.len() / 6, "kind 2: {}", delta.len());
    assert_eq!(decode(&base, &delta).unwrap(), target);
}

#[test]
fn shifted_contents_still_match_blocks() {
    let base = random_bytes(5, 200_000);
    let mut target = b"a few inserted bytes".to_vec();
    target.extend_from_slice(&base[..100_000]);
    target.extend_from_slice(b"more");
    target.extend_from_slice(&base[100_000..]);
    let delta = encode(&base, &target, DeltaKind::Block, 3).unwrap();
    assert!(delta.len() < 2 * 4096 + 500, "{}", delta.len());
    assert_eq!(decode(&base, &delta).unwrap(), target);
}

#[test]
fn truncated_deltas_are_errors() {
    let (base, target) = rebuild_pair(100_000, 4096);
    for kind in KINDS {
        let delta = encode(&base, &target, kind, 3).unwrap();
        for cut in (0..delta.len()).step_by(7).chain([delta.len() - 1]) {
            let e = error_of(&base, &delta[..cut]);
            assert!(e.offset() <= cut as u64, "{kind:?} cut at {cut}: {e}");
        }
    }
}

#[test]
fn flipped_bytes_are_errors_or_harmless() {
    let (base, target) = rebuild_pair(50_000, 4096);
    for kind in KINDS {
        let delta = encode(&base, &target, kind, 3).unwrap();
        let len = delta.len();
        let spots = (0..len).filter(|at| at < &(HEADER_LEN + 64) || at % 17 == 0 || at + 64 > len);
        for at in spots {
            let mut bad = delta.clone();
            bad[at] ^= 0x55;
            match decode(&base, &bad) {
                Ok(out) => {
                    // Only bytes that do not matter (zstd's unused bits).
                    assert!(at >= HEADER_LEN, "{kind:?}: header byte {at} flipped");
                    assert_eq!(out, target, "{kind:?}: byte {at} flipped");
                }
                Err(e) => assert!(e.to_string().starts_with("delta: at byte ")),
            }
        }
    }
}

#[test]
fn header_errors_name_their_byte() {
    let delta = encode(b"base", b"target", DeltaKind::ZstdRef, 3).unwrap();
    let mut bad = delta.clone();
    bad[9] = 9;
    assert_eq!(
        error_of(b"base", &bad).to_string(),
        "delta: at byte 9: unknown kind 9"
    );
    let mut bad = delta.clone();
    bad[8] = 2;
    assert_eq!(error_of(b"base", &bad).offset(), 8);
    let mut bad = delta.clone();
    bad[0] = b'N';
    assert!(matches!(
        error_of(b"base", &bad).problem(),
        Problem::BadMagic
    ));
    let e = error_of(b"base", &delta[..50]);
    assert_eq!(
        (e.offset(), e.to_string()),
        (50, "delta: at byte 50: the delta is truncated".into())
    );

    let header = DeltaHeader::read_from(&delta[..]).unwrap();
    assert_eq!(header.kind, DeltaKind::ZstdRef);
    assert_eq!((header.base_size, header.target_size), (4, 6));
    assert_eq!(header.target_sha256, sha256(b"target"));
    assert_eq!(header.to_bytes()[..], delta[..HEADER_LEN]);
}

#[test]
fn a_wrong_base_is_refused_before_any_output() {
    let (base, target) = rebuild_pair(20_000, 4096);
    for kind in KINDS {
        let delta = encode(&base, &target, kind, 3).unwrap();
        let mut other = base.clone();
        other[10_000] ^= 1;
        let e = DeltaReader::new(&delta[..], Base::new(&other)).unwrap_err();
        assert_eq!(e.offset(), 18, "{e}");
        assert!(matches!(e.problem(), Problem::WrongBaseHash { .. }));
        let e = DeltaReader::new(&delta[..], Base::new(&base[1..])).unwrap_err();
        assert!(matches!(
            e.problem(),
            Problem::WrongBaseSize {
                want: 20_000,
                got: 19_999
            }
        ));
        // A trusted hash is not recomputed: the lie shows in the target's.
        let lie = Base::trusted(&other, sha256(&base));
        let mut out = Vec::new();
        let e = DeltaReader::new(&delta[..], lie)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        let e = DeltaError::from_io(e, 0);
        assert!(
            matches!(
                e.problem(),
                Problem::TargetHash { .. } | Problem::Invalid(_)
            ),
            "{e}"
        );
    }
}

#[test]
fn trailing_bytes_are_errors() {
    for kind in KINDS {
        let mut delta = encode(b"base bytes", b"target bytes", kind, 3).unwrap();
        let end = delta.len() as u64;
        delta.push(0);
        let e = error_of(b"base bytes", &delta);
        assert!(matches!(e.problem(), Problem::Trailing), "{kind:?}: {e}");
        assert_eq!(e.offset(), end);
    }
}

fn with_target_size(delta: &[u8], size: u64) -> Vec<u8> {
    let mut bad = delta.to_vec();
    bad[50..58].copy_from_slice(&size.to_le_bytes());
    bad
}

#[test]
fn target_sizes_that_lie_are_errors() {
    let (base, target) = rebuild_pair(30_000, 4096);
    let len = target.len() as u64;
    for kind in KINDS {
        let delta = encode(&base, &target, kind, 3).unwrap();
        let e = error_of(&base, &with_target_size(&delta, len - 1));
        assert!(
            matches!(e.problem(), Problem::TargetTooLong(_) | Problem::Invalid(_)),
            "{kind:?}: {e}"
        );
        let e = error_of(&base, &with_target_size(&delta, len + 1));
        assert!(
            matches!(
                e.problem(),
                Problem::TargetTooShort { .. } | Problem::Invalid(_)
            ),
            "{kind:?}: {e}"
        );
    }
}

#[test]
fn huge_sizes_allocate_nothing_of_their_size() {
    let base = b"the base".to_vec();
    for kind in KINDS {
        let delta = encode(&base, b"small", kind, 3).unwrap();
        // Streamed to a sink: a target size of 2^64 - 1 must fail at the
        // payload's end, not allocate.
        let bad = with_target_size(&delta, u64::MAX);
        let mut reader = DeltaReader::new(&bad[..], Base::new(&base)).unwrap();
        assert!(io::copy(&mut reader, &mut io::sink()).is_err());
        assert!(decode(&base, &bad).is_err());

        let mut bad = delta.clone();
        bad[10..18].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = error_of(&base, &bad);
        assert!(matches!(e.problem(), Problem::BaseTooLarge(_)), "{e}");
    }
}

#[test]
fn writers_check_the_target_they_are_given() {
    let base = Base::new(b"base");
    let sig = Signature::compute(&b"base"[..], 4).unwrap();
    let hash = sha256(b"target");
    let mut w = ZstdDeltaWriter::new(Vec::new(), base, 6, hash, 3).unwrap();
    w.write_all(b"tarbet").unwrap();
    assert!(w.finish().is_err());
    let mut w = BlockDeltaWriter::new(Vec::new(), &sig, 6, hash, 3).unwrap();
    w.write_all(b"tarbet").unwrap();
    assert!(w.finish().is_err());
    let mut w = ZstdDeltaWriter::new(Vec::new(), base, 6, hash, 3).unwrap();
    assert!(w.write_all(b"target!").is_err());
    let mut w = BlockDeltaWriter::new(Vec::new(), &sig, 6, hash, 3).unwrap();
    w.write_all(b"targ").unwrap();
    assert!(w.finish().is_err());
}

#[test]
fn payloads_from_an_offset_rebuild_the_rest() {
    let (base, target) = rebuild_pair(300_000, 4096);
    let size = target.len() as u64;
    let sig = Signature::compute(&base[..], base.len() as u64).unwrap();
    for n in [0, 1, 4096, 123_457, target.len() - 1, target.len()] {
        let rest = &target[n..];

        let mut enc = ZstdRefEncoder::new(Vec::new(), &base, size, n as u64, 3).unwrap();
        enc.write_all(rest).unwrap();
        let payload = enc.finish().unwrap();
        let mut out = Vec::new();
        ZstdRefDecoder::new(&payload[..], &base, size, n as u64)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, rest, "kind 1 from {n}");

        let mut enc = BlockEncoder::new(Vec::new(), &sig, size, n as u64, 3).unwrap();
        enc.write_all(rest).unwrap();
        let payload = enc.finish().unwrap();
        let mut out = Vec::new();
        BlockDecoder::new(
            &payload[..],
            Cursor::new(&base),
            base.len() as u64,
            size,
            n as u64,
        )
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
        assert_eq!(out, rest, "kind 2 from {n}");

        // Whole deltas, resumed: the header checks the whole target.
        let hash = sha256(&target);
        let mut w =
            ZstdDeltaWriter::resume(Vec::new(), Base::new(&base), size, hash, n as u64, 3).unwrap();
        w.write_all(rest).unwrap();
        let delta = w.finish().unwrap();
        let mut out = Vec::new();
        DeltaReader::resume(&delta[..], Base::new(&base), &target[..n])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, rest, "resumed kind 1 from {n}");

        let mut w = BlockDeltaWriter::resume(Vec::new(), &sig, size, hash, n as u64, 3).unwrap();
        w.write_all(rest).unwrap();
        let delta = w.finish().unwrap();
        let mut out = Vec::new();
        DeltaReader::resume(&delta[..], Base::new(&base), &target[..n])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, rest, "resumed kind 2 from {n}");

        // A wrong prefix shows in the whole target's hash.
        if n > 0 {
            let mut prefix = target[..n].to_vec();
            prefix[0] ^= 1;
            let mut reader =
                DeltaReader::resume(&delta[..], Base::new(&base), &prefix[..]).unwrap();
            assert!(reader.read_to_end(&mut Vec::new()).is_err());
        }
    }
}

#[test]
fn kind_2_reads_its_base_from_a_file() {
    let (base, target) = rebuild_pair(100_000, 4096);
    let delta = encode(&base, &target, DeltaKind::Block, 3).unwrap();
    for known in [None, Some(sha256(&base))] {
        let mut out = Vec::new();
        DeltaReader::with_base_file(&delta[..], Cursor::new(&base), known)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, target);
    }
    let e = DeltaReader::with_base_file(&delta[..], Cursor::new(&base[1..]), None).unwrap_err();
    assert_eq!(e.offset(), 10);
    let mut other = base.clone();
    other[0] ^= 1;
    let e = DeltaReader::with_base_file(&delta[..], Cursor::new(&other), None).unwrap_err();
    assert_eq!(e.offset(), 18);

    let delta = encode(&base, &target, DeltaKind::ZstdRef, 3).unwrap();
    assert!(DeltaReader::with_base_file(&delta[..], Cursor::new(&base), None).is_err());
}

#[test]
fn signatures_parse_strictly() {
    let base = random_bytes(9, 10_000);
    let sig = Signature::compute(&base[..], 10_000).unwrap();
    assert_eq!((sig.block_size(), sig.block_count()), (2048, 5));
    assert_eq!(sig.base_sha256(), sha256(&base));
    let bytes = sig.to_bytes();
    assert_eq!(bytes.len(), 53 + 5 * 20);
    let limits = SignatureLimits::default();
    assert_eq!(Signature::parse(&bytes, &limits).unwrap(), sig);

    assert_eq!(
        Signature::parse(&bytes[..100], &limits).unwrap_err().offset,
        100
    );
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(Signature::parse(&long, &limits).unwrap_err().offset, 153);
    let mut bad = bytes.clone();
    bad[9..13].copy_from_slice(&1024u32.to_le_bytes());
    assert_eq!(Signature::parse(&bad, &limits).unwrap_err().offset, 9);
    let mut bad = bytes.clone();
    bad[13..21].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(Signature::parse(&bad, &limits).unwrap_err().offset, 13);
    let small = SignatureLimits {
        max_base_size: 9_999,
    };
    assert_eq!(Signature::parse(&bytes, &small).unwrap_err().offset, 13);

    assert!(Signature::compute(&base[..], 10_001).is_err());
    assert!(Signature::compute(&base[..], 9_999).is_err());
    assert_eq!(block_size_for(0), MIN_BLOCK_SIZE);
    assert_eq!(block_size_for(100 << 20), 16 << 10);
    assert_eq!(block_size_for(MAX_BASE_SIZE), 32 << 10);
    assert_eq!(block_size_for(u64::MAX), MAX_BLOCK_SIZE);
}

#[test]
fn window_logs_cover_base_and_target() {
    assert_eq!(window_log(0, 0), 20);
    assert_eq!(window_log(100 << 20, 100 << 20), 28);
    assert_eq!(window_log(u64::MAX, u64::MAX), 30);
}

/// Sizes and speeds for a base and a target given as files in
/// `NIXFERRY_DELTA_BASE` and `NIXFERRY_DELTA_TARGET`:
/// `cargo test --release -p nixferry --lib delta::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore = "needs NIXFERRY_DELTA_BASE and NIXFERRY_DELTA_TARGET"]
fn measure() {
    use std::time::Instant;

    let base = std::fs::read(std::env::var("NIXFERRY_DELTA_BASE").unwrap()).unwrap();
    let target = std::fs::read(std::env::var("NIXFERRY_DELTA_TARGET").unwrap()).unwrap();
    let mb = target.len() as f64 / 1e6;
    let hash = sha256(&target);
    let report = |name: &str, size: usize, enc: f64, dec: f64| {
        println!(
            "{name}: {size} bytes ({:.3}% of the target), encode {:.0} MB/s, decode {:.0} MB/s",
            100.0 * size as f64 / target.len() as f64,
            mb / enc,
            mb / dec
        );
    };

    let t = Instant::now();
    let plain = zstd::encode_all(&target[..], 3).unwrap();
    let enc = t.elapsed().as_secs_f64();
    let t = Instant::now();
    assert_eq!(zstd::decode_all(&plain[..]).unwrap().len(), target.len());
    report("plain zstd -3", plain.len(), enc, t.elapsed().as_secs_f64());

    for kind in KINDS {
        let base_ref = Base::trusted(&base, sha256(&base));
        let t = Instant::now();
        let delta = match kind {
            DeltaKind::ZstdRef => {
                let mut w =
                    ZstdDeltaWriter::new(Vec::new(), base_ref, target.len() as u64, hash, 3)
                        .unwrap();
                w.write_all(&target).unwrap();
                w.finish().unwrap()
            }
            DeltaKind::Block => {
                let sig = Signature::compute(&base[..], base.len() as u64).unwrap();
                println!(
                    "signature: {} bytes, {} KiB blocks, computed in {:.2} s",
                    sig.to_bytes().len(),
                    sig.block_size() >> 10,
                    t.elapsed().as_secs_f64()
                );
                let mut w =
                    BlockDeltaWriter::new(Vec::new(), &sig, target.len() as u64, hash, 3).unwrap();
                w.write_all(&target).unwrap();
                w.finish().unwrap()
            }
        };
        let enc = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut out = Vec::with_capacity(target.len());
        DeltaReader::new(&delta[..], base_ref)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        let dec = t.elapsed().as_secs_f64();
        assert!(out == target);
        report(&format!("{kind:?}"), delta.len(), enc, dec);
    }
}

/// A kind 2 delta and a signature written by hand from docs/formats.md §8.
#[test]
fn hand_made_bytes_follow_the_spec() {
    let base: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut target = base.clone();
    target[5000..5011].copy_from_slice(b"/nix/store/");

    let mut ops = vec![1];
    ops.extend(0u32.to_le_bytes());
    ops.extend(2u32.to_le_bytes());
    ops.push(2);
    ops.extend(2048u32.to_le_bytes());
    ops.extend(&target[4096..6144]);
    ops.push(1);
    ops.extend(3u32.to_le_bytes());
    ops.extend(2u32.to_le_bytes()); // blocks 3 and 4, the short last one
    ops.push(0);
    let mut delta = b"nxfdelta\x01\x02".to_vec();
    delta.extend(10_000u64.to_le_bytes());
    delta.extend(sha256(&base));
    delta.extend(10_000u64.to_le_bytes());
    delta.extend(sha256(&target));
    delta.extend(2048u32.to_le_bytes());
    delta.extend(zstd::encode_all(&ops[..], 3).unwrap());
    assert_eq!(decode(&base, &delta).unwrap(), target);

    let block = &base[..2048];
    let a = block.iter().map(|&x| u32::from(x)).sum::<u32>() & 0xffff;
    let b = block
        .iter()
        .enumerate()
        .map(|(i, &x)| (2048 - i as u32) * u32::from(x))
        .sum::<u32>()
        & 0xffff;
    let sig = Signature::compute(&base[..], 10_000).unwrap().to_bytes();
    assert_eq!(sig[..9], *b"nxfblsig\x01");
    assert_eq!(sig[9..13], 2048u32.to_le_bytes());
    assert_eq!(sig[13..21], 10_000u64.to_le_bytes());
    assert_eq!(sig[21..53], sha256(&base));
    assert_eq!(sig[53..57], (a | b << 16).to_le_bytes());
    assert_eq!(sig[57..73], sha256(block)[..16]);
    assert_eq!(sig.len(), 53 + 5 * 20);
}
