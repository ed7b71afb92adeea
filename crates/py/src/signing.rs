//! `SigningKey` and `VerifyingKey`: Nix's ed25519 binary cache keys.

use std::path::PathBuf;

use nixferry::signing::{KeyFileError, PublicKey, SecretKey, Signature, TrustedKeys};
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors;

/// A secret key file's text (or a key given as such), parsed.
fn parse_secret(text: &str) -> PyResult<SecretKey> {
    SecretKey::parse(text.trim()).map_err(|e| errors::signing(&e))
}

/// A public key's text, parsed.
fn parse_public(text: &str) -> PyResult<PublicKey> {
    PublicKey::parse(text.trim()).map_err(|e| errors::signing(&e))
}

/// A key file that could not be loaded: `OSError` if it could not be
/// read, `SignatureError` if it holds no key.
fn key_file_error(e: KeyFileError) -> PyErr {
    match e {
        KeyFileError::Read { path, source, .. } => {
            errors::os_error(&source, "reading key file", Some(&path))
        }
        KeyFileError::Parse { source, .. } => errors::signing(&source),
    }
}

/// A secret ed25519 key with its name, as in the files
/// `nix-store --generate-binary-cache-key` writes (`name:base64`).
///
/// `repr()` never shows the secret.
///
/// >>> key = SigningKey.generate("cache.example.org-1")
/// >>> key.name
/// 'cache.example.org-1'
/// >>> key.verifying_key.verify(b"data", key.sign(b"data"))
/// True
#[pyclass(module = "nixferry._native", name = "SigningKey", frozen)]
#[derive(Clone)]
pub(crate) struct PySigningKey(pub(crate) SecretKey);

#[pymethods]
impl PySigningKey {
    /// Makes a new key from operating-system randomness.
    #[staticmethod]
    fn generate(name: &str) -> PyResult<Self> {
        SecretKey::generate(name)
            .map(Self)
            .map_err(|e| errors::signing(&e))
    }

    /// Parses a secret key (`name:base64` of seed and public key); a
    /// trailing newline is allowed, as Nix allows it.
    #[staticmethod]
    fn parse(text: &str) -> PyResult<Self> {
        parse_secret(text).map(Self)
    }

    /// Reads a secret key file.
    #[staticmethod]
    fn from_file(path: PathBuf) -> PyResult<Self> {
        SecretKey::from_file(path).map(Self).map_err(key_file_error)
    }

    /// Makes the key with a 32-byte seed (deterministic).
    #[staticmethod]
    fn from_seed(name: &str, seed: &[u8]) -> PyResult<Self> {
        let seed: [u8; 32] = seed.try_into().map_err(|_| {
            errors::new(
                "SignatureError",
                format!("a seed has 32 bytes, not {}", seed.len()),
                Vec::new(),
            )
        })?;
        SecretKey::from_seed(name, &seed)
            .map(Self)
            .map_err(|e| errors::signing(&e))
    }

    /// The key's name.
    #[getter]
    fn name(&self) -> &str {
        self.0.name()
    }

    /// The public half.
    #[getter]
    fn verifying_key(&self) -> PyVerifyingKey {
        PyVerifyingKey(self.0.public())
    }

    /// Signs `data`; returns the signature as Nix writes it, `name:base64`.
    fn sign(&self, py: Python<'_>, data: &[u8]) -> String {
        py.allow_threads(|| self.0.sign(data).to_string())
    }

    /// The secret key file's text, `name:base64` (without newline).
    fn to_file_string(&self) -> String {
        self.0.to_file_string()
    }

    /// Writes the secret key file (mode 0600, no trailing newline, as Nix).
    fn write_file(&self, path: PathBuf) -> PyResult<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| errors::os_error(&e, "creating key file", Some(&path)))?;
        f.write_all(self.0.to_file_string().as_bytes())
            .map_err(|e| errors::os_error(&e, "writing key file", Some(&path)))
    }

    fn __repr__(&self) -> String {
        format!(
            "SigningKey(name='{}', public='{}')",
            self.0.name(),
            self.0.public()
        )
    }
}

/// A public ed25519 key with its name (`name:base64`), as in Nix's
/// `trusted-public-keys`.
///
/// >>> k = VerifyingKey.parse("cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=")
/// >>> k.name
/// 'cache.nixos.org-1'
#[pyclass(module = "nixferry._native", name = "VerifyingKey", frozen, eq)]
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PyVerifyingKey(pub(crate) PublicKey);

#[pymethods]
impl PyVerifyingKey {
    /// Parses `name:base64`.
    #[staticmethod]
    fn parse(text: &str) -> PyResult<Self> {
        parse_public(text).map(Self)
    }

    /// Reads a public key file.
    #[staticmethod]
    fn from_file(path: PathBuf) -> PyResult<Self> {
        PublicKey::from_file(path).map(Self).map_err(key_file_error)
    }

    /// The key's name.
    #[getter]
    fn name(&self) -> &str {
        self.0.name()
    }

    /// The 32 raw key bytes.
    #[getter]
    fn raw(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Whether `signature` (`name:base64`) is this key's valid signature
    /// of `data`. A signature by another key name, or a malformed one, is
    /// not.
    fn verify(&self, py: Python<'_>, data: &[u8], signature: &str) -> bool {
        let Ok(sig) = Signature::parse(signature) else {
            return false;
        };
        sig.key_name() == self.0.name() && py.allow_threads(|| self.0.verify(data, &sig))
    }

    fn __str__(&self) -> String {
        self.0.to_string()
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.0.to_string().hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        format!("VerifyingKey('{}')", self.0)
    }
}

/// Trusted keys from Python: one `VerifyingKey` or `name:base64` string, or
/// an iterable of them.
pub(crate) fn trusted_keys(obj: &Bound<'_, PyAny>) -> PyResult<TrustedKeys> {
    let mut keys = TrustedKeys::new();
    let one = |k: &Bound<'_, PyAny>| -> PyResult<PublicKey> {
        if let Ok(v) = k.downcast::<PyVerifyingKey>() {
            return Ok(v.get().0.clone());
        }
        if let Ok(s) = k.downcast::<PyString>() {
            return parse_public(s.to_str()?);
        }
        Err(pyo3::exceptions::PyTypeError::new_err(
            "trusted keys are VerifyingKey objects or 'name:base64' strings",
        ))
    };
    if obj.downcast::<PyVerifyingKey>().is_ok() || obj.downcast::<PyString>().is_ok() {
        keys.add(one(obj)?);
        return Ok(keys);
    }
    for k in obj.try_iter()? {
        keys.add(one(&k?)?);
    }
    Ok(keys)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySigningKey>()?;
    m.add_class::<PyVerifyingKey>()?;
    Ok(())
}
