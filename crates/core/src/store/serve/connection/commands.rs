//! The commands of docs/formats.md §5.3 that a copy needs, each as a
//! `send_*` half that writes the request and a `recv_*` half that reads
//! the reply, plus a method doing both.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};

use super::{Command, ExportReader, NarReader, Pending, ServeConnection, BUFFER, EXPORT_MAGIC};
use crate::hash::{HashAlgo, NixHash};
use crate::store::serve::framer::NarFramer;
use crate::store::serve::wire::{
    WireWriter, MAX_CA_LEN, MAX_CLOSURE, MAX_HASH_LEN, MAX_PATH_LEN, MAX_REFERENCES, MAX_SIGS,
    MAX_SIG_LEN,
};
use crate::store::serve::ServeError;
use crate::store::PathInfo;
use crate::store_path::{ContentAddress, StoreDir, StorePath};

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> ServeConnection<R, W> {
    // --- QueryValidPaths (1) ---

    /// Which of `paths` the server has (command 1). With `lock`, the server
    /// registers temporary GC roots for them; with `substitute`, it tries
    /// its substituters for missing ones first.
    ///
    /// # Errors
    /// As [`send_query_valid_paths`](Self::send_query_valid_paths) and
    /// [`recv_query_valid_paths`](Self::recv_query_valid_paths).
    pub async fn query_valid_paths(
        &mut self,
        lock: bool,
        substitute: bool,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, ServeError> {
        self.send_query_valid_paths(lock, substitute, paths).await?;
        self.recv_query_valid_paths().await
    }

    /// Writes a QueryValidPaths request, paths in the order given.
    ///
    /// # Errors
    /// [`ServeError::Write`]; [`ServeError::Misuse`] on an unusable connection.
    pub async fn send_query_valid_paths(
        &mut self,
        lock: bool,
        substitute: bool,
        paths: &[StorePath],
    ) -> Result<(), ServeError> {
        let what = Command::QueryValidPaths.name();
        self.begin_request(Command::QueryValidPaths).await?;
        self.writer.bool(lock, what).await?;
        self.writer.bool(substitute, what).await?;
        self.writer.strings(&self.full_paths(paths), what).await?;
        self.end_request(Pending::QueryValidPaths { asked: paths.len() });
        Ok(())
    }

    /// Reads the reply to the oldest pending QueryValidPaths.
    ///
    /// # Errors
    /// [`ServeError::Read`]; [`ServeError::Protocol`] for a malformed reply
    /// or one with more paths than were asked about; [`ServeError::Misuse`]
    /// when the next reply is to another request.
    pub async fn recv_query_valid_paths(&mut self) -> Result<BTreeSet<StorePath>, ServeError> {
        let Pending::QueryValidPaths { asked } = self.begin_reply(Command::QueryValidPaths).await?
        else {
            return Err(ServeError::Misuse("reply kinds out of step".to_owned()));
        };
        let valid = self.read_path_list(asked as u64, "the valid paths").await?;
        self.end();
        Ok(valid)
    }

    // --- QueryPathInfos (2) ---

    /// The path infos of those of `paths` the server has (command 2); the
    /// others are left out. The server does not say when or how a path was
    /// registered, so `registration_time` is 0 and `ultimate` false.
    ///
    /// # Errors
    /// As [`send_query_path_infos`](Self::send_query_path_infos) and
    /// [`recv_query_path_infos`](Self::recv_query_path_infos).
    pub async fn query_path_infos(
        &mut self,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, ServeError> {
        self.send_query_path_infos(paths).await?;
        self.recv_query_path_infos().await
    }

    /// Writes a QueryPathInfos request, paths in the order given.
    ///
    /// # Errors
    /// [`ServeError::Unsupported`] for a server older than 2.4, which does
    /// not send NAR hashes; [`ServeError::Write`]; [`ServeError::Misuse`].
    pub async fn send_query_path_infos(&mut self, paths: &[StorePath]) -> Result<(), ServeError> {
        self.needs_minor(4, "QueryPathInfos with NAR hashes")?;
        let what = Command::QueryPathInfos.name();
        self.begin_request(Command::QueryPathInfos).await?;
        self.writer.strings(&self.full_paths(paths), what).await?;
        self.end_request(Pending::QueryPathInfos {
            asked: paths.iter().cloned().collect(),
        });
        Ok(())
    }

    /// Reads the reply to the oldest pending QueryPathInfos.
    ///
    /// # Errors
    /// [`ServeError::Read`]; [`ServeError::Protocol`] for a malformed reply,
    /// an info for a path not asked about, or too many; [`ServeError::Misuse`].
    pub async fn recv_query_path_infos(
        &mut self,
    ) -> Result<BTreeMap<StorePath, PathInfo>, ServeError> {
        let Pending::QueryPathInfos { asked } = self.begin_reply(Command::QueryPathInfos).await?
        else {
            return Err(ServeError::Misuse("reply kinds out of step".to_owned()));
        };
        let mut infos = BTreeMap::new();
        let mut entries = 0usize;
        loop {
            let path = self
                .reader
                .string(MAX_PATH_LEN, "a path info's path")
                .await?;
            if path.is_empty() {
                break;
            }
            entries += 1;
            if entries > asked.len() {
                return Err(ServeError::Protocol {
                    what: "the path infos",
                    reason: "more path infos than paths asked about".to_owned(),
                });
            }
            let info = self.read_path_info(&path).await?;
            if !asked.contains(&info.path) {
                return Err(ServeError::Protocol {
                    what: "the path infos",
                    reason: format!("an info for '{path}', which was not asked about"),
                });
            }
            infos.insert(info.path.clone(), info);
        }
        self.end();
        Ok(infos)
    }

    /// One entry of a QueryPathInfos reply, after its path.
    async fn read_path_info(&mut self, path: &str) -> Result<PathInfo, ServeError> {
        let r = &mut self.reader;
        let store_path = self
            .store_dir
            .parse(path)
            .map_err(|e| ServeError::Protocol {
                what: "a path info's path",
                reason: e.to_string(),
            })?;
        let deriver = r.string(MAX_PATH_LEN, "a path info's deriver").await?;
        let references = r
            .strings(MAX_REFERENCES, MAX_PATH_LEN, "a path info's references")
            .await?;
        let _download_size = r.u64("a path info's download size").await?;
        let nar_size = r.u64("a path info's NAR size").await?;
        let hash = r.string(MAX_HASH_LEN, "a path info's NAR hash").await?;
        let ca = r
            .string(MAX_CA_LEN, "a path info's content address")
            .await?;
        let mut signatures = r
            .strings(MAX_SIGS, MAX_SIG_LEN, "a path info's signatures")
            .await?;

        let nar_hash = NixHash::parse(&hash)
            .ok()
            .filter(|h| h.algo() == HashAlgo::Sha256)
            .ok_or_else(|| ServeError::Protocol {
                what: "a path info's NAR hash",
                reason: format!("'{path}' has NAR hash '{hash}', not a SHA-256 hash"),
            })?;
        let mut info = PathInfo::new(store_path, nar_hash, nar_size);
        if !deriver.is_empty() {
            info.deriver = Some(self.parse_path(&deriver, "a path info's deriver")?);
        }
        info.references = references
            .iter()
            .map(|r| self.parse_path(r, "a path info's references"))
            .collect::<Result<_, _>>()?;
        info.references.sort();
        info.references.dedup();
        if !ca.is_empty() {
            info.ca = Some(
                ContentAddress::parse(&ca).map_err(|e| ServeError::Protocol {
                    what: "a path info's content address",
                    reason: e.to_string(),
                })?,
            );
        }
        signatures.sort();
        signatures.dedup();
        info.signatures = signatures;
        Ok(info)
    }

    // --- DumpStorePath (3) ---

    /// The NAR of `path` (command 3), as a stream that ends where the NAR
    /// does; the connection is usable again once it has been read to its
    /// end. For a stream that owns the connection, use
    /// [`send_dump_store_path`](Self::send_dump_store_path) and
    /// [`NarReader::recv`].
    ///
    /// # Errors
    /// As [`NarReader::recv`]: a server that cannot dump the path hangs up
    /// at once, which is a [`ServeError::Read`] error here.
    pub async fn dump_store_path(
        &mut self,
        path: &StorePath,
    ) -> Result<NarReader<&mut Self>, ServeError> {
        self.send_dump_store_path(path).await?;
        NarReader::recv(self).await.map_err(|(e, _)| e)
    }

    /// Writes a DumpStorePath request.
    ///
    /// # Errors
    /// [`ServeError::Write`]; [`ServeError::Misuse`].
    pub async fn send_dump_store_path(&mut self, path: &StorePath) -> Result<(), ServeError> {
        let what = Command::DumpStorePath.name();
        self.begin_request(Command::DumpStorePath).await?;
        self.writer
            .bytes(self.store_dir.full(path).as_bytes(), what)
            .await?;
        self.end_request(Pending::DumpStorePath);
        Ok(())
    }

    // --- ImportPaths (4) ---

    /// Adds paths from their NARs by sending an export stream (command 4,
    /// docs/formats.md §5.4), in the order given: references must be valid on the
    /// server or come earlier. Each NAR must be exactly `nar_size` bytes
    /// and hash to `nar_hash`, which is checked here: only the path,
    /// references and deriver of each info are sent, and the server
    /// registers whatever it receives (it keeps no signatures or CA).
    ///
    /// # Errors
    /// As [`send_import_paths`](Self::send_import_paths) and
    /// [`recv_import_paths`](Self::recv_import_paths).
    pub async fn import_paths<'a, S: AsyncRead + Unpin>(
        &mut self,
        records: impl IntoIterator<Item = (&'a PathInfo, S)>,
    ) -> Result<(), ServeError> {
        self.send_import_paths(records).await?;
        self.recv_import_paths().await
    }

    /// Writes an ImportPaths request with its export stream.
    ///
    /// # Errors
    /// [`ServeError::Local`] when a NAR stream fails; [`ServeError::BadNar`]
    /// when one is not a NAR of its declared size and hash;
    /// [`ServeError::Write`];
    /// [`ServeError::Misuse`].
    pub async fn send_import_paths<'a, S: AsyncRead + Unpin>(
        &mut self,
        records: impl IntoIterator<Item = (&'a PathInfo, S)>,
    ) -> Result<(), ServeError> {
        self.begin_request(Command::ImportPaths).await?;
        write_export_records(&mut self.writer, &self.store_dir, records).await?;
        self.end_request(Pending::ImportPaths);
        Ok(())
    }

    /// Reads the reply to the oldest pending ImportPaths.
    ///
    /// # Errors
    /// [`ServeError::Read`]; [`ServeError::Protocol`] for a reply other
    /// than 1; [`ServeError::Misuse`].
    pub async fn recv_import_paths(&mut self) -> Result<(), ServeError> {
        self.begin_reply(Command::ImportPaths).await?;
        self.read_success("the reply to ImportPaths").await
    }

    async fn read_success(&mut self, what: &'static str) -> Result<(), ServeError> {
        match self.reader.u64(what).await? {
            1 => {
                self.end();
                Ok(())
            }
            n => Err(ServeError::Protocol {
                what,
                reason: format!("expected 1, got {n}"),
            }),
        }
    }

    // --- ExportPaths (5) ---

    /// The export stream of `paths` (command 5): one record per path,
    /// dependencies first, read with [`ExportReader::next_record`]. Servers
    /// of protocol 2.8 and newer no longer have this command.
    ///
    /// # Errors
    /// [`ServeError::Unsupported`] for a 2.8 server; otherwise as
    /// [`send_query_valid_paths`](Self::send_query_valid_paths).
    pub async fn export_paths(
        &mut self,
        paths: &[StorePath],
    ) -> Result<ExportReader<'_, R, W>, ServeError> {
        self.send_export_paths(paths).await?;
        ExportReader::recv(self).await
    }

    /// Writes an ExportPaths request.
    ///
    /// # Errors
    /// As [`export_paths`](Self::export_paths).
    pub async fn send_export_paths(&mut self, paths: &[StorePath]) -> Result<(), ServeError> {
        if self.remote_version >= 0x208 {
            return Err(ServeError::Unsupported {
                what: "ExportPaths (removed in protocol 2.8)",
                remote: self.remote_version,
            });
        }
        let what = Command::ExportPaths.name();
        self.begin_request(Command::ExportPaths).await?;
        // An obsolete "sign" flag, ignored by the server.
        self.writer.u64(0, what).await?;
        self.writer.strings(&self.full_paths(paths), what).await?;
        self.end_request(Pending::ExportPaths { asked: paths.len() });
        Ok(())
    }

    // --- QueryClosure (7) ---

    /// The closure of `paths` (command 7), the paths included; with
    /// `include_outputs`, also the valid outputs of every derivation in it.
    ///
    /// # Errors
    /// As [`send_query_closure`](Self::send_query_closure) and
    /// [`recv_query_closure`](Self::recv_query_closure).
    pub async fn query_closure(
        &mut self,
        include_outputs: bool,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, ServeError> {
        self.send_query_closure(include_outputs, paths).await?;
        self.recv_query_closure().await
    }

    /// Writes a QueryClosure request.
    ///
    /// # Errors
    /// [`ServeError::Write`]; [`ServeError::Misuse`].
    pub async fn send_query_closure(
        &mut self,
        include_outputs: bool,
        paths: &[StorePath],
    ) -> Result<(), ServeError> {
        let what = Command::QueryClosure.name();
        self.begin_request(Command::QueryClosure).await?;
        self.writer.bool(include_outputs, what).await?;
        self.writer.strings(&self.full_paths(paths), what).await?;
        self.end_request(Pending::QueryClosure { asked: paths.len() });
        Ok(())
    }

    /// Reads the reply to the oldest pending QueryClosure.
    ///
    /// # Errors
    /// [`ServeError::Read`]; [`ServeError::Protocol`]; [`ServeError::Misuse`].
    pub async fn recv_query_closure(&mut self) -> Result<BTreeSet<StorePath>, ServeError> {
        self.begin_reply(Command::QueryClosure).await?;
        let closure = self.read_path_list(MAX_CLOSURE, "the closure").await?;
        self.end();
        Ok(closure)
    }

    // --- AddToStoreNar (9) ---

    /// Adds a path from its NAR (command 9, protocol 2.5 and newer). The
    /// info is sent as given (`narHash` in base16, as Nix does), then
    /// exactly `nar_size` bytes of `nar`. The server checks the hash, and
    /// not the signatures.
    ///
    /// # Errors
    /// As [`send_add_to_store_nar`](Self::send_add_to_store_nar) and
    /// [`recv_add_to_store_nar`](Self::recv_add_to_store_nar).
    pub async fn add_to_store_nar<S: AsyncRead + Unpin>(
        &mut self,
        info: &PathInfo,
        nar: S,
    ) -> Result<(), ServeError> {
        self.send_add_to_store_nar(info, nar).await?;
        self.recv_add_to_store_nar().await
    }

    /// Writes an AddToStoreNar request with its NAR.
    ///
    /// `nar` must yield exactly `info.nar_size` bytes. Its last bytes are
    /// held back until it has reported its end without an error, so a
    /// stream that fails at its end (as one checking `narHash` does) never
    /// lets the server complete the path; the connection must then be
    /// dropped, which makes the server abandon it.
    ///
    /// # Errors
    /// [`ServeError::Unsupported`] for a server older than 2.5 (use
    /// [`import_paths`](Self::import_paths)); [`ServeError::Misuse`] for an
    /// info without a SHA-256 hash or size; [`ServeError::Local`] when `nar`
    /// fails; [`ServeError::BadNar`] when its size is wrong;
    /// [`ServeError::Write`].
    pub async fn send_add_to_store_nar<S: AsyncRead + Unpin>(
        &mut self,
        info: &PathInfo,
        nar: S,
    ) -> Result<(), ServeError> {
        self.needs_minor(5, "AddToStoreNar")?;
        check_add_info(&self.store_dir, info)?;
        self.begin_request(Command::AddToStoreNar).await?;
        write_add_to_store_nar(&mut self.writer, &self.store_dir, info, nar).await?;
        self.end_request(Pending::AddToStoreNar);
        Ok(())
    }

    /// Reads the reply to the oldest pending AddToStoreNar.
    ///
    /// # Errors
    /// [`ServeError::Read`]; [`ServeError::Protocol`] for a reply other
    /// than 1; [`ServeError::Misuse`].
    pub async fn recv_add_to_store_nar(&mut self) -> Result<(), ServeError> {
        self.begin_reply(Command::AddToStoreNar).await?;
        self.read_success("the reply to AddToStoreNar").await
    }
}

/// The full paths of `paths`.
fn full_paths(dir: &StoreDir, paths: &[StorePath]) -> Vec<String> {
    paths.iter().map(|p| dir.full(p)).collect()
}

/// Writes the export records of an ImportPaths request (after the
/// command), and the 0 that ends them.
pub(super) async fn write_export_records<'a, W: AsyncWrite + Unpin, S: AsyncRead + Unpin>(
    w: &mut WireWriter<W>,
    dir: &StoreDir,
    records: impl IntoIterator<Item = (&'a PathInfo, S)>,
) -> Result<(), ServeError> {
    let what = Command::ImportPaths.name();
    for (info, nar) in records {
        let full = dir.full(&info.path);
        w.u64(1, what).await?;
        write_nar(w, &full, info.nar_size, nar, Some(&info.nar_hash)).await?;
        w.u64(EXPORT_MAGIC, what).await?;
        w.bytes(full.as_bytes(), what).await?;
        w.strings(&full_paths(dir, &info.references), what).await?;
        let deriver = info.deriver.as_ref().map(|d| dir.full(d));
        w.bytes(deriver.unwrap_or_default().as_bytes(), what)
            .await?;
        // No legacy signature.
        w.u64(0, what).await?;
    }
    w.u64(0, what).await?;
    Ok(())
}

/// Refuses an info AddToStoreNar cannot send: one without a SHA-256 NAR
/// hash or a size.
pub(super) fn check_add_info(dir: &StoreDir, info: &PathInfo) -> Result<(), ServeError> {
    if info.nar_hash.algo() != HashAlgo::Sha256 || info.nar_size == 0 {
        return Err(ServeError::Misuse(format!(
            "the path info of '{}' needs a SHA-256 NAR hash and a NAR size",
            dir.full(&info.path)
        )));
    }
    Ok(())
}

/// Writes the body of an AddToStoreNar request (after the command): the
/// info, then exactly `nar_size` bytes of `nar`.
pub(super) async fn write_add_to_store_nar<W: AsyncWrite + Unpin, S: AsyncRead + Unpin>(
    w: &mut WireWriter<W>,
    dir: &StoreDir,
    info: &PathInfo,
    nar: S,
) -> Result<(), ServeError> {
    let what = Command::AddToStoreNar.name();
    let full = dir.full(&info.path);
    w.bytes(full.as_bytes(), what).await?;
    let deriver = info.deriver.as_ref().map(|d| dir.full(d));
    w.bytes(deriver.unwrap_or_default().as_bytes(), what)
        .await?;
    w.bytes(info.nar_hash.to_hex().as_bytes(), what).await?;
    let references: Vec<String> = info.references.iter().map(|p| dir.full(p)).collect();
    w.strings(&references, what).await?;
    w.u64(info.registration_time, what).await?;
    w.u64(info.nar_size, what).await?;
    w.bool(info.ultimate, what).await?;
    w.strings(&info.signatures, what).await?;
    let ca = info.ca.map(|ca| ca.to_string()).unwrap_or_default();
    w.bytes(ca.as_bytes(), what).await?;
    write_nar(w, &full, info.nar_size, nar, None).await?;
    Ok(())
}

/// Writes exactly `size` bytes of `nar`, holding the last chunk back
/// until `nar` has ended cleanly. For an export record (`hash` given),
/// also checks that the bytes are one NAR ending exactly at `size` (an
/// export stream has no other way to tell where it ends) and that they
/// hash to `hash` (the server would register whatever it gets), both
/// before the last chunk goes out.
async fn write_nar<W: AsyncWrite + Unpin, S: AsyncRead + Unpin>(
    w: &mut WireWriter<W>,
    path: &str,
    size: u64,
    mut nar: S,
    hash: Option<&NixHash>,
) -> Result<(), ServeError> {
    let local = |source| ServeError::Local {
        what: "reading the NAR of",
        path: path.to_owned(),
        source,
    };
    let bad = |problem: String| ServeError::BadNar {
        path: path.to_owned(),
        problem,
    };
    let mut check = hash.map(|h| (NarFramer::new(), Sha256::new(), h));
    let mut buf = vec![0u8; BUFFER];
    let mut sent = 0u64;
    while sent < size {
        let want = usize::try_from(size - sent).map_or(BUFFER, |left| left.min(BUFFER));
        let n = nar.read(&mut buf[..want]).await.map_err(local)?;
        if n == 0 {
            return Err(bad(format!(
                "has {sent} bytes, fewer than the {size} its path info declares"
            )));
        }
        let last = sent + n as u64 == size;
        if let Some((framer, hasher, expected)) = &mut check {
            let used = framer
                .feed(&buf[..n])
                .map_err(|e| bad(format!("is not a valid NAR: {e}")))?;
            if used < n || framer.is_done() != last {
                return Err(bad(format!(
                    "does not end at the {size} bytes its path info declares"
                )));
            }
            hasher.update(&buf[..n]);
            if last {
                let got = NixHash::sha256(std::mem::take(hasher).finalize().into());
                if got != **expected {
                    return Err(bad(format!(
                        "has hash {got}, not the {expected} its path info declares"
                    )));
                }
            }
        }
        if last {
            // The stream must end here, and say so without an error,
            // before the server gets the last bytes.
            let mut probe = [0u8; 1];
            if nar.read(&mut probe).await.map_err(local)? != 0 {
                return Err(bad(format!(
                    "is longer than the {size} bytes its path info declares"
                )));
            }
        }
        w.raw(&buf[..n], "a NAR").await?;
        sent += n as u64;
    }
    Ok(())
}
