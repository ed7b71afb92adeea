//! Hostile narinfos: read from a file (`nixferry narinfo show`), and from a
//! binary cache by a copy, out of a `file://` cache and over HTTP (the
//! cache served by `nixferry serve`). What no signature covers (the URL,
//! the file hash and size) is never trusted: a URL must stay inside the
//! cache, and a NAR must match the signed hash and size.

use std::fs;
use std::path::Path;
use std::process::Output;

use super::{assert_no_panic, assert_refused, Cache};
use crate::common::{nixferry, stderr};
use crate::serve::Server;

/// What must come of reading a narinfo one way.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// It is read (and, for a copy, the path copied).
    Ok,
    /// Refused with this exit code and message.
    Refused(i32, &'static str),
}
use Outcome::{Ok, Refused};

/// A hostile narinfo: how it is made from the cache's own, and what must
/// come of it shown, copied out of the `file://` cache, and copied over
/// HTTP.
struct Case {
    name: &'static str,
    edit: Box<dyn Fn(&str) -> String>,
    show: Outcome,
    file: Outcome,
    http: Outcome,
}

/// Replaces the value of `field` (which must be there).
fn set(field: &'static str, value: &'static str) -> Box<dyn Fn(&str) -> String> {
    Box::new(move |text: &str| {
        let prefix = format!("{field}: ");
        assert!(text.lines().any(|l| l.starts_with(&prefix)), "{field}");
        text.lines()
            .map(|l| {
                if l.starts_with(&prefix) {
                    format!("{prefix}{value}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    })
}

/// Appends `extra` after the last line.
fn append(extra: String) -> Box<dyn Fn(&str) -> String> {
    Box::new(move |text: &str| format!("{text}{extra}"))
}

fn cases() -> Vec<Case> {
    let outside = "is not a relative path inside the cache";
    let not_http = "is neither relative to the cache nor an HTTP URL";
    let case = |name, edit, show, file, http| Case {
        name,
        edit,
        show,
        file,
        http,
    };
    vec![
        case("unchanged", Box::new(str::to_owned), Ok, Ok, Ok),
        // URLs out of the cache. Over HTTP an absolute http(s) URL is
        // allowed (a NAR may live elsewhere); what it names must still
        // match the signed NAR hash.
        case(
            "URL ../",
            set("URL", "../../../etc/passwd"),
            Ok,
            Refused(1, outside),
            Refused(1, not_http),
        ),
        case(
            "URL nar/../..",
            set("URL", "nar/../../x.nar.xz"),
            Ok,
            Refused(1, outside),
            Refused(1, not_http),
        ),
        case(
            "URL %2e%2e",
            set("URL", "nar/%2e%2e/%2e%2e/etc/passwd"),
            Ok,
            Refused(1, "No such file or directory"),
            Refused(1, not_http),
        ),
        case(
            "URL with backslashes",
            set("URL", "nar\\..\\..\\etc\\passwd"),
            Ok,
            Refused(1, "No such file or directory"),
            Refused(1, not_http),
        ),
        case(
            "URL an absolute path",
            set("URL", "/etc/passwd"),
            Ok,
            Refused(1, outside),
            Refused(1, not_http),
        ),
        case(
            "URL file://",
            set("URL", "file:///etc/passwd"),
            Ok,
            Refused(1, outside),
            Refused(1, not_http),
        ),
        case(
            "URL elsewhere",
            set("URL", "http://127.0.0.1:1/nar/x.nar.xz"),
            Ok,
            Refused(1, outside),
            Refused(1, "http://127.0.0.1:1/nar/x.nar.xz"),
        ),
        // Fields the signature does not cover, but the content tells.
        case(
            "FileSize wrong",
            set("FileSize", "1"),
            Ok,
            Refused(1, "size of the NAR file: expected 1, got"),
            Refused(1, "size of the NAR file: expected 1, got"),
        ),
        case(
            "FileHash wrong",
            set(
                "FileHash",
                "sha256:1111111111111111111111111111111111111111111111111111",
            ),
            Ok,
            Refused(1, "hash of the NAR file: expected sha256:1111"),
            Refused(1, "hash of the NAR file: expected sha256:1111"),
        ),
        // Signed fields changed: the signature no longer verifies, but the
        // content address still does (a path added with `nixferry add`),
        // so the NAR must match the claims.
        case(
            "NarHash of another NAR",
            set(
                "NarHash",
                "sha256:1111111111111111111111111111111111111111111111111111",
            ),
            Ok,
            Refused(1, "NAR hash mismatch: expected sha256:1111"),
            Refused(1, "NAR hash mismatch: expected sha256:1111"),
        ),
        case(
            "NarSize of 2^64 - 1",
            set("NarSize", "18446744073709551615"),
            Ok,
            Refused(1, "NAR size mismatch: expected 18446744073709551615 bytes"),
            Refused(1, "NAR size mismatch: expected 18446744073709551615 bytes"),
        ),
        // Malformed.
        case(
            "NarHash not a hash",
            set("NarHash", "sha256:zzzz"),
            Refused(2, "line 6: invalid NarHash: hash 'zzzz' has wrong length"),
            Refused(2, "line 6: invalid NarHash: hash 'zzzz' has wrong length"),
            Refused(2, "line 6: invalid NarHash: hash 'zzzz' has wrong length"),
        ),
        case(
            "duplicate field",
            append("NarSize: 1\n".into()),
            Refused(2, "NarSize given again (first on line 7)"),
            Refused(2, "NarSize given again (first on line 7)"),
            Refused(2, "NarSize given again (first on line 7)"),
        ),
        case(
            "StorePath outside the store",
            set("StorePath", "/etc/passwd"),
            Refused(
                2,
                "line 1: invalid StorePath: path '/etc/passwd' is not in the Nix store",
            ),
            Refused(
                2,
                "line 1: invalid StorePath: path '/etc/passwd' is not in the Nix store",
            ),
            Refused(
                2,
                "line 1: invalid StorePath: path '/etc/passwd' is not in the Nix store",
            ),
        ),
        case(
            "another store path",
            set(
                "StorePath",
                "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt",
            ),
            Ok,
            Refused(2, "is not valid in store"),
            Refused(2, "is not valid in store"),
        ),
        case(
            "References with ../",
            set("References", "../../etc/passwd"),
            Refused(
                2,
                "line 8: invalid References: store path '../../etc/passwd'",
            ),
            Refused(
                2,
                "line 8: invalid References: store path '../../etc/passwd'",
            ),
            Refused(
                2,
                "line 8: invalid References: store path '../../etc/passwd'",
            ),
        ),
        case(
            "CRLF",
            Box::new(|t: &str| t.replace('\n', "\r\n")),
            Refused(
                2,
                "line 1: carriage return (CRLF line endings are not allowed)",
            ),
            Refused(
                2,
                "line 1: carriage return (CRLF line endings are not allowed)",
            ),
            Refused(
                2,
                "line 1: carriage return (CRLF line endings are not allowed)",
            ),
        ),
        case(
            "no URL",
            Box::new(|t: &str| {
                t.lines()
                    .filter(|l| !l.starts_with("URL:"))
                    .map(|l| format!("{l}\n"))
                    .collect()
            }),
            Refused(2, "missing URL field"),
            Refused(2, "missing URL field"),
            Refused(2, "missing URL field"),
        ),
        // Overlong.
        case(
            "a line over 512 KiB",
            append(format!("X: {}\n", "a".repeat(600_000))),
            Refused(2, "line 11: 600003 bytes, more than the limit of 524288"),
            Refused(2, "line 11: 600003 bytes, more than the limit of 524288"),
            Refused(2, "line 11: 600003 bytes, more than the limit of 524288"),
        ),
        case(
            "over 1 MiB",
            append("X: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n".repeat(30_000)),
            Refused(2, "more than the limit of 1048576"),
            Refused(2, "more than the limit of 1048576"),
            // Not served cut short.
            Refused(2, "500 Internal Server Error"),
        ),
    ]
}

/// Copies the cache's path from `from` into a new cache under `dir`.
fn copy(cache: &Cache, from: &str, dir: &Path) -> (Output, bool) {
    let out = nixferry()
        .args(["copy", "--retries", "0", "--from", from, "--to"])
        .arg(format!("file://{}?compression=xz", dir.display()))
        .args(["--trusted-key", &cache.public_key, &cache.path])
        .output()
        .unwrap();
    let copied = dir.join(format!("{}.narinfo", cache.hash)).exists();
    (out, copied)
}

#[track_caller]
fn assert_outcome(out: &Output, copied: Option<bool>, expected: Outcome, case: &str) {
    match expected {
        Ok => {
            assert!(out.status.success(), "{case}: {}", stderr(out));
            assert_ne!(copied, Some(false), "{case}: not copied");
        }
        Refused(code, needle) => {
            assert_refused(out, code, needle, case);
            assert_ne!(copied, Some(true), "{case}: copied");
        }
    }
    assert_no_panic(out, case);
}

#[test]
fn hostile_narinfos_are_refused_where_they_are_read() {
    let cache = Cache::new("compression=xz");
    for (i, case) in cases().iter().enumerate() {
        // A cache of its own (a server may keep a narinfo for a while).
        let root = cache.dir().join(format!("case-{i}"));
        fs::create_dir_all(root.join("nar")).unwrap();
        fs::copy(
            cache.root.join("nix-cache-info"),
            root.join("nix-cache-info"),
        )
        .unwrap();
        fs::copy(cache.root.join(&cache.url), root.join(&cache.url)).unwrap();
        let narinfo = root.join(format!("{}.narinfo", cache.hash));
        fs::write(&narinfo, (case.edit)(&cache.narinfo)).unwrap();

        let show = nixferry()
            .args(["narinfo", "show"])
            .arg(&narinfo)
            .output()
            .unwrap();
        assert_outcome(&show, None, case.show, &format!("{}: show", case.name));

        let from = format!("file://{}", root.display());
        let (out, copied) = copy(&cache, &from, &root.with_extension("file-dest"));
        let what = format!("{}: copy from file://", case.name);
        assert_outcome(&out, Some(copied), case.file, &what);

        let server = Server::start(&["--store", &from]);
        let (out, copied) = copy(&cache, &server.url(), &root.with_extension("http-dest"));
        let what = format!("{}: copy over HTTP", case.name);
        assert_outcome(&out, Some(copied), case.http, &what);
    }
}
