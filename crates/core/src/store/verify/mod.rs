//! Checks that what enters a store is what its path info says.
//!
//! A path's info (a narinfo, or what a Nix store reports) is what a
//! signature covers: the NAR's hash and size (`NarHash`, `NarSize`), its
//! references and its name. A binary cache's NAR *file* is named and
//! described by `FileHash` and `FileSize`, which no signature covers: they
//! say nothing about whether the file holds the signed NAR. So every NAR
//! that enters a store is decompressed where needed, decoded strictly and
//! hashed, and compared with `NarHash` and `NarSize` before the path
//! becomes visible there:
//!
//! - `Verified` (crate-private) wraps a NAR stream and fails at its end
//!   (or as soon as it runs past `narSize`) when the bytes do not match;
//!   the copy engine reads every source through it.
//! - [`NarFileCheck`] runs beside code that copies a *compressed* NAR file
//!   byte for byte (a copy between binary caches of the same compression):
//!   a second thread decompresses each chunk and decodes the NAR, so the
//!   check costs another core rather than time.
//! - [`check_nar_file`] and [`verify_nar_file`] read a NAR file that is
//!   already stored (an upload a server received) and check it against
//!   its narinfo, `FileHash`, `FileSize` and file name included.

use std::io::{self, BufReader, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::compression::{self, Compression};
use crate::hash::{HashingReader, HashingWriter, NixHash};
use crate::nar::{self, Listing, NarError, NarSummary};
use crate::narinfo::NarInfo;
use crate::store_path::StoreDir;

use super::chunks::CHUNK_SIZE;
use super::{PathInfo, StoreError};

mod stream;

pub(crate) use stream::Verified;

/// Chunks that may wait for the checking thread of a [`NarFileCheck`].
const CHECK_DEPTH: usize = 16;

/// What reading a NAR file gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarFileSummary {
    /// SHA-256 of the file as stored (`FileHash`).
    pub file_hash: NixHash,
    /// Size of the file as stored (`FileSize`).
    pub file_size: u64,
    /// Hash and size of the NAR it decompresses to (`NarHash`, `NarSize`).
    pub nar: NarSummary,
}

/// A check of a compressed NAR file that runs on its own thread while the
/// file is copied: every byte written to it is decompressed and decoded
/// strictly there, and [`NarFileCheck::finish`] gives the NAR's hash and
/// size (and its listing, if asked for) once the file has ended.
///
/// Memory is bounded: at most a few chunks wait for the thread, and a
/// writer that is faster than it waits.
pub struct NarFileCheck {
    tx: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<Result<Checked, NarError>>>,
    /// Whether the thread stopped taking chunks (it found the file
    /// invalid): its error is the one to report.
    stopped: bool,
}

/// What the checking thread found: the NAR's hash and size, and its
/// listing if one was asked for.
pub(crate) type Checked = (NarSummary, Option<Listing>);

impl NarFileCheck {
    /// Starts a check of a file compressed with `compression` (decoded as
    /// declared, not sniffed). With `listing`, the NAR's listing is built
    /// by the same pass.
    ///
    /// # Errors
    /// An I/O error if the thread cannot be started.
    pub fn start(compression: &Compression, listing: bool) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(CHECK_DEPTH);
        let compression = compression.clone();
        let thread = std::thread::Builder::new()
            .name("nixferry-check".into())
            .spawn(move || check_chunks(&compression, listing, rx))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stopped: false,
        })
    }

    /// Whether the check already failed, so that writing to it failed:
    /// [`NarFileCheck::finish`] then says why.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Ends the file and waits for the check.
    ///
    /// # Errors
    /// [`NarError`] when the file does not decompress or does not hold a
    /// valid NAR, with the byte offset and entry path.
    pub fn finish(mut self) -> Result<NarSummary, NarError> {
        self.finish_checked().map(|(summary, _)| summary)
    }

    /// As [`NarFileCheck::finish`], with the listing.
    pub(crate) fn finish_checked(&mut self) -> Result<Checked, NarError> {
        // Closing the channel ends the thread's input.
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(NarError::Io(io::Error::other(
                "the NAR checking thread panicked",
            ))),
            None => Err(NarError::Io(io::Error::other("the NAR check has ended"))),
        }
    }
}

impl Write for NarFileCheck {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let sent = match &self.tx {
            Some(tx) => tx.send(buf.to_vec()).is_ok(),
            None => false,
        };
        if !sent {
            self.stopped = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the NAR file failed its check",
            ));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for NarFileCheck {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The checking thread: decompresses what arrives on `rx` and decodes it
/// as a NAR. What follows the compressed data is read and dropped, so that
/// the writer never waits for a reader that has gone.
fn check_chunks(
    compression: &Compression,
    listing: bool,
    rx: Receiver<Vec<u8>>,
) -> Result<Checked, NarError> {
    let mut input = ChunkReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
    };
    let result = (|| {
        let buffered = BufReader::with_capacity(CHUNK_SIZE, &mut input);
        let dec = compression::decoder(compression, buffered)
            .map_err(|e| NarError::Io(io::Error::from(e)))?;
        decode(dec, listing)
    })();
    if result.is_ok() {
        // Trailing bytes after the compressed stream: not part of the NAR.
        while input.rx.recv().is_ok() {}
    }
    result
}

/// Decodes a NAR strictly to its end: its hash and size, and its listing
/// if asked for.
pub(crate) fn decode(r: impl Read, listing: bool) -> Result<Checked, NarError> {
    if listing {
        // `list` does not return the hash its decoder computes.
        let mut hashing = HashingReader::new(r);
        let listing = nar::list(&mut hashing)?;
        let (_, nar_hash, nar_size) = hashing.finish();
        Ok((NarSummary { nar_hash, nar_size }, Some(listing)))
    } else {
        nar::validate(r).map(|summary| (summary, None))
    }
}

/// The chunks of a channel as a reader; the end when the sender is gone.
struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads a NAR file compressed with `compression` to its end: its own
/// hash and size, and the hash and size of the NAR inside, decoded
/// strictly. The file is hashed on this thread while a second one
/// decompresses and decodes it.
///
/// # Errors
/// [`NarError`] when reading fails, or the file does not decompress or
/// does not hold a valid NAR.
pub fn check_nar_file(
    file: impl Read,
    compression: &Compression,
) -> Result<NarFileSummary, NarError> {
    let mut check = NarFileCheck::start(compression, false)?;
    let mut hashing = HashingWriter::new(&mut check);
    let copied = io::copy(
        &mut BufReader::with_capacity(CHUNK_SIZE, file),
        &mut hashing,
    );
    let (_, file_hash, file_size) = hashing.finish();
    match copied {
        Err(e) if !check.stopped() => Err(NarError::Io(e)),
        _ => check.finish().map(|nar| NarFileSummary {
            file_hash,
            file_size,
            nar,
        }),
    }
}

/// Checks a stored NAR file against the narinfo that is to describe it:
/// the file's name is `nar/<FileHash>.nar<ext>` for its own hash, its hash
/// and size are the narinfo's `FileHash` and `FileSize` where it gives
/// them, and it decompresses (as the narinfo's `Compression` says) to a
/// valid NAR of the narinfo's `NarHash` and `NarSize`.
///
/// # Errors
/// [`StoreError::NarMismatch`] for a file that is not what the narinfo
/// says; [`StoreError::Nar`] for one that does not decompress to a valid
/// NAR.
pub fn verify_nar_file(
    file: impl Read,
    narinfo: &NarInfo,
    store_dir: &StoreDir,
) -> Result<NarFileSummary, StoreError> {
    let path = narinfo.store_path();
    let got = check_nar_file(file, narinfo.compression())?;
    let full = store_dir.full(path);
    check_file(
        &full,
        narinfo.file_hash(),
        narinfo.file_size(),
        &got.file_hash,
        got.file_size,
    )?;
    let name = super::file::nar_file_name(&got.file_hash, narinfo.compression());
    if narinfo.url() != name {
        return Err(StoreError::NarMismatch {
            path: full,
            message: format!(
                "the NAR file is named '{}', but its hash makes it '{name}'",
                narinfo.url()
            ),
        });
    }
    check_nar(&full, narinfo.nar_hash(), narinfo.nar_size(), &got.nar)?;
    Ok(got)
}

/// Checks a NAR file's hash and size against those declared for it,
/// where they are declared.
pub(crate) fn check_file(
    path: &str,
    declared_hash: Option<&NixHash>,
    declared_size: Option<u64>,
    file_hash: &NixHash,
    file_size: u64,
) -> Result<(), StoreError> {
    let message = if let Some(expected) = declared_hash.filter(|h| *h != file_hash) {
        format!("hash of the NAR file: expected {expected}, got {file_hash}")
    } else if let Some(expected) = declared_size.filter(|s| *s != file_size) {
        format!("size of the NAR file: expected {expected}, got {file_size}")
    } else {
        return Ok(());
    };
    Err(StoreError::NarMismatch {
        path: path.to_owned(),
        message,
    })
}

/// Checks a NAR's hash and size against a path info's.
pub(crate) fn check_info(
    info: &PathInfo,
    store_dir: &StoreDir,
    got: &NarSummary,
) -> Result<(), StoreError> {
    check_nar(
        &store_dir.full(&info.path),
        &info.nar_hash,
        info.nar_size,
        got,
    )
}

/// Checks a NAR's hash and size against the expected ones.
fn check_nar(
    path: &str,
    nar_hash: &NixHash,
    nar_size: u64,
    got: &NarSummary,
) -> Result<(), StoreError> {
    let message = if got.nar_hash != *nar_hash {
        format!(
            "NAR hash mismatch: expected {nar_hash}, got {}",
            got.nar_hash
        )
    } else if got.nar_size != nar_size {
        format!(
            "NAR size mismatch: expected {nar_size} bytes, got {}",
            got.nar_size
        )
    } else {
        return Ok(());
    };
    Err(StoreError::NarMismatch {
        path: path.to_owned(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small NAR (one regular file) and its summary.
    fn nar() -> (Vec<u8>, NarSummary) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"hello").unwrap();
        let mut out = Vec::new();
        let summary = nar::dump(&file, &mut out).unwrap();
        (out, summary)
    }

    fn compress(c: &Compression, data: &[u8]) -> Vec<u8> {
        let mut enc = compression::encoder(c, None, 1, Vec::new()).unwrap();
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn checks_what_a_file_holds() {
        let (nar, summary) = nar();
        for c in [Compression::None, Compression::Zstd, Compression::Xz] {
            let file = compress(&c, &nar);
            let got = check_nar_file(&file[..], &c).unwrap();
            assert_eq!(got.nar, summary, "{c:?}");
            assert_eq!(got.file_size, file.len() as u64);
            assert_eq!(got.file_hash, NixHash::sha256(crate::hash::sha256(&file)));
        }
    }

    #[test]
    fn refuses_what_is_not_a_nar_of_that_compression() {
        let (nar, _) = nar();
        // Not zstd at all.
        assert!(check_nar_file(&nar[..], &Compression::Zstd).is_err());
        // zstd, but not a NAR.
        let junk = compress(&Compression::Zstd, b"not a NAR at all");
        assert!(check_nar_file(&junk[..], &Compression::Zstd).is_err());
        // A NAR cut short.
        let cut = compress(&Compression::Zstd, &nar[..nar.len() - 8]);
        assert!(check_nar_file(&cut[..], &Compression::Zstd).is_err());
        // A NAR with bytes after its end.
        let mut long = nar.clone();
        long.extend_from_slice(&[0; 8]);
        let long = compress(&Compression::Zstd, &long);
        assert!(check_nar_file(&long[..], &Compression::Zstd).is_err());
    }

    #[test]
    fn a_large_invalid_file_stops_the_writer() {
        // Far more than the channel holds: writing fails once the check
        // has stopped, rather than blocking.
        let mut check = NarFileCheck::start(&Compression::None, false).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut failed = false;
        for _ in 0..1000 {
            if check.write_all(&chunk).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed && check.stopped());
        assert!(check.finish().is_err());
    }
}
