//! Streaming codecs for NAR files, named as in a narinfo's `Compression`
//! field (docs/formats.md §3.4): `none`, `xz`, `zstd`, `bzip2` and `br`.
//!
//! The API is blocking, over [`Write`] and [`BufRead`]: [`encoder`] wraps a
//! writer in an [`Encoder`] that compresses what is written to it, and
//! [`Encoder::finish`] ends the stream and gives the writer back;
//! [`decoder`] wraps a reader in a [`Decoder`] that decompresses. Async
//! callers run them on blocking threads.
//!
//! # Defaults: Nix 2.8's levels
//!
//! Nix 2.8 compresses xz, bzip2 and zstd through libarchive and brotli with
//! the brotli library directly, so its default levels are those libraries'
//! defaults, and so are these:
//!
//! | method | default level | range | threads (`parallel-compression`) |
//! |---|---|---|---|
//! | `xz` | 6 (`LZMA_PRESET_DEFAULT`), CRC64 check | 0–9 | yes: liblzma's multi-threaded encoder, default block size (3 × the dictionary, 24 MiB at level 6) |
//! | `zstd` | 3 (`ZSTD_CLEVEL_DEFAULT`) | zstd's, −131072–22 | yes: zstd workers, 2 MiB jobs |
//! | `bzip2` | 9 (900 kB blocks) | 1–9 | no |
//! | `br` | 11 (`BROTLI_DEFAULT_QUALITY`), window 2²² | 0–11 | no |
//!
//! Nix 2.8 never sets brotli's quality (`compression-level` is ignored for
//! `br` there), so its brotli files are always quality 11, which is slow;
//! here `compression-level` does apply to `br`. A level given for `none` is
//! ignored, as in Nix (which only warns).
//!
//! # Reading leniently
//!
//! Nix 2.8 decompresses everything but `none` and `br` through libarchive's
//! auto-detection and ignores the declared name: a narinfo that says `bzip2`
//! for an xz file works, and so does one without a `Compression` line.
//! [`lenient_decoder`] does the same with [`sniff`], which recognises the
//! magic bytes of xz, zstd, bzip2, gzip, lz4 and lzip.
//!
//! `gzip`, `lz4`, `lzip` and the other libarchive-only methods are
//! recognised but not supported: asking for them is
//! [`CompressionError::Unsupported`].
//!
//! ```
//! use std::io::{Read, Write};
//! use nixferry::compression::{self, Compression};
//!
//! let mut enc = compression::encoder(&Compression::Zstd, None, 1, Vec::new())?;
//! enc.write_all(b"hello hello hello hello")?;
//! let compressed = enc.finish()?;
//! assert_eq!(compression::sniff(&compressed), Some(Compression::Zstd));
//!
//! let mut out = Vec::new();
//! compression::decoder(&Compression::Zstd, &compressed[..])?.read_to_end(&mut out)?;
//! assert_eq!(out, b"hello hello hello hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io::{self, BufRead, Cursor, Read, Write};

pub use crate::narinfo::Compression;

/// The methods this build can write and read: `none` always, the others
/// with their cargo features (`xz`, `zstd`, `bzip2`, `brotli`), all on by
/// default.
pub const SUPPORTED: &[Compression] = &[
    Compression::None,
    #[cfg(feature = "xz")]
    Compression::Xz,
    #[cfg(feature = "zstd")]
    Compression::Zstd,
    #[cfg(feature = "bzip2")]
    Compression::Bzip2,
    #[cfg(feature = "brotli")]
    Compression::Br,
];

/// How many leading bytes [`sniff`] looks at.
pub const SNIFF_LEN: usize = 6;

/// The largest amount of memory the xz decoder may use. Files written with
/// presets 0–9 (even `-9e`) need at most 65 MiB; an untrusted file can
/// declare a dictionary of up to 1.5 GiB, which this refuses.
pub const MAX_XZ_DECODER_MEMORY: u64 = 512 << 20;

/// Brotli's window (log2 of its size): `BROTLI_DEFAULT_WINDOW`, what Nix's
/// brotli encoder uses.
#[cfg(feature = "brotli")]
const BROTLI_WINDOW: u32 = 22;

/// Input per job of multi-threaded zstd. zstd's default is 4 × the window
/// (8 MiB at level 3), and it keeps several jobs' input and output in
/// memory per worker; 2 MiB jobs keep that around 20 MiB for two workers,
/// and cost about 0.2% of compressed size (measured on 1 GiB of binaries).
#[cfg(feature = "zstd")]
const ZSTD_JOB_SIZE: u32 = 2 << 20;

/// Buffer of the brotli encoder and decoder.
#[cfg(feature = "brotli")]
const BROTLI_BUFFER: usize = 64 * 1024;

/// Errors from setting up or running a codec.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompressionError {
    /// The method is known but nixferry cannot write or read it.
    #[error(
        "compression method '{method}' is not supported for {what}; supported: {}",
        supported_names()
    )]
    Unsupported {
        /// The method's name.
        method: String,
        /// `"compressing"` or `"decompressing"`.
        what: &'static str,
    },
    /// The level is out of the method's range.
    #[error("compression level {level} is not valid for '{method}': it must be in {min}..={max}")]
    BadLevel {
        /// The method's name.
        method: &'static str,
        /// The level asked for.
        level: i32,
        /// The lowest valid level.
        min: i32,
        /// The highest valid level.
        max: i32,
    },
    /// [`lenient_decoder`] found no known compression format at the start
    /// of the input (Nix: `input compression not recognized`).
    #[error("input compression not recognized (the narinfo says '{declared}')")]
    NotRecognized {
        /// The declared method.
        declared: String,
    },
    /// The codec library refused to start, or reading the first bytes failed.
    #[error("starting the {method} codec: {source}")]
    Init {
        /// The method's name.
        method: &'static str,
        /// The cause.
        source: io::Error,
    },
}

impl From<CompressionError> for io::Error {
    fn from(e: CompressionError) -> Self {
        let kind = match &e {
            CompressionError::Unsupported { .. } | CompressionError::BadLevel { .. } => {
                io::ErrorKind::Unsupported
            }
            CompressionError::NotRecognized { .. } => io::ErrorKind::InvalidData,
            CompressionError::Init { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}

/// Whether [`encoder`] and [`decoder`] handle `c`.
pub fn is_supported(c: &Compression) -> bool {
    SUPPORTED.contains(c)
}

/// The level Nix 2.8 uses for `c` when none is given (see the [module
/// docs](self)); `None` for `none` and unsupported methods.
pub fn default_level(c: &Compression) -> Option<i32> {
    match c {
        #[cfg(feature = "xz")]
        Compression::Xz => Some(6),
        // ZSTD_CLEVEL_DEFAULT.
        #[cfg(feature = "zstd")]
        Compression::Zstd => Some(3),
        #[cfg(feature = "bzip2")]
        Compression::Bzip2 => Some(9),
        #[cfg(feature = "brotli")]
        Compression::Br => Some(11),
        _ => None,
    }
}

/// The name and the range of levels of `c`, if this build writes it.
fn level_range(c: &Compression) -> Option<(&'static str, i32, i32)> {
    match c {
        #[cfg(feature = "xz")]
        Compression::Xz => Some(("xz", 0, 9)),
        #[cfg(feature = "zstd")]
        Compression::Zstd => {
            let range = zstd::compression_level_range();
            Some(("zstd", *range.start(), *range.end()))
        }
        #[cfg(feature = "bzip2")]
        Compression::Bzip2 => Some(("bzip2", 1, 9)),
        #[cfg(feature = "brotli")]
        Compression::Br => Some(("br", 0, 11)),
        _ => None,
    }
}

/// Checks that `level` is valid for `c`. Any level is accepted for `none`
/// (and ignored), as by Nix.
///
/// # Errors
/// [`CompressionError::BadLevel`] if it is out of range,
/// [`CompressionError::Unsupported`] if `c` cannot be written.
pub fn check_level(c: &Compression, level: i32) -> Result<(), CompressionError> {
    let Some((method, min, max)) = level_range(c) else {
        return match c {
            Compression::None => Ok(()),
            other => Err(unsupported(other, "compressing")),
        };
    };
    if (min..=max).contains(&level) {
        Ok(())
    } else {
        Err(CompressionError::BadLevel {
            method,
            level,
            min,
            max,
        })
    }
}

/// The names of [`SUPPORTED`], for messages: `none, xz, zstd, bzip2, br`
/// with every codec built in.
pub fn supported_names() -> String {
    SUPPORTED
        .iter()
        .map(Compression::name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn unsupported(c: &Compression, what: &'static str) -> CompressionError {
    CompressionError::Unsupported {
        method: c.name().to_owned(),
        what,
    }
}

fn init_err(method: &'static str) -> impl FnOnce(io::Error) -> CompressionError {
    move |source| CompressionError::Init { method, source }
}

/// The compression format whose magic bytes start `head`, if any: xz, zstd,
/// bzip2, gzip, lz4 or lzip. Brotli has no magic bytes, and an uncompressed
/// NAR is not "compressed", so neither is ever returned. Looks at the first
/// [`SNIFF_LEN`] bytes at most.
///
/// ```
/// use nixferry::compression::{sniff, Compression};
///
/// assert_eq!(sniff(b"\xfd7zXZ\0..."), Some(Compression::Xz));
/// assert_eq!(sniff(b"BZh91AY&SY"), Some(Compression::Bzip2));
/// assert_eq!(sniff(b"\x0d\0\0\0\0\0\0\0nix-archive-1"), None);
/// ```
pub fn sniff(head: &[u8]) -> Option<Compression> {
    const MAGIC: [(&[u8], Compression); 5] = [
        (b"\xfd7zXZ\x00", Compression::Xz),
        (b"\x28\xb5\x2f\xfd", Compression::Zstd),
        (b"\x1f\x8b", Compression::Gzip),
        (b"\x04\x22\x4d\x18", Compression::Lz4),
        (b"LZIP", Compression::Lzip),
    ];
    if let Some((_, c)) = MAGIC.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Some(c.clone());
    }
    // "BZh" and the block size, '1' to '9'.
    match head {
        [b'B', b'Z', b'h', b'1'..=b'9', ..] => Some(Compression::Bzip2),
        _ => None,
    }
}

/// A writer that compresses what is written to it into an inner writer.
/// Made by [`encoder`]; call [`Encoder::finish`] to end the stream.
///
/// Dropping an encoder without finishing it leaves the output incomplete
/// (some codecs try to finish it on drop; errors are then lost).
pub struct Encoder<W: Write> {
    inner: EncoderInner<W>,
}

enum EncoderInner<W: Write> {
    None(W),
    #[cfg(feature = "xz")]
    Xz(liblzma::write::XzEncoder<W>),
    #[cfg(feature = "zstd")]
    Zstd(zstd::stream::write::Encoder<'static, W>),
    #[cfg(feature = "bzip2")]
    Bzip2(bzip2::write::BzEncoder<W>),
    // Boxed: the brotli state is several kilobytes.
    #[cfg(feature = "brotli")]
    Br(Box<brotli::CompressorWriter<ErrorTrap<W>>>),
}

/// Makes an encoder that writes `c`-compressed data to `out`.
///
/// `level` is the method's level (default: Nix's, see the [module
/// docs](self)); `threads` > 1 compresses xz and zstd on that many threads
/// (the output stays one stream that any decoder reads) and is ignored for
/// the other methods.
///
/// # Errors
/// [`CompressionError::Unsupported`] for a method other than `none`, `xz`,
/// `zstd`, `bzip2` and `br`; [`CompressionError::BadLevel`];
/// [`CompressionError::Init`] if the codec library fails to start.
#[cfg_attr(
    not(all(
        feature = "xz",
        feature = "zstd",
        feature = "bzip2",
        feature = "brotli"
    )),
    allow(unused_variables)
)]
pub fn encoder<W: Write>(
    c: &Compression,
    level: Option<i32>,
    threads: u32,
    out: W,
) -> Result<Encoder<W>, CompressionError> {
    if let Some(level) = level {
        check_level(c, level)?;
    }
    let level = level.or_else(|| default_level(c));
    // Checked above: in range for every method below.
    let unsigned = level.and_then(|l| u32::try_from(l).ok()).unwrap_or(0);
    let inner = match c {
        Compression::None => EncoderInner::None(out),
        #[cfg(feature = "xz")]
        Compression::Xz => {
            let stream = if threads > 1 {
                liblzma::stream::MtStreamBuilder::new()
                    .threads(threads)
                    .preset(unsigned)
                    .check(liblzma::stream::Check::Crc64)
                    // 0: liblzma's default block size, as libarchive uses.
                    .block_size(0)
                    .encoder()
            } else {
                liblzma::stream::Stream::new_easy_encoder(unsigned, liblzma::stream::Check::Crc64)
            }
            .map_err(|e| init_err("xz")(e.into()))?;
            #[cfg(feature = "xz")]
            EncoderInner::Xz(liblzma::write::XzEncoder::new_stream(out, stream))
        }
        #[cfg(feature = "zstd")]
        Compression::Zstd => {
            let level = level.unwrap_or(zstd::DEFAULT_COMPRESSION_LEVEL);
            let mut enc =
                zstd::stream::write::Encoder::new(out, level).map_err(init_err("zstd"))?;
            if threads > 1 {
                enc.multithread(threads).map_err(init_err("zstd"))?;
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))
                    .map_err(init_err("zstd"))?;
            }
            #[cfg(feature = "zstd")]
            EncoderInner::Zstd(enc)
        }
        #[cfg(feature = "bzip2")]
        Compression::Bzip2 => EncoderInner::Bzip2(bzip2::write::BzEncoder::new(
            out,
            bzip2::Compression::new(unsigned),
        )),
        #[cfg(feature = "brotli")]
        Compression::Br => EncoderInner::Br(Box::new(brotli::CompressorWriter::new(
            ErrorTrap::new(out),
            BROTLI_BUFFER,
            unsigned,
            BROTLI_WINDOW,
        ))),
        other => return Err(unsupported(other, "compressing")),
    };
    Ok(Encoder { inner })
}

impl<W: Write> Encoder<W> {
    /// The method this encoder writes.
    pub fn compression(&self) -> Compression {
        match &self.inner {
            EncoderInner::None(_) => Compression::None,
            #[cfg(feature = "xz")]
            EncoderInner::Xz(_) => Compression::Xz,
            #[cfg(feature = "zstd")]
            EncoderInner::Zstd(_) => Compression::Zstd,
            #[cfg(feature = "bzip2")]
            EncoderInner::Bzip2(_) => Compression::Bzip2,
            #[cfg(feature = "brotli")]
            EncoderInner::Br(_) => Compression::Br,
        }
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        match &self.inner {
            EncoderInner::None(w) => w,
            #[cfg(feature = "xz")]
            EncoderInner::Xz(e) => e.get_ref(),
            #[cfg(feature = "zstd")]
            EncoderInner::Zstd(e) => e.get_ref(),
            #[cfg(feature = "bzip2")]
            EncoderInner::Bzip2(e) => e.get_ref(),
            #[cfg(feature = "brotli")]
            EncoderInner::Br(e) => &e.get_ref().inner,
        }
    }

    /// Ends the compressed stream, writing what the codec still holds, and
    /// returns the inner writer (not flushed).
    ///
    /// # Errors
    /// The first error the codec or the inner writer gave.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            EncoderInner::None(w) => Ok(w),
            #[cfg(feature = "xz")]
            EncoderInner::Xz(e) => e.finish(),
            #[cfg(feature = "zstd")]
            EncoderInner::Zstd(e) => e.finish(),
            #[cfg(feature = "bzip2")]
            EncoderInner::Bzip2(e) => e.finish(),
            #[cfg(feature = "brotli")]
            EncoderInner::Br(e) => e.into_inner().into_result(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            EncoderInner::None(w) => w.write(buf),
            #[cfg(feature = "xz")]
            EncoderInner::Xz(e) => e.write(buf),
            #[cfg(feature = "zstd")]
            EncoderInner::Zstd(e) => e.write(buf),
            #[cfg(feature = "bzip2")]
            EncoderInner::Bzip2(e) => e.write(buf),
            #[cfg(feature = "brotli")]
            EncoderInner::Br(e) => {
                let n = e.write(buf);
                e.get_mut().check(n)
            }
        }
    }

    /// Makes the codec emit everything written so far. This ends a block
    /// (xz, bzip2) or a meta-block (brotli) early and costs compression: do
    /// not call it between writes of one stream without need.
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            EncoderInner::None(w) => w.flush(),
            #[cfg(feature = "xz")]
            EncoderInner::Xz(e) => e.flush(),
            #[cfg(feature = "zstd")]
            EncoderInner::Zstd(e) => e.flush(),
            #[cfg(feature = "bzip2")]
            EncoderInner::Bzip2(e) => e.flush(),
            #[cfg(feature = "brotli")]
            EncoderInner::Br(e) => {
                let r = e.flush();
                e.get_mut().check(r)
            }
        }
    }
}

impl<W: Write> fmt::Debug for Encoder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("compression", &self.compression())
            .finish_non_exhaustive()
    }
}

/// A writer that remembers the first error of its inner writer. The brotli
/// encoder drops the errors of its final writes; this keeps them for
/// [`Encoder::finish`].
#[cfg(feature = "brotli")]
struct ErrorTrap<W> {
    inner: W,
    error: Option<io::Error>,
}

#[cfg(feature = "brotli")]
impl<W> ErrorTrap<W> {
    fn new(inner: W) -> Self {
        Self { inner, error: None }
    }

    /// `result`, or the trapped error if there is one (the brotli encoder
    /// replaces the errors it sees with its own).
    fn check<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        match self.error.take() {
            Some(e) => Err(e),
            None => result,
        }
    }

    fn into_result(self) -> io::Result<W> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.inner),
        }
    }
}

#[cfg(feature = "brotli")]
impl<W: Write> Write for ErrorTrap<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|e| self.trap(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|e| self.trap(e))
    }
}

#[cfg(feature = "brotli")]
impl<W> ErrorTrap<W> {
    fn trap(&mut self, e: &io::Error) {
        if self.error.is_none() && e.kind() != io::ErrorKind::Interrupted {
            self.error = Some(io::Error::new(e.kind(), e.to_string()));
        }
    }
}

/// A reader that decompresses what it reads from an inner reader. Made by
/// [`decoder`] or [`lenient_decoder`].
///
/// Concatenated streams (xz, zstd, bzip2) are read as one. Corrupt or
/// truncated input is an [`io::Error`] (usually
/// [`io::ErrorKind::InvalidData`] or [`io::ErrorKind::UnexpectedEof`]).
pub struct Decoder<R: BufRead> {
    inner: DecoderInner<R>,
}

enum DecoderInner<R: BufRead> {
    None(R),
    #[cfg(feature = "xz")]
    Xz(liblzma::bufread::XzDecoder<R>),
    #[cfg(feature = "zstd")]
    Zstd(zstd::stream::read::Decoder<'static, R>),
    #[cfg(feature = "bzip2")]
    Bzip2(bzip2::bufread::MultiBzDecoder<R>),
    // Boxed: the brotli state is large.
    #[cfg(feature = "brotli")]
    Br(Box<brotli::Decompressor<R>>),
}

/// Makes a decoder that reads `c`-compressed data from `input`.
///
/// # Errors
/// [`CompressionError::Unsupported`] for a method other than `none`, `xz`,
/// `zstd`, `bzip2` and `br`; [`CompressionError::Init`] if the codec
/// library fails to start.
pub fn decoder<R: BufRead>(c: &Compression, input: R) -> Result<Decoder<R>, CompressionError> {
    let inner = match c {
        Compression::None => DecoderInner::None(input),
        #[cfg(feature = "xz")]
        Compression::Xz => {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                MAX_XZ_DECODER_MEMORY,
                liblzma::stream::CONCATENATED,
            )
            .map_err(|e| init_err("xz")(e.into()))?;
            #[cfg(feature = "xz")]
            DecoderInner::Xz(liblzma::bufread::XzDecoder::new_stream(input, stream))
        }
        #[cfg(feature = "zstd")]
        Compression::Zstd => DecoderInner::Zstd(
            zstd::stream::read::Decoder::with_buffer(input).map_err(init_err("zstd"))?,
        ),
        #[cfg(feature = "bzip2")]
        Compression::Bzip2 => DecoderInner::Bzip2(bzip2::bufread::MultiBzDecoder::new(input)),
        #[cfg(feature = "brotli")]
        Compression::Br =>
        {
            #[cfg(feature = "brotli")]
            DecoderInner::Br(Box::new(brotli::Decompressor::new(input, BROTLI_BUFFER)))
        }
        other => return Err(unsupported(other, "decompressing")),
    };
    Ok(Decoder { inner })
}

/// The input of a [`lenient_decoder`]: the bytes it looked at, then the rest.
pub type Peeked<R> = io::Chain<Cursor<Vec<u8>>, R>;

/// Whether Nix 2.8 finds the format of a NAR file whose narinfo declares
/// `declared` by [`sniff`]ing its first bytes: for everything but `none`
/// and `br`, which are taken at their word.
pub fn is_sniffed(declared: &Compression) -> bool {
    !matches!(declared, Compression::None | Compression::Br)
}

/// Makes a decoder as Nix 2.8 does for a NAR file whose narinfo declares
/// `declared`: `none` and `br` are taken at their word; for anything else
/// (including the `bzip2` an absent field means) the format is found by
/// [`sniff`]ing the first bytes, whatever the declared name.
///
/// # Errors
/// [`CompressionError::NotRecognized`] if the input starts with no known
/// magic bytes; [`CompressionError::Unsupported`] if it is gzip, lz4 or
/// lzip; [`CompressionError::Init`] if reading the first bytes fails.
pub fn lenient_decoder<R: BufRead>(
    declared: &Compression,
    mut input: R,
) -> Result<Decoder<Peeked<R>>, CompressionError> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    let actual = if is_sniffed(declared) {
        (&mut input)
            .take(SNIFF_LEN as u64)
            .read_to_end(&mut head)
            .map_err(init_err("sniffing"))?;
        sniff(&head).ok_or_else(|| CompressionError::NotRecognized {
            declared: declared.name().to_owned(),
        })?
    } else {
        declared.clone()
    };
    decoder(&actual, Cursor::new(head).chain(input))
}

impl<R: BufRead> Decoder<R> {
    /// The method this decoder reads.
    pub fn compression(&self) -> Compression {
        match &self.inner {
            DecoderInner::None(_) => Compression::None,
            #[cfg(feature = "xz")]
            DecoderInner::Xz(_) => Compression::Xz,
            #[cfg(feature = "zstd")]
            DecoderInner::Zstd(_) => Compression::Zstd,
            #[cfg(feature = "bzip2")]
            DecoderInner::Bzip2(_) => Compression::Bzip2,
            #[cfg(feature = "brotli")]
            DecoderInner::Br(_) => Compression::Br,
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            DecoderInner::None(r) => r.read(buf),
            #[cfg(feature = "xz")]
            DecoderInner::Xz(d) => d.read(buf),
            #[cfg(feature = "zstd")]
            DecoderInner::Zstd(d) => d.read(buf),
            #[cfg(feature = "bzip2")]
            DecoderInner::Bzip2(d) => d.read(buf),
            #[cfg(feature = "brotli")]
            DecoderInner::Br(d) => d.read(buf),
        }
    }
}

impl<R: BufRead> fmt::Debug for Decoder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("compression", &self.compression())
            .finish_non_exhaustive()
    }
}

#[cfg(all(
    test,
    feature = "xz",
    feature = "zstd",
    feature = "bzip2",
    feature = "brotli"
))]
mod tests {
    use super::*;

    /// Compressible but not trivial: text with a pseudo-random walk.
    fn sample(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut x: u32 = 12345;
        while out.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let line = format!("line {} value {}\n", out.len() % 977, x >> 20);
            out.extend_from_slice(line.as_bytes());
        }
        out.truncate(len);
        out
    }

    fn compress(c: &Compression, level: Option<i32>, threads: u32, data: &[u8]) -> Vec<u8> {
        let mut enc = encoder(c, level, threads, Vec::new()).unwrap();
        // Odd-sized writes, to cross the codecs' buffer boundaries.
        for chunk in data.chunks(70_001) {
            enc.write_all(chunk).unwrap();
        }
        enc.finish().unwrap()
    }

    fn decompress(c: &Compression, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(c, data)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trip_every_codec() {
        let big = sample(3 << 20);
        for c in SUPPORTED.iter().cloned() {
            // Brotli's default quality (11) is slow: give it less.
            let data = if c == Compression::Br {
                &big[..256 << 10]
            } else {
                &big[..]
            };
            let packed = compress(&c, None, 1, data);
            if c != Compression::None {
                assert!(packed.len() < data.len() / 2, "{c}: {}", packed.len());
            }
            assert_eq!(decompress(&c, &packed).unwrap(), data, "{c}");
            // Empty input round-trips too.
            assert_eq!(
                decompress(&c, &compress(&c, None, 1, b"")).unwrap(),
                b"",
                "{c}"
            );
        }
    }

    #[test]
    fn round_trip_levels() {
        let data = sample(200_000);
        for (c, levels) in [
            (Compression::Xz, &[0, 1, 9][..]),
            (Compression::Zstd, &[-5, 1, 19][..]),
            (Compression::Bzip2, &[1, 9][..]),
            (Compression::Br, &[0, 5, 11][..]),
            (Compression::None, &[42][..]),
        ] {
            for &level in levels {
                let packed = compress(&c, Some(level), 1, &data);
                assert_eq!(decompress(&c, &packed).unwrap(), data, "{c} {level}");
            }
        }
    }

    #[test]
    fn round_trip_multi_threaded() {
        // Several xz blocks at level 1 (1 MiB each) and several zstd jobs
        // at level 1 (2 MiB each), so the threads really split the work.
        let data = sample(6 << 20);
        for c in [Compression::Xz, Compression::Zstd] {
            let packed = compress(&c, Some(1), 3, &data);
            assert_eq!(decompress(&c, &packed).unwrap(), data, "{c}");
            assert_eq!(sniff(&packed), Some(c.clone()));
        }
        // Ignored where it does not apply.
        for c in [Compression::None, Compression::Bzip2, Compression::Br] {
            let packed = compress(&c, Some(1), 4, &data[..100_000]);
            assert_eq!(decompress(&c, &packed).unwrap(), &data[..100_000], "{c}");
        }
    }

    #[test]
    fn levels_are_checked() {
        for (c, bad) in [
            (Compression::Xz, 10),
            (Compression::Xz, -1),
            (Compression::Bzip2, 0),
            (Compression::Br, 12),
            (Compression::Zstd, 23),
        ] {
            let e = encoder(&c, Some(bad), 1, Vec::new()).unwrap_err();
            assert!(matches!(e, CompressionError::BadLevel { .. }), "{c}: {e}");
            assert!(e.to_string().contains(&bad.to_string()), "{e}");
        }
        assert!(check_level(&Compression::None, 99).is_ok());
        for c in SUPPORTED {
            if let Some(level) = default_level(c) {
                check_level(c, level).unwrap();
            }
        }
    }

    #[test]
    fn unsupported_methods_say_so() {
        for c in [
            Compression::Gzip,
            Compression::Lz4,
            Compression::Lzip,
            Compression::Other("lzop".into()),
        ] {
            let e = encoder(&c, None, 1, Vec::new()).unwrap_err().to_string();
            assert!(e.contains(c.name()) && e.contains("supported: none"), "{e}");
            let e = decoder(&c, &b""[..]).unwrap_err().to_string();
            assert!(e.contains("decompressing"), "{e}");
            assert!(!is_supported(&c));
        }
    }

    #[test]
    fn sniffing() {
        let data = sample(10_000);
        for c in [Compression::Xz, Compression::Zstd, Compression::Bzip2] {
            assert_eq!(sniff(&compress(&c, None, 1, &data)), Some(c.clone()));
        }
        assert_eq!(sniff(&compress(&Compression::Br, None, 1, &data)), None);
        assert_eq!(sniff(b"\x1f\x8b\x08\0"), Some(Compression::Gzip));
        assert_eq!(sniff(b"\x04\x22\x4d\x18"), Some(Compression::Lz4));
        assert_eq!(sniff(b"LZIP\x01"), Some(Compression::Lzip));
        assert_eq!(sniff(b"BZh0"), None);
        assert_eq!(sniff(b"BZ"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn lenient_decoding_follows_nix() {
        let data = sample(50_000);
        let xz = compress(&Compression::Xz, None, 1, &data);
        // A declared bzip2 (or absent field, which parses as bzip2) that is
        // really xz works, and so does any other sniffed name.
        for declared in [
            Compression::Bzip2,
            Compression::Zstd,
            Compression::Gzip,
            Compression::Other("lzma".into()),
        ] {
            let mut out = Vec::new();
            let mut d = lenient_decoder(&declared, &xz[..]).unwrap();
            assert_eq!(d.compression(), Compression::Xz);
            d.read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "{declared}");
        }
        // An uncompressed file declared as xz is refused, as by Nix.
        let e = lenient_decoder(&Compression::Xz, &data[..]).unwrap_err();
        assert!(matches!(e, CompressionError::NotRecognized { .. }), "{e}");
        // Input shorter than the magic bytes.
        assert!(lenient_decoder(&Compression::Xz, &b"\xfd7"[..]).is_err());
        // `none` and `br` are taken at their word.
        let d = lenient_decoder(&Compression::None, &xz[..]).unwrap();
        assert_eq!(d.compression(), Compression::None);
        let br = compress(&Compression::Br, None, 1, &data);
        let mut out = Vec::new();
        lenient_decoder(&Compression::Br, &br[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn corrupt_and_truncated_input_is_an_error() {
        let data = sample(300_000);
        for c in [
            Compression::Xz,
            Compression::Zstd,
            Compression::Bzip2,
            Compression::Br,
        ] {
            let packed = compress(&c, None, 1, &data);
            let truncated = &packed[..packed.len() / 2];
            assert!(decompress(&c, truncated).is_err(), "{c}: truncated");
            let mut flipped = packed.clone();
            let mid = flipped.len() / 2;
            flipped[mid] ^= 0x55;
            // A flipped bit either fails or (brotli has no checksum) at
            // least does not give the original back.
            assert!(
                decompress(&c, &flipped).map_or(true, |out| out != data),
                "{c}: corrupt"
            );
            // Garbage is never a panic.
            let _ = decompress(&c, &sample(1000));
        }
    }

    /// Errors of the inner writer reach the caller, also for brotli, whose
    /// encoder drops them.
    #[test]
    fn writer_errors_are_reported() {
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let data = sample(1 << 20);
        for c in SUPPORTED {
            let result = encoder(c, Some(default_level(c).unwrap_or(0).min(5)), 1, Full(100))
                .map_err(io::Error::from)
                .and_then(|mut e| {
                    e.write_all(&data)?;
                    e.finish()
                });
            let e = result.err().unwrap_or_else(|| panic!("{c}: no error"));
            assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{c}: {e}");
        }
    }

    #[test]
    fn codecs_are_send() {
        fn send<T: Send>() {}
        send::<Encoder<std::fs::File>>();
        send::<Decoder<io::BufReader<std::fs::File>>>();
    }

    /// The xz NARs Nix 2.8 wrote (`testdata/vectors/binary-cache/signed-xz`)
    /// decode to NARs whose hash is in the file name's narinfo; here: they
    /// decode to valid NARs.
    #[test]
    fn decodes_nix_xz_nars() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/vectors/binary-cache/signed-xz/nar");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let packed = std::fs::read(&path).unwrap();
            assert_eq!(sniff(&packed), Some(Compression::Xz));
            let nar = decompress(&Compression::Xz, &packed).unwrap();
            let summary = crate::nar::validate(&nar[..]).unwrap();
            assert_eq!(summary.nar_size, nar.len() as u64);
            // And through the lenient path, declared as the default bzip2.
            let mut again = Vec::new();
            lenient_decoder(&Compression::parse(""), &packed[..])
                .unwrap()
                .read_to_end(&mut again)
                .unwrap();
            assert_eq!(again, nar);
            seen += 1;
        }
        assert_eq!(seen, 3);
    }
}
