//! Compressing a NAR into a stream's data frames, plainly or as a delta
//! against a base NAR (docs/formats.md §7.4, §8), and the other way.

use std::io::{self, Read, Write};

use zstd::stream::raw;
use zstd::zstd_safe::{CParameter, DParameter};

use super::mux::{Level, Sender};

/// How much input a compressor takes before it looks at the level again.
const CHUNK: usize = 1 << 20;

/// A plain stream starts a new zstd frame for a new level at most this
/// often, as each frame starts without history.
const MIN_FRAME: u64 = 8 << 20;

/// The largest base NAR a delta is made against.
pub(crate) const MAX_BASE: u64 = 1 << 30;

/// The window a delta over `base` and `target` bytes needs, as a log2.
pub(crate) fn delta_window_log(base: u64, target: u64) -> u32 {
    let span = base.saturating_add(target).max(1 << 20);
    (64 - (span - 1).leading_zeros()).clamp(20, 30)
}

/// Writes what a compressor gives as data frames of one stream.
struct Frames<'a> {
    out: &'a Sender,
    id: u32,
    buf: Vec<u8>,
    sent: u64,
}

impl Frames<'_> {
    fn push(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if !self.out.blocking_data(self.id, &self.buf) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the connection is gone",
            ));
        }
        self.sent += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl Write for Frames<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.push()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}

/// Compresses `nar` to the end into data frames of stream `id`, at the
/// level `level` says (frames restart when it changes), or, with `base`,
/// as a delta against it at the level of the start. Returns the bytes
/// sent.
///
/// # Errors
/// Reading `nar` failed, or the connection went away
/// ([`io::ErrorKind::BrokenPipe`]).
pub(super) fn compress(
    mut nar: impl Read,
    out: &Sender,
    id: u32,
    level: &Level,
    base: Option<(&[u8], u64)>,
) -> io::Result<u64> {
    let frames = Frames {
        out,
        id,
        buf: Vec::with_capacity(512 * 1024),
        sent: 0,
    };
    let mut current = level.get();
    let raw = match base {
        Some((base, target_size)) => {
            let mut raw = raw::Encoder::with_ref_prefix(current, base)?;
            raw.set_parameter(CParameter::WindowLog(delta_window_log(
                base.len() as u64,
                target_size,
            )))?;
            raw.set_parameter(CParameter::EnableLongDistanceMatching(true))?;
            raw
        }
        None => raw::Encoder::new(current)?,
    };
    let mut encoder = zstd::stream::write::Encoder::with_encoder(frames, raw);
    let mut chunk = vec![0; CHUNK];
    let mut in_frame = 0u64;
    loop {
        let n = read_full(&mut nar, &mut chunk)?;
        if n == 0 {
            break;
        }
        encoder.write_all(&chunk[..n])?;
        in_frame += n as u64;
        let wanted = level.get();
        if base.is_none() && wanted != current && in_frame >= MIN_FRAME {
            let frames = encoder.finish()?;
            current = wanted;
            encoder = zstd::stream::write::Encoder::new(frames, current)?;
            in_frame = 0;
        }
    }
    let mut frames = encoder.finish()?;
    frames.push()?;
    Ok(frames.sent)
}

/// Reads until `buf` is full or the input ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A decompressor for an add's data: plain zstd, or a delta against
/// `base`, writing NAR bytes into `out`.
pub(super) fn decompressor<'b, W: Write>(
    out: W,
    base: Option<(&'b [u8], u64)>,
) -> io::Result<zstd::stream::write::Decoder<'b, W>> {
    let raw = match base {
        Some((base, target_size)) => {
            let mut raw = raw::Decoder::with_ref_prefix(base)?;
            raw.set_parameter(DParameter::WindowLogMax(delta_window_log(
                base.len() as u64,
                target_size,
            )))?;
            raw
        }
        None => {
            let mut raw = raw::Decoder::new()?;
            raw.set_parameter(DParameter::WindowLogMax(27))?;
            raw
        }
    };
    Ok(zstd::stream::write::Decoder::with_decoder(out, raw))
}

/// Decompresses a whole plain zstd stream read from `input` into `out`,
/// for pulled NARs; at most `limit` bytes come out.
///
/// # Errors
/// A corrupt stream, one that gives more than `limit` bytes, or a failing
/// reader or writer.
pub(super) fn decompress_to(input: impl Read, mut out: impl Write, limit: u64) -> io::Result<u64> {
    let mut raw = raw::Decoder::new()?;
    raw.set_parameter(DParameter::WindowLogMax(27))?;
    let mut decoder = zstd::stream::zio::Reader::new(io::BufReader::new(input), raw);
    let mut total = 0u64;
    let mut buf = vec![0; 256 * 1024];
    loop {
        let n = decoder.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than the {limit} bytes announced"),
            ));
        }
        out.write_all(&buf[..n])?;
    }
}
