//! Kind 1: zstd with the base as a reference prefix (docs/formats.md §8.2).

use std::fmt;
use std::io::{self, BufRead, Read, Write};

use super::{
    Base, Counted, DeltaError, DeltaHeader, DeltaKind, DeltaWriter, PayloadEncoder, Problem,
    MAX_BASE_SIZE,
};

/// The smallest window log kind 1 uses (1 MiB).
const MIN_WINDOW_LOG: u32 = 20;
/// The largest window log kind 1 uses (1 GiB): also the most a decoder
/// accepts, whatever the header says.
const MAX_WINDOW_LOG: u32 = 30;
/// Room above base and target in the window.
const WINDOW_MARGIN: u64 = 1 << 16;

/// The zstd window log of a kind 1 payload for a base and a target of
/// these sizes: the smallest power of two that covers both and a 64 KiB
/// margin, so that any target byte can refer to any base byte, between
/// 2²⁰ and 2³⁰. Encoder and decoder compute it alike from the header; the
/// decoder refuses frames with a larger window.
pub fn window_log(base_size: u64, target_size: u64) -> u32 {
    let need = base_size
        .saturating_add(target_size)
        .saturating_add(WINDOW_MARGIN);
    let log = u64::BITS - (need - 1).leading_zeros();
    log.clamp(MIN_WINDOW_LOG, MAX_WINDOW_LOG)
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Writes a kind 1 payload: the target bytes written to it (from byte
/// `offset` of a target of `target_size` bytes), compressed with the base
/// as zstd reference prefix.
pub struct ZstdRefEncoder<'a, W: Write> {
    encoder: zstd::stream::write::Encoder<'a, W>,
    expected: u64,
    written: u64,
}

impl<W: Write> fmt::Debug for ZstdRefEncoder<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZstdRefEncoder")
            .field("expected", &self.expected)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl<'a, W: Write> ZstdRefEncoder<'a, W> {
    /// An encoder for bytes `offset..target_size` of the target, at zstd
    /// `level`. The base must be at most [`MAX_BASE_SIZE`] bytes.
    pub fn new(
        out: W,
        base: &'a [u8],
        target_size: u64,
        offset: u64,
        level: i32,
    ) -> io::Result<Self> {
        let base_size = base.len() as u64;
        if base_size > MAX_BASE_SIZE {
            return Err(invalid_input(format!(
                "delta: a base of {base_size} bytes is over the limit of {MAX_BASE_SIZE}"
            )));
        }
        if offset > target_size {
            return Err(invalid_input(format!(
                "delta: offset {offset} is after the target's end ({target_size})"
            )));
        }
        let expected = target_size - offset;
        let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(out, level, base)?;
        encoder.long_distance_matching(true)?;
        encoder.window_log(window_log(base_size, target_size))?;
        encoder.include_checksum(false)?;
        encoder.include_contentsize(true)?;
        encoder.set_pledged_src_size(Some(expected))?;
        Ok(ZstdRefEncoder {
            encoder,
            expected,
            written: 0,
        })
    }

    /// Ends the payload and gives the writer back; an error if the target
    /// bytes written are not the announced count.
    pub fn finish(self) -> io::Result<W> {
        if self.written != self.expected {
            return Err(invalid_input(format!(
                "delta: {} target bytes written, {} announced",
                self.written, self.expected
            )));
        }
        self.encoder.finish()
    }
}

impl<W: Write> Write for ZstdRefEncoder<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.expected {
            return Err(invalid_input(format!(
                "delta: more than the {} target bytes announced",
                self.expected
            )));
        }
        let n = self.encoder.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.encoder.flush()
    }
}

/// Reads a kind 1 payload and yields exactly the target bytes
/// `offset..target_size`: an error if the payload makes more or fewer, is
/// not one zstd frame, or asks for a window over [`window_log`]. It stops
/// at the frame's end; what follows is for the caller to check.
pub struct ZstdRefDecoder<'a, R: BufRead> {
    decoder: zstd::stream::read::Decoder<'a, Counted<R>>,
    expected: u64,
    remaining: u64,
    stream_offset: u64,
    ended: bool,
}

impl<R: BufRead> fmt::Debug for ZstdRefDecoder<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZstdRefDecoder")
            .field("expected", &self.expected)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl<'a, R: BufRead> ZstdRefDecoder<'a, R> {
    /// A decoder of the payload `input` for bytes `offset..target_size` of
    /// the target, against `base` (which the caller has checked).
    pub fn new(input: R, base: &'a [u8], target_size: u64, offset: u64) -> io::Result<Self> {
        let base_size = base.len() as u64;
        if base_size > MAX_BASE_SIZE || offset > target_size {
            return Err(invalid_input(format!(
                "delta: base of {base_size} bytes, target bytes {offset}..{target_size}: out of limits"
            )));
        }
        let mut decoder =
            zstd::stream::read::Decoder::with_ref_prefix(Counted::new(input), base)?.single_frame();
        decoder.window_log_max(window_log(base_size, target_size))?;
        Ok(ZstdRefDecoder {
            decoder,
            expected: target_size - offset,
            remaining: target_size - offset,
            stream_offset: 0,
            ended: false,
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
        self.decoder.get_ref().pos
    }

    /// The payload reader, past the frame once the decoder has ended.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.decoder.get_mut().inner
    }

    fn fail(&self, problem: Problem) -> io::Error {
        DeltaError::new(self.stream_offset + self.position(), problem).into()
    }

    fn zstd_error(&self, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => self.fail(Problem::Truncated),
            io::ErrorKind::Interrupted => e,
            _ if e.get_ref().is_some_and(|i| i.is::<DeltaError>()) => e,
            _ => self.fail(Problem::Invalid(format!("zstd: {e}"))),
        }
    }
}

impl<R: BufRead> Read for ZstdRefDecoder<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            if !self.ended {
                // The frame must end here: one more byte is too many.
                let mut extra = [0; 1];
                let n = self
                    .decoder
                    .read(&mut extra)
                    .map_err(|e| self.zstd_error(e))?;
                if n > 0 {
                    return Err(self.fail(Problem::TargetTooLong(self.expected)));
                }
                self.ended = true;
            }
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self
            .decoder
            .read(&mut buf[..want])
            .map_err(|e| self.zstd_error(e))?;
        if n == 0 {
            return Err(self.fail(Problem::TargetTooShort {
                want: self.expected,
                got: self.expected - self.remaining,
            }));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A kind 1 delta's writer: the header, then the target written to it
/// compressed against the base.
pub type ZstdDeltaWriter<'a, W> = DeltaWriter<ZstdRefEncoder<'a, W>>;

impl<'a, W: Write> DeltaWriter<ZstdRefEncoder<'a, W>> {
    /// Writes the header of a delta from `base` to a target of
    /// `target_size` bytes with SHA-256 `target_sha256`; then takes the
    /// target's bytes. [`DeltaWriter::finish`] checks that they were
    /// those.
    pub fn new(
        out: W,
        base: Base<'a>,
        target_size: u64,
        target_sha256: [u8; 32],
        level: i32,
    ) -> io::Result<Self> {
        Self::start(out, base, target_size, target_sha256, 0, level)
    }

    /// As `ZstdDeltaWriter::new`, for a transfer resumed at target byte
    /// `offset`: the header describes the whole target, the payload and
    /// the bytes written are the target from `offset` on. Only their count
    /// is checked at the end (the hash needs the whole target).
    pub fn resume(
        out: W,
        base: Base<'a>,
        target_size: u64,
        target_sha256: [u8; 32],
        offset: u64,
        level: i32,
    ) -> io::Result<Self> {
        Self::start(out, base, target_size, target_sha256, offset, level)
    }

    fn start(
        mut out: W,
        base: Base<'a>,
        target_size: u64,
        target_sha256: [u8; 32],
        offset: u64,
        level: i32,
    ) -> io::Result<Self> {
        let header = DeltaHeader {
            kind: DeltaKind::ZstdRef,
            base_size: base.bytes().len() as u64,
            base_sha256: base.sha256(),
            target_size,
            target_sha256,
        };
        if header.base_size > MAX_BASE_SIZE {
            return Err(invalid_input(format!(
                "delta: a base of {} bytes is over the limit of {MAX_BASE_SIZE}",
                header.base_size
            )));
        }
        header.write_to(&mut out)?;
        let encoder = ZstdRefEncoder::new(out, base.bytes(), target_size, offset, level)?;
        Ok(DeltaWriter::wrap(encoder, target_sha256, offset))
    }
}

impl<W: Write> PayloadEncoder<W> for ZstdRefEncoder<'_, W> {
    fn complete(&self) -> bool {
        self.written == self.expected
    }

    fn end(self) -> io::Result<W> {
        self.finish()
    }
}
