//! Entry points for the fuzz targets in `fuzz/` and for the test that
//! replays their corpora. Each takes arbitrary bytes and must never panic.

/// Store path and hash parsing: base names, full paths, CA strings and
/// hashes in every form; whatever parses must print back the same way.
pub fn store_path_parse(data: &[u8]) {
    use crate::hash::NixHash;
    use crate::store_path::{ContentAddress, StoreDir, StorePath};

    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = StorePath::from_base_name(s) {
        assert_eq!(p.to_string(), s);
        let _ = p.digest();
    }
    let dir = StoreDir::default();
    if let Ok(p) = dir.parse(s) {
        assert_eq!(dir.full(&p), s);
    }
    let _ = dir.parse_prefix(s);
    if let Ok(ca) = ContentAddress::parse(s) {
        assert_eq!(ContentAddress::parse(&ca.to_string()), Ok(ca));
    }
    if let Ok(h) = NixHash::parse(s) {
        assert_eq!(NixHash::parse(&h.to_string()), Ok(h));
        assert_eq!(NixHash::parse(&h.to_sri()), Ok(h));
    }
}

/// NAR decoding: the strict decoder over `data` (reading every file's
/// contents, then checking for trailing data), then `list` and `cat` of the
/// first regular file; errors are expected and ignored, panics are bugs.
pub fn nar_decode(data: &[u8]) {
    use std::io;

    use crate::nar::{self, Decoder, EntryKind, Event};

    let mut decoder = Decoder::new(data);
    let mut first_file = None;
    while let Ok(Some(event)) = decoder.next_event() {
        if let Event::Entry(entry) = event {
            if matches!(entry.kind, EntryKind::Regular { .. }) {
                first_file.get_or_insert(entry.path);
                let _ = io::copy(&mut decoder.contents(), &mut io::sink());
            }
        }
    }
    let _ = decoder.expect_eof();
    if let Ok(listing) = nar::list(data) {
        let _ = listing.to_json();
        let _ = listing.to_json_strict();
        let _ = listing.lines().count();
    }
    let _ = nar::cat(data, first_file.unwrap_or_default(), io::sink());
}

/// Narinfo and `nix-cache-info` parsing: a narinfo that parses must render
/// back byte for byte, and its canonical rewrite must read back the same.
pub fn narinfo_parse(data: &[u8]) {
    use crate::narinfo::{CacheInfo, NarInfo};

    let text = String::from_utf8_lossy(data);
    if let Ok(info) = NarInfo::parse(&text) {
        assert_eq!(info.render(), text);
        let _ = info.check();
        let _ = info.fingerprint();
        let _ = info.verify_ca();
        if let Ok(canonical) = NarInfo::new(info.fields()) {
            assert_eq!(NarInfo::parse(canonical.as_str()).as_ref(), Ok(&canonical));
        }
    }
    if let Ok(cache_info) = CacheInfo::parse(&text) {
        assert_eq!(CacheInfo::parse(&cache_info.render()), Ok(cache_info));
    }
}

/// Key and signature parsing and a verification attempt: whatever parses
/// must print and parse back to the same key or signature.
pub fn signing_parse(data: &[u8]) {
    use crate::signing::{PublicKey, SecretKey, Signature, TrustedKeys};

    let text = String::from_utf8_lossy(data);
    if let Ok(key) = SecretKey::parse(&text) {
        let again = SecretKey::parse(&key.to_file_string()).map(|k| k.public());
        assert_eq!(again, Ok(key.public()));
    }
    if let Ok(key) = PublicKey::parse(&text) {
        assert_eq!(PublicKey::parse(&key.to_string()), Ok(key));
    }
    if let Ok(sig) = Signature::parse(&text) {
        assert_eq!(Signature::parse(&sig.to_string()), Ok(sig));
    }
    let _ = TrustedKeys::parse_list(&text);
    // Each line or word as a signature of the whole input by a trusted key
    // `fuzz-1`, so `fuzz-1:<base64>` inputs reach the Ed25519 check.
    if let Ok(key) = SecretKey::from_seed("fuzz-1", &[1; 32]) {
        let trusted = TrustedKeys::from_keys([key.public()]);
        let sigs = text.split(['\n', ' ']);
        let _ = trusted.verify(data, sigs.clone());
        let _ = trusted.count_valid(data, sigs);
    }
}

/// The serve protocol client against a server whose replies are `data`:
/// the handshake, then QueryPathInfos, DumpStorePath (read to its end),
/// QueryValidPaths, QueryClosure and ExportPaths, each reading on from
/// where the previous one stopped. Errors are expected and ignored; panics
/// and allocations beyond the client's limits are bugs.
#[cfg(any(feature = "ssh", feature = "local"))]
pub fn serve_client(data: &[u8]) {
    use crate::store::serve::ServeConnection;
    use crate::store_path::StoreDir;

    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        let dir = StoreDir::default();
        let paths: Vec<_> = [
            "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt",
            "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv",
            "/nix/store/rsjiq56rggpz3zk7marf4by5qgdya80h-nixspec-tree",
            "/nix/store/00000000000000000000000000000000-bogus",
        ]
        .iter()
        .filter_map(|p| dir.parse(p).ok())
        .collect();
        let Ok(mut conn) = ServeConnection::handshake(data, tokio::io::sink(), dir).await else {
            return;
        };
        let _ = conn.query_path_infos(&paths).await;
        if let Some(first) = paths.first() {
            if let Ok(mut nar) = conn.dump_store_path(first).await {
                let _ = tokio::io::copy(&mut nar, &mut tokio::io::sink()).await;
            }
        }
        let _ = conn.query_valid_paths(false, false, &paths).await;
        let _ = conn.query_closure(false, &paths).await;
        if let Ok(mut export) = conn.export_paths(&paths).await {
            while let Ok(Some(_)) = export.next_record(&mut tokio::io::sink()).await {}
        }
    });
}

/// The NAR framer of the serve protocol against the strict decoder: both
/// must accept or reject `data` alike and, when they accept it, end the
/// NAR at the same byte; the framer must answer the same however the
/// bytes are split.
#[cfg(any(feature = "ssh", feature = "local"))]
pub fn nar_frame(data: &[u8]) {
    use crate::nar::Decoder;
    use crate::store::serve::framer::NarFramer;

    /// Where the framer ends the NAR, fed `chunk` bytes at a time; `None`
    /// if it rejects it or the input ends first.
    fn framed(data: &[u8], chunk: usize) -> Option<u64> {
        let mut framer = NarFramer::new();
        for piece in data.chunks(chunk) {
            framer.feed(piece).ok()?;
            if framer.is_done() {
                return Some(framer.position());
            }
        }
        None
    }

    let mut decoder = Decoder::new(data);
    let strict = loop {
        match decoder.next_event() {
            Ok(Some(_)) => {}
            Ok(None) => break Some(decoder.position()),
            Err(_) => break None,
        }
    };
    for chunk in [data.len().max(1), 1, 7, 4096] {
        assert_eq!(
            framed(data, chunk),
            strict,
            "framer (fed {chunk} bytes at a time) and strict decoder disagree \
             (Some(n): a NAR of n bytes, None: rejected)"
        );
    }
}

/// nixferry's remote protocol (docs/formats.md §7): frames decoded
/// strictly, every message parsed as a request and as a reply (what
/// parses must print back the same), and the data frames decompressed as
/// an add's stream would be, into at most 1 MiB.
#[cfg(all(feature = "zstd", any(feature = "ssh", feature = "local")))]
pub fn ferry_frames(data: &[u8]) {
    use crate::store::serve::ferry::wire::{self, Kind, Reply, Request};

    let Ok(frames) = wire::decode_all(data) else {
        return;
    };
    let mut stream = Vec::new();
    for frame in &frames {
        match frame.kind {
            Kind::Message => {
                let map = wire::parse_message(&frame.payload, 0).expect("decode_all parsed it");
                if let Ok(r) = Request::parse(&map, 0) {
                    let serde_json::Value::Object(again) = r.to_json() else {
                        panic!("a request prints as an object")
                    };
                    assert_eq!(Request::parse(&again, 0).as_ref(), Ok(&r));
                }
                if let Ok(r) = Reply::parse(&map, 0) {
                    let serde_json::Value::Object(again) = r.to_json() else {
                        panic!("a reply prints as an object")
                    };
                    assert_eq!(Reply::parse(&again, 0).as_ref(), Ok(&r));
                }
            }
            Kind::Data => stream.extend_from_slice(&frame.payload),
            Kind::End | Kind::Abort => {}
        }
    }
    let _ = crate::store::serve::ferry::decompress_into(&stream[..], std::io::sink(), 1 << 20);
}

/// Delta decoding (`nixferry::delta`): `data` as a whole delta against a
/// fixed base, then (as the hashes of a real header are out of a fuzzer's
/// reach) as the payload of each kind, from its third byte on, behind a
/// header that matches the base and announces a target of as many bytes as
/// the first two say (`u16`, little-endian); and as a block signature.
/// Errors are expected and ignored; panics and allocations beyond the
/// decoder's limits are bugs.
#[cfg(feature = "zstd")]
pub fn delta_decode(data: &[u8]) {
    use std::io;

    use crate::delta::{self, Base, DeltaHeader, DeltaKind, DeltaReader, Signature};

    let base: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let _ = delta::decode(&base, data);
    let target_size = match data {
        [a, b, ..] => u64::from(u16::from_le_bytes([*a, *b])),
        _ => 0,
    };
    for kind in [DeltaKind::ZstdRef, DeltaKind::Block] {
        let header = DeltaHeader {
            kind,
            base_size: base.len() as u64,
            base_sha256: delta::sha256(&base),
            target_size,
            target_sha256: [0; 32],
        };
        let mut input = header.to_bytes().to_vec();
        input.extend_from_slice(data.get(2..).unwrap_or_default());
        if let Ok(mut reader) = DeltaReader::new(&input[..], Base::new(&base)) {
            let _ = io::copy(&mut reader, &mut io::sink());
        }
    }
    let _ = Signature::parse(data, &Default::default());
}
