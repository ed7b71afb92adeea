//! Tests: signing.
//!
//! The key files of `vectors/keys/` (one made by Nix, one deterministic),
//! the signatures of `vectors/narinfo/fingerprints.json`, key generation,
//! and the parse errors.

use nixferry::hash::to_base64;
use nixferry::signing::{
    Kind, PublicKey, SecretKey, Signature, SigningError, TrustedKeys, VerifyError,
};
use proptest::prelude::*;

use crate::common::{json_vector, read_vector};

fn text_vector(rel: &str) -> String {
    String::from_utf8(read_vector(rel)).unwrap()
}

/// The key pairs of the vectors: (name, secret file text, public file text).
fn key_vectors() -> Vec<(&'static str, String, String)> {
    ["nixspec-test-1", "pyspec-1"]
        .into_iter()
        .map(|name| {
            (
                name,
                text_vector(&format!("keys/{name}.secret")),
                text_vector(&format!("keys/{name}.public")),
            )
        })
        .collect()
}

fn secret(name: &str) -> SecretKey {
    SecretKey::parse(&text_vector(&format!("keys/{name}.secret"))).unwrap()
}

#[test]
fn vector_keys_parse_and_match() {
    for (name, secret_text, public_text) in key_vectors() {
        let key = SecretKey::parse(&secret_text).unwrap();
        assert_eq!(key.name(), name);
        // Public files have no trailing newline; the public half matches.
        assert_eq!(key.public().to_string(), public_text);
        let public = PublicKey::parse(&public_text).unwrap();
        assert_eq!(public, key.public());
        assert_eq!(public.name(), name);
        // Written back as Nix writes it: no trailing newline.
        assert_eq!(key.to_file_string(), secret_text.trim_end());
    }
}

#[test]
fn pyspec_secret_ends_in_a_newline_which_is_accepted() {
    let text = text_vector("keys/pyspec-1.secret");
    assert!(text.ends_with('\n'));
    assert!(SecretKey::parse(&text).is_ok());
    // The deterministic key: seed 00 01 … 1f.
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let from_seed = SecretKey::from_seed("pyspec-1", &seed).unwrap();
    assert_eq!(from_seed.to_file_string(), text.trim_end());
    assert_eq!(
        from_seed.public().to_string(),
        "pyspec-1:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
    );
}

#[test]
fn signing_the_vector_fingerprints_reproduces_their_signatures() {
    // Ed25519 is deterministic: signing the same fingerprint with the same
    // key gives the signature Nix (or Python) wrote, byte for byte.
    let keys = [secret("nixspec-test-1"), secret("pyspec-1")];
    let json = json_vector("narinfo/fingerprints.json");
    let entries = json.as_array().unwrap();
    for entry in entries {
        let fingerprint = entry["fingerprint"].as_str().unwrap();
        for sig in entry["signatures"].as_array().unwrap() {
            let want = sig["sig"].as_str().unwrap();
            let key = keys
                .iter()
                .find(|k| want.starts_with(&format!("{}:", k.name())))
                .unwrap();
            assert_eq!(key.sign(fingerprint.as_bytes()).to_string(), want);
        }
    }
    assert_eq!(entries.len(), 8);
}

#[test]
fn vector_signatures_verify_and_fail_on_other_data() {
    let trusted = TrustedKeys::from_keys(
        key_vectors()
            .iter()
            .map(|(_, _, p)| PublicKey::parse(p).unwrap()),
    );
    for entry in json_vector("narinfo/fingerprints.json").as_array().unwrap() {
        let fingerprint = entry["fingerprint"].as_str().unwrap();
        for sig in entry["signatures"].as_array().unwrap() {
            let text = sig["sig"].as_str().unwrap();
            assert!(sig["valid"].as_bool().unwrap());
            let name = text.split(':').next().unwrap();
            assert_eq!(trusted.verify(fingerprint.as_bytes(), [text]), Ok(name));
            let parsed = Signature::parse(text).unwrap();
            assert_eq!(parsed.key_name(), name);
            assert_eq!(parsed.to_string(), text);
            assert!(trusted
                .get(name)
                .unwrap()
                .verify(fingerprint.as_bytes(), &parsed));
            let altered = format!("{fingerprint}x");
            assert_eq!(
                trusted.verify(altered.as_bytes(), [text]),
                Err(VerifyError::BadSignature {
                    key_name: name.into()
                })
            );
        }
    }
}

#[test]
fn generated_keys_have_nix_s_format() {
    let key = SecretKey::generate("test-cache-1").unwrap();
    let file = key.to_file_string();
    let (name, data) = file.split_once(':').unwrap();
    assert_eq!(name, "test-cache-1");
    assert!(!file.ends_with('\n'));
    let bytes = nixferry::hash::from_base64(data).unwrap();
    assert_eq!(bytes.len(), 64);
    // seed ‖ public key, as libsodium lays it out.
    let public = key.public();
    assert_eq!(bytes[32..], public.to_bytes());
    assert_eq!(
        public.to_string(),
        format!("test-cache-1:{}", to_base64(&public.to_bytes()))
    );
    // Both files parse back to the same key.
    let again = SecretKey::parse(&file).unwrap();
    assert_eq!(again.public(), public);
    assert_eq!(PublicKey::parse(&public.to_string()).unwrap(), public);
    let sig = key.sign(b"hello");
    assert!(public.verify(b"hello", &sig));
    // Fresh randomness each time.
    assert_ne!(
        SecretKey::generate("test-cache-1").unwrap().public(),
        public
    );
}

#[test]
fn generate_rejects_names_that_could_not_be_read_back() {
    for bad in ["", "a:b", "a b", "a\n", "tab\there", "nul\0"] {
        assert_eq!(
            SecretKey::generate(bad).unwrap_err(),
            SigningError::InvalidName(bad.into()),
            "{bad:?}"
        );
    }
    assert!(SecretKey::generate("cache.example.org-1").is_ok());
}

#[test]
fn debug_never_shows_the_secret() {
    let key = secret("nixspec-test-1");
    let secret_b64 = text_vector("keys/nixspec-test-1.secret");
    let secret_b64 = secret_b64.split_once(':').unwrap().1;
    let debug = format!("{key:?} {key:#?}");
    // Not even the seed half's first characters.
    assert!(!debug.contains(&secret_b64[..16]), "{debug}");
    assert!(debug.contains("nixspec-test-1"));
}

#[test]
fn parse_errors() {
    let b64 = |n: usize| to_base64(&vec![7u8; n]);
    let name = |s: &str| s.to_owned();
    // (input, error) for each kind.
    let secret_cases = [
        (
            "no-colon".to_owned(),
            SigningError::MissingColon(Kind::SecretKey),
        ),
        (
            format!(":{}", b64(64)),
            SigningError::EmptyName(Kind::SecretKey),
        ),
        (
            "k:".to_owned(),
            SigningError::EmptyData {
                kind: Kind::SecretKey,
                name: name("k"),
            },
        ),
        (
            "k:!!!!".to_owned(),
            SigningError::BadBase64 {
                kind: Kind::SecretKey,
                name: name("k"),
            },
        ),
        (
            format!("k:{}", b64(32)),
            SigningError::WrongLength {
                kind: Kind::SecretKey,
                name: name("k"),
                expected: 64,
                found: 32,
            },
        ),
        // 64 bytes whose second half is not the public key of the first.
        (
            format!("k:{}", b64(64)),
            SigningError::PublicHalfMismatch { name: name("k") },
        ),
    ];
    for (text, want) in secret_cases {
        assert_eq!(SecretKey::parse(&text).unwrap_err(), want, "{text}");
    }
    let public_cases = [
        ("k".to_owned(), SigningError::MissingColon(Kind::PublicKey)),
        // A secret key's 64 bytes: named as the mistake it is.
        (
            format!("k:{}", b64(64)),
            SigningError::SecretKeyGiven { name: name("k") },
        ),
        (
            format!("k:{}", b64(31)),
            SigningError::WrongLength {
                kind: Kind::PublicKey,
                name: name("k"),
                expected: 32,
                found: 31,
            },
        ),
        (
            format!("k:{} x", b64(32)),
            SigningError::BadBase64 {
                kind: Kind::PublicKey,
                name: name("k"),
            },
        ),
    ];
    for (text, want) in public_cases {
        assert_eq!(PublicKey::parse(&text).unwrap_err(), want, "{text}");
    }
    let sig_cases = [
        (
            format!(":{}", b64(64)),
            SigningError::EmptyName(Kind::Signature),
        ),
        (
            format!("k:{}", b64(63)),
            SigningError::WrongLength {
                kind: Kind::Signature,
                name: name("k"),
                expected: 64,
                found: 63,
            },
        ),
        // Signatures are taken exactly, without trimming.
        (
            format!("k:{}\n", b64(64)),
            SigningError::BadBase64 {
                kind: Kind::Signature,
                name: name("k"),
            },
        ),
    ];
    for (text, want) in sig_cases {
        assert_eq!(Signature::parse(&text).unwrap_err(), want, "{text}");
    }
    // Messages follow Nix's wording and never echo secret data.
    let message = SecretKey::parse(&format!("k:{}", b64(32)))
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "secret key 'k' is not valid: 32 bytes instead of 64"
    );
}

#[test]
fn base64_padding_is_optional_but_must_be_canonical() {
    let public = text_vector("keys/pyspec-1.public");
    let unpadded = public.trim_end_matches('=');
    assert_eq!(
        PublicKey::parse(unpadded).unwrap(),
        PublicKey::parse(&public).unwrap()
    );
    // Nix's decoder would stop at the first '='; nixferry rejects the rest.
    assert!(PublicKey::parse(&format!("{public}AAAA")).is_err());
    // Surrounding whitespace is trimmed for keys (files end in newlines).
    assert!(PublicKey::parse(&format!("  {public}\n")).is_ok());
}

#[test]
fn trusted_key_lists() {
    let list = format!(
        "  cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\n\t{}  ",
        text_vector("keys/pyspec-1.public")
    );
    let trusted = TrustedKeys::parse_list(&list).unwrap();
    assert_eq!(trusted.len(), 2);
    assert!(trusted.get("pyspec-1").is_some());
    assert!(trusted.get("nixspec-test-1").is_none());
    assert!(TrustedKeys::parse_list("").unwrap().is_empty());
    assert_eq!(
        TrustedKeys::parse_list("good-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY= bad")
            .unwrap_err(),
        SigningError::MissingColon(Kind::PublicKey)
    );
}

#[test]
fn verify_errors_read_well() {
    let untrusted = VerifyError::UntrustedKeys {
        key_names: vec!["a-1".into(), "b-1".into()],
    };
    assert_eq!(
        untrusted.to_string(),
        "not signed by a trusted key (signed by a-1, b-1)"
    );
    assert_eq!(VerifyError::NoSignatures.to_string(), "no signatures");
    let err: nixferry::Error = VerifyError::NoSignatures.into();
    assert_eq!(err.to_string(), "no signatures");
}

proptest! {
    #[test]
    fn sign_verify_round_trip(seed in any::<[u8; 32]>(), msg in proptest::collection::vec(any::<u8>(), 0..200)) {
        let key = SecretKey::from_seed("prop-1", &seed).unwrap();
        let sig = key.sign(&msg);
        prop_assert_eq!(Signature::parse(&sig.to_string()).unwrap(), sig.clone());
        prop_assert!(key.public().verify(&msg, &sig));
        let mut other = msg.clone();
        other.push(0);
        prop_assert!(!key.public().verify(&other, &sig));
        let file = key.to_file_string();
        prop_assert_eq!(SecretKey::parse(&file).unwrap().public(), key.public());
    }

    #[test]
    fn parsers_never_panic(text in "(?s).{0,120}") {
        let _ = SecretKey::parse(&text);
        let _ = PublicKey::parse(&text);
        let _ = Signature::parse(&text);
        let _ = TrustedKeys::parse_list(&text);
    }

    #[test]
    fn fuzz_entry_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        nixferry::fuzzing::signing_parse(&data);
    }

    #[test]
    fn fuzz_entry_on_near_valid_signatures(bytes in any::<[u8; 64]>()) {
        nixferry::fuzzing::signing_parse(format!("fuzz-1:{}", to_base64(&bytes)).as_bytes());
    }
}
