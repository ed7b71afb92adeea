//! Tests: narinfo.
//!
//! Vectors written by Nix 2.8 (`vectors/narinfo/`, `vectors/binary-cache/`),
//! the 978 real narinfos of `testdata/cache-nixos-org.narinfos`, every case
//! of `nix-2.8-narinfo-parser-results.txt`, and property tests.

use std::collections::BTreeMap;

use nixferry::hash::{HashAlgo, HashError, NixHash};
use nixferry::narinfo::{
    fingerprint, CacheInfo, Compression, Field, Inconsistency, NarInfo, NarInfoError,
    NarInfoFields, ValueError, MAX_LINE_LEN, MAX_NARINFO_LEN,
};
use nixferry::signing::{PublicKey, SecretKey, TrustedKeys, VerifyError};
use nixferry::store_path::{ContentAddress, StoreDir, StorePath, StorePathError};
use proptest::prelude::*;

use crate::common::{json_vector, read_vector, testdata, vector};

const CACHE_NIXOS_ORG_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

/// The input-addressed narinfo the parser experiments mutate.
const BASELINE: &str = "narinfo/signed-xz-jgs69zx98r4fpm73d82y357pps9llcic.narinfo";

fn text_vector(rel: &str) -> String {
    String::from_utf8(read_vector(rel)).unwrap()
}

fn trusted(rel_public_key: &str) -> TrustedKeys {
    TrustedKeys::from_keys([PublicKey::parse(&text_vector(rel_public_key)).unwrap()])
}

fn nixspec_key() -> TrustedKeys {
    trusted("keys/nixspec-test-1.public")
}

fn cache_nixos_org() -> TrustedKeys {
    TrustedKeys::parse_list(CACHE_NIXOS_ORG_KEY).unwrap()
}

/// The documents of `cache-nixos-org.narinfos`. Each ends in `\n` and is
/// followed by one blank line, the last one included.
fn corpus() -> Vec<String> {
    let path = testdata().join("narinfos/cache-nixos-org.narinfos");
    let file = std::fs::read_to_string(&path).unwrap();
    let mut pieces: Vec<&str> = file.split("\n\n").collect();
    assert_eq!(pieces.pop(), Some(""), "the file ends in a blank line");
    let docs: Vec<String> = pieces.into_iter().map(|doc| format!("{doc}\n")).collect();
    assert_eq!(format!("{}\n", docs.join("\n")), file);
    assert_eq!(docs.len(), 978);
    docs
}

/// Every narinfo among the vectors, by path relative to `vectors/`.
fn vector_narinfos() -> Vec<String> {
    let mut found = Vec::new();
    for dir in [
        "narinfo",
        "binary-cache/signed-xz",
        "binary-cache/none-with-listings",
        "binary-cache/ca-derivation-realisation",
    ] {
        for entry in std::fs::read_dir(vector(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".narinfo") {
                found.push(format!("{dir}/{name}"));
            }
        }
    }
    found.sort();
    assert_eq!(found.len(), 15);
    found
}

/// The public key that signed a vector narinfo.
fn signer_of(rel: &str) -> TrustedKeys {
    if rel.contains("pyspec-signed") {
        trusted("keys/pyspec-1.public")
    } else {
        nixspec_key()
    }
}

/// `fingerprints.json`: fingerprint by store path (they do not depend on the
/// signer or the compression).
fn expected_fingerprints() -> BTreeMap<String, String> {
    let mut by_path = BTreeMap::new();
    for entry in json_vector("narinfo/fingerprints.json").as_array().unwrap() {
        let fp = entry["fingerprint"].as_str().unwrap().to_owned();
        let path = fp.split(';').nth(1).unwrap().to_owned();
        let previous = by_path.insert(path, fp.clone());
        assert!(previous.is_none_or(|p| p == fp));
    }
    by_path
}

fn parse_ok(text: &str) -> NarInfo {
    NarInfo::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn parse_err(text: &str) -> NarInfoError {
    match NarInfo::parse(text) {
        Ok(info) => panic!("parsed, but should not have:\n{info}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------
// Vectors written by Nix 2.8

#[test]
fn vectors_parse_render_fingerprint_and_verify() {
    let fingerprints = expected_fingerprints();
    for rel in vector_narinfos() {
        let text = text_vector(&rel);
        let info = parse_ok(&text);
        assert_eq!(info.render(), text, "{rel}");
        let path = info.store_dir().full(info.store_path());
        assert_eq!(info.fingerprint(), fingerprints[&path], "{rel}");
        let key = if rel.contains("pyspec") {
            "pyspec-1"
        } else {
            "nixspec-test-1"
        };
        assert_eq!(info.verify(&signer_of(&rel)), Ok(key), "{rel}");
        assert_eq!(info.check(), Ok(()), "{rel}");
        // Written by Nix 2.8, so also what `NarInfo::new` writes.
        assert_eq!(NarInfo::new(info.fields()).unwrap().render(), text, "{rel}");
    }
}

#[test]
fn vector_signatures_match_fingerprints_json() {
    let json = json_vector("narinfo/fingerprints.json");
    for entry in json.as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        let info = parse_ok(&text_vector(&format!("narinfo/{file}")));
        let want: Vec<&str> = entry["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sig"].as_str().unwrap())
            .collect();
        assert_eq!(info.signatures().collect::<Vec<_>>(), want, "{file}");
    }
}

#[test]
fn vector_ca_claims_verify() {
    let mut with_ca = 0;
    for rel in vector_narinfos() {
        let info = parse_ok(&text_vector(&rel));
        let Some(ca) = info.ca() else { continue };
        with_ca += 1;
        assert!(info.verify_ca(), "{rel}");
        assert!(
            info.store_dir()
                .verify_ca(info.store_path(), ca, info.references()),
            "{rel}"
        );
    }
    // All but the three input-addressed `jgs69…` narinfos are CA.
    assert_eq!(with_ca, 12);
}

#[test]
fn vector_field_values() {
    let info = parse_ok(&text_vector(BASELINE));
    assert_eq!(
        info.store_dir().full(info.store_path()),
        "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv"
    );
    assert_eq!(
        info.url(),
        "nar/0xby1grmcpivv8g88nx1zf0vgs2yz7lik9cwdp1ygdyz71x9spwv.nar.xz"
    );
    assert_eq!(info.compression(), &Compression::Xz);
    assert_eq!(
        info.file_hash().unwrap().to_string(),
        "sha256:0xby1grmcpivv8g88nx1zf0vgs2yz7lik9cwdp1ygdyz71x9spwv"
    );
    assert_eq!(info.file_size(), Some(296));
    // As `nix path-info --json` showed it (parser-results baseline).
    assert_eq!(
        info.nar_hash().to_sri(),
        "sha256-g6VQGK6HAePbLQfLmaG/gdJ8+MdSgd4OXGuvYxsLA4c="
    );
    assert_eq!(info.nar_size(), 808);
    let refs: Vec<&str> = info.references().iter().map(StorePath::as_str).collect();
    assert_eq!(
        refs,
        [
            "3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt",
            "jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv"
        ]
    );
    assert_eq!(
        info.deriver().unwrap().as_str(),
        "8blcypg4m49dd0i8ac2radb217vsrwgs-nixspec-drv.drv"
    );
    assert_eq!(info.system(), None);
    assert_eq!(info.ca(), None);
    assert_eq!(info.signatures().count(), 1);
    assert_eq!(info.unknown_fields().count(), 0);

    let none = parse_ok(&text_vector(
        "narinfo/none-rsjiq56rggpz3zk7marf4by5qgdya80h.narinfo",
    ));
    assert_eq!(none.compression(), &Compression::None);
    assert_eq!(none.file_hash(), Some(none.nar_hash()));
    assert_eq!(
        none.ca(),
        Some(
            &ContentAddress::parse(
                "fixed:r:sha256:02399y2ql0y01nmfs8n5q3kjcs64gaiwdcvbj5sc6m8lm6km2f3d"
            )
            .unwrap()
        )
    );
}

#[test]
fn cache_info_vectors() {
    for dir in [
        "signed-xz",
        "none-with-listings",
        "ca-derivation-realisation",
    ] {
        let text = text_vector(&format!("binary-cache/{dir}/nix-cache-info"));
        let info = CacheInfo::parse(&text).unwrap();
        assert_eq!(info.store_dir, Some(StoreDir::default()));
        assert_eq!(info.check_store_dir(&StoreDir::default()), Ok(()));
        assert!(info
            .check_store_dir(&StoreDir::new("/gnu/store").unwrap())
            .is_err());
        // Nix writes exactly what `CacheInfo::new` renders.
        assert_eq!(text, CacheInfo::new(StoreDir::default()).render());
        assert_eq!(info.render(), text);
    }
}

// ---------------------------------------------------------------------------
// The real cache.nixos.org corpus

#[test]
fn corpus_parses_and_renders_identically() {
    for (i, doc) in corpus().iter().enumerate() {
        let info = parse_ok(doc);
        assert_eq!(&info.render(), doc, "document {i}");
        assert_eq!(info.to_string(), *doc, "document {i}");
        assert_eq!(info.check(), Ok(()), "document {i}");
        // cache.nixos.org writes Nix's canonical form.
        assert_eq!(
            &NarInfo::new(info.fields()).unwrap().render(),
            doc,
            "document {i}"
        );
    }
}

#[test]
fn corpus_has_the_variety_the_tests_rely_on() {
    let infos: Vec<NarInfo> = corpus().iter().map(|d| parse_ok(d)).collect();
    let count = |f: &dyn Fn(&NarInfo) -> bool| infos.iter().filter(|i| f(i)).count();
    assert_eq!(count(&|i| i.ca().is_some()), 8);
    assert_eq!(count(&|i| i.system().is_some()), 8);
    assert_eq!(count(&|i| i.references().is_empty()), 139);
    assert_eq!(count(&|i| i.compression() == &Compression::Bzip2), 1);
    assert_eq!(count(&|i| i.deriver().is_none()), 978 - 913);
    assert_eq!(count(&|i| i.verify_ca()), 8);
}

#[test]
fn corpus_verifies_with_the_cache_nixos_org_key() {
    let trusted = cache_nixos_org();
    for (i, doc) in corpus().iter().enumerate() {
        let info = parse_ok(doc);
        assert_eq!(
            info.verify(&trusted),
            Ok("cache.nixos.org-1"),
            "document {i}"
        );
        assert_eq!(info.count_valid_signatures(&trusted), 1, "document {i}");
    }
}

/// The next nix32 digit after `c`, so a hash part stays valid when changed.
fn next_nix32(c: u8) -> u8 {
    let alphabet = nixferry::hash::nix32::ALPHABET;
    let i = alphabet.iter().position(|&d| d == c).unwrap();
    alphabet[(i + 1) % 32]
}

/// Replaces the value of the first `key` line.
fn replace_value(doc: &str, key: &str, f: impl FnOnce(&str) -> String) -> String {
    let prefix = format!("{key}: ");
    let mut f = Some(f);
    let mut out = String::new();
    for line in doc.split_inclusive('\n') {
        match (
            line.strip_prefix(&prefix),
            f.take_if(|_| line.starts_with(&prefix)),
        ) {
            (Some(value), Some(f)) => {
                out.push_str(&prefix);
                out.push_str(&f(value.strip_suffix('\n').unwrap()));
                out.push('\n');
            }
            _ => out.push_str(line),
        }
    }
    assert!(f.is_none(), "no {key} line");
    out
}

/// Changes the first character of the hash part of a base name or path.
fn alter_hash_part(path: &str) -> String {
    let start = path.rfind('/').map_or(0, |i| i + 1);
    let mut bytes = path.as_bytes().to_vec();
    bytes[start] = next_nix32(bytes[start]);
    String::from_utf8(bytes).unwrap()
}

/// Every change to a signed field, applied to `doc`: (what, changed doc).
fn signed_field_mutations(doc: &str) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (
            "store path",
            replace_value(doc, "StorePath", alter_hash_part),
        ),
        (
            "NarHash",
            replace_value(doc, "NarHash", |v| {
                let mut bytes = v.as_bytes().to_vec();
                let last = bytes.len() - 1;
                bytes[last] = next_nix32(bytes[last]);
                String::from_utf8(bytes).unwrap()
            }),
        ),
        (
            "NarSize",
            replace_value(doc, "NarSize", |v| {
                (v.parse::<u64>().unwrap() + 1).to_string()
            }),
        ),
        (
            "added reference",
            replace_value(doc, "References", |v| {
                let extra = "00000000000000000000000000000000-added";
                if v.is_empty() {
                    extra.to_owned()
                } else {
                    format!("{v} {extra}")
                }
            }),
        ),
    ];
    let refs: Vec<&str> = doc
        .lines()
        .find_map(|l| l.strip_prefix("References: "))
        .unwrap()
        .split(' ')
        .filter(|r| !r.is_empty())
        .collect();
    if let Some((first, rest)) = refs.split_first() {
        let rest = rest.join(" ");
        let removed = rest.clone();
        out.push((
            "removed reference",
            replace_value(doc, "References", |_| removed),
        ));
        // A trailing space when `rest` is empty is fine: extra spaces are.
        let altered = format!("{} {rest}", alter_hash_part(first));
        out.push((
            "altered reference",
            replace_value(doc, "References", |_| altered),
        ));
    }
    out
}

#[test]
fn corpus_changing_a_signed_field_breaks_the_signature() {
    let trusted = cache_nixos_org();
    let bad = Err(VerifyError::BadSignature {
        key_name: "cache.nixos.org-1".into(),
    });
    for (i, doc) in corpus().iter().enumerate() {
        for (what, changed) in signed_field_mutations(doc) {
            let info = parse_ok(&changed);
            assert_eq!(info.verify(&trusted), bad, "document {i}: {what}");
        }
    }
}

#[test]
fn changing_unsigned_fields_keeps_the_signature() {
    // Deriver, URL, Compression, FileHash, FileSize, System and CA are not
    // in the fingerprint (docs/formats.md §4.2).
    let trusted = nixspec_key();
    let doc = text_vector(BASELINE);
    let changes = [
        replace_value(&doc, "URL", |_| "nar/elsewhere.nar.xz".into()),
        replace_value(&doc, "Compression", |_| "bzip2".into()),
        replace_value(&doc, "FileSize", |_| "1".into()),
        replace_value(&doc, "Deriver", |_| "unknown-deriver".into()),
        doc.replace("Sig:", "System: x86_64-linux\nSig:"),
        format!("{doc}CA: fixed:r:sha256:11q31cdn7bvbbh7dx0ajqzw7rll1pyhrkjq75pdy60c7mqc519c3\n"),
    ];
    for changed in changes {
        assert_eq!(
            parse_ok(&changed).verify(&trusted),
            Ok("nixspec-test-1"),
            "{changed}"
        );
    }
}

#[test]
fn corpus_without_signatures_or_with_unknown_keys() {
    let trusted = cache_nixos_org();
    for doc in &corpus() {
        let unsigned_text: String = doc
            .split_inclusive('\n')
            .filter(|l| !l.starts_with("Sig: "))
            .collect();
        let unsigned = parse_ok(&unsigned_text);
        assert_eq!(unsigned.verify(&trusted), Err(VerifyError::NoSignatures));
        // Removing the signatures of a parsed narinfo gives the same text.
        let mut cleared = parse_ok(doc);
        cleared.clear_signatures();
        assert_eq!(cleared, unsigned);

        let foreign = parse_ok(&doc.replace("Sig: cache.nixos.org-1:", "Sig: someone-else-1:"));
        assert_eq!(
            foreign.verify(&trusted),
            Err(VerifyError::UntrustedKeys {
                key_names: vec!["someone-else-1".into()]
            })
        );
        assert_eq!(foreign.count_valid_signatures(&trusted), 0);
    }
}

// ---------------------------------------------------------------------------
// Every case of nix-2.8-narinfo-parser-results.txt, rebuilt from its
// description and applied to BASELINE. Each says what 2.8 did.

/// The baseline's lines without the one with `key`.
fn without(key: &str) -> String {
    text_vector(BASELINE)
        .split_inclusive('\n')
        .filter(|l| !l.starts_with(&format!("{key}: ")))
        .collect()
}

fn baseline() -> NarInfo {
    parse_ok(&text_vector(BASELINE))
}

#[test]
fn nix_2_8_case_baseline() {
    // 2.8: parsed; 2 refs, 1 sig, download size 296.
    let info = baseline();
    assert_eq!(info.references().len(), 2);
    assert_eq!(info.signatures().count(), 1);
    assert_eq!(info.file_size(), Some(296));
}

#[test]
fn nix_2_8_case_unknown_fields_appended() {
    // 2.8: parsed, fields ignored. nixferry: the same, and they are kept.
    let text = format!("{}Foo: bar\nX-Other: with: colons\n", text_vector(BASELINE));
    let info = parse_ok(&text);
    assert_eq!(
        info.unknown_fields().collect::<Vec<_>>(),
        [("Foo", "bar"), ("X-Other", "with: colons")]
    );
    assert_eq!(info.render(), text);
    assert_eq!(info.fingerprint(), baseline().fingerprint());
}

#[test]
fn nix_2_8_cases_missing_required_fields() {
    // 2.8: "corrupt" for each. nixferry: the same, naming the field.
    for field in [Field::Url, Field::NarSize, Field::NarHash, Field::StorePath] {
        assert_eq!(
            parse_err(&without(field.key())),
            NarInfoError::MissingField(field)
        );
    }
}

#[test]
fn nix_2_8_case_missing_file_hash_and_size() {
    // 2.8: parsed, download size unknown. nixferry: the same.
    let text: String = without("FileHash")
        .split_inclusive('\n')
        .filter(|l| !l.starts_with("FileSize: "))
        .collect();
    let info = parse_ok(&text);
    assert_eq!((info.file_hash(), info.file_size()), (None, None));
    assert_eq!(info.verify(&nixspec_key()), Ok("nixspec-test-1"));
}

#[test]
fn nix_2_8_case_missing_references() {
    // 2.8: parsed, 0 refs. nixferry: the same (the signature then fails,
    // since the references are signed).
    let info = parse_ok(&without("References"));
    assert!(info.references().is_empty());
}

#[test]
fn nix_2_8_case_missing_compression() {
    // 2.8: parsed; bzip2 assumed, and the xz file still unpacked because
    // libarchive sniffs. nixferry: Bzip2, as declared by default; the NAR
    // reader may sniff like Nix (docs/formats.md §3.4).
    assert_eq!(
        parse_ok(&without("Compression")).compression(),
        &Compression::Bzip2
    );
    let empty = replace_value(&text_vector(BASELINE), "Compression", |_| String::new());
    assert_eq!(parse_ok(&empty).compression(), &Compression::Bzip2);
}

#[test]
fn nix_2_8_case_compression_bzip2_for_an_xz_file() {
    // 2.8: parsed and unpacked (sniffed). nixferry: parsed as declared.
    let text = replace_value(&text_vector(BASELINE), "Compression", |_| "bzip2".into());
    assert_eq!(parse_ok(&text).compression(), &Compression::Bzip2);
}

#[test]
fn nix_2_8_case_compression_none_for_an_xz_file() {
    // 2.8: parsed; fetching failed later with "bad archive". nixferry:
    // parsed, and `check` already sees that FileHash is not NarHash.
    let text = replace_value(&text_vector(BASELINE), "Compression", |_| "none".into());
    let info = parse_ok(&text);
    assert_eq!(info.compression(), &Compression::None);
    assert!(matches!(
        info.check(),
        Err(NarInfoError::Inconsistent(
            Inconsistency::FileHashNotNarHash { .. }
        ))
    ));
}

#[test]
fn nix_2_8_case_fields_reversed() {
    // 2.8: parsed, same values. nixferry: the same, rendered as given.
    let text: String = text_vector(BASELINE).split_inclusive('\n').rev().collect();
    let info = parse_ok(&text);
    assert_eq!(info.render(), text);
    assert_eq!(info.fields(), baseline().fields());
    assert_eq!(info.verify(&nixspec_key()), Ok("nixspec-test-1"));
}

#[test]
fn nix_2_8_case_no_trailing_newline() {
    // 2.8: corrupt. nixferry: the same, with the line.
    let text = text_vector(BASELINE);
    assert_eq!(
        parse_err(text.strip_suffix('\n').unwrap()),
        NarInfoError::MissingNewline { line: 10 }
    );
}

#[test]
fn nix_2_8_case_crlf() {
    // 2.8: "store path … contains illegal character" (the \r). nixferry:
    // rejected at the first \r, with a message that says CRLF.
    let text = text_vector(BASELINE).replace('\n', "\r\n");
    let err = parse_err(&text);
    assert_eq!(err, NarInfoError::CarriageReturn { line: 1 });
    assert!(err.to_string().contains("CRLF"));
}

#[test]
fn nix_2_8_case_url_without_space() {
    // 2.8: parsed with URL "ar/…": the first value character was dropped.
    // nixferry: rejected rather than silently misread.
    let text = text_vector(BASELINE).replace("URL: nar/", "URL:nar/");
    assert_eq!(parse_err(&text), NarInfoError::MissingSpace { line: 2 });
}

#[test]
fn nix_2_8_cases_nar_hash_sri_and_base16() {
    // 2.8: both parsed, to the same hash. nixferry: the same.
    let want = *baseline().nar_hash();
    for form in [want.to_sri(), want.to_prefixed_hex()] {
        let text = replace_value(&text_vector(BASELINE), "NarHash", |_| form.clone());
        let info = parse_ok(&text);
        assert_eq!(info.nar_hash(), &want);
        assert_eq!(info.render(), text);
        // The fingerprint always uses nix32, so the signature still holds.
        assert_eq!(info.verify(&nixspec_key()), Ok("nixspec-test-1"));
    }
}

#[test]
fn nix_2_8_case_nar_hash_without_type() {
    // 2.8: corrupt. nixferry: the same.
    let text = replace_value(&text_vector(BASELINE), "NarHash", |v| {
        v.strip_prefix("sha256:").unwrap().to_owned()
    });
    assert!(matches!(
        parse_err(&text),
        NarInfoError::InvalidValue {
            line: 6,
            field: Field::NarHash,
            error: ValueError::Hash(HashError::MissingAlgo(_)),
        }
    ));
}

#[test]
fn nix_2_8_case_unknown_deriver() {
    // 2.8: parsed, no deriver. nixferry: the same.
    let text = replace_value(&text_vector(BASELINE), "Deriver", |_| {
        "unknown-deriver".into()
    });
    let info = parse_ok(&text);
    assert_eq!(info.deriver(), None);
    assert_eq!(info.render(), text);
}

#[test]
fn nix_2_8_case_duplicate_nar_size() {
    // 2.8: parsed, the later value (999) wins. nixferry: rejected, because
    // a reader taking the first copy would see another narinfo.
    let text = text_vector(BASELINE).replace("NarSize: 808\n", "NarSize: 808\nNarSize: 999\n");
    assert_eq!(
        parse_err(&text),
        NarInfoError::DuplicateField {
            line: 8,
            field: Field::NarSize,
            first: 7
        }
    );
}

#[test]
fn nix_2_8_case_duplicate_references() {
    // 2.8: corrupt (the first was non-empty). nixferry: the same, and also
    // when the first is empty.
    let text = format!(
        "{}References: 3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt\n",
        text_vector(BASELINE)
    );
    assert!(matches!(
        parse_err(&text),
        NarInfoError::DuplicateField {
            line: 11,
            field: Field::References,
            first: 8
        }
    ));
    let empty_first = format!(
        "{}References: x\n",
        without("References").replace("NarSize: 808\n", "NarSize: 808\nReferences: \n")
    );
    assert!(matches!(
        parse_err(&empty_first),
        NarInfoError::DuplicateField {
            field: Field::References,
            ..
        }
    ));
}

#[test]
fn nix_2_8_case_duplicate_ca() {
    // 2.8: corrupt. nixferry: the same.
    let ca = "CA: fixed:r:sha256:11q31cdn7bvbbh7dx0ajqzw7rll1pyhrkjq75pdy60c7mqc519c3\n";
    let text = format!("{}{ca}{ca}", text_vector(BASELINE));
    assert_eq!(
        parse_err(&text),
        NarInfoError::DuplicateField {
            line: 12,
            field: Field::Ca,
            first: 11
        }
    );
}

#[test]
fn nix_2_8_case_empty_ca() {
    // 2.8: parsed, no CA. nixferry: the same, and rendered as given.
    let text = format!("{}CA: \n", text_vector(BASELINE));
    let info = parse_ok(&text);
    assert_eq!(info.ca(), None);
    assert_eq!(info.render(), text);
}

#[test]
fn nix_2_8_case_system_and_bogus_sig() {
    // 2.8: parsed, 2 sigs. nixferry: the same; the bogus one just does not
    // verify, and the good one still does.
    let text = text_vector(BASELINE).replace(
        "Sig:",
        "System: x86_64-linux\nSig: bogus-1:notbase64!!\nSig:",
    );
    let info = parse_ok(&text);
    assert_eq!(info.system(), Some("x86_64-linux"));
    assert_eq!(info.signatures().count(), 2);
    assert_eq!(info.verify(&nixspec_key()), Ok("nixspec-test-1"));
    assert_eq!(info.render(), text);
}

#[test]
fn nix_2_8_case_store_path_name_differs() {
    // 2.8: `path-info` showed it, `nix store cat` then said the requested
    // path is not valid. nixferry: parsing cannot know the requested path,
    // so the narinfo parses; the cache layer compares `store_path()`, and the
    // signature (which covers the path) fails.
    let text = text_vector(BASELINE).replace(
        "StorePath: /nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv",
        "StorePath: /nix/store/jgs69zx98r4fpm73d82y357pps9llcic-other-name",
    );
    let info = parse_ok(&text);
    assert_eq!(info.store_path().name(), "other-name");
    assert!(matches!(
        info.verify(&nixspec_key()),
        Err(VerifyError::BadSignature { .. })
    ));
}

#[test]
fn nix_2_8_case_references_extra_spaces() {
    // 2.8: parsed, 2 refs. nixferry: the same, rendered as given.
    let text = replace_value(&text_vector(BASELINE), "References", |v| {
        format!("  {}  ", v.replace(' ', "   "))
    });
    let info = parse_ok(&text);
    assert_eq!(info.references(), baseline().references());
    assert_eq!(info.render(), text);
    assert_eq!(info.verify(&nixspec_key()), Ok("nixspec-test-1"));
}

#[test]
fn nix_2_8_case_references_full_path() {
    // 2.8: "illegal base-32 character '/'". nixferry: rejected too.
    let text = text_vector(BASELINE).replace("References: 3pl2", "References: /nix/store/3pl2");
    assert!(matches!(
        parse_err(&text),
        NarInfoError::InvalidValue {
            line: 8,
            field: Field::References,
            error: ValueError::StorePath(_),
        }
    ));
}

#[test]
fn nix_2_8_case_trailing_blank_line() {
    // 2.8: corrupt. nixferry: the same, with the line.
    let text = format!("{}\n", text_vector(BASELINE));
    assert_eq!(parse_err(&text), NarInfoError::BlankLine { line: 11 });
}

// ---------------------------------------------------------------------------
// Further strictness (see the table in the module docs)

#[test]
fn every_scalar_field_may_appear_once() {
    let text = text_vector(BASELINE);
    for line in text.lines().filter(|l| !l.starts_with("Sig:")) {
        let doubled = text.replace(&format!("{line}\n"), &format!("{line}\n{line}\n"));
        assert!(
            matches!(parse_err(&doubled), NarInfoError::DuplicateField { .. }),
            "{line}"
        );
    }
    let sig = text.lines().find(|l| l.starts_with("Sig:")).unwrap();
    let two_sigs = format!("{text}{sig}\n");
    let info = parse_ok(&two_sigs);
    assert_eq!(info.signatures().count(), 2);
    // Nix counts distinct signatures.
    assert_eq!(info.count_valid_signatures(&nixspec_key()), 1);
}

#[test]
fn syntax_errors_name_the_line() {
    let base = text_vector(BASELINE);
    let cases: Vec<(String, NarInfoError)> = vec![
        (
            base.replace("FileSize: 296", "FileSize 296"),
            NarInfoError::MissingColon { line: 5 },
        ),
        (
            base.replace("NarSize: 808", "NarSize: 0"),
            NarInfoError::InvalidValue {
                line: 7,
                field: Field::NarSize,
                error: ValueError::Zero,
            },
        ),
        (
            base.replace("NarSize: 808", "NarSize: +808"),
            NarInfoError::InvalidValue {
                line: 7,
                field: Field::NarSize,
                error: ValueError::NotANumber("+808".into()),
            },
        ),
        (
            base.replace("FileSize: 296", "FileSize: -1"),
            NarInfoError::InvalidValue {
                line: 5,
                field: Field::FileSize,
                error: ValueError::NotANumber("-1".into()),
            },
        ),
        (
            replace_value(&base, "URL", |_| String::new()),
            NarInfoError::InvalidValue {
                line: 2,
                field: Field::Url,
                error: ValueError::Empty,
            },
        ),
        (
            replace_value(&base, "Deriver", |_| String::new()),
            NarInfoError::InvalidValue {
                line: 9,
                field: Field::Deriver,
                error: ValueError::StorePath(StorePathError::TooShort(String::new())),
            },
        ),
        (
            base.replace(
                "nixspec-hi.txt jgs",
                "nixspec-hi.txt 3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt jgs",
            ),
            NarInfoError::InvalidValue {
                line: 8,
                field: Field::References,
                error: ValueError::DuplicateReference(
                    "3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt".into(),
                ),
            },
        ),
    ];
    for (text, want) in cases {
        assert_eq!(parse_err(&text), want, "{text}");
    }
    let message = parse_err(&base.replace("NarSize: 808", "NarSize: 0")).to_string();
    assert_eq!(message, "line 7: invalid NarSize: must not be zero");
}

#[test]
fn store_paths_follow_the_store_dir() {
    let text = text_vector(BASELINE);
    let gnu = StoreDir::new("/gnu/store").unwrap();
    assert!(matches!(
        NarInfo::parse_in(&text, &gnu),
        Err(NarInfoError::InvalidValue {
            line: 1,
            field: Field::StorePath,
            error: ValueError::StorePath(StorePathError::NotInStore { .. })
        })
    ));
    let info = NarInfo::parse_in(&text.replace("/nix/store/", "/gnu/store/"), &gnu).unwrap();
    assert_eq!(info.store_dir(), &gnu);
    assert!(info.fingerprint().starts_with("1;/gnu/store/jgs69"));
    let refs = "/gnu/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt,\
                /gnu/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv";
    assert!(info.fingerprint().ends_with(&format!(";{refs}")));
}

#[test]
fn size_limits() {
    let text = text_vector(BASELINE);
    let padding = "X".repeat(MAX_LINE_LEN);
    let long_line = format!("{text}Pad: {padding}\n");
    assert_eq!(
        parse_err(&long_line),
        NarInfoError::LineTooLong {
            line: 11,
            len: MAX_LINE_LEN + 5,
            max: MAX_LINE_LEN
        }
    );
    let many_lines = format!("{text}{}", "Pad: x\n".repeat(MAX_NARINFO_LEN / 7));
    assert!(matches!(
        parse_err(&many_lines),
        NarInfoError::TooLarge { .. }
    ));
    // Just under the limits is fine.
    let fits = format!("{text}Pad: {}\n", &padding[5..]);
    assert_eq!(parse_ok(&fits).render(), fits);
}

#[test]
fn check_flags_inconsistent_fields() {
    let none = text_vector("narinfo/none-rsjiq56rggpz3zk7marf4by5qgdya80h.narinfo");
    let inconsistent = |text: &str| match parse_ok(text).check() {
        Err(NarInfoError::Inconsistent(i)) => i,
        other => panic!("{other:?}\n{text}"),
    };
    assert!(matches!(
        inconsistent(&none.replace("FileSize: 1648", "FileSize: 1649")),
        Inconsistency::FileSizeNotNarSize {
            file_size: 1649,
            nar_size: 1648
        }
    ));
    // A CA for other contents: the path no longer follows from it.
    let other_ca = replace_value(&none, "CA", |_| {
        "fixed:r:sha256:1z63q11s9hppsav4x9kh767bqr7ypmw7ncg3wjncgs4lijvx8li2".into()
    });
    assert!(matches!(
        inconsistent(&other_ca),
        Inconsistency::CaDoesNotGivePath { .. }
    ));
    assert!(!parse_ok(&other_ca).verify_ca());
    // The CA holds for the path, but the NAR hash is another one.
    let xz = text_vector("narinfo/ca-deriv-vb25pbsk0l6qfgavswnl686wq0grydhc.narinfo")
        .replace("Compression: none", "Compression: xz")
        .replace("NarHash: sha256:14b0", "NarHash: sha256:04b0");
    assert!(matches!(
        inconsistent(&xz),
        Inconsistency::CaNotNarHash { .. }
    ));
    let base = text_vector(BASELINE);
    assert!(matches!(
        inconsistent(&replace_value(&base, "URL", |_| "../../etc/passwd".into())),
        Inconsistency::UnsafeUrl { .. }
    ));
    assert!(matches!(
        inconsistent(&replace_value(&base, "URL", |_| "https://evil.example/x".into())),
        Inconsistency::UnsafeUrl { .. }
    ));
    assert!(matches!(
        inconsistent(&replace_value(&base, "Deriver", |_| {
            "8blcypg4m49dd0i8ac2radb217vsrwgs-nixspec-drv".into()
        })),
        Inconsistency::DeriverNotDerivation(_)
    ));
    let sha512 = NixHash::digest(HashAlgo::Sha512, b"x").to_string();
    assert!(matches!(
        inconsistent(&replace_value(&base, "NarHash", |_| sha512)),
        Inconsistency::NarHashNotSha256(HashAlgo::Sha512)
    ));
}

// ---------------------------------------------------------------------------
// Signing and writing

fn secret(rel: &str) -> SecretKey {
    SecretKey::parse(&text_vector(rel)).unwrap()
}

#[test]
fn resigning_with_pyspec_reproduces_the_vector() {
    // Ed25519 is deterministic, and the Sig line goes where Nix writes it.
    let mut info = baseline();
    info.clear_signatures();
    info.sign(&secret("keys/pyspec-1.secret"));
    assert_eq!(
        info.render(),
        text_vector("narinfo/pyspec-signed-jgs69zx98r4fpm73d82y357pps9llcic.narinfo")
    );
}

#[test]
fn resigning_every_vector_reproduces_it() {
    // Includes CA narinfos, where the Sig line goes before CA.
    let key = secret("keys/nixspec-test-1.secret");
    for rel in vector_narinfos()
        .into_iter()
        .filter(|r| !r.contains("pyspec"))
    {
        let text = text_vector(&rel);
        let mut info = parse_ok(&text);
        info.clear_signatures();
        assert!(!info.render().contains("Sig:"));
        info.sign(&key);
        assert_eq!(info.render(), text, "{rel}");
        // Signing again replaces the signature by the same key.
        info.sign(&key);
        assert_eq!(info.render(), text, "{rel}");
    }
}

#[test]
fn signatures_stay_sorted() {
    let nixspec = secret("keys/nixspec-test-1.secret");
    let pyspec = secret("keys/pyspec-1.secret");
    let zzz = SecretKey::from_seed("zzz-1", &[9; 32]).unwrap();
    let mut info = baseline();
    info.sign(&zzz);
    info.sign(&pyspec);
    let sigs: Vec<&str> = info.signatures().collect();
    assert_eq!(sigs.len(), 3);
    assert!(sigs.windows(2).all(|w| w[0] < w[1]), "{sigs:?}");
    assert_eq!(info.render(), NarInfo::new(info.fields()).unwrap().render());
    let all = TrustedKeys::from_keys([nixspec.public(), pyspec.public(), zzz.public()]);
    assert_eq!(info.count_valid_signatures(&all), 3);
    // The text stays parseable and equal to what a fresh parse sees.
    assert_eq!(parse_ok(&info.render()), info);
}

#[test]
fn sign_without_signatures_goes_after_the_last_field_before_sig() {
    // Unknown fields after the Nix fields stay after the new Sig line.
    let text = format!("{}X-Extra: 1\n", without("Sig"));
    let mut info = parse_ok(&text);
    info.sign(&secret("keys/pyspec-1.secret"));
    let rendered = info.render();
    let keys: Vec<&str> = rendered
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(keys[keys.len() - 3..], ["Deriver", "Sig", "X-Extra"]);
}

#[test]
fn new_writes_nix_2_8_field_order() {
    let info = baseline();
    let mut fields = info.fields();
    fields.references.reverse();
    fields.references.push(fields.references[0].clone());
    fields.system = Some("x86_64-linux".into());
    fields.ca = Some(
        ContentAddress::parse("text:sha256:1vy5x59j2yr2n19agvfq63iq3vvmdx8c4imw8srl31iczbsa68g3")
            .unwrap(),
    );
    fields.sigs.push("a-1:AAAA".into());
    let written = NarInfo::new(fields).unwrap().render();
    let keys: Vec<&str> = written
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "StorePath",
            "URL",
            "Compression",
            "FileHash",
            "FileSize",
            "NarHash",
            "NarSize",
            "References",
            "Deriver",
            "System",
            "Sig",
            "Sig",
            "CA"
        ]
    );
    // References sorted and deduplicated, as Nix's set.
    let refs = "3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt \
                jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv";
    assert!(written.contains(&format!("\nReferences: {refs}\n")));

    let empty = NarInfoFields {
        references: vec![],
        ..info.fields()
    };
    assert!(NarInfo::new(empty)
        .unwrap()
        .render()
        .contains("\nReferences: \n"));
}

#[test]
fn new_rejects_what_cannot_be_written() {
    let fields = baseline().fields();
    let cases = [
        NarInfoFields {
            url: "nar/x\nNarSize: 1".into(),
            ..fields.clone()
        },
        NarInfoFields {
            system: Some("a\r".into()),
            ..fields.clone()
        },
        NarInfoFields {
            sigs: vec!["k:\nCA: x".into()],
            ..fields.clone()
        },
        NarInfoFields {
            compression: Compression::Other(String::new()),
            ..fields.clone()
        },
    ];
    for bad in cases {
        assert!(matches!(
            NarInfo::new(bad),
            Err(NarInfoError::Unwritable { .. })
        ));
    }
    assert!(matches!(
        NarInfo::new(NarInfoFields {
            nar_size: 0,
            ..fields.clone()
        }),
        Err(NarInfoError::InvalidValue {
            field: Field::NarSize,
            error: ValueError::Zero,
            ..
        })
    ));
    assert!(matches!(
        NarInfo::new(NarInfoFields {
            url: String::new(),
            ..fields
        }),
        Err(NarInfoError::InvalidValue {
            field: Field::Url,
            error: ValueError::Empty,
            ..
        })
    ));
}

#[test]
fn free_fingerprint_matches_the_vectors() {
    let fingerprints = expected_fingerprints();
    let dir = StoreDir::default();
    let path = StorePath::from_base_name("jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv").unwrap();
    let hi = StorePath::from_base_name("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt").unwrap();
    let hash =
        NixHash::parse("sha256:11q31cdn7bvbbh7dx0ajqzw7rll1pyhrkjq75pdy60c7mqc519c3").unwrap();
    // Unsorted and repeated references give the same fingerprint.
    let refs = [path.clone(), hi.clone(), path.clone()];
    assert_eq!(
        fingerprint(&dir, &path, &hash, 808, &refs),
        fingerprints["/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv"]
    );
}

// ---------------------------------------------------------------------------
// Property tests

/// A valid base name: 32 nix32 characters, `-`, a name.
fn base_name() -> impl Strategy<Value = String> {
    ("[0-9a-df-np-sv-z]{32}", "[a-zA-Z0-9+._?=-]{0,20}")
        .prop_map(|(hash, name)| format!("{hash}-x{name}"))
}

fn nar_hash() -> impl Strategy<Value = String> {
    (any::<[u8; 32]>(), 0..3u8).prop_map(|(bytes, form)| {
        let h = NixHash::sha256(bytes);
        match form {
            0 => h.to_string(),
            1 => h.to_sri(),
            _ => h.to_prefixed_hex(),
        }
    })
}

/// A value that fits on a line.
fn free_text() -> impl Strategy<Value = String> {
    "[^\r\n]{0,30}"
}

/// A `(key, value)` line.
fn line(
    key: &'static str,
    value: impl Strategy<Value = String>,
) -> impl Strategy<Value = (String, String)> {
    value.prop_map(move |v| (key.to_owned(), v))
}

/// A `References` value: distinct base names in any order, maybe with
/// leading spaces.
fn references() -> impl Strategy<Value = String> {
    let refs = proptest::collection::btree_set(base_name(), 0..6)
        .prop_map(Vec::from_iter)
        .prop_shuffle();
    (refs, " {0,2}").prop_map(|(refs, pad)| format!("{pad}{}", refs.join(" ")))
}

/// The lines of a valid narinfo in any order, with optional and unknown
/// fields.
fn narinfo_lines() -> impl Strategy<Value = Vec<(String, String)>> {
    use proptest::collection::vec;
    use proptest::option::of;
    let number = |range: std::ops::Range<u64>| range.prop_map(|n| n.to_string());
    let required = (
        line(
            "StorePath",
            base_name().prop_map(|b| format!("/nix/store/{b}")),
        ),
        line("URL", "[a-z0-9/._-]{1,40}"),
        line("NarHash", nar_hash()),
        line("NarSize", number(1..u64::MAX)),
    );
    let optional = (
        of(line(
            "Compression",
            prop_oneof![Just(String::new()), "[a-z0-9]{1,8}"],
        )),
        of(line("FileHash", nar_hash())),
        of(line("FileSize", number(0..u64::MAX))),
        of(line("References", references())),
        of(line(
            "Deriver",
            prop_oneof![Just("unknown-deriver".to_owned()), base_name()],
        )),
        of(line("System", free_text())),
    );
    let repeated = (
        vec(line("Sig", free_text()), 0..3),
        vec(("X-[A-Za-z]{0,8}", free_text()), 0..3),
    );
    (required, optional, repeated)
        .prop_map(|((a, b, c, d), (e, f, g, h, i, j), (sigs, unknown))| {
            let mut lines = vec![a, b, c, d];
            lines.extend([e, f, g, h, i, j].into_iter().flatten());
            lines.extend(sigs);
            lines.extend(unknown);
            lines
        })
        .prop_shuffle()
}

fn join_lines(lines: &[(String, String)]) -> String {
    lines.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

proptest! {
    #[test]
    fn render_of_parse_is_identity(lines in narinfo_lines()) {
        let text = join_lines(&lines);
        let info = NarInfo::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(info.render(), text.clone());
        let value = |key: &str| lines.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        prop_assert_eq!(Some(info.url()), value("URL"));
        let nar_size = info.nar_size().to_string();
        prop_assert_eq!(Some(nar_size.as_str()), value("NarSize"));
        prop_assert_eq!(info.system(), value("System"));
        let sig_lines = lines.iter().filter(|(k, _)| k == "Sig").count();
        prop_assert_eq!(info.signatures().count(), sig_lines);
        // Written canonically and read back, the values are the same.
        let canonical = NarInfo::new(info.fields()).unwrap();
        prop_assert_eq!(NarInfo::parse(&canonical.render()).unwrap(), canonical.clone());
        let mut refs = info.references().to_vec();
        refs.sort();
        prop_assert_eq!(canonical.references(), &refs[..]);
        prop_assert_eq!(canonical.fingerprint(), info.fingerprint());
    }

    #[test]
    fn sign_keeps_the_document_parseable(lines in narinfo_lines(), seed in any::<[u8; 32]>()) {
        let mut info = NarInfo::parse(&join_lines(&lines)).unwrap();
        let key = SecretKey::from_seed("prop-1", &seed).unwrap();
        info.sign(&key);
        let reparsed = NarInfo::parse(&info.render()).unwrap();
        prop_assert_eq!(&reparsed, &info);
        let trusted = TrustedKeys::from_keys([key.public()]);
        prop_assert_eq!(info.verify(&trusted), Ok("prop-1"));
    }

    #[test]
    fn parse_never_panics_on_any_string(text in "(?s).{0,400}") {
        let _ = NarInfo::parse(&text);
        let _ = CacheInfo::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_mutated_narinfos(
        lines in narinfo_lines(),
        at in any::<prop::sample::Index>(),
        insert in "(?s).{0,12}",
        cut in 0..20usize,
    ) {
        let text = join_lines(&lines);
        let mut at = at.index(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let mut end = (at + cut).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mutated = format!("{}{insert}{}", &text[..at], &text[end..]);
        if let Ok(info) = NarInfo::parse(&mutated) {
            prop_assert_eq!(info.render(), mutated);
            let _ = info.check();
            let _ = info.fingerprint();
        }
    }

    #[test]
    fn fuzz_entry_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        nixferry::fuzzing::narinfo_parse(&data);
    }
}

#[test]
fn signatures_are_removed_by_key_name() {
    let mut info = parse_ok(&text_vector(BASELINE));
    let a = SecretKey::generate("remove-a-1").unwrap();
    let b = SecretKey::generate("remove-b-1").unwrap();
    info.sign(&a);
    info.sign(&b);
    let before = info.signatures().count();
    assert_eq!(info.remove_signatures_by("remove-a-1"), 1);
    assert_eq!(info.remove_signatures_by("remove-a-1"), 0);
    assert_eq!(info.signatures().count(), before - 1);
    assert!(info.signatures().all(|s| !s.starts_with("remove-a-1:")));
    // What is left still parses and verifies.
    let again = parse_ok(info.as_str());
    let mut trusted = TrustedKeys::new();
    trusted.add(b.public());
    assert_eq!(again.verify(&trusted), Ok("remove-b-1"));
}
