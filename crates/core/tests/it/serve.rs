//! Tests: the serve protocol client and the ssh:// store (`store::serve`).
//!
//! - The transcripts Nix 2.8 produced (`vectors/serve/`): every recorded
//!   reply parses into the values it holds, and the requests this client
//!   writes for the same inputs are the recorded bytes, including whole
//!   sessions of `nix copy --to ssh://` and `nix-copy-closure --from`.
//! - Scripted servers in memory: hostile or broken replies (huge lengths,
//!   bad padding, truncated NARs, a wrong magic) give clean errors.
//! - Scripted server processes: how a hang-up is explained (the remote's
//!   `error:` message, ssh's status 255, a signal).
//! - Real `nix-store --serve --write` on a chroot store: adding paths,
//!   reading them back, dumping them as `nix-store --dump` does, closures,
//!   export and import, the connection pool, and errors.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use nixferry::hash::{HashAlgo, NixHash};
use nixferry::nar;
use nixferry::store::serve::{ServeConnection, ServeError, ServeStore, PROTOCOL_VERSION};
use nixferry::store::{PathInfo, Store, StoreError, StoreUrl};
use nixferry::store_path::{ContentAddress, FileIngestion, StoreDir, StorePath};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use crate::common::{have_nix, nix_command, read_vector};

const HI: &str = "/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt";
const DRV_OUT: &str = "/nix/store/jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv";
const DRV: &str = "/nix/store/8blcypg4m49dd0i8ac2radb217vsrwgs-nixspec-drv.drv";
const TREE: &str = "/nix/store/rsjiq56rggpz3zk7marf4by5qgdya80h-nixspec-tree";
const BOGUS: &str = "/nix/store/00000000000000000000000000000000-bogus";

/// The settings of `common::nix_command`, for server processes.
const NIX_CONFIG: &str =
    "experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =";

fn path(full: &str) -> StorePath {
    StoreDir::default().parse(full).unwrap()
}

fn serve_vector(name: &str) -> Vec<u8> {
    read_vector(&format!("serve/{name}"))
}

type Recorded = ServeConnection<Cursor<Vec<u8>>, Vec<u8>>;

/// A connection to a server that answers the recorded handshake and then
/// `reply`, recording what the client writes.
async fn session(reply: &[u8]) -> Recorded {
    let mut server = serve_vector("00-handshake.response.bin");
    server.extend_from_slice(reply);
    ServeConnection::handshake(Cursor::new(server), Vec::new(), StoreDir::default())
        .await
        .unwrap()
}

/// What the client wrote after its handshake, which must be the recorded one.
async fn written(mut conn: Recorded) -> Vec<u8> {
    conn.flush().await.unwrap();
    let (_, w) = conn.into_inner();
    assert_eq!(w[..16], serve_vector("00-handshake.request.bin"));
    w[16..].to_vec()
}

/// Shows where two byte strings first differ.
fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
        panic!(
            "{what}: {} bytes written, {} recorded; first difference at byte {at:#x}",
            got.len(),
            want.len()
        );
    }
}

async fn read_all(mut r: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    Ok(out)
}

// ---------------------------------------------------------------------------
// Recorded transcripts

#[tokio::test]
async fn handshake_vector() {
    let conn = session(&[]).await;
    assert_eq!(conn.remote_version(), 0x207);
    assert_eq!(conn.version(), PROTOCOL_VERSION);
    assert!(conn.is_idle());
    assert!(written(conn).await.is_empty());
}

#[tokio::test]
async fn query_valid_paths_vector() {
    let mut conn = session(&serve_vector("01-query-valid-paths.response.bin")).await;
    // The recorded request lists the paths in this order, unsorted.
    let asked = [path(DRV_OUT), path(BOGUS), path(HI)];
    let valid = conn.query_valid_paths(false, false, &asked).await.unwrap();
    assert_eq!(valid, BTreeSet::from([path(HI), path(DRV_OUT)]));
    let req = written(conn).await;
    assert_bytes_eq(
        &req,
        &serve_vector("01-query-valid-paths.request.bin"),
        "01",
    );
}

/// The path infos of `02-query-path-infos`, as Nix 2.8 sent them.
fn vector_infos() -> BTreeMap<StorePath, PathInfo> {
    let hash = |s: &str| NixHash::parse(s).unwrap();
    let mut drv_out = PathInfo::new(
        path(DRV_OUT),
        hash("sha256:11q31cdn7bvbbh7dx0ajqzw7rll1pyhrkjq75pdy60c7mqc519c3"),
        808,
    );
    drv_out.deriver = Some(path(DRV));
    drv_out.references = vec![path(HI), path(DRV_OUT)];
    let tree_hash = "sha256:02399y2ql0y01nmfs8n5q3kjcs64gaiwdcvbj5sc6m8lm6km2f3d";
    let mut tree = PathInfo::new(path(TREE), hash(tree_hash), 1648);
    tree.ca = Some(ContentAddress::parse(&format!("fixed:r:{tree_hash}")).unwrap());
    BTreeMap::from([(path(DRV_OUT), drv_out), (path(TREE), tree)])
}

#[tokio::test]
async fn query_path_infos_vector() {
    let mut conn = session(&serve_vector("02-query-path-infos.response.bin")).await;
    let asked = [path(DRV_OUT), path(BOGUS), path(TREE)];
    let infos = conn.query_path_infos(&asked).await.unwrap();
    assert_eq!(infos, vector_infos(), "the bogus path is left out");
    assert!(infos[&path(TREE)].ca_verifies(&StoreDir::default()));
    let req = written(conn).await;
    assert_bytes_eq(&req, &serve_vector("02-query-path-infos.request.bin"), "02");
}

#[tokio::test]
async fn dump_store_path_vector() {
    let reply = serve_vector("03-dump-store-path.response.bin");
    // Another reply follows the NAR, as on a live connection.
    let mut server = reply.clone();
    server.extend_from_slice(&serve_vector("07-query-closure.response.bin"));
    let mut conn = session(&server).await;
    let nar = read_all(conn.dump_store_path(&path(HI)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(nar, reply);
    assert_eq!(nar, read_vector("nar/hi.nar"));
    assert!(conn.is_idle(), "usable again once the NAR has been read");
    let closure = conn.query_closure(false, &[path(DRV_OUT)]).await.unwrap();
    assert_eq!(closure.len(), 2);
    let req = written(conn).await;
    let mut want = serve_vector("03-dump-store-path.request.bin");
    want.extend_from_slice(&serve_vector("07-query-closure.request.bin"));
    assert_bytes_eq(&req, &want, "03 then 07");
}

#[tokio::test]
async fn query_closure_vector() {
    let mut conn = session(&serve_vector("07-query-closure.response.bin")).await;
    let closure = conn.query_closure(false, &[path(DRV_OUT)]).await.unwrap();
    assert_eq!(closure, BTreeSet::from([path(HI), path(DRV_OUT)]));
    let req = written(conn).await;
    assert_bytes_eq(&req, &serve_vector("07-query-closure.request.bin"), "07");
}

/// Reads an export stream with the client (as the reply to ExportPaths):
/// each record's info and NAR.
async fn read_export(stream: &[u8], paths: &[StorePath]) -> Vec<(PathInfo, Vec<u8>)> {
    let mut conn = session(stream).await;
    let mut records = Vec::new();
    {
        let mut reader = conn.export_paths(paths).await.unwrap();
        loop {
            let mut nar = Vec::new();
            let Some(meta) = reader.next_record(&mut nar).await.unwrap() else {
                break;
            };
            assert_eq!(meta.nar_size, nar.len() as u64);
            let hash = NixHash::digest(HashAlgo::Sha256, &nar);
            let mut info = PathInfo::new(meta.path, hash, meta.nar_size);
            info.references = meta.references;
            info.deriver = meta.deriver;
            records.push((info, nar));
        }
    }
    assert!(conn.is_idle());
    records
}

#[tokio::test]
async fn export_paths_vector() {
    let reply = serve_vector("05-export-paths.response.bin");
    let records = read_export(&reply, &[path(DRV_OUT)]).await;
    assert_eq!(records.len(), 1);
    let (info, _) = &records[0];
    let want = &vector_infos()[&path(DRV_OUT)];
    assert_eq!(
        (&info.path, &info.references, &info.deriver),
        (&want.path, &want.references, &want.deriver)
    );
    assert_eq!(
        (info.nar_hash, info.nar_size),
        (want.nar_hash, want.nar_size)
    );

    let mut conn = session(&reply).await;
    let _unread = conn.export_paths(&[path(DRV_OUT)]).await.unwrap();
    let req = written(conn).await;
    assert_bytes_eq(&req, &serve_vector("05-export-paths.request.bin"), "05");
}

#[tokio::test]
async fn import_paths_vector() {
    // The recorded request is command 4 and then `export/two-paths.export`.
    let export = read_vector("export/two-paths.export");
    let request = serve_vector("04-import-paths.request.bin");
    assert_eq!(request[..8], 4u64.to_le_bytes());
    assert_eq!(request[8..], export);

    let records = read_export(&export, &[path(HI), path(DRV_OUT)]).await;
    let paths: Vec<_> = records.iter().map(|(i, _)| i.path.clone()).collect();
    assert_eq!(paths, [path(HI), path(DRV_OUT)], "dependencies first");
    let mut conn = session(&serve_vector("04-import-paths.response.bin")).await;
    conn.import_paths(records.iter().map(|(info, nar)| (info, &nar[..])))
        .await
        .unwrap();
    assert_bytes_eq(&written(conn).await, &request, "04");
}

/// A test-side reader of the recorded requests.
struct Wire<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Wire<'a> {
    fn u64(&mut self) -> u64 {
        let v = u64::from_le_bytes(self.b[self.at..self.at + 8].try_into().unwrap());
        self.at += 8;
        v
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }

    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        let s = String::from_utf8(self.take(n).to_vec()).unwrap();
        self.take((8 - n % 8) % 8);
        s
    }

    fn strings(&mut self) -> Vec<String> {
        (0..self.u64()).map(|_| self.string()).collect()
    }

    fn done(&self) -> bool {
        self.at == self.b.len()
    }

    /// An AddToStoreNar request after its command code: the info and NAR.
    fn add_to_store_nar(&mut self) -> (PathInfo, &'a [u8]) {
        let p = path(&self.string());
        let deriver = self.string();
        let hash = NixHash::parse_unprefixed(&self.string(), HashAlgo::Sha256).unwrap();
        let references = self.strings().iter().map(|r| path(r)).collect();
        let registration_time = self.u64();
        let nar_size = self.u64();
        let ultimate = self.u64() != 0;
        let signatures = self.strings();
        let ca = self.string();
        let nar = self.take(nar_size as usize);
        let info = PathInfo {
            deriver: (!deriver.is_empty()).then(|| path(&deriver)),
            references,
            registration_time,
            ultimate,
            signatures,
            ca: (!ca.is_empty()).then(|| ContentAddress::parse(&ca).unwrap()),
            ..PathInfo::new(p, hash, nar_size)
        };
        (info, nar)
    }
}

#[tokio::test]
async fn add_to_store_nar_vector() {
    let request = serve_vector("09-add-to-store-nar.request.bin");
    let mut wire = Wire { b: &request, at: 0 };
    assert_eq!(wire.u64(), 9);
    let (info, nar) = wire.add_to_store_nar();
    assert!(wire.done());
    let want = &vector_infos()[&path(TREE)];
    assert_eq!(
        (info.nar_hash, info.nar_size, info.ca),
        (want.nar_hash, want.nar_size, want.ca)
    );
    assert_eq!(info.registration_time, 1_700_000_000);
    assert_eq!(nar, read_vector("nar/tree.nar"));

    let mut conn = session(&serve_vector("09-add-to-store-nar.response.bin")).await;
    conn.add_to_store_nar(&info, nar).await.unwrap();
    assert!(conn.is_idle());
    assert_bytes_eq(&written(conn).await, &request, "09");
}

/// `nix copy --to ssh://`: QueryValidPaths, then two AddToStoreNar. The
/// client here pipelines the two.
#[tokio::test]
async fn nix_copy_to_session() {
    let client = serve_vector("real-nix-copy-to-ssh.client-to-server.bin");
    let server = serve_vector("real-nix-copy-to-ssh.server-to-client.bin");
    let mut wire = Wire { b: &client, at: 16 };
    assert_eq!((wire.u64(), wire.u64(), wire.u64()), (1, 0, 0));
    let asked: Vec<_> = wire.strings().iter().map(|p| path(p)).collect();
    let mut adds = Vec::new();
    while !wire.done() {
        assert_eq!(wire.u64(), 9);
        adds.push(wire.add_to_store_nar());
    }
    assert_eq!(adds.len(), 2);

    let mut conn = ServeConnection::handshake(Cursor::new(server), Vec::new(), StoreDir::default())
        .await
        .unwrap();
    assert!(conn
        .query_valid_paths(false, false, &asked)
        .await
        .unwrap()
        .is_empty());
    for (info, nar) in &adds {
        conn.send_add_to_store_nar(info, *nar).await.unwrap();
    }
    assert_eq!(conn.pending_replies(), 2);
    conn.recv_add_to_store_nar().await.unwrap();
    conn.recv_add_to_store_nar().await.unwrap();
    assert!(conn.is_idle());
    let (_, w) = conn.into_inner();
    assert_bytes_eq(&w, &client, "nix copy --to session");
}

/// `nix-copy-closure --from`: QueryClosure, QueryPathInfos per path,
/// DumpStorePath per path.
#[tokio::test]
async fn nix_copy_closure_from_session() {
    let client = serve_vector("real-nix-copy-closure-from.client-to-server.bin");
    let server = serve_vector("real-nix-copy-closure-from.server-to-client.bin");
    let mut conn = ServeConnection::handshake(Cursor::new(server), Vec::new(), StoreDir::default())
        .await
        .unwrap();
    let closure = conn.query_closure(false, &[path(DRV_OUT)]).await.unwrap();
    assert_eq!(closure, BTreeSet::from([path(HI), path(DRV_OUT)]));
    let mut infos = BTreeMap::new();
    for p in [path(HI), path(DRV_OUT)] {
        infos.append(
            &mut conn
                .query_path_infos(std::slice::from_ref(&p))
                .await
                .unwrap(),
        );
    }
    assert_eq!(infos.len(), 2);
    for p in [path(HI), path(DRV_OUT)] {
        let nar = read_all(conn.dump_store_path(&p).await.unwrap())
            .await
            .unwrap();
        let info = &infos[&p];
        assert_eq!(nar.len() as u64, info.nar_size);
        assert_eq!(NixHash::digest(HashAlgo::Sha256, &nar), info.nar_hash);
    }
    assert!(conn.is_idle());
    let (_, w) = conn.into_inner();
    assert_bytes_eq(&w, &client, "nix-copy-closure --from session");
}

/// Every truncation of every recorded reply is an error, never a panic or
/// a wrong result.
#[tokio::test]
async fn truncated_replies_fail_cleanly() {
    let asked = [path(DRV_OUT), path(BOGUS), path(TREE)];
    let reply = serve_vector("02-query-path-infos.response.bin");
    for cut in 0..reply.len() {
        let mut conn = session(&reply[..cut]).await;
        let e = conn.query_path_infos(&asked).await.unwrap_err();
        assert!(matches!(e, ServeError::Read { .. }), "cut {cut}: {e}");
        assert!(e.is_connection_error());
        assert!(!conn.is_usable());
    }
    let reply = serve_vector("03-dump-store-path.response.bin");
    for cut in 1..reply.len() {
        let mut conn = session(&reply[..cut]).await;
        let nar = conn.dump_store_path(&path(HI)).await.unwrap();
        let e = read_all(nar).await.unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "cut {cut}: {e}"
        );
    }
    let reply = serve_vector("05-export-paths.response.bin");
    for cut in 0..reply.len() {
        let mut conn = session(&reply[..cut]).await;
        let mut reader = conn.export_paths(&[path(DRV_OUT)]).await.unwrap();
        let mut sink = Vec::new();
        let r = async {
            while reader.next_record(&mut sink).await?.is_some() {}
            Ok::<_, ServeError>(())
        };
        assert!(r.await.is_err(), "cut {cut}");
    }
}

// ---------------------------------------------------------------------------
// Hostile servers

fn w_u64(v: &mut Vec<u8>, n: u64) {
    v.extend_from_slice(&n.to_le_bytes());
}

fn w_bytes(v: &mut Vec<u8>, b: &[u8]) {
    w_u64(v, b.len() as u64);
    v.extend_from_slice(b);
    v.resize(v.len() + (8 - b.len() % 8) % 8, 0);
}

/// A QueryPathInfos reply for `TREE` whose fields `edit` may change.
fn tree_info_reply(edit: impl FnOnce(&mut Vec<u8>, usize)) -> Vec<u8> {
    let mut v = Vec::new();
    w_bytes(&mut v, TREE.as_bytes());
    w_bytes(&mut v, b""); // deriver
    let refs_at = v.len();
    w_u64(&mut v, 0); // references
    w_u64(&mut v, 1648);
    w_u64(&mut v, 1648);
    w_bytes(
        &mut v,
        b"sha256:02399y2ql0y01nmfs8n5q3kjcs64gaiwdcvbj5sc6m8lm6km2f3d",
    );
    w_bytes(&mut v, b"");
    w_u64(&mut v, 0); // sigs
    w_bytes(&mut v, b""); // end
    edit(&mut v, refs_at);
    v
}

async fn infos_error(reply: &[u8]) -> ServeError {
    let mut conn = session(reply).await;
    conn.query_path_infos(&[path(TREE)]).await.unwrap_err()
}

#[tokio::test]
async fn hostile_replies() {
    // The unedited reply parses.
    let mut conn = session(&tree_info_reply(|_, _| ())).await;
    assert_eq!(conn.query_path_infos(&[path(TREE)]).await.unwrap().len(), 1);

    // A path of 2^62 bytes: refused before anything is allocated.
    let e = infos_error(&tree_info_reply(|v, _| {
        v[..8].copy_from_slice(&(1u64 << 62).to_le_bytes())
    }))
    .await;
    assert!(matches!(e, ServeError::Protocol { .. }), "{e}");
    assert!(e.to_string().contains("path info's path"), "{e}");
    // 2^40 references.
    let e = infos_error(&tree_info_reply(|v, at| {
        v[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes())
    }))
    .await;
    assert!(e.to_string().contains("references"), "{e}");
    // Non-zero padding after the NAR hash.
    let e = infos_error(&tree_info_reply(|v, _| {
        let at = v.len() - 25;
        v[at] = 1;
    }))
    .await;
    assert!(e.to_string().contains("non-zero padding"), "{e}");
    // An info for a path not asked about, and more infos than asked.
    let mut conn = session(&tree_info_reply(|_, _| ())).await;
    let e = conn.query_path_infos(&[path(HI)]).await.unwrap_err();
    assert!(e.to_string().contains("not asked about"), "{e}");
    let twice = tree_info_reply(|v, _| {
        let entry = v[..v.len() - 8].to_vec();
        v.splice(0..0, entry);
    });
    let e = infos_error(&twice).await;
    assert!(e.to_string().contains("more path infos"), "{e}");
    // A NAR hash that is not one.
    let e = infos_error(&tree_info_reply(|v, _| {
        let at = v.len() - 16 - 8 - 64;
        v[at] = b'x';
    }))
    .await;
    assert!(e.to_string().contains("NAR hash"), "{e}");

    // A path list longer than what was asked, or endless.
    let mut reply = Vec::new();
    w_u64(&mut reply, 5);
    let mut conn = session(&reply).await;
    let e = conn
        .query_valid_paths(false, false, &[path(HI)])
        .await
        .unwrap_err();
    assert!(matches!(e, ServeError::Protocol { .. }), "{e}");
    let mut reply = Vec::new();
    w_u64(&mut reply, u64::MAX);
    let mut conn = session(&reply).await;
    assert!(conn.query_closure(false, &[path(HI)]).await.is_err());
    // A path outside the store directory, or not a store path.
    for bad in ["/etc/passwd", "/nix/store/x", "/nix/store/../../etc"] {
        let mut reply = Vec::new();
        w_u64(&mut reply, 1);
        w_bytes(&mut reply, bad.as_bytes());
        let mut conn = session(&reply).await;
        let e = conn.query_closure(false, &[path(HI)]).await.unwrap_err();
        assert!(matches!(e, ServeError::Protocol { .. }), "{bad}: {e}");
    }
    // A reply other than 1 to AddToStoreNar.
    let info = &vector_infos()[&path(TREE)];
    let mut reply = Vec::new();
    w_u64(&mut reply, 2);
    let mut conn = session(&reply).await;
    let e = conn
        .add_to_store_nar(info, &read_vector("nar/tree.nar")[..])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("expected 1, got 2"), "{e}");
}

#[tokio::test]
async fn hostile_handshakes() {
    let hs = |magic: u64, version: u64| {
        let mut v = Vec::new();
        w_u64(&mut v, magic);
        w_u64(&mut v, version);
        v
    };
    let connect = |reply: Vec<u8>| async move {
        ServeConnection::handshake(Cursor::new(reply), Vec::new(), StoreDir::default())
            .await
            .unwrap_err()
    };
    let e = connect(b"Welcome to my shell!\n\0\0\0\0".to_vec()).await;
    assert!(e.to_string().contains("magic number"), "{e}");
    assert!(!e.is_connection_error());
    let e = connect(hs(0x5452_eecb, 0x307)).await;
    assert!(e.to_string().contains("3.7"), "{e}");
    let e = connect(hs(0x5452_eecb, 1 << 40)).await;
    assert!(e.to_string().contains("32 bits"), "{e}");
    let e = connect(Vec::new()).await;
    assert!(e.is_connection_error(), "{e}");
    // A newer server: this client keeps to its own version.
    let conn = ServeConnection::handshake(
        Cursor::new(hs(0x5452_eecb, 0x2ff)),
        Vec::new(),
        StoreDir::default(),
    )
    .await
    .unwrap();
    assert_eq!((conn.remote_version(), conn.version()), (0x2ff, 0x207));
    // An old one: commands it lacks are refused before anything is sent.
    let mut conn = ServeConnection::handshake(
        Cursor::new(hs(0x5452_eecb, 0x203)),
        Vec::new(),
        StoreDir::default(),
    )
    .await
    .unwrap();
    let e = conn.query_path_infos(&[path(HI)]).await.unwrap_err();
    assert!(matches!(e, ServeError::Unsupported { .. }), "{e}");
    let info = &vector_infos()[&path(TREE)];
    let e = conn.add_to_store_nar(info, &b""[..]).await.unwrap_err();
    assert!(matches!(e, ServeError::Unsupported { .. }), "{e}");
    assert!(
        conn.is_idle(),
        "refused requests leave the connection usable"
    );
}

/// A NAR reply broken in various ways, after a valid start.
#[tokio::test]
async fn hostile_nars() {
    let nar = read_vector("nar/tree.nar");
    let dump = |reply: Vec<u8>| async move {
        let mut conn = session(&reply).await;
        let reader = conn.dump_store_path(&path(TREE)).await.unwrap();
        read_all(reader).await.unwrap_err()
    };
    // Bad padding after the magic.
    let mut bad = nar.clone();
    bad[21] = 0xff;
    let e = dump(bad).await;
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("non-zero padding"), "{e}");
    // A file of 2^60 bytes, of which only a few arrive.
    let mut huge = Vec::new();
    for token in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
    ] {
        w_bytes(&mut huge, token);
    }
    w_u64(&mut huge, 1 << 60);
    huge.extend_from_slice(&[7; 1000]);
    let e = dump(huge).await;
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    // An unknown token.
    let mut odd = Vec::new();
    for token in [&b"nix-archive-1"[..], b"(", b"type", b"fifo"] {
        w_bytes(&mut odd, token);
    }
    let e = dump(odd).await;
    assert!(e.to_string().contains("fifo"), "{e}");
    // Nothing at all: the server hung up (as for an invalid path).
    let mut conn = session(&[]).await;
    let e = conn.dump_store_path(&path(TREE)).await.unwrap_err();
    assert!(e.is_connection_error(), "{e}");
}

#[tokio::test]
async fn misuse_is_refused() {
    let nar = read_vector("nar/tree.nar");
    let mut conn = session(&nar).await;
    let e = conn.recv_query_closure().await.unwrap_err();
    assert!(matches!(e, ServeError::Misuse(_)), "{e}");
    conn.send_dump_store_path(&path(TREE)).await.unwrap();
    let e = conn.recv_query_closure().await.unwrap_err();
    assert!(e.to_string().contains("DumpStorePath"), "{e}");
    assert!(conn.is_usable(), "a refused read changes nothing");

    // A NAR dropped half-read leaves the connection out of step.
    let mut conn = session(&nar).await;
    {
        let mut reader = conn.dump_store_path(&path(TREE)).await.unwrap();
        let mut some = [0u8; 100];
        reader.read_exact(&mut some).await.unwrap();
        assert_eq!(reader.position(), 100);
        assert!(!reader.is_done());
    }
    assert!(!conn.is_usable());
    let e = conn.query_closure(false, &[path(HI)]).await.unwrap_err();
    assert!(e.to_string().contains("unusable"), "{e}");
}

/// NAR streams to upload that are too short, too long, failing at the end,
/// or (for export records) not a NAR: errors, and the server never gets
/// the whole NAR.
#[tokio::test]
async fn bad_nar_streams_are_not_completed() {
    let nar = read_vector("nar/tree.nar");
    let info = vector_infos()[&path(TREE)].clone();
    let attempt = |stream: Vec<u8>, fail_at_end: bool| {
        let info = info.clone();
        async move {
            let mut conn = session(&[]).await;
            let source: std::pin::Pin<Box<dyn AsyncRead + Send>> = if fail_at_end {
                Box::pin(tokio::io::AsyncReadExt::chain(
                    Cursor::new(stream),
                    FailingReader,
                ))
            } else {
                Box::pin(Cursor::new(stream))
            };
            let e = conn.send_add_to_store_nar(&info, source).await.unwrap_err();
            assert!(!conn.is_usable());
            let (_, w) = conn.into_inner();
            (e, w.len())
        }
    };
    // The request header: everything before the NAR.
    let header = serve_vector("09-add-to-store-nar.request.bin").len() - nar.len();
    let (e, sent) = attempt(nar[..nar.len() - 1].to_vec(), false).await;
    assert!(e.to_string().contains("fewer than"), "{e}");
    assert!(sent < 16 + header + nar.len());
    let mut long = nar.clone();
    long.push(0);
    let (e, sent) = attempt(long, false).await;
    assert!(e.to_string().contains("longer than"), "{e}");
    assert!(sent < 16 + header + nar.len());
    let (e, sent) = attempt(nar.clone(), true).await;
    assert!(matches!(e, ServeError::Local { .. }), "{e}");
    assert!(
        sent < 16 + header + nar.len(),
        "the last bytes are held back"
    );
    let store_error = e.into_store_error("test");
    assert!(
        matches!(&store_error, StoreError::NarMismatch { .. }),
        "the stream's own StoreError comes through: {store_error}"
    );

    // Import: the bytes must be one NAR of the declared size and hash.
    let mut other = nar.clone();
    let last = other.len() - 20;
    other[last] ^= 1;
    for (stream, want) in [(other, "NAR of"), (nar.clone(), "hash")] {
        let mut info = info.clone();
        if want == "hash" {
            info.nar_hash = NixHash::sha256([0; 32]);
        }
        let mut conn = session(&[]).await;
        let e = conn
            .send_import_paths([(&info, &stream[..])])
            .await
            .unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
}

/// A reader that fails, as a hash-checking stream does at its end.
struct FailingReader;

impl AsyncRead for FailingReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let e = StoreError::NarMismatch {
            path: TREE.to_owned(),
            message: "hash mismatch".to_owned(),
        };
        std::task::Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }
}

/// Requests written back to back through a small pipe, replies read
/// afterwards, against a server task that reads all requests first.
#[tokio::test]
async fn pipelining_over_a_small_pipe() {
    let (client, server) = tokio::io::duplex(64);
    let (client_r, client_w) = tokio::io::split(client);
    let nar = read_vector("nar/tree.nar");
    let info = PathInfo {
        registration_time: 1_700_000_000,
        ..vector_infos()[&path(TREE)].clone()
    };

    let mut expected = serve_vector("00-handshake.request.bin");
    let mut replies = serve_vector("00-handshake.response.bin");
    for _ in 0..3 {
        expected.extend_from_slice(&serve_vector("07-query-closure.request.bin"));
        replies.extend_from_slice(&serve_vector("07-query-closure.response.bin"));
    }
    expected.extend_from_slice(&serve_vector("09-add-to-store-nar.request.bin"));
    replies.extend_from_slice(&serve_vector("09-add-to-store-nar.response.bin"));
    w_u64(&mut expected, 3);
    w_bytes(&mut expected, TREE.as_bytes());
    replies.extend_from_slice(&nar);

    let task = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(server);
        // The handshake, then every request before any reply.
        let mut got = vec![0u8; expected.len()];
        r.read_exact(&mut got[..16]).await.unwrap();
        w.write_all(&replies[..16]).await.unwrap();
        r.read_exact(&mut got[16..]).await.unwrap();
        assert_bytes_eq(&got, &expected, "pipelined requests");
        w.write_all(&replies[16..]).await.unwrap();
        w.shutdown().await.unwrap();
    });

    let mut conn = ServeConnection::handshake(client_r, client_w, StoreDir::default())
        .await
        .unwrap();
    for _ in 0..3 {
        conn.send_query_closure(false, &[path(DRV_OUT)])
            .await
            .unwrap();
    }
    conn.send_add_to_store_nar(&info, &nar[..]).await.unwrap();
    conn.send_dump_store_path(&path(TREE)).await.unwrap();
    assert_eq!(conn.pending_replies(), 5);
    for _ in 0..3 {
        assert_eq!(conn.recv_query_closure().await.unwrap().len(), 2);
    }
    conn.recv_add_to_store_nar().await.unwrap();
    let reader = nixferry::store::serve::NarReader::recv(&mut conn)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(read_all(reader).await.unwrap(), nar);
    assert!(conn.is_idle());
    task.await.unwrap();
}

/// A connection split for adds: the second add goes out in full before
/// the server answers the first, replies are read in order, no more of
/// them than were asked for, and the halves make a connection again.
#[tokio::test]
async fn split_connection_pipelines_adds() {
    let (client, server) = tokio::io::duplex(64);
    let (client_r, client_w) = tokio::io::split(client);
    let request = serve_vector("09-add-to-store-nar.request.bin");
    let mut wire = Wire { b: &request, at: 8 };
    let (info, nar) = wire.add_to_store_nar();
    let nar = nar.to_vec();
    let mut expected = serve_vector("00-handshake.request.bin");
    expected.extend_from_slice(&request);
    expected.extend_from_slice(&request);
    let task = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(server);
        let hello = serve_vector("00-handshake.response.bin");
        let mut got = vec![0u8; expected.len()];
        r.read_exact(&mut got[..16]).await.unwrap();
        w.write_all(&hello).await.unwrap();
        // Both adds, in full, before the first reply.
        r.read_exact(&mut got[16..]).await.unwrap();
        assert_bytes_eq(&got, &expected, "two pipelined adds");
        let answers = serve_vector("09-add-to-store-nar.response.bin").repeat(2);
        w.write_all(&answers).await.unwrap();
        read_all(r).await.unwrap()
    });
    let conn = ServeConnection::handshake(client_r, client_w, StoreDir::default())
        .await
        .unwrap();
    let (mut sender, mut replies) = conn.split_adds().map_err(|(e, _)| e).unwrap();
    sender.send_add(&info, &nar[..]).await.unwrap();
    sender.send_add(&info, &nar[..]).await.unwrap();
    assert_eq!((sender.begun(), replies.owed()), (2, 2));
    replies.recv_add().await.unwrap();
    replies.recv_add().await.unwrap();
    let e = replies.recv_add().await.unwrap_err();
    assert!(matches!(e, ServeError::Misuse(_)), "{e}");
    let conn = sender.rejoin(replies).expect("whole again");
    assert!(conn.is_idle());
    drop(conn);
    assert!(task.await.unwrap().is_empty(), "nothing more was sent");
}

// ---------------------------------------------------------------------------
// Server processes that fail

/// A store whose "server" is `sh -c script`.
fn scripted(script: &str) -> ServeStore {
    ServeStore::local_command("sh", ["-c", script], StoreDir::default(), "scripted")
}

/// `printf` arguments writing `bytes`.
fn printf(bytes: &[u8]) -> String {
    let octal: String = bytes.iter().map(|b| format!("\\{b:03o}")).collect();
    format!("printf '{octal}'")
}

#[tokio::test]
async fn hang_ups_are_explained() {
    let asked = [path(HI)];
    // The remote's message, without colours; not retryable.
    let store = scripted("printf '\\033[31;1merror:\\033[0m no such store\\n' >&2; exit 1");
    let e = store.query_valid_paths(&asked).await.unwrap_err();
    assert_eq!(e.to_string(), "scripted: remote error: no such store");
    assert!(!e.is_retryable());
    // ssh's own failure: retryable.
    let store = scripted("echo 'ssh: connect to host h port 22: Connection refused' >&2; exit 255");
    let e = store.query_valid_paths(&asked).await.unwrap_err();
    assert!(matches!(e, StoreError::Connection { .. }), "{e}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("Connection refused"), "{e}");
    // Killed: retryable.
    let e = scripted("kill -9 $$")
        .query_valid_paths(&asked)
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    // A shell that greets: a protocol error, not retryable.
    let e = scripted("echo 'Welcome!'; exec sleep 10")
        .query_valid_paths(&asked)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Protocol { .. }), "{e}");
    assert!(!e.is_retryable());
    // A missing program.
    let e = ServeStore::local_command(
        "/nonexistent/nix-store",
        ["--serve"],
        StoreDir::default(),
        "x",
    )
    .query_valid_paths(&asked)
    .await
    .unwrap_err();
    assert!(matches!(e, StoreError::Io { .. }), "{e}");

    // A NAR cut off by the server dying: the stream's error carries the
    // remote's message.
    let mut nar_start = Vec::new();
    w_bytes(&mut nar_start, b"nix-archive-1");
    w_bytes(&mut nar_start, b"(");
    // The script reads the handshake (16 bytes) and the request (72).
    let script = format!(
        "{}; head -c 88 >/dev/null; {}; echo 'error: disk on fire' >&2; exit 1",
        printf(&serve_vector("00-handshake.response.bin")),
        printf(&nar_start)
    );
    let store = scripted(&script);
    let info = vector_infos()[&path(TREE)].clone();
    let stream = store.nar(&info).await.unwrap();
    let e = read_all(stream).await.unwrap_err();
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<StoreError>());
    assert!(
        matches!(inner, Some(StoreError::Remote { message, .. }) if message == "disk on fire"),
        "{e}"
    );
}

/// Three small paths `pipe-a`, `pipe-b`, `pipe-c` whose requests have the
/// same length: their infos and NARs, and that length.
async fn three_paths(dir: &Path) -> (Vec<(PathInfo, Vec<u8>)>, usize) {
    let paths: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            let src = dir.join(n);
            std::fs::write(&src, n.repeat(1000)).unwrap();
            ca_path(&src, &format!("pipe-{n}"), &[])
        })
        .collect();
    let mut lengths = BTreeSet::new();
    for (info, nar) in &paths {
        let mut conn = session(&[]).await;
        let info = PathInfo {
            ultimate: false,
            ..info.clone()
        };
        conn.send_add_to_store_nar(&info, &nar[..]).await.unwrap();
        lengths.insert(written(conn).await.len());
    }
    assert_eq!(lengths.len(), 1, "{lengths:?}");
    (paths, lengths.into_iter().next().unwrap())
}

/// A script that answers the handshake, reads the first `pipelined`
/// requests of `len` bytes without answering any, and then answers them.
fn answer_after(len: usize, pipelined: usize) -> String {
    let mut reply = serve_vector("00-handshake.response.bin");
    let script = format!("{}; head -c 16 >/dev/null", printf(&reply));
    reply.clear();
    w_u64(&mut reply, 1);
    let reads = format!("; head -c {len} >/dev/null").repeat(pipelined);
    let replies = format!("; {}", printf(&reply)).repeat(pipelined);
    format!("{script}{reads}{replies}; cat >/dev/null")
}

/// Adds that come together go out back to back on one connection: the
/// server reads all of them before it answers the first.
#[tokio::test]
async fn adds_are_pipelined_on_one_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let (paths, len) = three_paths(tmp.path()).await;
    // One connection (the default of a local command).
    let store = scripted(&answer_after(len, 3));
    let adds = paths
        .iter()
        .map(|(info, nar)| store.add_path(info, stream(nar)));
    let results = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        futures_util::future::join_all(adds),
    )
    .await
    .expect("each add waited for the one before it to be answered");
    for r in results {
        r.unwrap();
    }
}

/// A failing add in the middle of a pipeline: the adds before it
/// succeed, it fails with the server's message, and the adds sent after it
/// on the same connection fail as a broken connection (which the copy
/// engine retries).
#[tokio::test]
async fn a_failing_add_fails_only_itself_and_later_adds_are_retryable() {
    let tmp = tempfile::tempdir().unwrap();
    let (paths, len) = three_paths(tmp.path()).await;
    let mut script = serve_vector("00-handshake.response.bin");
    let mut one = Vec::new();
    w_u64(&mut one, 1);
    // The first add succeeds; the second one's path is named in the error.
    let script = format!(
        "{}; head -c 16 >/dev/null; head -c {len} >/dev/null; {}; \
         name=$(head -c {len} | grep -ao 'pipe-[abc]' | head -n 1); \
         echo \"error: hash mismatch importing path '$name'\" >&2; exit 1",
        printf(&std::mem::take(&mut script)),
        printf(&one),
    );
    let store = scripted(&script);
    let adds = paths
        .iter()
        .map(|(info, nar)| store.add_path(info, stream(nar)));
    let results = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        futures_util::future::join_all(adds),
    )
    .await
    .unwrap();
    let (mut ok, mut own, mut later) = (0, 0, 0);
    for ((info, _), r) in paths.iter().zip(&results) {
        let name = info.path.name().to_owned();
        match r {
            Ok(()) => ok += 1,
            Err(StoreError::NarMismatch { path, message }) => {
                assert!(path.ends_with(&name), "{path} for {name}");
                assert!(message.contains(&name), "{message} for {name}");
                own += 1;
            }
            Err(e @ StoreError::Connection { .. }) => {
                assert!(e.is_retryable());
                assert!(e.to_string().contains("an earlier add"), "{e}");
                later += 1;
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
    assert_eq!((ok, own, later), (1, 1, 1), "{results:?}");
}

#[tokio::test]
async fn ssh_failures_are_retryable() {
    // Port 1 on the loopback is closed: ssh fails at once, with 255.
    let store = ServeStore::open(&StoreUrl::parse("ssh://127.0.0.1:1").unwrap()).unwrap();
    let argv = store.command();
    assert_eq!(argv[0], "ssh");
    assert!(argv.contains(&OsString::from("-oBatchMode=yes")));
    let e = store.query_valid_paths(&[path(HI)]).await.unwrap_err();
    assert!(matches!(e, StoreError::Connection { .. }), "{e}");
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().starts_with("ssh://127.0.0.1:1: "), "{e}");
}

#[test]
fn ssh_urls() {
    let open = |url: &str| ServeStore::open(&StoreUrl::parse(url).unwrap());
    let key = nixferry::hash::to_base64(b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample");
    let store = open(&format!(
        "ssh://me@host:2222?ssh-key=/k&compress=true&remote-program=/bin/nix-store&\
         remote-store=/x&max-connections=3&base64-ssh-public-host-key={key}"
    ))
    .unwrap();
    let argv: Vec<String> = store
        .command()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let known_hosts = argv
        .iter()
        .find_map(|a| a.strip_prefix("-oUserKnownHostsFile=\""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    assert_eq!(
        std::fs::read_to_string(&known_hosts).unwrap(),
        "[host]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample\n"
    );
    for want in [
        "-i",
        "/k",
        "-C",
        "-p",
        "2222",
        "--",
        "me@host",
        "-oStrictHostKeyChecking=yes",
    ] {
        assert!(argv.iter().any(|a| a == want), "{want} in {argv:?}");
    }
    assert_eq!(
        argv.last().unwrap(),
        "/bin/nix-store --serve --write --store '/x'"
    );
    drop(store);
    assert!(!Path::new(&known_hosts).exists(), "removed with the store");

    let local = open("ssh://localhost?remote-store=/tmp/s").unwrap();
    assert_eq!(
        local.command(),
        ["sh", "-c", "nix-store --serve --write --store '/tmp/s'"]
    );
    for bad in [
        "ssh://-oProxyCommand=x",
        "ssh://h?max-connections=0",
        "ssh://h?compress=maybe",
        "ssh://h?base64-ssh-public-host-key=%%%",
        "ssh://h:99999",
    ] {
        assert!(open(bad).is_err(), "{bad}");
    }
    // `store::open` dispatches ssh:// here.
    let store = nixferry::store::open("ssh://h").unwrap();
    assert_eq!(store.url(), "ssh://h");
    assert!(store.capabilities().needs_references_first);
}

// ---------------------------------------------------------------------------
// Real nix-store --serve --write

/// A store served by `nix-store --serve --write --store <root>`.
fn nix_serve(root: &Path) -> ServeStore {
    let args = [
        OsString::from("--serve"),
        "--write".into(),
        "--store".into(),
        root.as_os_str().to_owned(),
    ];
    let mut store = ServeStore::local_command(
        "nix-store",
        args,
        StoreDir::default(),
        format!("serve:{}", root.display()),
    );
    store.set_env("NIX_CONFIG", NIX_CONFIG);
    store
}

/// A content-addressed path made of the tree at `src` (as `nix-store
/// --add` would), referring to `refs`: its info and NAR.
fn ca_path(src: &Path, name: &str, refs: &[&PathInfo]) -> (PathInfo, Vec<u8>) {
    let mut nar = Vec::new();
    let summary = nar::dump(src, &mut nar).unwrap();
    let ca = ContentAddress::Fixed {
        method: FileIngestion::Recursive,
        hash: summary.nar_hash,
    };
    let refs: Vec<StorePath> = refs.iter().map(|i| i.path.clone()).collect();
    let p = StoreDir::default()
        .make_ca_path(name, &ca, &refs, false)
        .unwrap();
    let mut info = PathInfo::new(p, summary.nar_hash, summary.nar_size);
    info.ca = Some(ca);
    info.references = refs;
    info.references.sort();
    (info, nar)
}

/// Two paths, the second referring to the first; the first is large
/// enough to take many reads and has a (made-up, unchecked) signature.
fn two_paths(dir: &Path) -> [(PathInfo, Vec<u8>); 2] {
    let a = dir.join("a");
    std::fs::create_dir_all(a.join("sub/deeper")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(a.join("big"), big).unwrap();
    std::fs::write(a.join("sub/deeper/x"), b"x").unwrap();
    std::os::unix::fs::symlink("../big", a.join("sub/link")).unwrap();
    let (mut a_info, a_nar) = ca_path(&a, "serve-test-a", &[]);
    a_info.signatures = vec![format!("test-1:{}", nixferry::hash::to_base64(&[7; 64]))];
    let b = dir.join("b");
    std::fs::create_dir_all(&b).unwrap();
    let a_full = StoreDir::default().full(&a_info.path);
    std::fs::write(b.join("uses-a"), format!("#!/bin/sh\nexec {a_full}/big\n")).unwrap();
    let (b_info, b_nar) = ca_path(&b, "serve-test-b", &[&a_info]);
    [(a_info, a_nar), (b_info, b_nar)]
}

fn stream(nar: &[u8]) -> nixferry::store::NarStream {
    Box::pin(Cursor::new(nar.to_vec()))
}

/// What the server tells about a path: everything an added path keeps.
fn served(info: &PathInfo) -> PathInfo {
    PathInfo {
        registration_time: 0,
        ultimate: false,
        ..info.clone()
    }
}

#[tokio::test]
async fn real_nix_store_serve() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let [(a, a_nar), (b, b_nar)] = two_paths(tmp.path());
    let store = nix_serve(&root);
    assert_eq!(store.remote_version().await.unwrap(), 0x207);

    // Adding b before a fails: its reference is not valid there.
    let e = store.add_path(&b, stream(&b_nar)).await.unwrap_err();
    let a_full = StoreDir::default().full(&a.path);
    assert!(
        matches!(&e, StoreError::Remote { message, .. } if message == &format!("path '{a_full}' is not valid")),
        "{e}"
    );
    assert!(!e.is_retryable());

    // A wrong hash is caught by the server; nothing is added.
    let mut wrong = a.clone();
    wrong.nar_hash = NixHash::sha256([1; 32]);
    let e = store.add_path(&wrong, stream(&a_nar)).await.unwrap_err();
    assert!(matches!(e, StoreError::NarMismatch { .. }), "{e}");

    store.add_path(&a, stream(&a_nar)).await.unwrap();
    store.add_path(&b, stream(&b_nar)).await.unwrap();

    let bogus = path(BOGUS);
    let asked = [b.path.clone(), bogus.clone(), a.path.clone()];
    let infos = store.query_path_infos(&asked).await.unwrap();
    assert_eq!(
        infos,
        BTreeMap::from([(a.path.clone(), served(&a)), (b.path.clone(), served(&b))]),
        "hash, size, references, CA and signatures as sent"
    );
    let valid = store.query_valid_paths(&asked).await.unwrap();
    assert_eq!(valid, BTreeSet::from([a.path.clone(), b.path.clone()]));
    let closure = store
        .query_closure(std::slice::from_ref(&b.path))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closure, infos);

    // NARs as `nix-store --dump` gives them, and as they were sent.
    for (info, sent) in [(&a, &a_nar), (&b, &b_nar)] {
        let got = read_all(store.nar(info).await.unwrap()).await.unwrap();
        // Nix 2.8's `--dump` reads the file system path as given.
        let dump = nix_command("nix-store")
            .arg("--dump")
            .arg(root.join("nix/store").join(info.path.as_str()))
            .output()
            .unwrap();
        assert!(
            dump.status.success(),
            "{}",
            String::from_utf8_lossy(&dump.stderr)
        );
        assert!(
            got == dump.stdout,
            "NAR of {} differs from nix-store --dump",
            info.path
        );
        assert!(&got == sent);
    }

    // Invalid paths.
    let bogus_info = PathInfo::new(bogus.clone(), a.nar_hash, a.nar_size);
    let Err(e) = store.nar(&bogus_info).await else {
        panic!("a NAR of an invalid path");
    };
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    let e = store
        .query_closure(std::slice::from_ref(&bogus))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");

    // A NAR dropped half-read costs its connection only.
    let mut partial = store.nar(&a).await.unwrap();
    let mut some = [0u8; 1000];
    partial.read_exact(&mut some).await.unwrap();
    drop(partial);
    assert_eq!(
        store
            .query_valid_paths(std::slice::from_ref(&a.path))
            .await
            .unwrap()
            .len(),
        1
    );
    store.close().await;
}

#[tokio::test]
async fn real_nix_store_pool_and_localhost() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let [(a, a_nar), (b, b_nar)] = two_paths(tmp.path());
    // ssh://localhost runs the command through sh, without ssh.
    let url = format!(
        "ssh://localhost?remote-store={}&max-connections=3",
        root.display()
    );
    let mut store = ServeStore::open(&StoreUrl::parse(&url).unwrap()).unwrap();
    store.set_env("NIX_CONFIG", NIX_CONFIG);
    store.add_path(&a, stream(&a_nar)).await.unwrap();
    store.add_path(&b, stream(&b_nar)).await.unwrap();

    let store = Arc::new(store);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let store = Arc::clone(&store);
        let (info, want) = if i % 2 == 0 {
            (a.clone(), a_nar.clone())
        } else {
            (b.clone(), b_nar.clone())
        };
        tasks.spawn(async move {
            let got = read_all(store.nar(&info).await.unwrap()).await.unwrap();
            assert!(got == want);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    store.close().await;
}

/// Export from one store and import into another, over raw connections
/// (ImportPaths is what servers older than 2.5 get).
#[tokio::test]
async fn real_nix_store_export_import() {
    if !have_nix() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let [(a, a_nar), (b, b_nar)] = two_paths(tmp.path());
    let first = nix_serve(&tmp.path().join("first"));
    first.add_path(&a, stream(&a_nar)).await.unwrap();
    first.add_path(&b, stream(&b_nar)).await.unwrap();
    first.close().await;

    let connect = |root: &Path| {
        let mut child = tokio::process::Command::new("nix-store")
            .args(["--serve", "--write", "--store"])
            .arg(root)
            .env("NIX_CONFIG", NIX_CONFIG)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        async move {
            let conn = ServeConnection::handshake(stdout, stdin, StoreDir::default())
                .await
                .unwrap();
            (child, conn)
        }
    };
    let (mut child, mut conn) = connect(&tmp.path().join("first")).await;
    let mut records = Vec::new();
    {
        let mut reader = conn
            .export_paths(&[b.path.clone(), a.path.clone()])
            .await
            .unwrap();
        loop {
            let mut nar = Vec::new();
            let Some(meta) = reader.next_record(&mut nar).await.unwrap() else {
                break;
            };
            records.push((meta, nar));
        }
    }
    let order: Vec<_> = records.iter().map(|(m, _)| m.path.clone()).collect();
    assert_eq!(
        order,
        [a.path.clone(), b.path.clone()],
        "dependencies first"
    );
    assert!(records[0].1 == a_nar && records[1].1 == b_nar);
    assert_eq!(records[1].0.references, std::slice::from_ref(&a.path));
    drop(conn);
    assert!(
        child.wait().await.unwrap().success(),
        "the server ends with the session"
    );

    let (_child, mut conn) = connect(&tmp.path().join("second")).await;
    conn.import_paths([(&a, &a_nar[..]), (&b, &b_nar[..])])
        .await
        .unwrap();
    let infos = conn
        .query_path_infos(&[a.path.clone(), b.path.clone()])
        .await
        .unwrap();
    for info in [&a, &b] {
        let got = &infos[&info.path];
        assert_eq!(
            (got.nar_hash, got.nar_size, &got.references),
            (info.nar_hash, info.nar_size, &info.references)
        );
        assert!(
            got.signatures.is_empty() && got.ca.is_none(),
            "not carried by exports"
        );
    }
}
