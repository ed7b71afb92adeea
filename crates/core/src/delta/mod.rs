//! Deltas between NARs (docs/formats.md §8): a *target* NAR encoded
//! relative to a *base* NAR, so that a receiver that holds the base can
//! rebuild the target from a few bytes.
//!
//! A delta is a [`DeltaHeader`] (both NARs' sizes and SHA-256 hashes, and
//! the kind) followed by the kind's payload:
//!
//! - [`DeltaKind::ZstdRef`] (kind 1): a zstd frame compressed with the whole
//!   base as a reference prefix and long-distance matching, as
//!   `zstd --patch-from` does. The sender needs the base and the target.
//!   Payload level: [`ZstdRefEncoder`], [`ZstdRefDecoder`]; container:
//!   [`ZstdDeltaWriter`].
//! - [`DeltaKind::Block`] (kind 2): for a sender that does not have the base.
//!   The receiver sends a [`Signature`] of its base (per fixed-size block a
//!   rolling checksum and a truncated SHA-256), the sender answers with
//!   "copy blocks" and "literal bytes" operations, zstd-compressed.
//!   Payload level: [`BlockEncoder`], [`BlockDecoder`]; container:
//!   [`BlockDeltaWriter`].
//!
//! [`DeltaReader`] reads either kind back into the target. It checks the
//! base against the header before it uses it, never yields more than the
//! header's target size, checks the target's SHA-256 at the end and rejects
//! trailing bytes: the bytes it yields are only confirmed once `read`
//! returned 0. Every error is a [`DeltaError`] naming the byte of the delta
//! where it was found (inside an [`io::Error`] of kind `InvalidData` or
//! `UnexpectedEof` when it comes out of `read`: see [`DeltaError::from_io`]).
//!
//! # Resuming
//!
//! A transfer cut at byte `N` of the target resumes with a delta whose
//! header still describes the whole target and whose payload carries the
//! target from byte `N` on: [`ZstdDeltaWriter::resume`],
//! [`BlockDeltaWriter::resume`] write it, [`DeltaReader::resume`] reads it
//! and checks the whole target's hash given the `N` bytes already there.
//! How both sides agree on `N` is up to the protocol that carries deltas.
//!
//! ```
//! use std::io::{Read, Write};
//! use nixferry::delta::{self, Base, DeltaKind, DeltaReader, ZstdDeltaWriter};
//!
//! let base = b"a NAR that mentions /nix/store/00000000000000000000000000000000-dep".repeat(100);
//! let target = b"a NAR that mentions /nix/store/11111111111111111111111111111111-dep".repeat(100);
//!
//! let mut writer = ZstdDeltaWriter::new(
//!     Vec::new(), Base::new(&base), target.len() as u64, delta::sha256(&target), 3)?;
//! writer.write_all(&target)?;
//! let bytes = writer.finish()?;
//! assert!(bytes.len() < 200);
//!
//! let mut rebuilt = Vec::new();
//! DeltaReader::new(&bytes[..], Base::new(&base))?.read_to_end(&mut rebuilt)?;
//! assert_eq!(rebuilt, target);
//!
//! // The same through the conveniences, with the other kind:
//! let bytes = delta::encode(&base, &target, DeltaKind::Block, 3)?;
//! assert_eq!(delta::decode(&base, &bytes)?, target);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod block;
mod zstdref;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

pub use block::{
    block_size_for, BlockDecoder, BlockDeltaWriter, BlockEncoder, Signature, SignatureError,
    SignatureLimits, MAX_BLOCK_SIZE, MAX_LITERAL, MIN_BLOCK_SIZE,
};
pub use zstdref::{window_log, ZstdDeltaWriter, ZstdRefDecoder, ZstdRefEncoder};

/// The first 8 bytes of every delta.
pub const MAGIC: [u8; 8] = *b"nxfdelta";

/// The version of the container this module writes and reads.
pub const VERSION: u8 = 1;

/// The length of [`DeltaHeader`] on the wire; the payload starts there.
pub const HEADER_LEN: usize = 90;

/// The largest base a delta may refer to (1 GiB), for both kinds: the
/// zstd window of kind 1 and the signature of kind 2 grow with it.
pub const MAX_BASE_SIZE: u64 = 1 << 30;

/// The SHA-256 of `bytes`, as the header holds it.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// How a delta's payload encodes the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeltaKind {
    /// Kind 1: zstd with the base as a reference prefix.
    ZstdRef,
    /// Kind 2: block copies from a base signature, and literals.
    Block,
}

impl DeltaKind {
    /// The kind's byte in the header.
    pub fn to_byte(self) -> u8 {
        match self {
            DeltaKind::ZstdRef => 1,
            DeltaKind::Block => 2,
        }
    }

    /// The kind of a header byte, if known.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(DeltaKind::ZstdRef),
            2 => Some(DeltaKind::Block),
            _ => None,
        }
    }
}

/// The fixed-size start of a delta (docs/formats.md §8.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaHeader {
    /// How the payload encodes the target.
    pub kind: DeltaKind,
    /// The size of the base NAR in bytes, at most [`MAX_BASE_SIZE`].
    pub base_size: u64,
    /// The SHA-256 of the base NAR.
    pub base_sha256: [u8; 32],
    /// The size of the target NAR in bytes.
    pub target_size: u64,
    /// The SHA-256 of the target NAR.
    pub target_sha256: [u8; 32],
}

impl DeltaHeader {
    /// The header's [`HEADER_LEN`] bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8] = VERSION;
        out[9] = self.kind.to_byte();
        out[10..18].copy_from_slice(&self.base_size.to_le_bytes());
        out[18..50].copy_from_slice(&self.base_sha256);
        out[50..58].copy_from_slice(&self.target_size.to_le_bytes());
        out[58..90].copy_from_slice(&self.target_sha256);
        out
    }

    /// Writes the header.
    pub fn write_to(&self, mut out: impl Write) -> io::Result<()> {
        out.write_all(&self.to_bytes())
    }

    /// Reads exactly [`HEADER_LEN`] bytes and checks them: magic, version,
    /// kind and the base size limit.
    pub fn read_from(mut input: impl Read) -> Result<Self, DeltaError> {
        let mut buf = [0; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match input.read(&mut buf[got..]) {
                Ok(0) => return Err(DeltaError::new(got as u64, Problem::Truncated)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DeltaError::new(got as u64, Problem::Io(e))),
            }
        }
        Self::parse(&buf)
    }

    /// Parses the header's [`HEADER_LEN`] bytes.
    pub fn parse(buf: &[u8; HEADER_LEN]) -> Result<Self, DeltaError> {
        if buf[0..8] != MAGIC {
            return Err(DeltaError::new(0, Problem::BadMagic));
        }
        if buf[8] != VERSION {
            return Err(DeltaError::new(8, Problem::Version(buf[8])));
        }
        let kind = DeltaKind::from_byte(buf[9])
            .ok_or_else(|| DeltaError::new(9, Problem::UnknownKind(buf[9])))?;
        let base_size = u64_at(buf, 10);
        if base_size > MAX_BASE_SIZE {
            return Err(DeltaError::new(10, Problem::BaseTooLarge(base_size)));
        }
        Ok(DeltaHeader {
            kind,
            base_size,
            base_sha256: buf[18..50].try_into().expect("32 bytes"),
            target_size: u64_at(buf, 50),
            target_sha256: buf[58..90].try_into().expect("32 bytes"),
        })
    }
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// A base NAR in memory with its SHA-256.
#[derive(Debug, Clone, Copy)]
pub struct Base<'a> {
    bytes: &'a [u8],
    sha256: [u8; 32],
}

impl<'a> Base<'a> {
    /// The base, hashed here.
    pub fn new(bytes: &'a [u8]) -> Self {
        Base {
            bytes,
            sha256: sha256(bytes),
        }
    }

    /// The base with a SHA-256 the caller already checked (a NAR of the
    /// store whose `narHash` is known): it is not hashed again.
    pub fn trusted(bytes: &'a [u8], sha256: [u8; 32]) -> Self {
        Base { bytes, sha256 }
    }

    /// The base's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The base's SHA-256.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }
}

/// What is wrong with a delta, at [`DeltaError::offset`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The first 8 bytes are not [`MAGIC`].
    #[error("not a delta (bad magic bytes)")]
    BadMagic,
    /// A version other than [`VERSION`].
    #[error("unsupported version {0}")]
    Version(u8),
    /// A kind byte other than 1 or 2.
    #[error("unknown kind {0}")]
    UnknownKind(u8),
    /// The header's base size is over [`MAX_BASE_SIZE`].
    #[error("base size {0} is over the limit of {max} bytes", max = MAX_BASE_SIZE)]
    BaseTooLarge(u64),
    /// The base given has another size than the header's.
    #[error("the base given has {got} bytes, the delta is against a base of {want} bytes")]
    WrongBaseSize {
        /// The header's base size.
        want: u64,
        /// The given base's size.
        got: u64,
    },
    /// The base given has another SHA-256 than the header's.
    #[error(
        "the base given has SHA-256 {}, the delta is against {}",
        Hex(got),
        Hex(want)
    )]
    WrongBaseHash {
        /// The header's base hash.
        want: [u8; 32],
        /// The given base's hash.
        got: [u8; 32],
    },
    /// The delta ends before its payload does.
    #[error("the delta is truncated")]
    Truncated,
    /// The payload makes more bytes than the header's target size.
    #[error("the payload makes more than the {0} target bytes the header announces")]
    TargetTooLong(u64),
    /// The payload ends before the header's target size.
    #[error("the payload ends after {got} target bytes, the header announces {want}")]
    TargetTooShort {
        /// The header's target size (from the start offset when resuming).
        want: u64,
        /// What the payload made.
        got: u64,
    },
    /// The rebuilt target has another SHA-256 than the header's.
    #[error(
        "the rebuilt target has SHA-256 {}, the header announces {}",
        Hex(got),
        Hex(want)
    )]
    TargetHash {
        /// The header's target hash.
        want: [u8; 32],
        /// The rebuilt target's hash.
        got: [u8; 32],
    },
    /// Bytes after the payload's end.
    #[error("trailing bytes after the payload")]
    Trailing,
    /// The payload is not valid for its kind.
    #[error("{0}")]
    Invalid(String),
    /// Reading the delta or the base failed.
    #[error("{0}")]
    Io(io::Error),
}

/// A delta that cannot be read: what is wrong and where.
#[derive(Debug, thiserror::Error)]
#[error("delta: at byte {offset}: {problem}")]
pub struct DeltaError {
    offset: u64,
    problem: Problem,
}

impl DeltaError {
    /// An error about the delta's byte `offset`.
    pub fn new(offset: u64, problem: Problem) -> Self {
        DeltaError { offset, problem }
    }

    /// The same error `by` bytes further: for an error of a payload
    /// decoder, whose offsets count from the payload's start.
    pub(crate) fn shifted(mut self, by: u64) -> Self {
        self.offset += by;
        self
    }

    /// The byte of the delta stream where the problem was found.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// What is wrong.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// The delta error inside an [`io::Error`] that a reader of this
    /// module returned, or the I/O error itself as [`Problem::Io`] at
    /// byte `offset`.
    pub fn from_io(e: io::Error, offset: u64) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<DeltaError>()) {
            let inner = e.into_inner().expect("checked");
            return *inner.downcast::<DeltaError>().expect("checked");
        }
        DeltaError::new(offset, Problem::Io(e))
    }
}

impl From<DeltaError> for io::Error {
    fn from(e: DeltaError) -> Self {
        let kind = match &e.problem {
            Problem::Truncated => io::ErrorKind::UnexpectedEof,
            Problem::Io(inner) => inner.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// Lowercase hexadecimal, for hashes in messages.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A [`BufRead`] that counts the bytes consumed from it.
#[derive(Debug)]
struct Counted<R> {
    inner: R,
    pos: u64,
}

impl<R> Counted<R> {
    fn new(inner: R) -> Self {
        Counted { inner, pos: 0 }
    }
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.pos += n as u64;
        self.inner.consume(n);
    }
}

/// Whether `input` is at its end; an error for a failed read.
fn at_eof(input: &mut impl BufRead) -> io::Result<bool> {
    loop {
        match input.fill_buf() {
            Ok(buf) => return Ok(buf.is_empty()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A base the block decoder seeks in.
trait ReadSeek: Read + Seek {}

impl<T: Read + Seek> ReadSeek for T {}

enum Inner<'a, R: BufRead> {
    Zstd(ZstdRefDecoder<'a, R>),
    Block(BlockDecoder<R, Box<dyn ReadSeek + 'a>>),
}

/// Reads a delta (header and payload) and yields the target's bytes,
/// rebuilt from the base; see the [module documentation](crate::delta) for what it
/// checks.
pub struct DeltaReader<'a, R: BufRead> {
    header: DeltaHeader,
    inner: Inner<'a, R>,
    hasher: Sha256,
    state: ReadState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Reading,
    Done,
    Failed,
}

impl<R: BufRead> fmt::Debug for DeltaReader<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaReader")
            .field("header", &self.header)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<'a, R: BufRead> DeltaReader<'a, R> {
    /// Reads the header of the delta `input` and checks `base` against it.
    pub fn new(input: R, base: Base<'a>) -> Result<Self, DeltaError> {
        Self::start(input, base, 0, Sha256::new())
    }

    /// Reads a resumed delta: the header describes the whole target, the
    /// payload the target from the end of `prefix` on, the bytes the
    /// receiver already has (read to its end here, to hash them). The
    /// reader yields the rest of the target and checks the whole target's
    /// SHA-256 at the end.
    pub fn resume(input: R, base: Base<'a>, mut prefix: impl Read) -> Result<Self, DeltaError> {
        let mut hasher = Sha256::new();
        let offset = io::copy(&mut prefix, &mut HashWriter(&mut hasher))
            .map_err(|e| DeltaError::new(0, Problem::Io(e)))?;
        Self::start(input, base, offset, hasher)
    }

    /// Reads a kind 2 delta against a base in a file (or anything
    /// seekable): the base is hashed here (one pass) unless its SHA-256 is
    /// given as `known_sha256`, and its size is checked either way. Kind 1
    /// needs the base in memory: use [`DeltaReader::new`].
    pub fn with_base_file<B: Read + Seek + 'a>(
        mut input: R,
        mut base: B,
        known_sha256: Option<[u8; 32]>,
    ) -> Result<Self, DeltaError> {
        let header = DeltaHeader::read_from(&mut input)?;
        if header.kind != DeltaKind::Block {
            return Err(DeltaError::new(
                9,
                Problem::Invalid("kind 1 needs the base in memory".into()),
            ));
        }
        let io_err = |e| DeltaError::new(HEADER_LEN as u64, Problem::Io(e));
        let size = base.seek(SeekFrom::End(0)).map_err(io_err)?;
        if size != header.base_size {
            return Err(DeltaError::new(
                10,
                Problem::WrongBaseSize {
                    want: header.base_size,
                    got: size,
                },
            ));
        }
        let got = match known_sha256 {
            Some(hash) => hash,
            None => {
                let mut hasher = Sha256::new();
                base.seek(SeekFrom::Start(0)).map_err(io_err)?;
                io::copy(&mut (&mut base).take(size), &mut HashWriter(&mut hasher))
                    .map_err(io_err)?;
                hasher.finalize().into()
            }
        };
        check_base_hash(&header, got)?;
        let decoder = BlockDecoder::new(
            input,
            Box::new(base) as Box<dyn ReadSeek + 'a>,
            header.base_size,
            header.target_size,
            0,
        )
        .map_err(|e| e.shifted(HEADER_LEN as u64))?
        .at_stream_offset(HEADER_LEN as u64);
        Ok(Self::assemble(header, Inner::Block(decoder), Sha256::new()))
    }

    fn start(
        mut input: R,
        base: Base<'a>,
        offset: u64,
        hasher: Sha256,
    ) -> Result<Self, DeltaError> {
        let header = DeltaHeader::read_from(&mut input)?;
        let got = base.bytes.len() as u64;
        if got != header.base_size {
            return Err(DeltaError::new(
                10,
                Problem::WrongBaseSize {
                    want: header.base_size,
                    got,
                },
            ));
        }
        check_base_hash(&header, base.sha256)?;
        if offset > header.target_size {
            return Err(DeltaError::new(
                50,
                Problem::Invalid(format!(
                    "resuming at target byte {offset}, after the target's end"
                )),
            ));
        }
        let start = HEADER_LEN as u64;
        let inner = match header.kind {
            DeltaKind::ZstdRef => Inner::Zstd(
                ZstdRefDecoder::new(input, base.bytes, header.target_size, offset)
                    .map_err(|e| DeltaError::from_io(e, start))?
                    .at_stream_offset(start),
            ),
            DeltaKind::Block => {
                let base: Box<dyn ReadSeek + 'a> = Box::new(io::Cursor::new(base.bytes));
                Inner::Block(
                    BlockDecoder::new(input, base, header.base_size, header.target_size, offset)
                        .map_err(|e| e.shifted(start))?
                        .at_stream_offset(start),
                )
            }
        };
        Ok(Self::assemble(header, inner, hasher))
    }

    fn assemble(header: DeltaHeader, inner: Inner<'a, R>, hasher: Sha256) -> Self {
        DeltaReader {
            header,
            inner,
            hasher,
            state: ReadState::Reading,
        }
    }

    /// The delta's header.
    pub fn header(&self) -> &DeltaHeader {
        &self.header
    }

    /// The byte of the delta stream the reader is at.
    pub fn position(&self) -> u64 {
        HEADER_LEN as u64
            + match &self.inner {
                Inner::Zstd(d) => d.position(),
                Inner::Block(d) => d.position(),
            }
    }

    fn end(&mut self) -> Result<(), DeltaError> {
        let at = self.position();
        let trailing = match &mut self.inner {
            Inner::Zstd(d) => at_eof(d.get_mut()),
            Inner::Block(d) => at_eof(d.get_mut()),
        }
        .map_err(|e| DeltaError::new(at, Problem::Io(e)))?;
        if !trailing {
            return Err(DeltaError::new(at, Problem::Trailing));
        }
        let got: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if got != self.header.target_sha256 {
            return Err(DeltaError::new(
                at,
                Problem::TargetHash {
                    want: self.header.target_sha256,
                    got,
                },
            ));
        }
        Ok(())
    }
}

fn check_base_hash(header: &DeltaHeader, got: [u8; 32]) -> Result<(), DeltaError> {
    if got != header.base_sha256 {
        return Err(DeltaError::new(
            18,
            Problem::WrongBaseHash {
                want: header.base_sha256,
                got,
            },
        ));
    }
    Ok(())
}

impl<R: BufRead> Read for DeltaReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            ReadState::Done => return Ok(0),
            ReadState::Failed => {
                return Err(io::Error::other("delta: the reader failed before"));
            }
            ReadState::Reading => {}
        }
        let got = match &mut self.inner {
            Inner::Zstd(d) => d.read(buf),
            Inner::Block(d) => d.read(buf),
        };
        match got {
            Ok(0) if !buf.is_empty() => match self.end() {
                Ok(()) => {
                    self.state = ReadState::Done;
                    Ok(0)
                }
                Err(e) => {
                    self.state = ReadState::Failed;
                    Err(e.into())
                }
            },
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.state = ReadState::Failed;
                }
                Err(e)
            }
        }
    }
}

/// Feeds a hasher.
struct HashWriter<'h>(&'h mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A payload encoder that a [`DeltaWriter`] wraps: [`ZstdRefEncoder`] or
/// [`BlockEncoder`].
pub trait PayloadEncoder<W>: Write {
    /// Whether every target byte announced was written.
    fn complete(&self) -> bool;
    /// Ends the payload and gives the writer back.
    ///
    /// # Errors
    /// Not every target byte announced was written, or writing failed.
    fn end(self) -> io::Result<W>;
}

/// Writes a whole delta: the header, then the target's bytes written to
/// it through a payload encoder, checking at the end that the target had
/// the size and hash the header announced. Made by `ZstdDeltaWriter::new`
/// or `BlockDeltaWriter::new` (and their `resume`).
pub struct DeltaWriter<E> {
    encoder: E,
    check: TargetCheck,
}

impl<E: fmt::Debug> fmt::Debug for DeltaWriter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaWriter")
            .field("encoder", &self.encoder)
            .finish_non_exhaustive()
    }
}

impl<E> DeltaWriter<E> {
    /// Wraps the encoder of a payload that starts at target byte `offset`
    /// (only a whole target's hash can be checked).
    fn wrap(encoder: E, target_sha256: [u8; 32], offset: u64) -> Self {
        Self {
            encoder,
            check: TargetCheck::new(target_sha256, offset == 0),
        }
    }

    /// Ends the delta and gives the writer back: an error, and an
    /// unfinished delta, if the target written does not have the announced
    /// size and hash.
    ///
    /// # Errors
    /// A target of another size or hash, or writing failed.
    pub fn finish<W>(self) -> io::Result<W>
    where
        E: PayloadEncoder<W>,
    {
        if self.encoder.complete() {
            self.check.finish()?;
        }
        self.encoder.end()
    }
}

impl<E: Write> Write for DeltaWriter<E> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.encoder.write(buf)?;
        self.check.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.encoder.flush()
    }
}

/// Checks at the end of a writer that the target written has the size and
/// hash its header announced.
#[derive(Debug)]
struct TargetCheck {
    hasher: Option<Sha256>,
    want: [u8; 32],
}

impl TargetCheck {
    fn new(want: [u8; 32], whole: bool) -> Self {
        TargetCheck {
            hasher: whole.then(Sha256::new),
            want,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
    }

    fn finish(self) -> io::Result<()> {
        let Some(h) = self.hasher else { return Ok(()) };
        let got: [u8; 32] = h.finalize().into();
        if got != self.want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "delta: the target written has SHA-256 {}, not the {} given",
                    Hex(&got),
                    Hex(&self.want)
                ),
            ));
        }
        Ok(())
    }
}

/// The delta of `target` against `base`, in memory, kind 2 with a
/// signature of the whole base. For tests and small NARs.
pub fn encode(base: &[u8], target: &[u8], kind: DeltaKind, level: i32) -> io::Result<Vec<u8>> {
    let size = target.len() as u64;
    let hash = sha256(target);
    match kind {
        DeltaKind::ZstdRef => {
            let mut w = ZstdDeltaWriter::new(Vec::new(), Base::new(base), size, hash, level)?;
            w.write_all(target)?;
            w.finish()
        }
        DeltaKind::Block => {
            let sig = Signature::compute(base, base.len() as u64)?;
            let mut w = BlockDeltaWriter::new(Vec::new(), &sig, size, hash, level)?;
            w.write_all(target)?;
            w.finish()
        }
    }
}

/// The target of `delta` rebuilt from `base`, in memory (up to the
/// header's target size: for small NARs and tests; stream with
/// [`DeltaReader`] otherwise).
pub fn decode(base: &[u8], delta: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let mut reader = DeltaReader::new(delta, Base::new(base))?;
    let mut out = Vec::with_capacity(reader.header().target_size.min(1 << 20) as usize);
    match reader.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) => {
            let at = reader.position();
            Err(DeltaError::from_io(e, at))
        }
    }
}
