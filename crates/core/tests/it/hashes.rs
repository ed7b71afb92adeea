//! Hash encodings and store path computation against Nix's vectors.

use nixferry::hash::{nix32, HashAlgo, NixHash};
use nixferry::store_path::{ContentAddress, StoreDir, StorePath};

use crate::common::json_vector;

/// Every digest in `hashes/base32-sri-vectors.json` prints and parses in
/// each of Nix's forms.
#[test]
fn base32_and_sri_vectors() {
    let v = json_vector("hashes/base32-sri-vectors.json");
    let cases = v.as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let algo = HashAlgo::parse(case["algo"].as_str().unwrap()).unwrap();
        let input = case["input"].as_str().unwrap();
        let h = NixHash::digest(algo, input.as_bytes());
        assert_eq!(h.to_hex(), case["hex"].as_str().unwrap(), "{case}");
        assert_eq!(h.to_nix32(), case["nix32"].as_str().unwrap(), "{case}");
        assert_eq!(h.to_sri(), case["sri"].as_str().unwrap(), "{case}");
        for form in [
            format!("{algo}:{}", case["hex"].as_str().unwrap()),
            format!("{algo}:{}", case["nix32"].as_str().unwrap()),
            case["sri"].as_str().unwrap().to_owned(),
        ] {
            assert_eq!(NixHash::parse(&form).unwrap(), h, "{form}");
        }
        assert_eq!(
            nix32::decode(case["nix32"].as_str().unwrap(), algo.size()).unwrap(),
            h.as_bytes()
        );
    }
}

/// Splits `<kind>:sha256:<hex>:<dir>:<name>` into its parts.
fn split_fingerprint(fp: &str) -> (&str, NixHash, &str, &str) {
    let at = fp.find(":sha256:").unwrap();
    let kind = &fp[..at];
    let rest = &fp[at + 1..];
    let (algo_hex, rest) = rest.split_at(7 + 64);
    let (dir, name) = rest[1..].rsplit_once(':').unwrap();
    (kind, NixHash::parse(algo_hex).unwrap(), dir, name)
}

/// Every record of `hashes/store-paths.json`: the fingerprint gives the
/// path Nix made, and where a CA is recorded, the CA alone gives it too.
#[test]
fn store_path_vectors() {
    let v = json_vector("hashes/store-paths.json");
    let records = v.as_array().unwrap();
    assert_eq!(records.len(), 8);
    for r in records {
        let fp = r["fingerprint"].as_str().unwrap();
        let want = r["nix_2_8_path"].as_str().unwrap();
        let (kind, inner, dir, name) = split_fingerprint(fp);
        let store = StoreDir::new(dir).unwrap();
        let got = store.make_path(kind, &inner, name).unwrap();
        assert_eq!(store.full(&got), want, "{fp}");
        assert_eq!(
            nixferry::hash::to_hex(&got.digest()),
            r["compressed_20_bytes"].as_str().unwrap()
        );

        let Some(ca) = r.get("ca").and_then(|c| c.as_str()) else {
            continue;
        };
        let ca = ContentAddress::parse(ca).unwrap();
        let mut parts = kind.split(':');
        parts.next();
        let mut refs: Vec<StorePath> = Vec::new();
        let mut self_ref = false;
        for p in parts {
            if p == "self" {
                self_ref = true;
            } else if p.starts_with('/') {
                refs.push(store.parse(p).unwrap());
            }
        }
        let by_ca = store.make_ca_path(name, &ca, &refs, self_ref).unwrap();
        assert_eq!(store.full(&by_ca), want, "CA {ca}");
        assert!(store.verify_ca(&by_ca, &ca, &refs));
    }
}

/// The output of the input-addressed derivation, from its hash modulo.
#[test]
fn derivation_output_path() {
    let store = StoreDir::default();
    let h =
        NixHash::parse("sha256:9102570a2ae867a6307de591f93bd6b908ee2604763021a35495de97d49e763f")
            .unwrap();
    let p = store.make_output_path("out", &h, "nixspec-drv").unwrap();
    assert_eq!(
        store.full(&p),
        "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv"
    );
}

/// A CA claim with the wrong hash does not verify.
#[test]
fn wrong_ca_does_not_verify() {
    let store = StoreDir::default();
    let p = store
        .parse("/nix/store/rsjiq56rggpz3zk7marf4by5qgdya80h-nixspec-tree")
        .unwrap();
    let good = ContentAddress::parse(
        "fixed:r:sha256:02399y2ql0y01nmfs8n5q3kjcs64gaiwdcvbj5sc6m8lm6km2f3d",
    )
    .unwrap();
    assert!(store.verify_ca(&p, &good, []));
    let bad = ContentAddress::parse(
        "fixed:r:sha256:12399y2ql0y01nmfs8n5q3kjcs64gaiwdcvbj5sc6m8lm6km2f3d",
    )
    .unwrap();
    assert!(!store.verify_ca(&p, &bad, []));
}
