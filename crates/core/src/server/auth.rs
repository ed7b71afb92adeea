//! Who may read and who may write: tokens, each with a scope, presented as
//! `Authorization: Bearer <token>` or as the password of basic credentials
//! (what Nix sends from a netrc file), compared in constant time.
//!
//! A tokens file holds one token a line, after its scope: `read <token>`
//! or `write <token>` (which may read too); blank lines and lines starting
//! with `#` are left out. With a tokens file, reads need a token too, and
//! an unauthenticated read gets `401` with `WWW-Authenticate`, so that a
//! client fails loudly instead of falling back to building.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::Engine as _;
use hyper::header::HeaderValue;
use subtle::ConstantTimeEq as _;

use super::ServerError;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Scope {
    /// Reading only.
    Read,
    /// Reading and uploads.
    Write,
}

/// The tokens a server accepts.
#[derive(Debug, Default)]
pub(super) struct Auth {
    /// The upload token given on its own ([`super::ServerBuilder::token`]).
    write_token: Option<String>,
    /// The tokens file, if reads need a token.
    file: Option<PathBuf>,
    /// Its tokens, as last read.
    tokens: RwLock<Vec<(Scope, String)>>,
    /// Whether `nix-cache-info` is served without a token.
    public_cache_info: bool,
}

impl Auth {
    /// The tokens of `file` (if any) and the upload token.
    pub(super) fn new(
        write_token: Option<String>,
        file: Option<PathBuf>,
        public_cache_info: bool,
    ) -> Result<Self, ServerError> {
        let tokens = match &file {
            Some(f) => read_tokens(f)?,
            None => Vec::new(),
        };
        Ok(Self {
            write_token,
            file,
            tokens: RwLock::new(tokens),
            public_cache_info,
        })
    }

    /// Whether reads need a token.
    pub(super) fn reads_need_token(&self) -> bool {
        self.file.is_some()
    }

    /// Whether some token allows uploads.
    pub(super) fn has_write_tokens(&self) -> bool {
        self.write_token.is_some()
            || self
                .tokens
                .read()
                .is_ok_and(|t| t.iter().any(|(s, _)| *s == Scope::Write))
    }

    /// Whether `nix-cache-info` is served without a token.
    pub(super) fn public_cache_info(&self) -> bool {
        self.public_cache_info
    }

    /// Reads the tokens file again; returns how many tokens it holds. On
    /// an error the tokens stay as they were.
    pub(super) fn reload(&self) -> Result<usize, ServerError> {
        let Some(file) = &self.file else {
            return Ok(0);
        };
        let tokens = read_tokens(file)?;
        let n = tokens.len();
        if let Ok(mut t) = self.tokens.write() {
            *t = tokens;
        }
        Ok(n)
    }

    /// The scope of the token an `Authorization` header presents, if it
    /// is one of ours. Every token is compared, so the time taken does not
    /// tell which one was close.
    pub(super) fn scope(&self, header: Option<&HeaderValue>) -> Option<Scope> {
        let presented = presented(header?)?;
        let mut best = None;
        let mut consider = |scope: Scope, token: &str| {
            if bool::from(presented.ct_eq(token.as_bytes())) {
                best = best.max(Some(scope));
            }
        };
        if let Some(t) = &self.write_token {
            consider(Scope::Write, t);
        }
        if let Ok(tokens) = self.tokens.read() {
            for (scope, token) in tokens.iter() {
                consider(*scope, token);
            }
        }
        best
    }
}

/// The token in an `Authorization` header: `Bearer <token>`, or the
/// password of `Basic` credentials.
fn presented(header: &HeaderValue) -> Option<Vec<u8>> {
    let value = header.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

/// Reads a tokens file (see the module docs).
fn read_tokens(file: &Path) -> Result<Vec<(Scope, String)>, ServerError> {
    let bad = |line: usize, reason: &'static str| ServerError::Tokens {
        path: file.to_path_buf(),
        line,
        reason,
    };
    let text = std::fs::read_to_string(file).map_err(|source| ServerError::TokensFile {
        path: file.to_path_buf(),
        source,
    })?;
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (scope, token) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad(i + 1, "expected 'read <token>' or 'write <token>'"))?;
        let scope = match scope {
            "read" => Scope::Read,
            "write" => Scope::Write,
            _ => return Err(bad(i + 1, "the scope must be 'read' or 'write'")),
        };
        let token = token.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(bad(i + 1, "a token is one word"));
        }
        tokens.push((scope, token.to_owned()));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn basic(user: &str, password: &str) -> HeaderValue {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h(&format!("Basic {creds}"))
    }

    #[test]
    fn scopes_from_a_file_and_the_upload_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# fleet\nread r-1\n\nwrite  w-1\n").unwrap();
        let auth = Auth::new(Some("up".into()), Some(file.clone()), false).unwrap();
        assert!(auth.reads_need_token() && auth.has_write_tokens());
        assert_eq!(auth.scope(Some(&h("Bearer r-1"))), Some(Scope::Read));
        assert_eq!(auth.scope(Some(&basic("nix", "w-1"))), Some(Scope::Write));
        assert_eq!(auth.scope(Some(&h("bearer up"))), Some(Scope::Write));
        for bad in [
            "Bearer r-2",
            "Bearer r-",
            "Bearer",
            "Digest r-1",
            "Basic !!!",
        ] {
            assert_eq!(auth.scope(Some(&h(bad))), None, "{bad}");
        }
        assert_eq!(auth.scope(Some(&basic("r-1", "x"))), None);
        assert_eq!(auth.scope(None), None);

        std::fs::write(&file, "read r-2\n").unwrap();
        assert_eq!(auth.reload().unwrap(), 1);
        assert_eq!(auth.scope(Some(&h("Bearer r-1"))), None);
        assert_eq!(auth.scope(Some(&h("Bearer r-2"))), Some(Scope::Read));
        // A broken file leaves the tokens as they were.
        std::fs::write(&file, "admin r-3\n").unwrap();
        let e = auth.reload().unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("'read' or 'write'"),
            "{e}"
        );
        assert_eq!(auth.scope(Some(&h("Bearer r-2"))), Some(Scope::Read));
    }

    #[test]
    fn without_a_file_only_the_upload_token() {
        let auth = Auth::new(Some("up".into()), None, false).unwrap();
        assert!(!auth.reads_need_token());
        assert_eq!(auth.scope(Some(&h("Bearer up"))), Some(Scope::Write));
        assert_eq!(auth.reload().unwrap(), 0);
        assert!(!Auth::default().has_write_tokens());
    }
}
