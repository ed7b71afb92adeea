//! Which binary cache file a request names (docs/formats.md §3.1).
//!
//! Only the exact name shapes of the layout are accepted, so a request can
//! never name a file outside the cache: no `..`, no percent escapes (no
//! legitimate name needs one), no extra slashes, bounded lengths.

use crate::store_path::{is_hash_part, HASH_PART_LEN};

/// The longest request path considered at all.
const MAX_PATH_LEN: usize = 512;

/// The longest store path base name Nix accepts (32 hash characters, a
/// dash and a name of at most 211 characters).
const MAX_BASE_NAME_LEN: usize = 244;

/// The kinds of request, for routing and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    CacheInfo,
    NarInfo,
    Nar,
    Listing,
    Log,
    Metrics,
    Health,
    Other,
}

impl Kind {
    /// The label used in metrics.
    pub(super) fn label(self) -> &'static str {
        match self {
            Kind::CacheInfo => "cache_info",
            Kind::NarInfo => "narinfo",
            Kind::Nar => "nar",
            Kind::Listing => "ls",
            Kind::Log => "log",
            Kind::Metrics => "metrics",
            Kind::Health => "health",
            Kind::Other => "other",
        }
    }
}

/// A request path that names a file of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// `nix-cache-info`.
    CacheInfo,
    /// `<hash>.narinfo`.
    NarInfo(String),
    /// `nar/<file hash>.nar<ext>`, the NAR files of a `file://` cache, or
    /// `nar/<path hash>-<NAR hash>.nar<ext>`, the NARs of a served Nix
    /// store, which name their path so that any server of the store, now
    /// or after a restart, finds it: the path's hash part if named, the
    /// hash and the extension (with its dot, empty for none).
    Nar {
        path: Option<String>,
        hash: String,
        ext: String,
    },
    /// `<hash>.ls`.
    Listing(String),
    /// `log/<drv base name>`.
    Log(String),
    /// `/metrics`.
    Metrics,
    /// `/health`: whether the server answers, for load balancers and
    /// service managers.
    Health,
}

impl Route {
    /// The request kind.
    pub(super) fn kind(&self) -> Kind {
        match self {
            Route::CacheInfo => Kind::CacheInfo,
            Route::NarInfo(_) => Kind::NarInfo,
            Route::Nar { .. } => Kind::Nar,
            Route::Listing(_) => Kind::Listing,
            Route::Log(_) => Kind::Log,
            Route::Metrics => Kind::Metrics,
            Route::Health => Kind::Health,
        }
    }

    /// The file's path relative to the cache root; `None` for `/metrics`.
    pub(super) fn relative(&self) -> Option<String> {
        Some(match self {
            Route::CacheInfo => "nix-cache-info".to_owned(),
            Route::NarInfo(h) => format!("{h}.narinfo"),
            Route::Nar {
                path: None,
                hash,
                ext,
            } => format!("nar/{hash}.nar{ext}"),
            Route::Nar {
                path: Some(path),
                hash,
                ext,
            } => format!("nar/{path}-{hash}.nar{ext}"),
            Route::Listing(h) => format!("{h}.ls"),
            Route::Log(name) => format!("log/{name}"),
            Route::Metrics | Route::Health => return None,
        })
    }
}

/// Whether `s` is the name of a NAR file without its extension: a
/// SHA-256 in Nix base-32.
fn is_nar_hash(s: &str) -> bool {
    s.len() == 52 && s.bytes().all(crate::hash::nix32::is_digit)
}

/// Parses a request path (as sent, before any percent-decoding). `None`
/// for anything that is not exactly a name of the layout.
pub(super) fn parse(path: &str) -> Option<Route> {
    if path.len() > MAX_PATH_LEN || path.contains('%') {
        return None;
    }
    let path = path.strip_prefix('/')?;
    match path {
        "nix-cache-info" => return Some(Route::CacheInfo),
        "metrics" => return Some(Route::Metrics),
        "health" => return Some(Route::Health),
        _ => {}
    }
    if let Some(h) = path.strip_suffix(".narinfo") {
        return is_hash_part(h).then(|| Route::NarInfo(h.to_owned()));
    }
    if let Some(h) = path.strip_suffix(".ls") {
        return is_hash_part(h).then(|| Route::Listing(h.to_owned()));
    }
    if let Some(file) = path.strip_prefix("nar/") {
        // A NAR hash never has a dash: one after 32 characters ends a
        // path's hash part.
        let (store_path, file) = match file.split_at_checked(HASH_PART_LEN + 1) {
            Some((p, rest)) if p.ends_with('-') => {
                let p = &p[..HASH_PART_LEN];
                (Some(is_hash_part(p).then(|| p.to_owned())?), rest)
            }
            _ => (None, file),
        };
        let (hash, rest) = file.split_at_checked(52)?;
        let ext = rest.strip_prefix(".nar")?;
        let known = ["", ".xz", ".zst", ".bz2", ".br"];
        return (is_nar_hash(hash) && known.contains(&ext)).then(|| Route::Nar {
            path: store_path,
            hash: hash.to_owned(),
            ext: ext.to_owned(),
        });
    }
    if let Some(name) = path.strip_prefix("log/") {
        let ok = name.len() <= MAX_BASE_NAME_LEN
            && crate::store_path::StorePath::from_base_name(name).is_ok();
        return ok.then(|| Route::Log(name.to_owned()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const H32: &str = "jgs69zx98r4fpm73d82y357pps9llcic";
    const H52: &str = "0xby1grmcpivv8g88nx1zf0vgs2yz7lik9cwdp1ygdyz71x9spwv";

    #[test]
    fn accepts_the_layout() {
        assert_eq!(parse("/nix-cache-info"), Some(Route::CacheInfo));
        assert_eq!(parse("/metrics"), Some(Route::Metrics));
        assert_eq!(parse("/health"), Some(Route::Health));
        assert_eq!(
            parse(&format!("/{H32}.narinfo")),
            Some(Route::NarInfo(H32.into()))
        );
        assert_eq!(
            parse(&format!("/{H32}.ls")),
            Some(Route::Listing(H32.into()))
        );
        for ext in ["", ".xz", ".zst", ".bz2", ".br"] {
            assert_eq!(
                parse(&format!("/nar/{H52}.nar{ext}")),
                Some(Route::Nar {
                    path: None,
                    hash: H52.into(),
                    ext: ext.into()
                })
            );
            let named = Route::Nar {
                path: Some(H32.into()),
                hash: H52.into(),
                ext: ext.into(),
            };
            let file = format!("nar/{H32}-{H52}.nar{ext}");
            assert_eq!(parse(&format!("/{file}")), Some(named.clone()));
            assert_eq!(named.relative(), Some(file));
        }
        let log = format!("{H32}-hello-2.12.drv");
        assert_eq!(parse(&format!("/log/{log}")), Some(Route::Log(log)));
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "/",
            "nix-cache-info",
            "//nix-cache-info",
            "/nix-cache-info/",
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/nar%2f0xby1grmcpivv8g88nx1zf0vgs2yz7lik9cwdp1ygdyz71x9spwv.nar",
            &format!("/{}.narinfo", &H32[1..]),
            &format!("/{H32}x.narinfo"),
            "/EGS69ZX98R4FPM73D82Y357PPS9LLCIC.narinfo",
            "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo",
            &format!("/nar/{H52}.nar.gz"),
            &format!("/nar/{H52}.narx"),
            &format!("/nar/../{H52}.nar"),
            &format!("/nar/{}.nar", &H52[..51]),
            &format!("/nar/{H32}{H52}.nar"),
            &format!("/nar/{H32}--{H52}.nar"),
            &format!("/nar/{}-{H52}.nar", &H32[1..]),
            &format!("/nar/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-{H52}.nar"),
            &format!("/nar/{H32}-{H32}.nar"),
            "/log/../nix-cache-info",
            "/log/..",
            "/log/",
            &format!("/log/{H32}-a/b"),
            &format!("/log/{H32}-{}", "a".repeat(300)),
            &"/a".repeat(1000),
            "/nar/é",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
