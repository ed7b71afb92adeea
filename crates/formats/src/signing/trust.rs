//! [`TrustedKeys`]: checking a path's signatures the way Nix does (docs/formats.md §4.4).

use std::fmt;

use super::{PublicKey, Signature, SigningError};

/// Why no signature on a path verified.
///
/// When several reasons apply, the most alarming wins:
/// [`BadSignature`](Self::BadSignature) (a trusted key's signature that does
/// not match: tampering or corruption), then
/// [`UntrustedKeys`](Self::UntrustedKeys), then
/// [`Unnamed`](Self::Unnamed), then [`NoSignatures`](Self::NoSignatures).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// There are no signatures at all.
    NoSignatures,
    /// Every signature is by a key that is not trusted.
    UntrustedKeys {
        /// The names of the keys that signed, each once, in order of appearance.
        key_names: Vec<String>,
    },
    /// A trusted key's signature does not verify, or is malformed.
    BadSignature {
        /// The first trusted key whose signature failed.
        key_name: String,
    },
    /// Every signature is malformed so that it names no key (no `:` or an
    /// empty name).
    Unnamed {
        /// How many such signatures there were.
        count: usize,
    },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSignatures => f.write_str("no signatures"),
            Self::UntrustedKeys { key_names } => write!(
                f,
                "not signed by a trusted key (signed by {})",
                key_names.join(", ")
            ),
            Self::BadSignature { key_name } => write!(
                f,
                "the signature by trusted key '{key_name}' does not match \
                 (the signed data or the signature was altered)"
            ),
            Self::Unnamed { count } => write!(f, "no signature names a key ({count} malformed)"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// The default of Nix's `trusted-public-keys` setting (Nix 2.8): the key
/// cache.nixos.org signs with.
///
/// A whitespace-separated list, as the setting is written, so that
/// [`TrustedKeys::parse_list`] reads it; today it holds one key.
pub const DEFAULT_TRUSTED_PUBLIC_KEYS: &str =
    "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

/// The public keys whose signatures count: Nix's `trusted-public-keys`.
///
/// Keys are looked up by name, so a signature is checked only against the
/// key it names. A name can be present once; as in Nix's map, the first key
/// added under a name stays.
///
/// ```
/// use nixferry_formats::signing::TrustedKeys;
///
/// let keys = TrustedKeys::parse_list(
///     "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
/// ).unwrap();
/// assert!(keys.get("cache.nixos.org-1").is_some());
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    /// A handful of keys in practice, so a vector beats a map.
    keys: Vec<PublicKey>,
}

/// What one signature amounts to against the trusted keys.
enum Check<'k, 's> {
    Valid(&'k PublicKey),
    /// By a trusted key, but wrong or malformed.
    Invalid(&'k PublicKey),
    Untrusted(&'s str),
    Unnamed,
}

impl TrustedKeys {
    /// No keys: nothing verifies.
    pub fn new() -> Self {
        Self::default()
    }

    /// The keys Nix trusts when nothing is configured: the default of
    /// `trusted-public-keys` ([`DEFAULT_TRUSTED_PUBLIC_KEYS`]).
    ///
    /// ```
    /// use nixferry_formats::signing::TrustedKeys;
    ///
    /// let keys = TrustedKeys::nix_default();
    /// assert_eq!(keys.iter().map(|k| k.name()).collect::<Vec<_>>(), ["cache.nixos.org-1"]);
    /// ```
    pub fn nix_default() -> Self {
        // A constant that parses: a test below checks it.
        Self::parse_list(DEFAULT_TRUSTED_PUBLIC_KEYS).unwrap_or_default()
    }

    /// The given keys (later duplicates of a name are ignored).
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut trusted = Self::new();
        for key in keys {
            trusted.add(key);
        }
        trusted
    }

    /// Parses a whitespace-separated list of `NAME:base64` public keys, the
    /// format of the `trusted-public-keys` setting.
    ///
    /// # Errors
    /// The [`SigningError`] of the first key that does not parse.
    pub fn parse_list(list: &str) -> Result<Self, SigningError> {
        list.split_ascii_whitespace()
            .map(PublicKey::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self::from_keys)
    }

    /// Adds a key. Returns `false`, keeping the existing key, if one with
    /// the same name is already trusted.
    pub fn add(&mut self, key: PublicKey) -> bool {
        if self.get(key.name()).is_some() {
            return false;
        }
        self.keys.push(key);
        true
    }

    /// The trusted key with this name.
    pub fn get(&self, name: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.name() == name)
    }

    /// The trusted keys, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.iter()
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks signatures (`NAME:base64` strings, such as narinfo `Sig:`
    /// values) over `fingerprint` and returns the name of the first trusted
    /// key whose signature verifies.
    ///
    /// # Errors
    /// [`VerifyError`] saying why none did.
    pub fn verify<'s>(
        &self,
        fingerprint: &[u8],
        sigs: impl IntoIterator<Item = &'s str>,
    ) -> Result<&str, VerifyError> {
        let mut first_bad: Option<&PublicKey> = None;
        let mut untrusted: Vec<&str> = Vec::new();
        let mut unnamed = 0;
        for sig in sigs {
            match self.check(fingerprint, sig) {
                Check::Valid(key) => return Ok(key.name()),
                Check::Invalid(key) => {
                    first_bad.get_or_insert(key);
                }
                Check::Untrusted(name) => {
                    if !untrusted.contains(&name) {
                        untrusted.push(name);
                    }
                }
                Check::Unnamed => unnamed += 1,
            }
        }
        Err(if let Some(key) = first_bad {
            VerifyError::BadSignature {
                key_name: key.name().to_owned(),
            }
        } else if !untrusted.is_empty() {
            VerifyError::UntrustedKeys {
                key_names: untrusted.into_iter().map(str::to_owned).collect(),
            }
        } else if unnamed > 0 {
            VerifyError::Unnamed { count: unnamed }
        } else {
            VerifyError::NoSignatures
        })
    }

    /// The number of distinct valid signatures by trusted keys over
    /// `fingerprint` (Nix's `checkSignatures`, which counts distinct
    /// signature strings). Malformed signatures do not count.
    pub fn count_valid<'s>(
        &self,
        fingerprint: &[u8],
        sigs: impl IntoIterator<Item = &'s str>,
    ) -> usize {
        let mut seen: Vec<&str> = Vec::new();
        for sig in sigs {
            if !seen.contains(&sig) && matches!(self.check(fingerprint, sig), Check::Valid(_)) {
                seen.push(sig);
            }
        }
        seen.len()
    }

    /// Nix's `verifyDetached`: find the named key; an unknown name does not
    /// count; a known one must decode and verify.
    fn check<'s>(&self, fingerprint: &[u8], sig: &'s str) -> Check<'_, 's> {
        let Some((name, _)) = sig.split_once(':').filter(|(name, _)| !name.is_empty()) else {
            return Check::Unnamed;
        };
        let Some(key) = self.get(name) else {
            return Check::Untrusted(name);
        };
        match Signature::parse(sig) {
            Ok(parsed) if key.verify_bytes(fingerprint, parsed.as_bytes()) => Check::Valid(key),
            _ => Check::Invalid(key),
        }
    }
}

impl FromIterator<PublicKey> for TrustedKeys {
    fn from_iter<I: IntoIterator<Item = PublicKey>>(iter: I) -> Self {
        Self::from_keys(iter)
    }
}

impl Extend<PublicKey> for TrustedKeys {
    fn extend<I: IntoIterator<Item = PublicKey>>(&mut self, iter: I) {
        for key in iter {
            self.add(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SecretKey;

    fn key(name: &str, seed: u8) -> SecretKey {
        SecretKey::from_seed(name, &[seed; 32]).unwrap()
    }

    #[test]
    fn outcomes_and_their_precedence() {
        let (a, b) = (key("a-1", 1), key("b-1", 2));
        let trusted = TrustedKeys::from_keys([a.public()]);
        let msg = b"fingerprint";
        let good = a.sign(msg).to_string();
        let bad = a.sign(b"other").to_string();
        let foreign = b.sign(msg).to_string();

        assert_eq!(trusted.verify(msg, [good.as_str()]), Ok("a-1"));
        assert_eq!(
            trusted.verify(msg, [bad.as_str(), good.as_str()]),
            Ok("a-1")
        );
        assert_eq!(trusted.verify(msg, []), Err(VerifyError::NoSignatures));
        assert_eq!(
            trusted.verify(msg, [foreign.as_str(), foreign.as_str()]),
            Err(VerifyError::UntrustedKeys {
                key_names: vec!["b-1".into()]
            })
        );
        let bad_wins = Err(VerifyError::BadSignature {
            key_name: "a-1".into(),
        });
        assert_eq!(
            trusted.verify(msg, [foreign.as_str(), bad.as_str()]),
            bad_wins
        );
        assert_eq!(trusted.verify(msg, ["a-1:AAAA", "junk"]), bad_wins);
        assert_eq!(
            trusted.verify(msg, ["junk", ":AAAA"]),
            Err(VerifyError::Unnamed { count: 2 })
        );
    }

    #[test]
    fn count_valid_counts_distinct_signatures() {
        let (a, b) = (key("a-1", 1), key("b-1", 2));
        let trusted = TrustedKeys::from_keys([a.public(), b.public()]);
        let msg = b"fingerprint";
        let sa = a.sign(msg).to_string();
        let sb = b.sign(msg).to_string();
        assert_eq!(trusted.count_valid(msg, [sa.as_str(), sa.as_str()]), 1);
        assert_eq!(trusted.count_valid(msg, [sa.as_str(), "x", sb.as_str()]), 2);
        assert_eq!(trusted.count_valid(b"other", [sa.as_str()]), 0);
    }

    #[test]
    fn nix_default_is_cache_nixos_org() {
        let keys = TrustedKeys::parse_list(DEFAULT_TRUSTED_PUBLIC_KEYS).unwrap();
        assert_eq!(keys.len(), 1);
        let default = TrustedKeys::nix_default();
        assert_eq!(default.len(), 1);
        let key = default.get("cache.nixos.org-1").unwrap();
        assert_eq!(key, keys.get("cache.nixos.org-1").unwrap());
        assert_eq!(key.to_string(), DEFAULT_TRUSTED_PUBLIC_KEYS);
    }

    #[test]
    fn first_key_under_a_name_stays() {
        let mut trusted = TrustedKeys::new();
        assert!(trusted.add(key("a-1", 1).public()));
        assert!(!trusted.add(key("a-1", 2).public()));
        assert_eq!(trusted.len(), 1);
        assert_eq!(trusted.get("a-1"), Some(&key("a-1", 1).public()));
    }
}
