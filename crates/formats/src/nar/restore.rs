//! [`restore`]: unpacking a NAR into the file system, safely.
//!
//! Nix 2.8's `nix-store --restore` trusts the NAR's structure and leaves a
//! partial tree behind on failure (docs/formats.md §1.4). Here every node comes from
//! the strict [`Decoder`], so names are valid, unique and in order before
//! anything is created, and a failure removes whatever was created.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::decode::INPUT_BUFFER;
use super::writer::CONTENTS_CHUNK;
use super::{fs_error, Decoder, EntryKind, Event, Limits, NarError, NarSummary};

/// How [`restore`] treats the destination and the input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Remove an existing file, symlink or tree at the destination first.
    /// Without it, an existing destination is an error.
    pub overwrite: bool,
    /// Limits for decoding the NAR.
    pub limits: Limits,
}

/// Unpacks the NAR in `r` at `dest` and returns the NAR's hash and size.
///
/// `dest` must not exist (unless [`RestoreOptions::overwrite`]); its parent
/// must. The NAR is read strictly, including that nothing follows it. Files
/// are created with mode 0666, or 0777 when executable, less the umask;
/// timestamps and ownership are left as the system sets them.
///
/// Safety: nothing is written outside `dest`. Every name is checked by the
/// decoder before use (no `/`, `.`, `..` or duplicates), and every node is
/// created new (`O_CREAT|O_EXCL`, `mkdir`, `symlink`), so an existing file
/// or a symlink, including one the NAR itself created, is never followed.
/// Paths are built from `dest` and the checked names; a concurrent writer
/// inside `dest` is not defended against. On a case-insensitive file system,
/// names that differ only in case collide, and the restore fails (Nix's
/// case hack, docs/formats.md §1.5, is not implemented).
///
/// On any error, everything created under `dest` (and `dest` itself) is
/// removed. With `overwrite`, the old destination is already gone then.
///
/// # Errors
/// [`NarError::TargetExists`] if `dest` exists without `overwrite`,
/// [`NarError::Invalid`] for an invalid NAR, [`NarError::Fs`] if creating
/// or writing a file fails, [`NarError::Io`] if reading `r` fails.
pub fn restore(r: impl Read, dest: &Path, opts: &RestoreOptions) -> Result<NarSummary, NarError> {
    let reader = BufReader::with_capacity(INPUT_BUFFER, r);
    let mut decoder = Decoder::with_limits(reader, opts.limits);
    prepare_destination(dest, opts.overwrite)?;
    let mut restorer = Restorer::new(dest);
    let result = restorer
        .run(&mut decoder)
        .and_then(|()| decoder.expect_eof());
    if let Err(e) = result {
        restorer.remove_created();
        return Err(e);
    }
    Ok(decoder.finish()?.1)
}

/// Unpacks the NAR that `decoder` is about to read at `dest`, leaving the
/// decoder at the end of the NAR, so that a caller reading a NAR embedded
/// in a longer stream can go on (and call [`Decoder::finish`] for the hash).
/// Otherwise as [`restore`]; the decoder's own limits apply.
///
/// # Errors
/// As [`restore`]; and [`NarError::Misuse`] if the decoder has already
/// started reading.
pub fn restore_from_decoder<R: Read>(
    decoder: &mut Decoder<R>,
    dest: &Path,
    overwrite: bool,
) -> Result<(), NarError> {
    if decoder.position() != 0 {
        return Err(NarError::Misuse(
            "restore_from_decoder() needs a decoder that has not started".into(),
        ));
    }
    prepare_destination(dest, overwrite)?;
    let mut restorer = Restorer::new(dest);
    restorer
        .run(decoder)
        .inspect_err(|_| restorer.remove_created())
}

/// Checks that `dest` is free, or frees it when overwriting.
fn prepare_destination(dest: &Path, overwrite: bool) -> Result<(), NarError> {
    match fs::symlink_metadata(dest) {
        Ok(_) if !overwrite => Err(NarError::TargetExists {
            path: dest.to_path_buf(),
        }),
        Ok(metadata) => {
            // `remove_dir_all` does not follow symlinks inside the tree.
            let removed = if metadata.is_dir() {
                fs::remove_dir_all(dest)
            } else {
                fs::remove_file(dest)
            };
            removed.map_err(fs_error("removing", dest))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fs_error("getting status of", dest)(e)),
    }
}

/// Creates the nodes of one NAR under `dest`.
struct Restorer<'a> {
    dest: &'a Path,
    /// Whether `dest` was created (and so is ours to remove on failure).
    created_root: bool,
    /// Buffer for file contents, allocated on the first file.
    buf: Vec<u8>,
}

impl<'a> Restorer<'a> {
    fn new(dest: &'a Path) -> Self {
        Self {
            dest,
            created_root: false,
            buf: Vec::new(),
        }
    }

    fn run<R: Read>(&mut self, decoder: &mut Decoder<R>) -> Result<(), NarError> {
        while let Some(event) = decoder.next_event()? {
            let Event::Entry(entry) = event else {
                continue;
            };
            let path = self.path_of(&entry.path);
            let file = match entry.kind {
                EntryKind::Directory => {
                    fs::create_dir(&path).map_err(fs_error("creating directory", &path))?;
                    None
                }
                EntryKind::Symlink { target } => {
                    std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                        .map_err(fs_error("creating symlink", &path))?;
                    None
                }
                EntryKind::Regular { executable, .. } => Some(create_file(&path, executable)?),
            };
            // From here on, a failure removes `dest`: it is ours.
            self.created_root = true;
            if let Some(file) = file {
                self.write_contents(decoder, file, &path)?;
            }
        }
        Ok(())
    }

    /// `dest` joined with a checked relative path (empty for the root).
    fn path_of(&self, relative: &[u8]) -> PathBuf {
        if relative.is_empty() {
            self.dest.to_path_buf()
        } else {
            self.dest.join(OsStr::from_bytes(relative))
        }
    }

    fn write_contents<R: Read>(
        &mut self,
        decoder: &mut Decoder<R>,
        mut file: File,
        path: &Path,
    ) -> Result<(), NarError> {
        if self.buf.is_empty() {
            self.buf = vec![0; CONTENTS_CHUNK];
        }
        loop {
            let n = decoder.read_contents(&mut self.buf)?;
            if n == 0 {
                return Ok(());
            }
            file.write_all(&self.buf[..n])
                .map_err(fs_error("writing file", path))?;
        }
    }

    /// Removes `dest` and everything under it, if this restore created it.
    /// Best effort: the error that caused the cleanup is the one to report.
    fn remove_created(&self) {
        if !self.created_root {
            return;
        }
        let _ = match fs::symlink_metadata(self.dest) {
            Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(self.dest),
            _ => fs::remove_file(self.dest),
        };
    }
}

/// Creates a new file (never opening an existing one or following a
/// symlink), executable as Nix makes it: with the owner-execute bit set
/// even if the umask would clear it.
fn create_file(path: &Path, executable: bool) -> Result<File, NarError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if executable { 0o777 } else { 0o666 })
        .open(path)
        .map_err(fs_error("creating file", path))?;
    if executable {
        let mode = file
            .metadata()
            .map_err(fs_error("getting status of", path))?
            .permissions()
            .mode();
        if mode & 0o100 == 0 {
            file.set_permissions(fs::Permissions::from_mode(mode | 0o100))
                .map_err(fs_error("making executable", path))?;
        }
    }
    Ok(file)
}
