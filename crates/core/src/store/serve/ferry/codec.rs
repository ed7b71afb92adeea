//! Compressing a NAR into a stream's data frames, plainly or as a delta
//! against a base NAR (docs/formats.md §7.4, §8), and the other way.

use std::io::{self, Read, Write};

use zstd::stream::raw;
use zstd::zstd_safe::DParameter;

use super::mux::{Level, Sender};
use crate::delta::{BlockEncoder, PayloadEncoder, Signature, ZstdRefEncoder};

/// How much input a compressor takes before it looks at the level again.
const CHUNK: usize = 1 << 20;

/// A plain stream starts a new zstd frame for a new level at most this
/// often, as each frame starts without history.
const MIN_FRAME: u64 = 4 << 20;

/// The largest base NAR a delta is made against.
pub(crate) const MAX_BASE: u64 = crate::delta::MAX_BASE_SIZE;

/// What a delta is made against: the base's NAR (kind 1) or its block
/// signature (kind 2), and which part of the target the stream carries.
#[derive(Debug, Clone, Copy)]
pub(super) struct DeltaBase<'a> {
    /// The base.
    pub(super) base: Reference<'a>,
    /// The target's NAR size.
    pub(super) target_size: u64,
    /// Where in the target the stream starts.
    pub(super) offset: u64,
}

/// What the sender knows of a delta's base.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reference<'a> {
    /// Its whole NAR.
    Nar(&'a [u8]),
    /// Its block signature.
    Signature(&'a Signature),
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
/// level `level` says (frames restart when it changes), or, with a base,
/// as a delta against it at the level of the start (the payload of a
/// kind 1 delta, docs/formats.md §8.2, for the target bytes from
/// `offset` of `target_size` on). Returns the bytes sent.
///
/// # Errors
/// Reading `nar` failed, or the connection went away
/// ([`io::ErrorKind::BrokenPipe`]).
pub(super) fn compress(
    mut nar: impl Read,
    out: &Sender,
    id: u32,
    level: &Level,
    base: Option<DeltaBase<'_>>,
) -> io::Result<u64> {
    let frames = Frames {
        out,
        id,
        buf: Vec::with_capacity(512 * 1024),
        sent: 0,
    };
    let mut current = level.get();
    if let Some(DeltaBase {
        base,
        target_size,
        offset,
    }) = base
    {
        let mut frames = match base {
            Reference::Nar(base) => encode_all(
                &mut nar,
                ZstdRefEncoder::new(frames, base, target_size, offset, current)?,
            )?,
            Reference::Signature(sig) => encode_all(
                &mut nar,
                BlockEncoder::new(frames, sig, target_size, offset, current)?,
            )?,
        };
        frames.push()?;
        return Ok(frames.sent);
    }
    let mut encoder = zstd::stream::write::Encoder::new(frames, current)?;
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
        if wanted != current && in_frame >= MIN_FRAME {
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

/// Feeds `nar` to a delta payload encoder and ends the payload.
fn encode_all<W, E: PayloadEncoder<W>>(nar: &mut impl Read, mut encoder: E) -> io::Result<W> {
    io::copy(nar, &mut encoder)?;
    encoder.end()
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::mux::{self, Level};
    use super::super::wire::{FrameReader, Kind};
    use super::*;

    /// Real machine code with 32-byte "store hashes" every 64 KiB: what a
    /// path looks like to a delta after a mass rebuild.
    fn nar_like(seed: u8, size: usize) -> Vec<u8> {
        let code = std::fs::read("/proc/self/exe").unwrap();
        let mut data: Vec<u8> = code.iter().cycle().take(size).copied().collect();
        for at in (0..size.saturating_sub(32)).step_by(64 * 1024) {
            for (i, b) in data[at..at + 32].iter_mut().enumerate() {
                *b = b'a' + (seed.wrapping_add(i as u8)) % 26;
            }
        }
        data
    }

    /// Compresses `target` into frames of one stream and returns the
    /// stream's bytes.
    async fn through_frames(target: Vec<u8>, base: Option<Vec<u8>>, level: Arc<Level>) -> Vec<u8> {
        let (near, far) = tokio::io::duplex(1 << 16);
        let (out, writer) = mux::writer(near, level.clone());
        let size = target.len() as u64;
        let sending = tokio::task::spawn_blocking(move || {
            let base = base.as_deref().map(|base| DeltaBase {
                base: Reference::Nar(base),
                target_size: size,
                offset: 0,
            });
            compress(&target[..], &out, 7, &level, base).unwrap()
        });
        let mut reader = FrameReader::new(far, 0);
        let mut stream = Vec::new();
        let collect = async {
            while let Some(frame) = reader.next().await.unwrap() {
                assert_eq!((frame.kind, frame.stream), (Kind::Data, 7));
                stream.extend_from_slice(&frame.payload);
            }
        };
        let (sent, ()) = tokio::join!(sending, collect);
        assert_eq!(sent.unwrap(), stream.len() as u64);
        writer.await.unwrap().unwrap();
        stream
    }

    fn decode(stream: &[u8], base: Option<&[u8]>, size: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        match base {
            None => {
                decompress_to(stream, &mut out, size)?;
            }
            Some(base) => {
                let mut d = crate::delta::ZstdRefDecoder::new(stream, base, size, 0)?;
                io::copy(&mut d, &mut out)?;
            }
        }
        Ok(out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plain_streams_survive_level_changes() {
        let target = nar_like(1, 20 << 20);
        let level = Level::new(1);
        // Levels change while the stream is compressed: frames restart.
        let changer = {
            let level = Arc::clone(&level);
            std::thread::spawn(move || {
                for l in [5, 2, 9, 1] {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    level.set(l);
                }
            })
        };
        let stream = through_frames(target.clone(), None, level).await;
        changer.join().unwrap();
        assert_eq!(decode(&stream, None, target.len() as u64).unwrap(), target);
        let mut limited = Vec::new();
        assert!(decompress_to(&stream[..], &mut limited, 1 << 20).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delta_after_a_rebuild_is_tiny_and_needs_its_base() {
        let base = nar_like(1, 8 << 20);
        let target = nar_like(2, 8 << 20);
        let size = target.len() as u64;
        let delta = through_frames(target.clone(), Some(base.clone()), Level::new(3)).await;
        let plain = through_frames(target.clone(), None, Level::new(3)).await;
        assert!(
            delta.len() * 100 < plain.len(),
            "{} vs {}",
            delta.len(),
            plain.len()
        );
        assert_eq!(decode(&delta, Some(&base), size).unwrap(), target);
        // Another base gives other bytes, or an error: the receiver's hash
        // check is what refuses them.
        let other = nar_like(3, 8 << 20);
        assert!(decode(&delta, Some(&other), size).map_or(true, |out| out != target));
    }
}
