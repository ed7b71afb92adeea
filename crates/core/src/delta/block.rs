//! Kind 2: block copies from a base signature, and literals
//! (docs/formats.md §8.3, §8.4).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

use super::{
    Counted, DeltaError, DeltaHeader, DeltaKind, DeltaWriter, PayloadEncoder, Problem,
    MAX_BASE_SIZE,
};

/// The smallest block size of a signature (2 KiB).
pub const MIN_BLOCK_SIZE: u32 = 2 << 10;
/// The largest block size of a signature (64 KiB).
pub const MAX_BLOCK_SIZE: u32 = 64 << 10;
/// The longest literal operation (1 MiB).
pub const MAX_LITERAL: u32 = 1 << 20;

/// The first 8 bytes of a signature.
const SIGNATURE_MAGIC: [u8; 8] = *b"nxfblsig";
const SIGNATURE_VERSION: u8 = 1;
const SIGNATURE_HEADER_LEN: usize = 53;
const ENTRY_LEN: usize = 20;
/// The largest zstd window a kind 2 payload may ask for (128 MiB: zstd's
/// levels, up to 22, stay within it).
const OPS_WINDOW_LOG_MAX: u32 = 27;
/// How many target bytes [`BlockEncoder`] takes per `write`.
const WRITE_CHUNK: usize = 1 << 20;

const OP_END: u8 = 0;
const OP_COPY: u8 = 1;
const OP_LITERAL: u8 = 2;

/// The block size for a base of `base_size` bytes: its square root rounded
/// up to a power of two, between [`MIN_BLOCK_SIZE`] and [`MAX_BLOCK_SIZE`].
pub fn block_size_for(base_size: u64) -> u32 {
    let root = (base_size as f64).sqrt() as u64;
    let size = root.max(1).next_power_of_two();
    size.clamp(u64::from(MIN_BLOCK_SIZE), u64::from(MAX_BLOCK_SIZE)) as u32
}

/// The rolling checksum of a window: `a` is the sum of its bytes, `b` the
/// sum of each byte times its distance from the window's end, both modulo
/// 2¹⁶; the checksum is `a | b << 16`.
#[derive(Debug, Clone, Copy)]
struct Rolling {
    a: u32,
    b: u32,
    len: u32,
}

impl Rolling {
    fn new(window: &[u8]) -> Self {
        let len = window.len() as u32;
        let (mut a, mut b) = (0u32, 0u32);
        for (i, &x) in window.iter().enumerate() {
            a = a.wrapping_add(u32::from(x));
            b = b.wrapping_add((len - i as u32).wrapping_mul(u32::from(x)));
        }
        Rolling { a, b, len }
    }

    /// Moves the window one byte on: `out` leaves, `inp` enters.
    fn roll(&mut self, out: u8, inp: u8) {
        self.a = self
            .a
            .wrapping_sub(u32::from(out))
            .wrapping_add(u32::from(inp));
        self.b = self
            .b
            .wrapping_sub(self.len.wrapping_mul(u32::from(out)))
            .wrapping_add(self.a);
    }

    fn digest(&self) -> u32 {
        (self.a & 0xffff) | (self.b << 16)
    }
}

fn strong(block: &[u8]) -> [u8; 16] {
    let full = Sha256::digest(block);
    full[..16].try_into().expect("16 bytes")
}

/// A signature of a base: its size and SHA-256, and per block of
/// `block_size` bytes (the last one may be shorter) a rolling checksum and
/// the first 16 bytes of its SHA-256. Its encoding is in docs/formats.md
/// §8.3.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    block_size: u32,
    base_size: u64,
    base_sha256: [u8; 32],
    weak: Vec<u32>,
    strong: Vec<[u8; 16]>,
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("block_size", &self.block_size)
            .field("base_size", &self.base_size)
            .field("blocks", &self.weak.len())
            .finish_non_exhaustive()
    }
}

/// What [`Signature::parse`] accepts.
#[derive(Debug, Clone)]
pub struct SignatureLimits {
    /// The largest base size; at most [`MAX_BASE_SIZE`], which is the
    /// default.
    pub max_base_size: u64,
}

impl Default for SignatureLimits {
    fn default() -> Self {
        SignatureLimits {
            max_base_size: MAX_BASE_SIZE,
        }
    }
}

/// A signature that cannot be parsed: what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signature: at byte {offset}: {message}")]
pub struct SignatureError {
    /// The byte of the signature where the problem is.
    pub offset: u64,
    /// What is wrong.
    pub message: String,
}

fn sig_error(offset: usize, message: impl Into<String>) -> SignatureError {
    SignatureError {
        offset: offset as u64,
        message: message.into(),
    }
}

impl Signature {
    /// The signature of the base read from `base`, which must be exactly
    /// `base_size` bytes, with the block size [`block_size_for`] picks.
    pub fn compute(base: impl Read, base_size: u64) -> io::Result<Signature> {
        Self::compute_with_block_size(base, base_size, block_size_for(base_size))
    }

    /// As [`Signature::compute`], with a block size between
    /// [`MIN_BLOCK_SIZE`] and [`MAX_BLOCK_SIZE`].
    pub fn compute_with_block_size(
        mut base: impl Read,
        base_size: u64,
        block_size: u32,
    ) -> io::Result<Signature> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(invalid(format!(
                "signature: block size {block_size} out of range"
            )));
        }
        if base_size > MAX_BASE_SIZE {
            return Err(invalid(format!(
                "signature: a base of {base_size} bytes is over the limit of {MAX_BASE_SIZE}"
            )));
        }
        let blocks = base_size.div_ceil(u64::from(block_size)) as usize;
        let mut sig = Signature {
            block_size,
            base_size,
            base_sha256: [0; 32],
            weak: Vec::with_capacity(blocks),
            strong: Vec::with_capacity(blocks),
        };
        let mut hasher = Sha256::new();
        let mut block = vec![0; block_size as usize];
        let mut left = base_size;
        while left > 0 {
            let len = left.min(u64::from(block_size)) as usize;
            base.read_exact(&mut block[..len]).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    io::Error::new(e.kind(), "signature: the base is shorter than its size")
                } else {
                    e
                }
            })?;
            hasher.update(&block[..len]);
            sig.weak.push(Rolling::new(&block[..len]).digest());
            sig.strong.push(strong(&block[..len]));
            left -= len as u64;
        }
        if base.read(&mut [0; 1])? != 0 {
            return Err(invalid(
                "signature: the base is longer than its size".into(),
            ));
        }
        sig.base_sha256 = hasher.finalize().into();
        Ok(sig)
    }

    /// The block size.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The base's size.
    pub fn base_size(&self) -> u64 {
        self.base_size
    }

    /// The base's SHA-256.
    pub fn base_sha256(&self) -> [u8; 32] {
        self.base_sha256
    }

    /// The number of blocks, the last one maybe short.
    pub fn block_count(&self) -> usize {
        self.weak.len()
    }

    /// The encoded signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNATURE_HEADER_LEN + ENTRY_LEN * self.weak.len());
        out.extend_from_slice(&SIGNATURE_MAGIC);
        out.push(SIGNATURE_VERSION);
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.base_size.to_le_bytes());
        out.extend_from_slice(&self.base_sha256);
        for (weak, strong) in self.weak.iter().zip(&self.strong) {
            out.extend_from_slice(&weak.to_le_bytes());
            out.extend_from_slice(strong);
        }
        out
    }

    /// Writes the encoded signature.
    pub fn write_to(&self, mut out: impl Write) -> io::Result<()> {
        out.write_all(&self.to_bytes())
    }

    /// Parses an encoded signature, which must be exactly `bytes`.
    pub fn parse(bytes: &[u8], limits: &SignatureLimits) -> Result<Signature, SignatureError> {
        if bytes.len() < SIGNATURE_HEADER_LEN {
            return Err(sig_error(bytes.len(), "truncated header"));
        }
        if bytes[0..8] != SIGNATURE_MAGIC {
            return Err(sig_error(0, "not a signature (bad magic bytes)"));
        }
        if bytes[8] != SIGNATURE_VERSION {
            return Err(sig_error(8, format!("unsupported version {}", bytes[8])));
        }
        let block_size = u32::from_le_bytes(bytes[9..13].try_into().expect("4 bytes"));
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(sig_error(
                9,
                format!("block size {block_size} outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}"),
            ));
        }
        let base_size = u64::from_le_bytes(bytes[13..21].try_into().expect("8 bytes"));
        let max = limits.max_base_size.min(MAX_BASE_SIZE);
        if base_size > max {
            return Err(sig_error(
                13,
                format!("base size {base_size} over the limit of {max}"),
            ));
        }
        let blocks = base_size.div_ceil(u64::from(block_size)) as usize;
        let want = SIGNATURE_HEADER_LEN + ENTRY_LEN * blocks;
        if bytes.len() < want {
            return Err(sig_error(
                bytes.len(),
                format!("truncated: {blocks} blocks need {want} bytes"),
            ));
        }
        if bytes.len() > want {
            return Err(sig_error(want, "trailing bytes after the last block"));
        }
        let entries = bytes[SIGNATURE_HEADER_LEN..].chunks_exact(ENTRY_LEN);
        Ok(Signature {
            block_size,
            base_size,
            base_sha256: bytes[21..53].try_into().expect("32 bytes"),
            weak: entries
                .clone()
                .map(|e| u32::from_le_bytes(e[..4].try_into().expect("4 bytes")))
                .collect(),
            strong: entries
                .map(|e| e[4..].try_into().expect("16 bytes"))
                .collect(),
        })
    }
}

/// The full blocks of a signature by rolling checksum, behind a bit filter
/// that answers most misses without a hash table look-up.
struct Index {
    filter: Vec<u64>,
    blocks: HashMap<u32, Vec<u32>>,
}

/// Candidates kept per rolling checksum: a signature with many blocks of
/// one checksum (but different contents) costs the sender no more than this.
const MAX_CANDIDATES: usize = 8;
const FILTER_BITS: u32 = 20;

fn filter_slot(weak: u32) -> usize {
    (weak.wrapping_mul(0x9e37_79b1) >> (32 - FILTER_BITS)) as usize
}

impl Index {
    fn new(sig: &Signature) -> Self {
        let full = (sig.base_size / u64::from(sig.block_size)) as usize;
        let mut index = Index {
            filter: vec![0; (1 << FILTER_BITS) / 64],
            blocks: HashMap::new(),
        };
        for i in 0..full {
            let weak = sig.weak[i];
            let list = index.blocks.entry(weak).or_default();
            if list.len() < MAX_CANDIDATES
                && !list
                    .iter()
                    .any(|&j| sig.strong[j as usize] == sig.strong[i])
            {
                list.push(i as u32);
            }
            let slot = filter_slot(weak);
            index.filter[slot / 64] |= 1 << (slot % 64);
        }
        index
    }

    /// The block with `window`'s contents, whose rolling checksum is `weak`.
    fn find(&self, sig: &Signature, weak: u32, window: &[u8]) -> Option<u32> {
        let slot = filter_slot(weak);
        if self.filter[slot / 64] & (1 << (slot % 64)) == 0 {
            return None;
        }
        let candidates = self.blocks.get(&weak)?;
        let hash = strong(window);
        candidates
            .iter()
            .copied()
            .find(|&i| sig.strong[i as usize] == hash)
    }
}

/// The operation stream, zstd-compressed, with runs of copies merged.
struct OpWriter<W: Write> {
    zstd: zstd::stream::write::Encoder<'static, W>,
    copy: Option<(u32, u32)>,
}

impl<W: Write> OpWriter<W> {
    fn copy(&mut self, block: u32) -> io::Result<()> {
        if let Some((first, count)) = &mut self.copy {
            if u64::from(*first) + u64::from(*count) == u64::from(block) {
                *count += 1;
                return Ok(());
            }
        }
        self.flush_copy()?;
        self.copy = Some((block, 1));
        Ok(())
    }

    fn flush_copy(&mut self) -> io::Result<()> {
        if let Some((first, count)) = self.copy.take() {
            let mut op = [0; 9];
            op[0] = OP_COPY;
            op[1..5].copy_from_slice(&first.to_le_bytes());
            op[5..9].copy_from_slice(&count.to_le_bytes());
            self.zstd.write_all(&op)?;
        }
        Ok(())
    }

    fn literal(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.flush_copy()?;
        for chunk in bytes.chunks(MAX_LITERAL as usize) {
            let mut op = [0; 5];
            op[0] = OP_LITERAL;
            op[1..5].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
            self.zstd.write_all(&op)?;
            self.zstd.write_all(chunk)?;
        }
        Ok(())
    }

    fn end(mut self) -> io::Result<W> {
        self.flush_copy()?;
        self.zstd.write_all(&[OP_END])?;
        self.zstd.finish()
    }
}

/// Writes a kind 2 payload: the target bytes written to it (from byte
/// `offset` of a target of `target_size` bytes) as copies of the blocks of
/// a base [`Signature`] and literals.
pub struct BlockEncoder<'s, W: Write> {
    sig: &'s Signature,
    index: Index,
    ops: OpWriter<W>,
    /// Target bytes not yet encoded: `start..pos` are literals, a window
    /// of a block's size starts at `pos`.
    buf: Vec<u8>,
    start: usize,
    pos: usize,
    roll: Option<Rolling>,
    expected: u64,
    written: u64,
}

impl<W: Write> fmt::Debug for BlockEncoder<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockEncoder")
            .field("signature", self.sig)
            .field("expected", &self.expected)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<'s, W: Write> BlockEncoder<'s, W> {
    /// An encoder for bytes `offset..target_size` of the target, with the
    /// operations compressed at zstd `level`. Writes the block size at once.
    pub fn new(
        mut out: W,
        sig: &'s Signature,
        target_size: u64,
        offset: u64,
        level: i32,
    ) -> io::Result<Self> {
        if offset > target_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("delta: offset {offset} is after the target's end ({target_size})"),
            ));
        }
        out.write_all(&sig.block_size.to_le_bytes())?;
        let mut zstd = zstd::stream::write::Encoder::new(out, level)?;
        zstd.include_checksum(false)?;
        Ok(BlockEncoder {
            sig,
            index: Index::new(sig),
            ops: OpWriter { zstd, copy: None },
            buf: Vec::new(),
            start: 0,
            pos: 0,
            roll: None,
            expected: target_size - offset,
            written: 0,
        })
    }

    /// Encodes what it can of the buffered target; at the `last` call, all.
    fn process(&mut self, last: bool) -> io::Result<()> {
        let bs = self.sig.block_size as usize;
        while self.buf.len() - self.pos >= bs {
            let window = &self.buf[self.pos..self.pos + bs];
            let roll = *self.roll.get_or_insert_with(|| Rolling::new(window));
            if let Some(block) = self.index.find(self.sig, roll.digest(), window) {
                self.ops.literal(&self.buf[self.start..self.pos])?;
                self.ops.copy(block)?;
                self.pos += bs;
                self.start = self.pos;
                self.roll = None;
                continue;
            }
            if self.pos + bs == self.buf.len() {
                break; // the next byte is not there yet
            }
            let (out, inp) = (self.buf[self.pos], self.buf[self.pos + bs]);
            self.roll.as_mut().expect("set above").roll(out, inp);
            self.pos += 1;
            if self.pos - self.start >= MAX_LITERAL as usize {
                self.ops.literal(&self.buf[self.start..self.pos])?;
                self.start = self.pos;
            }
        }
        if last {
            self.ops.literal(&self.buf[self.start..])?;
            self.start = self.buf.len();
            self.pos = self.buf.len();
        }
        if self.start > 0 && (last || self.start >= self.buf.len() / 2) {
            self.buf.drain(..self.start);
            self.pos -= self.start;
            self.start = 0;
        }
        Ok(())
    }

    /// Ends the payload and gives the writer back; an error if the target
    /// bytes written are not the announced count.
    pub fn finish(mut self) -> io::Result<W> {
        if self.written != self.expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "delta: {} target bytes written, {} announced",
                    self.written, self.expected
                ),
            ));
        }
        self.process(true)?;
        self.ops.end()
    }
}

impl<W: Write> Write for BlockEncoder<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let take = buf.len().min(WRITE_CHUNK);
        if self.written + take as u64 > self.expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "delta: more than the {} target bytes announced",
                    self.expected
                ),
            ));
        }
        self.buf.extend_from_slice(&buf[..take]);
        self.written += take as u64;
        self.process(false)?;
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.ops.zstd.flush()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Literal(u64),
    Copy { at: u64, left: u64 },
    Done,
}

/// Reads a kind 2 payload against a base (which the caller has checked)
/// and yields exactly the target bytes `offset..target_size`: an error if
/// the operations make more or fewer, copy blocks the base does not have,
/// or the payload goes on after the end operation. It stops at the zstd
/// frame's end; what follows is for the caller to check.
pub struct BlockDecoder<R: BufRead, B> {
    ops: zstd::stream::read::Decoder<'static, Counted<R>>,
    base: B,
    base_pos: Option<u64>,
    block_size: u64,
    base_size: u64,
    expected: u64,
    /// Target bytes not yet announced by an operation.
    unannounced: u64,
    state: State,
    stream_offset: u64,
}

impl<R: BufRead, B> fmt::Debug for BlockDecoder<R, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockDecoder")
            .field("block_size", &self.block_size)
            .field("expected", &self.expected)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<R: BufRead, B: Read + Seek> BlockDecoder<R, B> {
    /// A decoder of the payload `input` (its block size is read here) for
    /// bytes `offset..target_size` of the target, against `base` of
    /// `base_size` bytes. Error offsets count from the payload's start.
    pub fn new(
        input: R,
        base: B,
        base_size: u64,
        target_size: u64,
        offset: u64,
    ) -> Result<Self, DeltaError> {
        let invalid = |at, m: String| DeltaError::new(at, Problem::Invalid(m));
        if base_size > MAX_BASE_SIZE || offset > target_size {
            return Err(invalid(
                0,
                format!("base of {base_size} bytes, target bytes {offset}..{target_size}: out of limits"),
            ));
        }
        let mut input = Counted::new(input);
        let mut size = [0; 4];
        let mut got = 0;
        while got < 4 {
            match input.read(&mut size[got..]) {
                Ok(0) => return Err(DeltaError::new(got as u64, Problem::Truncated)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DeltaError::new(got as u64, Problem::Io(e))),
            }
        }
        let block_size = u32::from_le_bytes(size);
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
            return Err(invalid(
                0,
                format!("block size {block_size} outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}"),
            ));
        }
        let zstd_err = |e| DeltaError::new(4, Problem::Io(e));
        let mut ops = zstd::stream::read::Decoder::with_buffer(input)
            .map_err(zstd_err)?
            .single_frame();
        ops.window_log_max(OPS_WINDOW_LOG_MAX).map_err(zstd_err)?;
        Ok(BlockDecoder {
            ops,
            base,
            base_pos: None,
            block_size: u64::from(block_size),
            base_size,
            expected: target_size - offset,
            unannounced: target_size - offset,
            state: State::Idle,
            stream_offset: 0,
        })
    }

    /// Error offsets count from `offset` (where the payload starts in the
    /// delta stream) rather than from the payload's start.
    pub(crate) fn at_stream_offset(mut self, offset: u64) -> Self {
        self.stream_offset = offset;
        self
    }

    /// The bytes of payload consumed so far.
    pub fn position(&self) -> u64 {
        self.ops.get_ref().pos
    }

    /// The payload reader, past the frame once the decoder has ended.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.ops.get_mut().inner
    }

    fn fail(&self, problem: Problem) -> io::Error {
        DeltaError::new(self.stream_offset + self.position(), problem).into()
    }

    fn invalid(&self, message: String) -> io::Error {
        self.fail(Problem::Invalid(message))
    }

    /// Reads decompressed operation bytes.
    fn read_ops(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.ops.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => self.fail(Problem::Truncated),
            io::ErrorKind::Interrupted => e,
            _ => self.invalid(format!("zstd: {e}")),
        })
    }

    fn read_ops_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.read_ops(&mut buf[got..]) {
                Ok(0) => {
                    return Err(self.invalid("the operations end without an end operation".into()))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn announce(&mut self, len: u64) -> io::Result<()> {
        if len > self.unannounced {
            return Err(self.fail(Problem::TargetTooLong(self.expected)));
        }
        self.unannounced -= len;
        Ok(())
    }

    /// Reads the next operation into `self.state`.
    fn next_op(&mut self) -> io::Result<()> {
        let mut tag = [0; 1];
        self.read_ops_exact(&mut tag)?;
        match tag[0] {
            OP_END => {
                if self.unannounced != 0 {
                    return Err(self.fail(Problem::TargetTooShort {
                        want: self.expected,
                        got: self.expected - self.unannounced,
                    }));
                }
                if self.read_ops(&mut [0; 1])? != 0 {
                    return Err(self.invalid("operations after the end operation".into()));
                }
                self.state = State::Done;
            }
            OP_COPY => {
                let mut args = [0; 8];
                self.read_ops_exact(&mut args)?;
                let first = u64::from(u32::from_le_bytes(args[..4].try_into().expect("4")));
                let count = u64::from(u32::from_le_bytes(args[4..].try_into().expect("4")));
                let blocks = self.base_size.div_ceil(self.block_size);
                if count == 0 || first + count > blocks {
                    return Err(self.invalid(format!(
                        "copy of blocks {first}..{} of a base of {blocks} blocks",
                        first + count
                    )));
                }
                let at = first * self.block_size;
                let end = ((first + count) * self.block_size).min(self.base_size);
                self.announce(end - at)?;
                self.state = State::Copy { at, left: end - at };
            }
            OP_LITERAL => {
                let mut len = [0; 4];
                self.read_ops_exact(&mut len)?;
                let len = u32::from_le_bytes(len);
                if len == 0 || len > MAX_LITERAL {
                    return Err(self.invalid(format!(
                        "literal of {len} bytes (1..={MAX_LITERAL} allowed)"
                    )));
                }
                self.announce(u64::from(len))?;
                self.state = State::Literal(u64::from(len));
            }
            other => return Err(self.invalid(format!("unknown operation {other}"))),
        }
        Ok(())
    }

    fn read_base(&mut self, at: u64, buf: &mut [u8]) -> io::Result<usize> {
        if self.base_pos != Some(at) {
            self.base_pos = None;
            self.base
                .seek(SeekFrom::Start(at))
                .map_err(|e| self.fail(Problem::Io(e)))?;
        }
        let n = loop {
            match self.base.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(Problem::Io(e))),
            }
        };
        if n == 0 {
            let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the base ends early");
            return Err(self.fail(Problem::Io(e)));
        }
        self.base_pos = Some(at + n as u64);
        Ok(n)
    }
}

fn clamp_len(buf_len: usize, left: u64) -> usize {
    buf_len.min(usize::try_from(left).unwrap_or(usize::MAX))
}

impl<R: BufRead, B: Read + Seek> Read for BlockDecoder<R, B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Idle => self.next_op()?,
                State::Literal(left) => {
                    let want = clamp_len(buf.len(), left);
                    let n = self.read_ops(&mut buf[..want])?;
                    if n == 0 {
                        return Err(self.fail(Problem::Truncated));
                    }
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Idle
                    } else {
                        State::Literal(left)
                    };
                    return Ok(n);
                }
                State::Copy { at, left } => {
                    let want = clamp_len(buf.len(), left);
                    let n = self.read_base(at, &mut buf[..want])?;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Idle
                    } else {
                        State::Copy {
                            at: at + n as u64,
                            left,
                        }
                    };
                    return Ok(n);
                }
            }
        }
    }
}

/// A kind 2 delta's writer: the header (from the signature), then the
/// target written to it as block copies and literals.
pub type BlockDeltaWriter<'s, W> = DeltaWriter<BlockEncoder<'s, W>>;

impl<'s, W: Write> DeltaWriter<BlockEncoder<'s, W>> {
    /// Writes the header of a delta from the base `sig` describes to a
    /// target of `target_size` bytes with SHA-256 `target_sha256`; then
    /// takes the target's bytes. [`DeltaWriter::finish`] checks that
    /// they were those.
    pub fn new(
        out: W,
        sig: &'s Signature,
        target_size: u64,
        target_sha256: [u8; 32],
        level: i32,
    ) -> io::Result<Self> {
        Self::start(out, sig, target_size, target_sha256, 0, level)
    }

    /// As `BlockDeltaWriter::new`, for a transfer resumed at target byte
    /// `offset`: the header describes the whole target, the payload and
    /// the bytes written are the target from `offset` on. Only their count
    /// is checked at the end.
    pub fn resume(
        out: W,
        sig: &'s Signature,
        target_size: u64,
        target_sha256: [u8; 32],
        offset: u64,
        level: i32,
    ) -> io::Result<Self> {
        Self::start(out, sig, target_size, target_sha256, offset, level)
    }

    fn start(
        mut out: W,
        sig: &'s Signature,
        target_size: u64,
        target_sha256: [u8; 32],
        offset: u64,
        level: i32,
    ) -> io::Result<Self> {
        let header = DeltaHeader {
            kind: DeltaKind::Block,
            base_size: sig.base_size,
            base_sha256: sig.base_sha256,
            target_size,
            target_sha256,
        };
        header.write_to(&mut out)?;
        let encoder = BlockEncoder::new(out, sig, target_size, offset, level)?;
        Ok(DeltaWriter::wrap(encoder, target_sha256, offset))
    }
}

impl<W: Write> PayloadEncoder<W> for BlockEncoder<'_, W> {
    fn complete(&self) -> bool {
        self.written == self.expected
    }

    fn end(self) -> io::Result<W> {
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_matches_a_fresh_checksum() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let len = 2048;
        let mut roll = Rolling::new(&data[..len]);
        for at in 1..data.len() - len {
            roll.roll(data[at - 1], data[at + len - 1]);
            assert_eq!(
                roll.digest(),
                Rolling::new(&data[at..at + len]).digest(),
                "at {at}"
            );
        }
    }

    #[test]
    fn copies_past_the_base_are_errors() {
        // A payload that copies block 3 of a base of 2 blocks.
        let mut ops = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        ops.write_all(&[OP_COPY, 3, 0, 0, 0, 1, 0, 0, 0, OP_END])
            .unwrap();
        let mut payload = MIN_BLOCK_SIZE.to_le_bytes().to_vec();
        payload.extend(ops.finish().unwrap());
        let base = vec![0; 4000];
        let mut dec =
            BlockDecoder::new(&payload[..], io::Cursor::new(&base), 4000, 2048, 0).unwrap();
        let e = dec.read(&mut [0; 100]).unwrap_err();
        assert!(
            e.to_string()
                .contains("copy of blocks 3..4 of a base of 2 blocks"),
            "{e}"
        );
    }
}
