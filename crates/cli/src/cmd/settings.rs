//! Nix's configuration, as the commands use it: read once per process
//! (with `--option NAME VALUE` applied), and the defaults it gives the
//! flags. A flag given on the command line always wins.

use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use nixferry::nixconf::{ConfigSources, NixConfig};
use nixferry::signing::{PublicKey, SecretKey, TrustedKeys};
use nixferry::store::{Scheme, Store, StoreUrl};

/// `--option NAME VALUE` pairs, set once before any command runs.
static OPTIONS: OnceLock<Vec<(String, String)>> = OnceLock::new();
/// The configuration, read when first needed.
static CONFIG: OnceLock<Result<NixConfig, String>> = OnceLock::new();

/// Records the `--option` pairs of the command line.
pub(super) fn set_options(pairs: Vec<(String, String)>) {
    let _ = OPTIONS.set(pairs);
}

/// Nix's effective configuration: its files and `NIX_CONFIG`, read as Nix
/// reads them, then `--option`.
///
/// # Errors
/// A file that does not parse, a bad `--option`.
pub(super) fn nix_config() -> anyhow::Result<&'static NixConfig> {
    let config = CONFIG.get_or_init(|| {
        let mut config = NixConfig::load(&ConfigSources::from_env())
            .map_err(|e| format!("reading Nix's configuration: {e}"))?;
        for (name, value) in OPTIONS.get().map(Vec::as_slice).unwrap_or_default() {
            config
                .set(name, value)
                .map_err(|e| format!("--option {name}: {e}"))?;
        }
        Ok(config)
    });
    config.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Where a setting was set, for messages: `nix.conf:3, NIX_CONFIG`.
fn origin(config: &NixConfig, name: &str) -> String {
    config
        .get(name)
        .map(|s| s.origins.join(", "))
        .unwrap_or_default()
}

/// The keys `--trusted-key` (`name:base64`) and `--trusted-key-file`
/// give, or `None` without either. A bad one is named by its position and
/// name, never its data: it may be a secret key given by mistake.
pub(super) fn flag_trusted_keys(
    keys: &[String],
    files: &[std::path::PathBuf],
) -> anyhow::Result<Option<TrustedKeys>> {
    if keys.is_empty() && files.is_empty() {
        return Ok(None);
    }
    let mut trusted = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            PublicKey::parse(k).with_context(|| {
                let name = k.trim().split(':').next().unwrap_or_default();
                format!("--trusted-key number {} ('{name}:…')", i + 1)
            })
        })
        .collect::<anyhow::Result<TrustedKeys>>()?;
    for f in files {
        trusted.add(PublicKey::from_file(f)?);
    }
    Ok(Some(trusted))
}

/// The trusted keys: those of the flags, else Nix's `trusted-public-keys`
/// (by default cache.nixos.org-1's, as in Nix).
pub(super) fn trusted_keys(
    keys: &[String],
    files: &[std::path::PathBuf],
) -> anyhow::Result<TrustedKeys> {
    if let Some(keys) = flag_trusted_keys(keys, files)? {
        return Ok(keys);
    }
    let config = nix_config()?;
    config
        .trusted_public_keys()
        .iter()
        .map(|k| {
            PublicKey::parse(k).with_context(|| {
                let name = k.trim().split(':').next().unwrap_or_default();
                format!(
                    "trusted-public-keys (set in {}): the key '{name}:…'",
                    origin(config, "trusted-public-keys")
                )
            })
        })
        .collect()
}

/// The keys to sign with: those of `--secret-key-file`, else Nix's
/// `secret-key-files`.
pub(super) fn secret_keys(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<SecretKey>> {
    if !files.is_empty() {
        return files
            .iter()
            .map(|f| super::key::load_secret_key(f))
            .collect();
    }
    let config = nix_config()?;
    config
        .secret_key_files()
        .iter()
        .map(|f| {
            super::key::load_secret_key(f).with_context(|| {
                format!(
                    "secret-key-files (set in {})",
                    origin(config, "secret-key-files")
                )
            })
        })
        .collect()
}

/// Nix's `substituters` (with `extra-substituters`), and whether they are
/// configured: set in a file, `NIX_CONFIG` or `--option`, not only Nix's
/// built-in default (cache.nixos.org).
///
/// # Errors
/// The configuration is bad.
pub(super) fn substituters() -> anyhow::Result<(Vec<String>, bool)> {
    let config = nix_config()?;
    let configured = config
        .get("substituters")
        .is_some_and(|s| s.origins.iter().any(|o| o != "default"));
    Ok((config.substituters().to_vec(), configured))
}

/// Parses a store URL, with what Nix's configuration says about reaching
/// it: for `http(s)://`, its `netrc-file` (when that file exists) and its
/// `connect-timeout` (when set), unless the URL sets them itself.
///
/// # Errors
/// The URL or the configuration is bad.
pub(super) fn store_url(url: &str) -> anyhow::Result<StoreUrl> {
    store_url_with(url, &[])
}

/// [`store_url`], with `defaults` for the URL parameters it does not set
/// itself (and that its kind of store has).
fn store_url_with(url: &str, defaults: &[(&str, &str)]) -> anyhow::Result<StoreUrl> {
    let mut parsed = StoreUrl::parse(url)?;
    for (name, value) in defaults {
        // Only for stores that have the parameter: the others refuse it.
        let _unknown = parsed.set_default(name, value);
    }
    if matches!(parsed.scheme(), Scheme::Http | Scheme::Https) {
        let config = nix_config()?;
        let netrc = config.netrc_file();
        if netrc.is_file() {
            parsed.set_default("netrc-file", &netrc.to_string_lossy())?;
        }
        let timeout = config.connect_timeout();
        if timeout > 0 {
            parsed.set_default("connect-timeout", &timeout.to_string())?;
        }
    }
    Ok(parsed)
}

/// Opens a store by URL, with what Nix's configuration says about
/// reaching it ([`store_url`]).
///
/// # Errors
/// The URL or the configuration is bad, or the store cannot be opened.
pub(super) fn open_store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    open_store_with(url, &[])
}

/// Opens a store as [`open_store`] does, with `defaults` for the URL
/// parameters it does not set itself (and that its kind of store has).
///
/// # Errors
/// As [`open_store`].
pub(super) fn open_store_with(
    url: &str,
    defaults: &[(&str, &str)],
) -> anyhow::Result<Arc<dyn Store>> {
    let open = || -> anyhow::Result<Arc<dyn Store>> {
        Ok(nixferry::store::open_url(&store_url_with(url, defaults)?)?)
    };
    open().with_context(|| format!("opening store '{url}'"))
}
