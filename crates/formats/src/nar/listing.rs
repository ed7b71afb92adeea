//! [`list`] and [`Listing`]: the nodes of a NAR without their contents, and
//! the `.ls` JSON a binary cache keeps beside a NAR (docs/formats.md §1.8, §3.6).

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::io::{BufReader, Read};

use super::decode::INPUT_BUFFER;
use super::{Decoder, Entry, EntryKind, Escaped, Event, NarError};

/// Every node of a NAR, in NAR order (a directory, then its entries by
/// name, depth first), with sizes, flags, targets and content offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Never empty: the root comes first.
    entries: Vec<Entry>,
}

/// Reads a whole NAR (strictly, as [`super::validate`]) and lists it.
///
/// # Errors
/// [`NarError::Invalid`] for an invalid NAR, including trailing data;
/// [`NarError::Io`] if reading fails.
pub fn list(r: impl Read) -> Result<Listing, NarError> {
    let mut decoder = Decoder::new(BufReader::with_capacity(INPUT_BUFFER, r));
    let mut entries = Vec::new();
    while let Some(event) = decoder.next_event()? {
        if let Event::Entry(entry) = event {
            entries.push(entry);
        }
    }
    decoder.expect_eof()?;
    Ok(Listing { entries })
}

impl Listing {
    /// All nodes, the root first, in NAR order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Iterates over all nodes, as [`Listing::entries`].
    pub fn iter(&self) -> std::slice::Iter<'_, Entry> {
        self.entries.iter()
    }

    /// The node at `path` (`a/b`, or the root for an empty path).
    pub fn get(&self, path: &[u8]) -> Option<&Entry> {
        // NAR order is the order of paths compared component by component.
        self.entries
            .binary_search_by(|e| compare_paths(&e.path, path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The `.ls` JSON exactly as Nix writes it (docs/formats.md §3.6): compact,
    /// `{"version":1,"root":…}`, strings escaped as nlohmann's JSON does.
    ///
    /// JSON cannot hold bytes that are not UTF-8. Nix fails on such a name
    /// or target; here each invalid sequence becomes U+FFFD, so that the
    /// output is always valid JSON. Use [`Listing::to_json_strict`] to get
    /// an error instead.
    pub fn to_json(&self) -> String {
        render_json(&self.entries, Utf8::Lossy).unwrap_or_default()
    }

    /// As [`Listing::to_json`], but fails, as Nix does, on a name or
    /// symlink target that is not UTF-8.
    ///
    /// # Errors
    /// [`NarError::NotUtf8`] naming the first such entry.
    pub fn to_json_strict(&self) -> Result<String, NarError> {
        render_json(&self.entries, Utf8::Strict)
    }

    /// One line per node for a human, as `nix nar ls -lR` prints them:
    /// type and mode, size, `./path`, and ` -> target` for a symlink. The
    /// root directory itself is not shown; another root is shown as `.`.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        let skip_root = matches!(self.entries.first(), Some(e) if e.kind == EntryKind::Directory);
        self.entries
            .iter()
            .skip(usize::from(skip_root))
            .map(long_line)
    }
}

impl<'a> IntoIterator for &'a Listing {
    type Item = &'a Entry;
    type IntoIter = std::slice::Iter<'a, Entry>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

/// Orders paths as they appear in a NAR: by their components, each compared
/// bytewise, so that `a/x` comes before `a-b` although `/` > `-`.
fn compare_paths(a: &[u8], b: &[u8]) -> Ordering {
    components(a).cmp(components(b))
}

/// The names in a path; none for the root's empty path.
pub(super) fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

/// How to write bytes that are not UTF-8 as JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Utf8 {
    Lossy,
    Strict,
}

/// Writes the listing without recursion: entries come in NAR order, so a
/// drop in depth closes that many directories.
fn render_json(entries: &[Entry], utf8: Utf8) -> Result<String, NarError> {
    let mut out = String::with_capacity(32 + entries.len() * 64);
    out.push_str(r#"{"version":1,"root":"#);
    // Directories whose `"entries":{` is open.
    let mut open = 0;
    let mut need_comma = false;
    for entry in entries {
        let depth = entry.depth();
        while open > depth {
            out.push_str("}}");
            open -= 1;
            need_comma = true;
        }
        if depth > 0 {
            if need_comma {
                out.push(',');
            }
            push_json_string(&mut out, entry.name(), &entry.path, utf8)?;
            out.push(':');
        }
        need_comma = true;
        // Field order and omissions follow Nix's `listNar` (docs/formats.md §3.6).
        match &entry.kind {
            EntryKind::Regular {
                executable,
                size,
                offset,
            } => {
                let _ = write!(out, r#"{{"type":"regular","size":{size}"#);
                if *executable {
                    out.push_str(r#","executable":true"#);
                }
                if *offset != 0 {
                    let _ = write!(out, r#","narOffset":{offset}"#);
                }
                out.push('}');
            }
            EntryKind::Symlink { target } => {
                out.push_str(r#"{"type":"symlink","target":"#);
                push_json_string(&mut out, target, &entry.path, utf8)?;
                out.push('}');
            }
            EntryKind::Directory => {
                out.push_str(r#"{"type":"directory","entries":{"#);
                open += 1;
                need_comma = false;
            }
        }
    }
    for _ in 0..open {
        out.push_str("}}");
    }
    out.push('}');
    Ok(out)
}

/// Appends `bytes` as a JSON string, escaped as nlohmann's `dump()` does:
/// `"` `\` and the control characters `\b \f \n \r \t` by name, other
/// control characters as `\u00xx`, everything else (DEL and non-ASCII
/// included) as is.
fn push_json_string(
    out: &mut String,
    bytes: &[u8],
    path: &[u8],
    utf8: Utf8,
) -> Result<(), NarError> {
    let text = match (std::str::from_utf8(bytes), utf8) {
        (Ok(text), _) => std::borrow::Cow::Borrowed(text),
        (Err(_), Utf8::Lossy) => String::from_utf8_lossy(bytes),
        (Err(_), Utf8::Strict) => {
            return Err(NarError::NotUtf8 {
                path: path.to_vec(),
            })
        }
    };
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(())
}

/// A line of `nix nar ls -l` (Nix's `ls.cc`): `%s %20d %s`.
fn long_line(entry: &Entry) -> String {
    let (mode, size) = match &entry.kind {
        EntryKind::Regular {
            executable: true,
            size,
            ..
        } => ("-r-xr-xr-x", *size),
        EntryKind::Regular { size, .. } => ("-r--r--r--", *size),
        EntryKind::Symlink { .. } => ("lrwxrwxrwx", 0),
        EntryKind::Directory => ("dr-xr-xr-x", 0),
    };
    let mut line = if entry.path.is_empty() {
        format!("{mode} {size:20} .")
    } else {
        format!("{mode} {size:20} ./{}", Escaped(&entry.path))
    };
    if let EntryKind::Symlink { target } = &entry.kind {
        let _ = write!(line, " -> {}", Escaped(target));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::NarWriter;

    fn listing(build: impl FnOnce(&mut NarWriter<Vec<u8>>) -> Result<(), NarError>) -> Listing {
        let mut w = NarWriter::new(Vec::new());
        build(&mut w).unwrap();
        list(&w.finish().unwrap().0[..]).unwrap()
    }

    #[test]
    fn json_of_single_nodes() {
        let l = listing(|w| w.regular_bytes(false, b"hi"));
        assert_eq!(
            l.to_json(),
            r#"{"version":1,"root":{"type":"regular","size":2,"narOffset":96}}"#
        );
        let l = listing(|w| w.symlink(b"target"));
        assert_eq!(
            l.to_json(),
            r#"{"version":1,"root":{"type":"symlink","target":"target"}}"#
        );
        let l = listing(|w| {
            w.begin_directory()?;
            w.end_directory()
        });
        assert_eq!(
            l.to_json(),
            r#"{"version":1,"root":{"type":"directory","entries":{}}}"#
        );
    }

    #[test]
    fn json_closes_directories_on_the_way_up() {
        let l = listing(|w| {
            w.begin_directory()?;
            w.entry(b"a")?;
            w.begin_directory()?;
            w.entry(b"b")?;
            w.begin_directory()?;
            w.end_directory()?;
            w.end_directory()?;
            w.entry(b"c")?;
            w.symlink(b"a")?;
            w.end_directory()
        });
        assert_eq!(
            l.to_json(),
            concat!(
                r#"{"version":1,"root":{"type":"directory","entries":{"#,
                r#""a":{"type":"directory","entries":{"b":{"type":"directory","entries":{}}}},"#,
                r#""c":{"type":"symlink","target":"a"}}}}"#
            )
        );
    }

    #[test]
    fn json_string_escapes_like_nlohmann() {
        let mut out = String::new();
        let all: Vec<u8> = b"\"\\/\x08\x0c\n\r\t\x00\x01\x1f\x7f\xc3\xa9".to_vec();
        push_json_string(&mut out, &all, b"", Utf8::Strict).unwrap();
        assert_eq!(
            out,
            "\"\\\"\\\\/\\b\\f\\n\\r\\t\\u0000\\u0001\\u001f\u{7f}\u{e9}\""
        );
    }

    #[test]
    fn non_utf8_is_replaced_or_refused() {
        let l = listing(|w| {
            w.begin_directory()?;
            w.entry(b"d")?;
            w.begin_directory()?;
            w.entry(b"\xff")?;
            w.regular_bytes(false, b"")?;
            w.end_directory()?;
            w.end_directory()
        });
        assert!(l.to_json().contains("\"\u{fffd}\":"));
        let e = l.to_json_strict().unwrap_err();
        assert!(
            matches!(&e, NarError::NotUtf8 { path } if path == b"d/\xff"),
            "{e}"
        );
    }

    #[test]
    fn get_finds_paths_in_nar_order() {
        let l = listing(|w| {
            w.begin_directory()?;
            w.entry(b"a")?;
            w.begin_directory()?;
            w.entry(b"x")?;
            w.regular_bytes(false, b"")?;
            w.end_directory()?;
            w.entry(b"a-b")?;
            w.symlink(b"a")?;
            w.end_directory()
        });
        for path in [&b""[..], b"a", b"a/x", b"a-b"] {
            assert_eq!(l.get(path).map(|e| e.path.as_slice()), Some(path));
        }
        assert!(l.get(b"a/y").is_none());
        assert!(l.get(b"b").is_none());
    }

    #[test]
    fn long_lines() {
        let l = listing(|w| {
            w.begin_directory()?;
            w.entry(b"bin")?;
            w.regular_bytes(true, b"#!")?;
            w.entry(b"link")?;
            w.symlink(b"bin")?;
            w.end_directory()
        });
        let lines: Vec<String> = l.lines().collect();
        assert_eq!(
            lines,
            [
                "-r-xr-xr-x                    2 ./bin",
                "lrwxrwxrwx                    0 ./link -> bin",
            ]
        );
    }
}
