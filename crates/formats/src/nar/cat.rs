//! [`cat`]: one file's contents out of a NAR, without unpacking it.

use std::io::{BufReader, Read, Write};

use super::decode::INPUT_BUFFER;
use super::listing::components;
use super::{Decoder, EntryKind, Event, NarError};

/// Writes the contents of the regular file at `path` in the NAR `r` to
/// `out`, and returns their size.
///
/// `path` is relative to the NAR's root, with or without a leading `/`
/// (`"a/b"`, `"/a/b"`); empty or `"/"` is the root itself. It may be given
/// as bytes for names that are not UTF-8.
///
/// The NAR is read strictly up to the end of the file, which is streamed;
/// the rest of the NAR is not read. When the path is missing, the whole NAR
/// is read, so that an invalid NAR is reported as such.
///
/// # Errors
/// [`NarError::NotFound`] if no node has that path,
/// [`NarError::NotRegular`] if it is a directory or a symlink,
/// [`NarError::Invalid`] if the NAR is invalid up to there,
/// [`NarError::Io`] if reading `r` or writing `out` fails.
pub fn cat(r: impl Read, path: impl AsRef<[u8]>, mut out: impl Write) -> Result<u64, NarError> {
    let wanted = components(path.as_ref()).collect::<Vec<_>>().join(&b'/');
    let mut decoder = Decoder::new(BufReader::with_capacity(INPUT_BUFFER, r));
    while let Some(event) = decoder.next_event()? {
        let Event::Entry(entry) = event else {
            continue;
        };
        if entry.path != wanted {
            continue;
        }
        return match entry.kind {
            EntryKind::Regular { .. } => copy_contents(&mut decoder, &mut out),
            other => Err(NarError::NotRegular {
                path: wanted,
                kind: other.type_name(),
            }),
        };
    }
    decoder.expect_eof()?;
    Err(NarError::NotFound { path: wanted })
}

fn copy_contents<R: Read>(decoder: &mut Decoder<R>, out: &mut impl Write) -> Result<u64, NarError> {
    let mut buf = vec![0; INPUT_BUFFER];
    let mut total = 0;
    loop {
        let n = decoder.read_contents(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
}
