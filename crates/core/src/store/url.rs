//! Store URLs in Nix's syntax: `scheme://authority/path?param=value&…`,
//! plus the bare forms `local`, `auto`, `daemon` and absolute paths.

use std::collections::BTreeMap;
use std::fmt;

/// A malformed store URL, or one naming something unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The scheme is not one nixferry knows.
    #[error("unknown store type in '{url}'; supported: local, /path, file://, http://, https://, s3://, ssh://")]
    UnknownScheme {
        /// The URL.
        url: String,
    },
    /// The scheme is known, but this build of nixferry leaves its store out
    /// (see the crate's cargo features).
    #[error(
        "store type '{scheme}' in '{url}' needs nixferry built with the cargo feature '{feature}'"
    )]
    NotBuilt {
        /// The URL.
        url: String,
        /// The scheme.
        scheme: &'static str,
        /// The cargo feature that brings the store in.
        feature: &'static str,
    },
    /// A parameter this kind of store does not have.
    #[error("unknown parameter '{param}' in store URL '{url}'; {scheme} stores take: {known}")]
    UnknownParam {
        /// The URL.
        url: String,
        /// The parameter.
        param: String,
        /// The scheme.
        scheme: &'static str,
        /// The parameters the scheme takes, comma-separated.
        known: String,
    },
    /// A parameter value that does not parse.
    #[error("invalid value '{value}' for '{param}' in store URL '{url}': {reason}")]
    BadValue {
        /// The URL.
        url: String,
        /// The parameter.
        param: String,
        /// Its value.
        value: String,
        /// What was expected.
        reason: &'static str,
    },
    /// Something else is wrong with the URL's shape.
    #[error("invalid store URL '{url}': {reason}")]
    Malformed {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The kinds of store a URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheme {
    /// The machine's Nix store, or a chroot store (`local?root=`).
    Local,
    /// A binary cache in a directory.
    File,
    /// A binary cache over HTTP.
    Http,
    /// A binary cache over HTTPS.
    Https,
    /// A binary cache in an S3 bucket.
    S3,
    /// A Nix store on another machine, through `nix-store --serve`.
    Ssh,
}

/// Parameters every binary cache takes (Nix's `BinaryCacheStoreConfig`).
const BINARY_CACHE_PARAMS: &[&str] = &[
    "compression",
    "compression-level",
    "parallel-compression",
    "write-nar-listing",
    "index-debug-info",
    "secret-key",
    "want-mass-query",
    "priority",
    "trusted",
];

impl Scheme {
    /// The cargo feature of this crate that builds the scheme's store in
    /// (`file` stores are always there).
    pub fn feature(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::File => "default",
            Self::Http | Self::Https => "http",
            Self::S3 => "s3",
            Self::Ssh => "ssh",
        }
    }

    /// The scheme's name, as in URLs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::File => "file",
            Self::Http => "http",
            Self::Https => "https",
            Self::S3 => "s3",
            Self::Ssh => "ssh",
        }
    }

    fn params(self) -> Vec<&'static str> {
        let own: &[&str] = match self {
            Self::Local => &[
                "root",
                "store",
                "state",
                "log",
                "real",
                "read-only",
                "require-sigs",
                "trusted",
            ],
            Self::File => &["fsync"],
            Self::Http | Self::Https => &["netrc-file", "connect-timeout", "timeout", "retries"],
            Self::S3 => &[
                "region",
                "endpoint",
                "scheme",
                "profile",
                "multipart-upload",
                "buffer-size",
                "retries",
            ],
            Self::Ssh => &[
                "ssh-key",
                "remote-program",
                "remote-store",
                "compress",
                "max-connections",
                "base64-ssh-public-host-key",
                "trusted",
                "delta",
                "delta-base",
            ],
        };
        let mut all = own.to_vec();
        if matches!(self, Self::File | Self::Http | Self::Https | Self::S3) {
            all.extend_from_slice(BINARY_CACHE_PARAMS);
        }
        all
    }
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    url: String,
    scheme: Scheme,
    /// What follows `scheme://`, without the query: a directory for
    /// `file`, `host/path` for HTTP, `[user@]host[:port]` for SSH.
    location: String,
    params: BTreeMap<String, String>,
}

impl StoreUrl {
    /// Parses a store URL, checking its parameters against its scheme.
    ///
    /// `local`, `auto` and `daemon` mean the machine's store; an absolute
    /// path other than `/nix/store` means a chroot store with that root, as
    /// in `nix copy --to /tmp/x`.
    ///
    /// # Errors
    /// [`UrlError`] saying what is wrong.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut params = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            params.insert(decode(k), decode(v));
        }
        let (scheme, location) = match base.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = match scheme {
                    "file" => Scheme::File,
                    "http" => Scheme::Http,
                    "https" => Scheme::Https,
                    "s3" => Scheme::S3,
                    "ssh" => Scheme::Ssh,
                    "local" => Scheme::Local,
                    _ => {
                        return Err(UrlError::UnknownScheme {
                            url: url.to_owned(),
                        })
                    }
                };
                (scheme, rest.to_owned())
            }
            None if matches!(base, "local" | "auto" | "daemon" | "/nix/store") => {
                (Scheme::Local, String::new())
            }
            None if base.starts_with('/') => {
                params
                    .entry("root".to_owned())
                    .or_insert_with(|| base.trim_end_matches('/').to_owned());
                (Scheme::Local, String::new())
            }
            None => {
                return Err(UrlError::UnknownScheme {
                    url: url.to_owned(),
                })
            }
        };
        if scheme == Scheme::File && !location.starts_with('/') {
            return Err(UrlError::Malformed {
                url: url.to_owned(),
                reason: "a file:// URL needs an absolute path, as in file:///var/cache",
            });
        }
        if matches!(
            scheme,
            Scheme::Http | Scheme::Https | Scheme::S3 | Scheme::Ssh
        ) && location.is_empty()
        {
            return Err(UrlError::Malformed {
                url: url.to_owned(),
                reason: "no host",
            });
        }
        let known = scheme.params();
        if let Some(param) = params.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(UrlError::UnknownParam {
                url: url.to_owned(),
                param: param.clone(),
                scheme: scheme.name(),
                known: known.join(", "),
            });
        }
        Ok(Self {
            url: url.to_owned(),
            scheme,
            location,
            params,
        })
    }

    /// Sets a parameter the URL does not set itself, as a default from
    /// elsewhere (Nix's configuration, say); the URL shown stays as given.
    ///
    /// # Errors
    /// [`UrlError::UnknownParam`] if this kind of store has no such
    /// parameter.
    pub fn set_default(&mut self, name: &str, value: &str) -> Result<(), UrlError> {
        if !self.scheme.params().contains(&name) {
            return Err(UrlError::UnknownParam {
                url: self.url.clone(),
                param: name.to_owned(),
                scheme: self.scheme.name(),
                known: self.scheme.params().join(", "),
            });
        }
        self.params
            .entry(name.to_owned())
            .or_insert_with(|| value.to_owned());
        Ok(())
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The kind of store.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// What follows `scheme://`, without the query.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// A parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// A boolean parameter: `true`/`1` or `false`/`0`; `default` if absent.
    ///
    /// # Errors
    /// [`UrlError::BadValue`] for anything else.
    pub fn bool_param(&self, name: &str, default: bool) -> Result<bool, UrlError> {
        match self.param(name) {
            None => Ok(default),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(self.bad_value(name, v, "expected true or false")),
        }
    }

    /// An integer parameter; `None` if absent.
    ///
    /// # Errors
    /// [`UrlError::BadValue`] if it is not an integer.
    pub fn int_param(&self, name: &str) -> Result<Option<i64>, UrlError> {
        self.param(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| self.bad_value(name, v, "expected an integer"))
            })
            .transpose()
    }

    /// An error about parameter `name` having value `value`.
    pub fn bad_value(&self, name: &str, value: &str, reason: &'static str) -> UrlError {
        UrlError::BadValue {
            url: self.url.clone(),
            param: name.to_owned(),
            value: value.to_owned(),
            reason,
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Percent-decodes a query component (`%2F` → `/`); invalid escapes are
/// kept as they are.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let u = StoreUrl::parse("file:///tmp/c?compression=zstd&compression-level=3").unwrap();
        assert_eq!((u.scheme(), u.location()), (Scheme::File, "/tmp/c"));
        assert_eq!(u.param("compression"), Some("zstd"));
        assert_eq!(u.int_param("compression-level").unwrap(), Some(3));
        for local in ["local", "auto", "daemon", "/nix/store"] {
            let u = StoreUrl::parse(local).unwrap();
            assert_eq!((u.scheme(), u.param("root")), (Scheme::Local, None));
        }
        let u = StoreUrl::parse("/tmp/chroot").unwrap();
        assert_eq!(
            (u.scheme(), u.param("root")),
            (Scheme::Local, Some("/tmp/chroot"))
        );
        let u = StoreUrl::parse("local?root=/x%2Fy").unwrap();
        assert_eq!(u.param("root"), Some("/x/y"));
        assert_eq!(
            StoreUrl::parse("ssh://me@host:22").unwrap().location(),
            "me@host:22"
        );
    }

    #[test]
    fn errors_say_what_is_supported() {
        let e = StoreUrl::parse("ftp://x").unwrap_err().to_string();
        assert!(e.contains("file://"), "{e}");
        let e = StoreUrl::parse("file:///c?compresion=xz")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("compresion") && e.contains("compression-level"),
            "{e}"
        );
        assert!(StoreUrl::parse("file://relative").is_err());
        assert!(StoreUrl::parse("relative").is_err());
        let u = StoreUrl::parse("file:///c?write-nar-listing=maybe").unwrap();
        assert!(u.bool_param("write-nar-listing", false).is_err());
    }
}
