//! Which paths a copy accepts: Nix's signature policy, in one place.
//!
//! The policy lives in [`CopyOptions`]: its default and the builder methods
//! in this module ([`CopyOptions::with_trusted_keys`],
//! [`CopyOptions::with_secret_keys`]) set it up the way Nix 2.8 sets up its
//! own, so that every front end (the command-line tool, the Python package,
//! an embedder) gets the same answer from the same inputs.

use crate::signing::{SecretKey, TrustedKeys};

use super::CopyOptions;

/// # Trust: Nix's signature policy
///
/// A path copied from a source that is not trusted must carry a valid
/// signature by a trusted key, or a content address that verifies
/// ([`crate::store::PathInfo::check_trust`]), or it is refused with
/// [`super::CopyError::Untrusted`]. What is trusted is set up as Nix 2.8
/// sets it up:
///
/// | Nix 2.8 | default there | here |
/// |---|---|---|
/// | `require-sigs` | `true` | [`CopyOptions::check_sigs`] is `true` by default; `nix copy --no-check-sigs` is `check_sigs = false` |
/// | `trusted-public-keys` | cache.nixos.org's key ([`crate::signing::DEFAULT_TRUSTED_PUBLIC_KEYS`]) | [`CopyOptions::trusted_keys`] starts as [`TrustedKeys::nix_default`]; [`CopyOptions::with_trusted_keys`] replaces it, as setting `trusted-public-keys` does |
/// | `secret-key-files` | none; the public half of each key is trusted too | [`CopyOptions::with_secret_keys`] signs copied paths with the keys and trusts their public halves |
/// | a key name in both | the `trusted-public-keys` entry wins | the same: the first key under a name stays ([`TrustedKeys::add`]) |
///
/// **Which sources are trusted.** A path from a store whose
/// [`crate::store::Capabilities::trusted_source`] is set (the machine's own
/// Nix store, `local`) is taken without signatures, as Nix takes what is
/// already in its store; paths from any other source (binary caches,
/// `ssh://` stores) are checked when `check_sigs` is set. Nix itself checks
/// where a path *enters* a Nix store (`nix copy` into a local store or
/// daemon, substitution), not where it comes from, and never checks paths
/// written to a binary cache; nixferry checks before anything is written,
/// whatever the destination, so a cache filled by nixferry holds only
/// paths that Nix would have accepted from the source.
///
/// **`nix-copy-closure`** does not check signatures (SSH access is the
/// trust): `nixferry copy-closure` runs with `check_sigs = false`.
///
/// ```
/// use nixferry::copy::CopyOptions;
/// use nixferry::signing::{SecretKey, TrustedKeys};
///
/// let own = SecretKey::from_seed("my-cache-1", &[1; 32]).unwrap();
/// let opts = CopyOptions::default().with_secret_keys([own]);
/// assert!(opts.check_sigs);
/// let names: Vec<_> = opts.trusted_keys.iter().map(|k| k.name()).collect();
/// assert_eq!(names, ["cache.nixos.org-1", "my-cache-1"]);
///
/// // Configured keys replace Nix's default; the own keys stay trusted.
/// let opts = opts.with_trusted_keys(TrustedKeys::new());
/// let names: Vec<_> = opts.trusted_keys.iter().map(|k| k.name()).collect();
/// assert_eq!(names, ["my-cache-1"]);
/// ```
impl CopyOptions {
    /// Trusts `keys` instead of the keys trusted so far, as setting Nix's
    /// `trusted-public-keys` replaces its default, and still trusts the
    /// public halves of the keys copied paths are signed with
    /// ([`CopyOptions::with_secret_keys`], before or after this).
    #[must_use]
    pub fn with_trusted_keys(mut self, keys: TrustedKeys) -> Self {
        let mut trusted = keys;
        trusted.extend(self.secret_keys.iter().map(SecretKey::public));
        self.trusted_keys = trusted;
        self
    }

    /// Signs copied paths with `keys` too, and trusts their public halves,
    /// as Nix trusts the keys of its `secret-key-files`: a store trusts
    /// what it signs itself. A trusted key of the same name stays.
    #[must_use]
    pub fn with_secret_keys(mut self, keys: impl IntoIterator<Item = SecretKey>) -> Self {
        for key in keys {
            self.trusted_keys.add(key.public());
            self.secret_keys.push(key);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::copy::{copy_closure, CancellationToken, CopyError, Event};
    use crate::hash::{sha256, NixHash};
    use crate::signing::{PublicKey, VerifyError, DEFAULT_TRUSTED_PUBLIC_KEYS};
    use crate::store::mem::MemStore;
    use crate::store::{PathInfo, Store};
    use crate::store_path::StorePath;

    fn key(name: &str, seed: u8) -> SecretKey {
        SecretKey::from_seed(name, &[seed; 32]).unwrap()
    }

    fn names(trusted: &TrustedKeys) -> Vec<&str> {
        trusted.iter().map(PublicKey::name).collect()
    }

    #[test]
    fn the_default_is_nixs() {
        let opts = CopyOptions::default();
        // require-sigs = true, trusted-public-keys = cache.nixos.org's key.
        assert!(opts.check_sigs);
        assert_eq!(names(&opts.trusted_keys), ["cache.nixos.org-1"]);
        let key = opts.trusted_keys.get("cache.nixos.org-1").unwrap();
        assert_eq!(key.to_string(), DEFAULT_TRUSTED_PUBLIC_KEYS);
        assert!(opts.secret_keys.is_empty());
    }

    #[test]
    fn own_keys_are_trusted_whatever_the_order() {
        let (a, b) = (key("own-a-1", 1), key("own-b-1", 2));
        let configured = TrustedKeys::from_keys([key("other-1", 3).public()]);

        let signing = CopyOptions::default().with_secret_keys([a.clone(), b.clone()]);
        assert_eq!(
            names(&signing.trusted_keys),
            ["cache.nixos.org-1", "own-a-1", "own-b-1"]
        );
        assert_eq!(signing.secret_keys.len(), 2);

        let first = signing.with_trusted_keys(configured.clone());
        let second = CopyOptions::default()
            .with_trusted_keys(configured)
            .with_secret_keys([a, b]);
        for opts in [first, second] {
            assert_eq!(names(&opts.trusted_keys), ["other-1", "own-a-1", "own-b-1"]);
            let signers: Vec<&str> = opts.secret_keys.iter().map(SecretKey::name).collect();
            assert_eq!(signers, ["own-a-1", "own-b-1"]);
        }
    }

    #[test]
    fn no_configured_keys_leaves_only_the_own_ones() {
        let opts = CopyOptions::default()
            .with_secret_keys([key("own-1", 1)])
            .with_trusted_keys(TrustedKeys::new());
        assert_eq!(names(&opts.trusted_keys), ["own-1"]);
        let opts = CopyOptions::default().with_trusted_keys(TrustedKeys::new());
        assert!(opts.trusted_keys.is_empty());
    }

    #[test]
    fn a_configured_key_wins_over_an_own_key_of_the_same_name() {
        let configured = key("same-1", 1).public();
        let own = key("same-1", 2);
        for opts in [
            CopyOptions::default()
                .with_trusted_keys(TrustedKeys::from_keys([configured.clone()]))
                .with_secret_keys([own.clone()]),
            CopyOptions::default()
                .with_secret_keys([own.clone()])
                .with_trusted_keys(TrustedKeys::from_keys([configured.clone()])),
        ] {
            assert_eq!(opts.trusted_keys.len(), 1);
            assert_eq!(opts.trusted_keys.get("same-1"), Some(&configured));
        }
    }

    /// An unsigned, input-addressed path and its "NAR" (the engine only
    /// checks the hash and size).
    fn unsigned() -> (PathInfo, Vec<u8>) {
        let nar = b"the NAR of the path".to_vec();
        let digest: [u8; 20] = sha256(b"trust-test")[..20].try_into().unwrap();
        let path = StorePath::from_digest(&digest, "trust-test").unwrap();
        let info = PathInfo::new(path, NixHash::sha256(sha256(&nar)), nar.len() as u64);
        (info, nar)
    }

    async fn copy(
        src: &Arc<MemStore>,
        dst: &Arc<MemStore>,
        path: &StorePath,
        opts: &CopyOptions,
    ) -> Vec<CopyError> {
        let on_event: Arc<dyn Fn(Event) + Send + Sync> = Arc::new(|_| {});
        let summary = copy_closure(
            Arc::clone(src) as Arc<dyn Store>,
            Arc::clone(dst) as Arc<dyn Store>,
            std::slice::from_ref(path),
            opts,
            on_event,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        summary.failed.into_iter().map(|(_, e)| e).collect()
    }

    #[tokio::test]
    async fn the_engine_follows_the_policy() {
        let own = key("own-1", 1);
        let (info, nar) = unsigned();
        let path = info.path.clone();

        // From the machine's own store: no signatures needed, and the copy
        // is signed with the own key.
        let local = MemStore::new(true);
        local.insert(info.clone(), nar.clone());
        let cache = MemStore::new(false);
        let opts = CopyOptions::default().with_secret_keys([own.clone()]);
        assert!(copy(&local, &cache, &path, &opts).await.is_empty());
        let signed = cache.get(&path).unwrap();
        assert!(signed.signatures[0].starts_with("own-1:"));

        // From a cache: the own signature is trusted...
        let out = MemStore::new(false);
        assert!(copy(&cache, &out, &path, &opts).await.is_empty());
        // ...the default alone does not trust it...
        let out = MemStore::new(false);
        let failed = copy(&cache, &out, &path, &CopyOptions::default()).await;
        assert!(
            matches!(
                &failed[..],
                [CopyError::Untrusted {
                    reason: VerifyError::UntrustedKeys { .. },
                    ..
                }]
            ),
            "{failed:?}"
        );
        // ...an unsigned path is refused...
        let bare = MemStore::new(false);
        bare.insert(info, nar);
        let failed = copy(&bare, &out, &path, &opts).await;
        assert!(
            matches!(
                &failed[..],
                [CopyError::Untrusted {
                    reason: VerifyError::NoSignatures,
                    ..
                }]
            ),
            "{failed:?}"
        );
        // ...unless signatures are not checked.
        let unchecked = CopyOptions {
            check_sigs: false,
            ..CopyOptions::default()
        };
        assert!(copy(&bare, &out, &path, &unchecked).await.is_empty());
        assert!(out.get(&path).is_some());
    }
}
