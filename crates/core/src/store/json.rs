//! `nix path-info --json`: what a store knows about paths, as Nix prints it
//! (docs/formats.md §3.5).
//!
//! [`PathInfoQuery::run`] asks a store what `nix path-info` reports (the
//! paths, or with `recursive` their closure, each with its closure's sizes
//! when asked for), and [`path_info_json`] renders the answer as the JSON
//! array `nix path-info --json` prints; [`PathInfo::to_json`] renders one
//! path's object.
//!
//! The output is compact JSON, fields in Nix's order:
//!
//! | field | when |
//! |---|---|
//! | `path`, `narHash` (SRI), `narSize`, `references` | always |
//! | `ca` | content-addressed paths |
//! | `closureSize` | closure sizes asked for (`-S`) |
//! | `deriver` | known |
//! | `registrationTime` | known (not 0) |
//! | `ultimate` | `true` only |
//! | `signatures` | any |
//! | `url`, then `downloadHash`, `downloadSize` as known | binary caches |
//! | `closureDownloadSize` | binary caches, with `-S`, when every path of the closure has a `FileSize` |
//!
//! A path the store lacks is `{"path":"…","valid":false}`.
//!
//! ```
//! use nixferry::hash::NixHash;
//! use nixferry::store::json::{path_info_json, PathInfoEntry};
//! use nixferry::store::PathInfo;
//! use nixferry::store_path::{StoreDir, StorePath};
//!
//! let dir = StoreDir::default();
//! let path = StorePath::from_digest(&[0; 20], "hello").unwrap();
//! let info = PathInfo::new(path.clone(), NixHash::sha256([0; 32]), 120);
//! let json = path_info_json(&dir, &[info.into(), PathInfoEntry::Invalid(path)]);
//! assert_eq!(
//!     json,
//!     r#"[{"path":"/nix/store/00000000000000000000000000000000-hello","#.to_owned()
//!         + r#""narHash":"sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","narSize":120,"#
//!         + r#""references":[]},"#
//!         + r#"{"path":"/nix/store/00000000000000000000000000000000-hello","valid":false}]"#
//! );
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{PathInfo, Store};
use crate::closure::{self, Closure, ClosureError};
use crate::store_path::{StoreDir, StorePath};

/// The sizes of a path's closure (`nix path-info -S`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClosureSizes {
    /// The sum of the NAR sizes (`closureSize`).
    pub nar_size: u64,
    /// The sum of the NAR file sizes, when the store knows every one (a
    /// binary cache whose narinfos give `FileSize`): `closureDownloadSize`.
    pub download_size: Option<u64>,
}

impl ClosureSizes {
    /// The sizes of `closure`.
    pub fn of(closure: &Closure) -> Self {
        Self {
            nar_size: closure.nar_size(),
            download_size: closure.download_size(),
        }
    }

    /// The sizes of the closure of `root` among `infos`, which hold that
    /// closure (references `infos` lacks count for nothing).
    fn within(infos: &BTreeMap<StorePath, PathInfo>, root: &StorePath) -> Self {
        let mut sizes = Self {
            nar_size: 0,
            download_size: Some(0),
        };
        let mut seen = BTreeSet::new();
        let mut todo = vec![root];
        while let Some(path) = todo.pop() {
            if !seen.insert(path) {
                continue;
            }
            let Some(info) = infos.get(path) else {
                continue;
            };
            sizes.nar_size = sizes.nar_size.saturating_add(info.nar_size);
            sizes.download_size = sizes.download_size.and_then(|sum| {
                let size = info.file.as_ref()?.file_size?;
                Some(sum.saturating_add(size))
            });
            todo.extend(info.references.iter().filter(|r| !seen.contains(r)));
        }
        sizes
    }
}

/// What `nix path-info` reports about one path.
// Nearly every entry is valid: boxing the info would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathInfoEntry {
    /// The store has the path.
    Valid {
        /// Its info.
        info: PathInfo,
        /// Its closure's sizes, when asked for.
        closure: Option<ClosureSizes>,
    },
    /// The store does not have the path.
    Invalid(StorePath),
}

impl PathInfoEntry {
    /// The path.
    pub fn path(&self) -> &StorePath {
        match self {
            Self::Valid { info, .. } => &info.path,
            Self::Invalid(path) => path,
        }
    }

    /// The info, for a path the store has.
    pub fn info(&self) -> Option<&PathInfo> {
        match self {
            Self::Valid { info, .. } => Some(info),
            Self::Invalid(_) => None,
        }
    }
}

impl From<PathInfo> for PathInfoEntry {
    fn from(info: PathInfo) -> Self {
        Self::Valid {
            info,
            closure: None,
        }
    }
}

/// What to ask `nix path-info` for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathInfoQuery {
    /// Report the closure of the paths, references first, instead of the
    /// paths alone (`-r`).
    pub recursive: bool,
    /// Report each path's closure sizes (`-S`).
    pub closure_size: bool,
}

impl PathInfoQuery {
    /// Asks `store` about `paths`.
    ///
    /// Without [`recursive`](Self::recursive): one entry per path, in the
    /// order given (a path given twice is reported twice), those the store
    /// lacks as [`PathInfoEntry::Invalid`]. With it: the closure of the
    /// paths, references first, every path of it valid.
    ///
    /// # Errors
    /// With `recursive`, a path the store lacks is an error as in
    /// [`closure::compute`]; closure sizes need every path of the closures
    /// ([`ClosureError::MissingReference`]); and what the store's queries
    /// give.
    pub async fn run(
        self,
        store: &dyn Store,
        paths: &[StorePath],
    ) -> Result<Vec<PathInfoEntry>, ClosureError> {
        let infos: Vec<Result<PathInfo, StorePath>> = if self.recursive {
            closure::compute(store, paths)
                .await?
                .into_infos()
                .into_iter()
                .map(Ok)
                .collect()
        } else {
            let found = store.query_path_infos(paths).await?;
            paths
                .iter()
                .map(|p| found.get(p).cloned().ok_or_else(|| p.clone()))
                .collect()
        };
        // Every closure at once (a recursive query has them already), then
        // each one's sizes within.
        let valid = infos.iter().filter_map(|i| i.as_ref().ok());
        let closures = match (self.closure_size, self.recursive) {
            (false, _) => None,
            (true, true) => Some(valid.map(|i| (i.path.clone(), i.clone())).collect()),
            (true, false) => {
                let roots: Vec<StorePath> = valid.map(|i| i.path.clone()).collect();
                Some(closure::infos(store, &roots).await?)
            }
        };
        Ok(infos
            .into_iter()
            .map(|i| match i {
                Ok(info) => PathInfoEntry::Valid {
                    closure: closures
                        .as_ref()
                        .map(|all| ClosureSizes::within(all, &info.path)),
                    info,
                },
                Err(path) => PathInfoEntry::Invalid(path),
            })
            .collect())
    }
}

impl PathInfo {
    /// The path's object in `nix path-info --json` (without closure
    /// sizes); see [`path_info_json`].
    pub fn to_json(&self, store_dir: &StoreDir) -> String {
        let mut out = String::new();
        write_info(&mut out, store_dir, self, None);
        out
    }
}

/// The JSON array `nix path-info --json` prints for `entries` (without a
/// final newline).
pub fn path_info_json(store_dir: &StoreDir, entries: &[PathInfoEntry]) -> String {
    let mut out = String::from("[");
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match entry {
            PathInfoEntry::Valid { info, closure } => {
                write_info(&mut out, store_dir, info, closure.as_ref());
            }
            PathInfoEntry::Invalid(path) => {
                let mut obj = Object::new(&mut out);
                obj.string("path", &store_dir.full(path));
                obj.bool("valid", false);
                obj.end();
            }
        }
    }
    out.push(']');
    out
}

/// One path's object, fields in Nix's order.
fn write_info(out: &mut String, dir: &StoreDir, info: &PathInfo, closure: Option<&ClosureSizes>) {
    let mut obj = Object::new(out);
    obj.string("path", &dir.full(&info.path));
    obj.string("narHash", &info.nar_hash.to_sri());
    obj.number("narSize", info.nar_size);
    obj.strings("references", info.references.iter().map(|r| dir.full(r)));
    if let Some(ca) = &info.ca {
        obj.string("ca", &ca.to_string());
    }
    if let Some(c) = closure {
        obj.number("closureSize", c.nar_size);
    }
    if let Some(d) = &info.deriver {
        obj.string("deriver", &dir.full(d));
    }
    if info.registration_time != 0 {
        obj.number("registrationTime", info.registration_time);
    }
    if info.ultimate {
        obj.bool("ultimate", true);
    }
    if !info.signatures.is_empty() {
        obj.strings("signatures", info.signatures.iter());
    }
    if let Some(f) = &info.file {
        obj.string("url", &f.url);
        if let Some(h) = &f.file_hash {
            obj.string("downloadHash", &h.to_sri());
        }
        if let Some(s) = f.file_size {
            obj.number("downloadSize", s);
        }
        if let Some(total) = closure.and_then(|c| c.download_size) {
            obj.number("closureDownloadSize", total);
        }
    }
    obj.end();
}

/// A JSON object being written: compact, keys in the order given.
struct Object<'o> {
    out: &'o mut String,
    empty: bool,
}

impl<'o> Object<'o> {
    fn new(out: &'o mut String) -> Self {
        out.push('{');
        Self { out, empty: true }
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        write_string(self.out, key);
        self.out.push(':');
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        write_string(self.out, value);
    }

    fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        let _ = write!(self.out, "{value}");
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn strings<S: AsRef<str>>(&mut self, key: &str, values: impl Iterator<Item = S>) {
        self.key(key);
        self.out.push('[');
        for (i, v) in values.enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            write_string(self.out, v.as_ref());
        }
        self.out.push(']');
    }

    fn end(self) {
        self.out.push('}');
    }
}

/// A JSON string, escaped as serde_json and Nix escape: `"` and `\`, the
/// short escapes for `\b`, `\f`, `\n`, `\r`, `\t`, `\u00XX` (lower-case
/// hex) for the other control characters; everything else, DEL and
/// non-ASCII included, as it is.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        plain = i + 1;
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::hash::{sha256, NixHash};
    use crate::narinfo::Compression;
    use std::sync::Arc;

    use crate::store::mem::MemStore;
    use crate::store::NarFile;

    fn p(name: &str) -> StorePath {
        let digest: [u8; 20] = sha256(name.as_bytes())[..20].try_into().unwrap();
        StorePath::from_digest(&digest, name).unwrap()
    }

    fn info(name: &str, refs: &[&str], nar_size: u64) -> PathInfo {
        let mut i = PathInfo::new(p(name), NixHash::sha256(sha256(name.as_bytes())), nar_size);
        i.references = refs.iter().map(|r| p(r)).collect();
        i.references.sort();
        i
    }

    fn cached(mut i: PathInfo, file_size: Option<u64>) -> PathInfo {
        i.file = Some(NarFile {
            url: format!("nar/{}.nar", i.path.name()),
            compression: Compression::None,
            file_hash: Some(NixHash::sha256(sha256(b"file"))),
            file_size,
        });
        i
    }

    /// What the command-line tool printed before rendering moved here,
    /// with serde_json (fields in insertion order).
    fn reference(dir: &StoreDir, info: &PathInfo, closure: Option<&ClosureSizes>) -> String {
        use serde_json::{json, Map, Value};
        let mut m = Map::new();
        m.insert("path".into(), json!(dir.full(&info.path)));
        m.insert("narHash".into(), json!(info.nar_hash.to_sri()));
        m.insert("narSize".into(), json!(info.nar_size));
        let refs: Vec<String> = info.references.iter().map(|r| dir.full(r)).collect();
        m.insert("references".into(), json!(refs));
        if let Some(ca) = &info.ca {
            m.insert("ca".into(), json!(ca.to_string()));
        }
        if let Some(c) = closure {
            m.insert("closureSize".into(), json!(c.nar_size));
        }
        if let Some(d) = &info.deriver {
            m.insert("deriver".into(), json!(dir.full(d)));
        }
        if info.registration_time != 0 {
            m.insert("registrationTime".into(), json!(info.registration_time));
        }
        if info.ultimate {
            m.insert("ultimate".into(), json!(true));
        }
        if !info.signatures.is_empty() {
            m.insert("signatures".into(), json!(info.signatures));
        }
        if let Some(f) = &info.file {
            m.insert("url".into(), json!(f.url));
            if let Some(h) = &f.file_hash {
                m.insert("downloadHash".into(), json!(h.to_sri()));
            }
            if let Some(s) = f.file_size {
                m.insert("downloadSize".into(), json!(s));
            }
            if let Some(total) = closure.and_then(|c| c.download_size) {
                m.insert("closureDownloadSize".into(), json!(total));
            }
        }
        Value::Object(m).to_string()
    }

    #[test]
    fn every_field_in_nixs_order() {
        let dir = StoreDir::default();
        let mut full = cached(info("full", &["dep", "full"], 808), Some(296));
        full.deriver = Some(p("full.drv"));
        full.signatures = vec!["k-1:AAAA".into(), "k-2:BBBB".into()];
        full.registration_time = 1_700_000_000;
        full.ultimate = true;
        let sizes = ClosureSizes {
            nar_size: 928,
            download_size: Some(420),
        };
        let json = path_info_json(
            &dir,
            &[PathInfoEntry::Valid {
                info: full.clone(),
                closure: Some(sizes),
            }],
        );
        assert_eq!(json, format!("[{}]", reference(&dir, &full, Some(&sizes))));
        let keys: Vec<&str> = json
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|k| k.chars().all(|c| c.is_ascii_alphabetic()))
            .collect();
        assert_eq!(
            keys,
            [
                "path",
                "narHash",
                "narSize",
                "references",
                "closureSize",
                "deriver",
                "registrationTime",
                "ultimate",
                "signatures",
                "url",
                "downloadHash",
                "downloadSize",
                "closureDownloadSize"
            ]
        );

        // The least there is, and an unknown download size.
        let bare = info("bare", &[], 1);
        assert_eq!(bare.to_json(&dir), reference(&dir, &bare, None));
        let partial = cached(info("partial", &[], 1), None);
        let sizes = ClosureSizes {
            nar_size: 1,
            download_size: None,
        };
        let entry = PathInfoEntry::Valid {
            info: partial.clone(),
            closure: Some(sizes),
        };
        assert_eq!(
            path_info_json(&dir, &[entry]),
            format!("[{}]", reference(&dir, &partial, Some(&sizes)))
        );
        assert_eq!(path_info_json(&dir, &[]), "[]");
        assert_eq!(
            path_info_json(&dir, &[PathInfoEntry::Invalid(p("gone"))]),
            format!(r#"[{{"path":"{}","valid":false}}]"#, dir.full(&p("gone")))
        );
    }

    proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_does(s in any::<String>(), raw in prop::collection::vec(0u8..0x80, 0..40)) {
            for s in [s, String::from_utf8(raw).unwrap()] {
                let mut out = String::new();
                write_string(&mut out, &s);
                prop_assert_eq!(&out, &serde_json::Value::String(s.clone()).to_string());
            }
        }

        #[test]
        fn signatures_and_urls_render_as_before(sig in any::<String>(), url in any::<String>()) {
            let dir = StoreDir::default();
            let mut i = cached(info("x", &[], 5), Some(3));
            i.signatures = vec![sig];
            i.file.as_mut().unwrap().url = url;
            prop_assert_eq!(i.to_json(&dir), reference(&dir, &i, None));
        }
    }

    /// top -> {left, right} -> base; left -> left; "uncached" has no
    /// file size.
    fn store() -> Arc<MemStore> {
        let infos = [
            cached(info("base", &[], 1), Some(10)),
            cached(info("left", &["base", "left"], 2), Some(20)),
            cached(info("right", &["base"], 4), Some(40)),
            cached(info("top", &["left", "right"], 8), Some(80)),
            cached(info("uncached", &["base"], 16), None),
        ];
        MemStore::with_infos(infos)
    }

    fn sizes(nar_size: u64, download_size: Option<u64>) -> Option<ClosureSizes> {
        Some(ClosureSizes {
            nar_size,
            download_size,
        })
    }

    #[tokio::test]
    async fn queries_report_as_nix_path_info_does() {
        let store = store();
        let entries = |e: Vec<PathInfoEntry>| -> Vec<(String, bool, Option<ClosureSizes>)> {
            e.into_iter()
                .map(|e| match e {
                    PathInfoEntry::Valid { info, closure } => {
                        (info.path.name().to_owned(), true, closure)
                    }
                    PathInfoEntry::Invalid(p) => (p.name().to_owned(), false, None),
                })
                .collect()
        };
        let asked = [p("top"), p("gone"), p("base"), p("top")];
        let plain = PathInfoQuery::default().run(&*store, &asked).await.unwrap();
        assert_eq!(
            entries(plain),
            [
                ("top".into(), true, None),
                ("gone".into(), false, None),
                ("base".into(), true, None),
                ("top".into(), true, None),
            ]
        );
        let query = PathInfoQuery {
            recursive: false,
            closure_size: true,
        };
        let sized = query.run(&*store, &asked).await.unwrap();
        assert_eq!(
            entries(sized),
            [
                ("top".into(), true, sizes(15, Some(150))),
                ("gone".into(), false, None),
                ("base".into(), true, sizes(1, Some(10))),
                ("top".into(), true, sizes(15, Some(150))),
            ]
        );
        let query = PathInfoQuery {
            recursive: true,
            closure_size: true,
        };
        let all = query
            .run(&*store, &[p("uncached"), p("left")])
            .await
            .unwrap();
        let all = entries(all);
        // References first.
        assert_eq!(all[0], ("base".into(), true, sizes(1, Some(10))));
        assert_eq!(all.len(), 3);
        assert!(all.contains(&("left".into(), true, sizes(3, Some(30)))));
        assert!(all.contains(&("uncached".into(), true, sizes(17, None))));

        // A recursive query needs every path; so do closure sizes.
        let recursive = PathInfoQuery {
            recursive: true,
            closure_size: false,
        };
        assert!(recursive.run(&*store, &[p("gone")]).await.is_err());
        let broken = store;
        broken.remove(&p("base"));
        let query = PathInfoQuery {
            recursive: false,
            closure_size: true,
        };
        assert!(matches!(
            query.run(&*broken, &[p("right")]).await,
            Err(ClosureError::MissingReference { .. })
        ));
    }

    #[test]
    fn closure_sizes_of_a_closure() {
        let closure = Closure::from_infos([
            cached(info("base", &[], 1), Some(10)),
            cached(info("top", &["base"], 2), Some(20)),
        ])
        .unwrap();
        assert_eq!(ClosureSizes::of(&closure), sizes(3, Some(30)).unwrap());
    }
}
