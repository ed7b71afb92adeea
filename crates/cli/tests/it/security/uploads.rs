//! Hostile `PUT`s to `nixferry serve --write`: nothing is stored unless the
//! token is right, the name is one of the layout, and what is uploaded is
//! what its name and narinfo say.

use std::fs;
use std::path::Path;

use base64::Engine as _;

use super::{made_up_hash, plain_narinfo, sha256_nix32, Cache};
use crate::common::vectors;
use crate::serve::{request, writable_server, Reply};

const TOKEN: &str = "upload-s3cret";

/// An upload and what it must get: the status and a part of the answer's
/// body.
struct Upload {
    name: &'static str,
    path: String,
    auth: Option<String>,
    body: Vec<u8>,
    status: u16,
    says: &'static str,
}

fn put(port: u16, u: &Upload) -> Reply {
    let headers: Vec<(&str, &str)> = u
        .auth
        .iter()
        .map(|a| ("Authorization", a.as_str()))
        .collect();
    request(port, "PUT", &u.path, &headers, Some(&u.body))
}

/// The files of a cache directory (recursively), relative to it.
fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn hostile_uploads_are_refused() {
    let src = Cache::new("compression=xz");
    let (server, dest) = writable_server(src.dir(), TOKEN);
    let bearer = Some(format!("Bearer {TOKEN}"));
    let basic = |user_pass: &str| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(user_pass);
        Some(format!("Basic {b64}"))
    };
    let narinfo_path = format!("/{}.narinfo", src.hash);
    let nar = src.nar_file();
    let nar_path = format!("/{}", src.url);
    let edited = |field: &str, value: &str| -> Vec<u8> {
        src.narinfo
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{field}: ")) {
                    format!("{field}: {value}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect::<String>()
            .into_bytes()
    };
    let h52 = &src.url["nar/".len().."nar/".len() + 52];

    // An invalid NAR (`..` as a file name), uploaded under its own hash,
    // and an unsigned narinfo for it.
    let bad_nar = fs::read(vectors().join("nar/invalid/name_dotdot.nar")).unwrap();
    let bad_hash = made_up_hash(1);
    let bad_narinfo = plain_narinfo(&bad_hash, "dotdot", &bad_nar);

    let case = |name, path: &str, auth: &Option<String>, body: &[u8], status, says| Upload {
        name,
        path: path.to_owned(),
        auth: auth.clone(),
        body: body.to_vec(),
        status,
        says,
    };
    let narinfo = src.narinfo.as_bytes();
    let unauthorized = "a valid token is needed";
    let not_ours = "the narinfo's URL is not a NAR file name of this cache";
    let uploads = [
        // Tokens.
        case("no token", &narinfo_path, &None, narinfo, 401, unauthorized),
        case(
            "wrong token",
            &narinfo_path,
            &Some("Bearer wrong".into()),
            narinfo,
            401,
            unauthorized,
        ),
        case(
            "the token's prefix",
            &narinfo_path,
            &Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
            narinfo,
            401,
            unauthorized,
        ),
        case(
            "the token and more",
            &narinfo_path,
            &Some(format!("Bearer {TOKEN}x")),
            narinfo,
            401,
            unauthorized,
        ),
        case(
            "the token as a user name",
            &narinfo_path,
            &basic(&format!("{TOKEN}:")),
            narinfo,
            401,
            unauthorized,
        ),
        case(
            "bad base64",
            &narinfo_path,
            &Some("Basic !!!".into()),
            narinfo,
            401,
            unauthorized,
        ),
        case(
            "unknown scheme",
            &narinfo_path,
            &Some(format!("Token {TOKEN}")),
            narinfo,
            401,
            unauthorized,
        ),
        // Paths out of the cache, with the token.
        case("../", "/../escape", &bearer, b"x", 404, "not found"),
        case("%2e%2e", "/%2e%2e/escape", &bearer, b"x", 404, "not found"),
        case(
            "nar/../",
            &format!("/nar/../{}.narinfo", src.hash),
            &bearer,
            b"x",
            404,
            "not found",
        ),
        case(
            "log/../../",
            "/log/../../escape",
            &bearer,
            b"x",
            404,
            "not found",
        ),
        case(
            "/metrics",
            "/metrics",
            &bearer,
            b"x",
            405,
            "method not allowed",
        ),
        // Narinfos that are not what they say, or point out of the cache.
        case(
            "before its NAR",
            &narinfo_path,
            &bearer,
            narinfo,
            400,
            "the narinfo's NAR file has not been uploaded",
        ),
        case(
            "URL ../",
            &narinfo_path,
            &bearer,
            &edited("URL", "../../../etc/passwd"),
            400,
            not_ours,
        ),
        case(
            "URL nar/…/../..",
            &narinfo_path,
            &bearer,
            &edited("URL", &format!("nar/{h52}.nar.xz/../../../etc/passwd")),
            400,
            not_ours,
        ),
        case(
            "URL absolute",
            &narinfo_path,
            &bearer,
            &edited("URL", &format!("https://evil.example/nar/{h52}.nar.xz")),
            400,
            not_ours,
        ),
        case(
            "URL an absolute path",
            &narinfo_path,
            &bearer,
            &edited("URL", &format!("/nar/{h52}.nar.xz")),
            400,
            not_ours,
        ),
        case(
            "URL %2e%2e",
            &narinfo_path,
            &bearer,
            &edited("URL", "nar/%2e%2e/%2e%2e/etc/passwd"),
            400,
            not_ours,
        ),
        case(
            "another path's name",
            &format!("/{}.narinfo", made_up_hash(7)),
            &bearer,
            narinfo,
            400,
            "the narinfo is for another store path",
        ),
        case(
            "duplicate field",
            &narinfo_path,
            &bearer,
            &[narinfo, b"NarSize: 1\n"].concat(),
            400,
            "invalid narinfo",
        ),
        case(
            "bad NarHash",
            &narinfo_path,
            &bearer,
            &edited("NarHash", "sha256:zzzz"),
            400,
            "invalid narinfo",
        ),
        case(
            "not UTF-8",
            &narinfo_path,
            &bearer,
            &[narinfo, b"X: \xff\n"].concat(),
            400,
            "narinfo is not UTF-8",
        ),
        case(
            "over 64 KiB",
            &narinfo_path,
            &bearer,
            &[narinfo, "X: a\n".repeat(20_000).as_bytes()].concat(),
            413,
            "too large",
        ),
        case(
            "bad nix-cache-info",
            "/nix-cache-info",
            &bearer,
            b"StoreDir: relative\n",
            400,
            "invalid nix-cache-info",
        ),
        // NAR files that are not what their names say.
        case(
            "another NAR's name",
            &format!("/nar/{}.nar.xz", "1".repeat(52)),
            &bearer,
            &nar,
            400,
            "the NAR file's content hashes to",
        ),
        case(
            "a NAR named as a served store names them",
            &format!("/nar/{}-{}.nar", "1".repeat(32), sha256_nix32(&nar)),
            &bearer,
            &nar,
            400,
            "NAR files are named nar/<file hash>.nar",
        ),
        case(
            "an invalid NAR, named right",
            &format!("/nar/{}.nar", sha256_nix32(&bad_nar)),
            &bearer,
            &bad_nar,
            200,
            "",
        ),
        case(
            "a narinfo for the invalid NAR",
            &format!("/{bad_hash}.narinfo"),
            &bearer,
            bad_narinfo.as_bytes(),
            400,
            "the narinfo does not match its NAR file: invalid NAR at byte 128: invalid file name '..'",
        ),
        // What Nix uploads, in its order, gets in.
        case("the NAR", &nar_path, &bearer, &nar, 200, ""),
        case("its narinfo", &narinfo_path, &bearer, narinfo, 200, ""),
        // And a wrong one cannot replace it.
        case(
            "a narinfo that does not match the NAR",
            &narinfo_path,
            &bearer,
            &edited("NarSize", "1"),
            400,
            "the narinfo does not match its NAR file",
        ),
    ];
    for u in &uploads {
        let r = put(server.port, u);
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, u.status, "{}: {body}", u.name);
        assert!(body.contains(u.says), "{}: {body}", u.name);
        if r.status == 401 {
            assert_eq!(
                r.header("www-authenticate"),
                Some("Basic realm=\"nixferry\""),
                "{}",
                u.name
            );
        }
    }
    // Only what was accepted is there, and no temporary file is left.
    let mut expected = vec![
        "nix-cache-info".to_owned(),
        format!("nar/{}.nar", sha256_nix32(&bad_nar)),
        src.url.clone(),
        format!("{}.narinfo", src.hash),
    ];
    expected.sort();
    assert_eq!(files(&dest), expected);
    assert_eq!(
        fs::read(dest.join(format!("{}.narinfo", src.hash))).unwrap(),
        narinfo
    );
    assert!(!dest.parent().unwrap().join("escape").exists());
}
