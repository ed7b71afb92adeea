//! Nix's configuration, read the way Nix 2.8 reads it, for the settings
//! nixferry uses: which keys to trust, which keys to sign with, which
//! substituters there are, where the netrc file is, how long to wait for a
//! connection.
//!
//! # Where settings come from, in order (later wins)
//!
//! 1. `$NIX_CONF_DIR/nix.conf` (`/etc/nix/nix.conf` without it);
//! 2. the user's files, the last first: `$NIX_USER_CONF_FILES` (a
//!    `:`-separated list) if set, else `$XDG_CONFIG_HOME/nix/nix.conf`
//!    (`~/.config/nix/nix.conf`) then each `$XDG_CONFIG_DIRS` entry's
//!    `nix/nix.conf` (`/etc/xdg`), so that the first of the list wins;
//! 3. `$NIX_CONFIG`, as the text of one more file;
//! 4. `--option NAME VALUE` ([`NixConfig::set`]).
//!
//! # The format
//!
//! Each line is `name = value`; `#` starts a comment anywhere in a line;
//! a value's words are joined by single spaces. `include FILE` reads
//! another file (relative to the including one), and fails if it is
//! missing; `!include FILE` skips a missing file. A setting named
//! `extra-NAME` adds to the list `NAME` instead of replacing it. Old
//! names (`binary-caches`, `binary-cache-public-keys`,
//! `trusted-binary-caches`) name the same settings. Settings nixferry does
//! not use are accepted and kept as text.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Nix's default trusted key.
const NIX_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

/// How deep `include`s may nest.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Longest configuration file read.
const MAX_FILE_LEN: u64 = 1 << 20;

/// A configuration that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A line is neither `name = value` nor an include.
    #[error("illegal configuration line '{line}' in '{origin}'")]
    Syntax {
        /// The line.
        line: String,
        /// The file (or `NIX_CONFIG`).
        origin: String,
    },
    /// An `include`d file is missing.
    #[error("file '{file}' included from '{origin}' not found")]
    MissingInclude {
        /// The file.
        file: PathBuf,
        /// Where it was included from.
        origin: String,
    },
    /// A file could not be read.
    #[error("reading '{path}': {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Includes nest too deep (a file that includes itself).
    #[error("includes nest more than {MAX_INCLUDE_DEPTH} deep at '{0}'")]
    TooDeep(PathBuf),
    /// A value does not fit its setting.
    #[error("configuration setting '{name}' {expected}, not '{value}' (in '{origin}')")]
    BadValue {
        /// The setting.
        name: String,
        /// What it takes.
        expected: &'static str,
        /// The value given.
        value: String,
        /// Where.
        origin: String,
    },
}

/// What kind of value a setting holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Words, which `extra-` adds to.
    List,
    /// Text, as given (Nix keeps `netrc-file` as it is written).
    Text,
    /// A number.
    Integer,
}

/// The settings nixferry uses: name, old names, kind.
const KNOWN: &[(&str, &[&str], Kind)] = &[
    ("connect-timeout", &[], Kind::Integer),
    ("netrc-file", &[], Kind::Text),
    ("secret-key-files", &[], Kind::List),
    ("substituters", &["binary-caches"], Kind::List),
    (
        "trusted-public-keys",
        &["binary-cache-public-keys"],
        Kind::List,
    ),
    (
        "trusted-substituters",
        &["trusted-binary-caches"],
        Kind::List,
    ),
];

/// A setting's value, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Its words (one for a path or a number).
    pub value: Vec<String>,
    /// Where each part of it was set, in order: files (`path:line`),
    /// `NIX_CONFIG`, `--option`, or `default`.
    pub origins: Vec<String>,
}

/// Where to look for configuration: the environment's answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSources {
    /// Nix's configuration directory (`NIX_CONF_DIR`, else `/etc/nix`).
    pub conf_dir: PathBuf,
    /// The user's files, in Nix's order (the first wins).
    pub user_files: Vec<PathBuf>,
    /// `NIX_CONFIG`.
    pub nix_config: Option<String>,
}

impl ConfigSources {
    /// The sources the process environment names, as Nix finds them.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The sources that the variables `var` gives name, as Nix finds
    /// them.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let conf_dir = var("NIX_CONF_DIR").map_or_else(|| PathBuf::from("/etc/nix"), PathBuf::from);
        let user_files = match var("NIX_USER_CONF_FILES") {
            Some(list) => list
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect(),
            None => {
                let home = var("HOME").unwrap_or_default();
                let config_home = var("XDG_CONFIG_HOME")
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| format!("{home}/.config"));
                let dirs = var("XDG_CONFIG_DIRS")
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "/etc/xdg".to_owned());
                std::iter::once(config_home.as_str())
                    .chain(dirs.split(':').filter(|s| !s.is_empty()))
                    .map(|d| Path::new(d).join("nix/nix.conf"))
                    .collect()
            }
        };
        Self {
            conf_dir,
            user_files,
            nix_config: var("NIX_CONFIG"),
        }
    }
}

/// Nix's effective configuration. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixConfig {
    settings: BTreeMap<String, Setting>,
    /// Settings nixferry does not use, as text.
    others: BTreeMap<String, Setting>,
}

impl NixConfig {
    /// Nix's defaults, for a configuration directory `conf_dir`.
    pub fn defaults(conf_dir: &Path) -> Self {
        let default = |words: &[&str]| Setting {
            value: words.iter().map(|w| (*w).to_owned()).collect(),
            origins: vec!["default".to_owned()],
        };
        let netrc = conf_dir.join("netrc").display().to_string();
        let settings = BTreeMap::from([
            ("connect-timeout".to_owned(), default(&["0"])),
            ("netrc-file".to_owned(), default(&[netrc.as_str()])),
            ("secret-key-files".to_owned(), default(&[])),
            (
                "substituters".to_owned(),
                default(&["https://cache.nixos.org/"]),
            ),
            ("trusted-public-keys".to_owned(), default(&[NIX_KEY])),
            ("trusted-substituters".to_owned(), default(&[])),
        ]);
        Self {
            settings,
            others: BTreeMap::new(),
        }
    }

    /// Reads the configuration `sources` name, in Nix's order.
    ///
    /// # Errors
    /// A file that cannot be read (a missing one is skipped), a line that
    /// does not parse, an `include` of a missing file, a bad value.
    pub fn load(sources: &ConfigSources) -> Result<Self, ConfigError> {
        let mut config = Self::defaults(&sources.conf_dir);
        config.apply_file(&sources.conf_dir.join("nix.conf"), false, 0)?;
        for file in sources.user_files.iter().rev() {
            config.apply_file(file, false, 0)?;
        }
        if let Some(text) = &sources.nix_config {
            // Its includes are relative to the current directory.
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
            config.apply_text(text, "NIX_CONFIG", &cwd, 0)?;
        }
        Ok(config)
    }

    /// Sets `name` to `value` as `--option NAME VALUE` does (`extra-`
    /// adds to a list).
    ///
    /// # Errors
    /// A value that does not fit the setting.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let words: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
        self.assign(name, words, "--option")
    }

    /// A setting nixferry uses, by its name: `None` for others.
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings.get(name)
    }

    /// Every setting nixferry uses, by name.
    pub fn settings(&self) -> impl Iterator<Item = (&str, &Setting)> {
        self.settings.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Settings nixferry does not use, by name, as text.
    pub fn others(&self) -> impl Iterator<Item = (&str, &Setting)> {
        self.others.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn words(&self, name: &str) -> &[String] {
        self.settings.get(name).map_or(&[], |s| &s.value)
    }

    /// `trusted-public-keys`: the keys whose signatures are trusted.
    pub fn trusted_public_keys(&self) -> &[String] {
        self.words("trusted-public-keys")
    }

    /// `secret-key-files`: the keys paths are signed with.
    pub fn secret_key_files(&self) -> Vec<PathBuf> {
        self.words("secret-key-files")
            .iter()
            .map(PathBuf::from)
            .collect()
    }

    /// `substituters` (with `extra-substituters`).
    pub fn substituters(&self) -> &[String] {
        self.words("substituters")
    }

    /// `netrc-file`.
    pub fn netrc_file(&self) -> PathBuf {
        PathBuf::from(self.words("netrc-file").join(" "))
    }

    /// The settings nixferry uses as a JSON object: for each, its
    /// `value` (a list of words; a string for `netrc-file`, a number for
    /// `connect-timeout`) and its `origins`.
    pub fn to_json(&self) -> String {
        let mut v = serde_json::Map::new();
        for (name, setting) in self.settings() {
            let value = match name {
                "connect-timeout" => serde_json::json!(self.connect_timeout()),
                "netrc-file" => serde_json::json!(setting.to_string()),
                _ => serde_json::json!(setting.value),
            };
            v.insert(
                name.to_owned(),
                serde_json::json!({"value": value, "origins": setting.origins}),
            );
        }
        serde_json::Value::Object(v).to_string()
    }

    /// `connect-timeout`, in seconds; 0 for none.
    pub fn connect_timeout(&self) -> u64 {
        self.words("connect-timeout")
            .first()
            .and_then(|w| w.parse().ok())
            .unwrap_or(0)
    }

    fn apply_file(
        &mut self,
        path: &Path,
        missing_ok: bool,
        depth: usize,
    ) -> Result<(), ConfigError> {
        use std::io::Read as _;
        if depth > MAX_INCLUDE_DEPTH {
            return Err(ConfigError::TooDeep(path.to_owned()));
        }
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing_ok => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && depth == 0 => return Ok(()),
            Err(source) => {
                return Err(ConfigError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let mut text = String::new();
        file.take(MAX_FILE_LEN)
            .read_to_string(&mut text)
            .map_err(|source| ConfigError::Io {
                path: path.to_owned(),
                source,
            })?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        self.apply_text(&text, &path.display().to_string(), dir, depth)
    }

    /// Applies one file's text, as Nix does: its experimental features
    /// first (nixferry keeps them as text), then the rest in order.
    fn apply_text(
        &mut self,
        text: &str,
        origin: &str,
        dir: &Path,
        depth: usize,
    ) -> Result<(), ConfigError> {
        for (n, raw) in text.split('\n').enumerate() {
            let line = raw.split('#').next().unwrap_or_default();
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.is_empty() {
                continue;
            }
            let syntax = || ConfigError::Syntax {
                line: line.to_owned(),
                origin: origin.to_owned(),
            };
            if words.len() < 2 {
                return Err(syntax());
            }
            if words[0] == "include" || words[0] == "!include" {
                if words.len() != 2 {
                    return Err(syntax());
                }
                let file = absolute(dir, words[1]);
                let missing_ok = words[0] == "!include";
                if !file.exists() && !missing_ok {
                    return Err(ConfigError::MissingInclude {
                        file,
                        origin: origin.to_owned(),
                    });
                }
                self.apply_file(&file, missing_ok, depth + 1)?;
                continue;
            }
            if words[1] != "=" {
                return Err(syntax());
            }
            let value = words[2..].iter().map(|w| (*w).to_owned()).collect();
            self.assign(words[0], value, &format!("{origin}:{}", n + 1))?;
        }
        Ok(())
    }

    fn assign(&mut self, name: &str, value: Vec<String>, origin: &str) -> Result<(), ConfigError> {
        let (base, append) = match resolve(name) {
            Some(known) => (known, false),
            None => match name.strip_prefix("extra-").and_then(resolve) {
                Some((canonical, Kind::List)) => ((canonical, Kind::List), true),
                _ => {
                    self.others.insert(
                        name.to_owned(),
                        Setting {
                            value,
                            origins: vec![origin.to_owned()],
                        },
                    );
                    return Ok(());
                }
            },
        };
        let (canonical, kind) = base;
        let bad = |expected| ConfigError::BadValue {
            name: name.to_owned(),
            expected,
            value: value.join(" "),
            origin: origin.to_owned(),
        };
        let value = match kind {
            Kind::List => value,
            Kind::Integer => match value.as_slice() {
                [n] if n.parse::<u64>().is_ok() => value,
                _ => return Err(bad("takes a whole number")),
            },
            Kind::Text => vec![value.join(" ")],
        };
        let setting = self
            .settings
            .entry(canonical.to_owned())
            .or_insert_with(|| Setting {
                value: Vec::new(),
                origins: Vec::new(),
            });
        if append {
            setting.value.extend(value);
        } else {
            setting.value = value;
            setting.origins.clear();
        }
        setting.origins.push(origin.to_owned());
        Ok(())
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value.join(" "))
    }
}

/// The canonical name and kind of a setting nixferry uses, by any of its
/// names.
fn resolve(name: &str) -> Option<(&'static str, Kind)> {
    KNOWN
        .iter()
        .find(|(n, aliases, _)| *n == name || aliases.contains(&name))
        .map(|(n, _, kind)| (*n, *kind))
}

/// `file` relative to `dir`, unless it is absolute.
fn absolute(dir: &Path, file: &str) -> PathBuf {
    PathBuf::from(canonical_path(&dir.join(file).display().to_string()))
}

/// An absolute path without `.`, `..` or repeated slashes, as Nix's
/// `canonPath` gives it (symbolic links are not followed).
fn canonical_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &Path, user: &[&Path], nix_config: Option<&str>) -> ConfigSources {
        ConfigSources {
            conf_dir: dir.to_owned(),
            user_files: user.iter().map(|p| p.to_path_buf()).collect(),
            nix_config: nix_config.map(str::to_owned),
        }
    }

    #[test]
    fn defaults_without_any_file() {
        let tmp = tempfile::tempdir().unwrap();
        let c = NixConfig::load(&sources(tmp.path(), &[], None)).unwrap();
        assert_eq!(c.trusted_public_keys(), [NIX_KEY]);
        assert_eq!(c.substituters(), ["https://cache.nixos.org/"]);
        assert_eq!(c.netrc_file(), tmp.path().join("netrc"));
        assert_eq!(c.connect_timeout(), 0);
        assert!(c.secret_key_files().is_empty());
    }

    #[test]
    fn files_includes_extras_aliases_and_origins() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(
            d.join("nix.conf"),
            "# a comment\nsubstituters = https://a/   https://b/ # trailing\n\
             include more.conf\n!include none.conf\nconnect-timeout = 7\n\
             netrc-file = /x//y/../netrc\nexperimental-features = nix-command\n",
        )
        .unwrap();
        std::fs::write(d.join("more.conf"), "binary-cache-public-keys = k-1:AA\n").unwrap();
        std::fs::write(d.join("u1"), "extra-secret-key-files = /k1\n").unwrap();
        std::fs::write(
            d.join("u2"),
            "secret-key-files = /k2\nconnect-timeout = 3\n",
        )
        .unwrap();
        let mut c = NixConfig::load(&sources(
            d,
            &[&d.join("u1"), &d.join("u2")],
            Some("extra-substituters = https://c/\nextra-trusted-public-keys = k-2:BB"),
        ))
        .unwrap();
        assert_eq!(c.substituters(), ["https://a/", "https://b/", "https://c/"]);
        assert_eq!(c.trusted_public_keys(), ["k-1:AA", "k-2:BB"]);
        // u2 first, then u1: the first file of the list wins.
        assert_eq!(c.secret_key_files(), [PathBuf::from("/k2"), "/k1".into()]);
        assert_eq!(c.connect_timeout(), 3);
        assert_eq!(c.netrc_file(), PathBuf::from("/x//y/../netrc"));
        let origins = &c.get("trusted-public-keys").unwrap().origins;
        assert_eq!(
            origins,
            &[
                format!("{}:1", d.join("more.conf").display()),
                "NIX_CONFIG:2".to_owned()
            ]
        );
        assert_eq!(
            c.others().map(|(k, _)| k).collect::<Vec<_>>(),
            ["experimental-features"]
        );
        c.set("substituters", "https://z/").unwrap();
        assert_eq!(c.substituters(), ["https://z/"]);
        assert_eq!(c.get("substituters").unwrap().origins, ["--option"]);
    }

    #[test]
    fn errors() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let load = |text: &str| NixConfig::load(&sources(d, &[], Some(text)));
        assert!(matches!(load("lonely"), Err(ConfigError::Syntax { .. })));
        assert!(matches!(load("a b c"), Err(ConfigError::Syntax { .. })));
        assert!(matches!(
            load("include /nowhere/x.conf"),
            Err(ConfigError::MissingInclude { .. })
        ));
        assert!(load("!include /nowhere/x.conf").is_ok());
        assert!(matches!(
            load("connect-timeout = soon"),
            Err(ConfigError::BadValue { .. })
        ));
        std::fs::write(d.join("loop.conf"), "include loop.conf\n").unwrap();
        assert!(matches!(
            load(&format!("include {}", d.join("loop.conf").display())),
            Err(ConfigError::TooDeep(_))
        ));
    }

    #[test]
    fn sources_from_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let s = ConfigSources::from_vars(vars(&[("HOME", "/home/u")]));
        assert_eq!(s.conf_dir, PathBuf::from("/etc/nix"));
        assert_eq!(
            s.user_files,
            [
                PathBuf::from("/home/u/.config/nix/nix.conf"),
                "/etc/xdg/nix/nix.conf".into()
            ]
        );
        let s = ConfigSources::from_vars(vars(&[
            ("NIX_CONF_DIR", "/c"),
            ("XDG_CONFIG_HOME", "/h"),
            ("XDG_CONFIG_DIRS", "/d1:/d2"),
        ]));
        assert_eq!(s.conf_dir, PathBuf::from("/c"));
        assert_eq!(
            s.user_files,
            [
                PathBuf::from("/h/nix/nix.conf"),
                "/d1/nix/nix.conf".into(),
                "/d2/nix/nix.conf".into()
            ]
        );
        let s = ConfigSources::from_vars(vars(&[
            ("NIX_USER_CONF_FILES", "/a:/b"),
            ("NIX_CONFIG", "x = y"),
        ]));
        assert_eq!(s.user_files, [PathBuf::from("/a"), "/b".into()]);
        assert_eq!(s.nix_config.as_deref(), Some("x = y"));
    }
}
