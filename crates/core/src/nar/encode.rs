//! [`dump`] and [`hash_path`]: the NAR of a file system tree, as
//! `nix-store --dump` writes it (SPEC §1.1).

use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::vec;

use super::{fs_error, NarError, NarSummary, NarWriter};

/// Writes the NAR of `path` to `out` and returns its hash and size.
///
/// Symlinks are archived, never followed, at the top as below. Directory
/// entries are written in bytewise order of their raw names, a file is
/// executable when its owner-execute bit is set, and a file's size is taken
/// from `lstat` (SPEC §1.1). The tree is walked without recursion, and file
/// contents stream through one buffer, so neither depth nor file size
/// costs stack or memory. `out` is written in large chunks; it need not be
/// buffered.
///
/// # Errors
/// [`NarError::Fs`] naming the file when reading the tree fails,
/// [`NarError::UnsupportedFileType`] for a socket, FIFO or device,
/// [`NarError::FileChanged`] when a file's size changes while it is read,
/// [`NarError::Io`] when writing to `out` fails. After an error, what was
/// written to `out` is not a valid NAR.
pub fn dump(path: &Path, out: impl Write) -> Result<NarSummary, NarError> {
    let metadata = fs::symlink_metadata(path).map_err(fs_error("getting status of", path))?;
    let mut dumper = Dumper {
        writer: NarWriter::new(out),
        path: path.to_path_buf(),
        dirs: Vec::new(),
    };
    dumper.node(&metadata)?;
    dumper.walk()?;
    Ok(dumper.writer.finish()?.1)
}

/// The NAR hash and size of `path`, without keeping the NAR: what
/// `nix hash path` and `nix-store --add` compute (SPEC §1.7).
///
/// # Errors
/// As [`dump`].
pub fn hash_path(path: &Path) -> Result<NarSummary, NarError> {
    dump(path, io::sink())
}

/// The state of a walk: the writer, the path of the current node, and the
/// entries still to write of each directory being written.
struct Dumper<W: Write> {
    writer: NarWriter<W>,
    /// The current node's path: the root, then one name pushed per level.
    path: PathBuf,
    /// One iterator per open directory, innermost last.
    dirs: Vec<vec::IntoIter<Child>>,
}

/// A directory entry, with the metadata read along with the directory.
struct Child {
    name: OsString,
    metadata: Metadata,
}

impl<W: Write> Dumper<W> {
    /// Writes the entries of the open directories, depth first.
    fn walk(&mut self) -> Result<(), NarError> {
        while let Some(dir) = self.dirs.last_mut() {
            match dir.next() {
                Some(child) => {
                    self.path.push(&child.name);
                    self.writer.entry(child.name.as_bytes())?;
                    let opened_directory = self.node(&child.metadata)?;
                    // A directory keeps its name on the path until it ends.
                    if !opened_directory {
                        self.path.pop();
                    }
                }
                None => {
                    self.dirs.pop();
                    self.writer.end_directory()?;
                    // The root's path was given, not pushed.
                    if !self.dirs.is_empty() {
                        self.path.pop();
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the node at `self.path`. A directory is only opened: its
    /// entries are queued for [`Dumper::walk`], and `true` is returned.
    fn node(&mut self, metadata: &Metadata) -> Result<bool, NarError> {
        let file_type = metadata.file_type();
        if file_type.is_file() {
            self.regular(metadata)?;
        } else if file_type.is_symlink() {
            let target =
                fs::read_link(&self.path).map_err(fs_error("reading symlink", &self.path))?;
            self.writer.symlink(target.as_os_str().as_bytes())?;
        } else if file_type.is_dir() {
            let children = self.read_directory()?;
            self.writer.begin_directory()?;
            self.dirs.push(children.into_iter());
            return Ok(true);
        } else {
            let kind = if file_type.is_socket() {
                "socket"
            } else if file_type.is_fifo() {
                "FIFO"
            } else if file_type.is_block_device() {
                "block device"
            } else if file_type.is_char_device() {
                "character device"
            } else {
                "unknown"
            };
            let path = self.path.clone();
            return Err(NarError::UnsupportedFileType { path, kind });
        }
        Ok(false)
    }

    /// Streams a regular file. Its size is the one `lstat` gave: if the
    /// file then has fewer or more bytes, the NAR cannot be right.
    fn regular(&mut self, metadata: &Metadata) -> Result<(), NarError> {
        let size = metadata.len();
        let executable = metadata.permissions().mode() & 0o100 != 0;
        let file = File::open(&self.path).map_err(fs_error("opening file", &self.path))?;
        self.writer
            .regular(executable, size, file)
            .map_err(|e| match e {
                NarError::ContentsRead(source) => NarError::Fs {
                    op: "reading file",
                    path: self.path.clone(),
                    source,
                },
                NarError::ContentsSize { declared, .. } => NarError::FileChanged {
                    path: self.path.clone(),
                    expected: declared,
                },
                other => other,
            })
    }

    /// The entries of the directory at `self.path`, in bytewise order of
    /// their names (SPEC §1.1 rule 4). Their metadata comes from `fstatat`
    /// on the open directory, which is cheaper than `lstat` by path.
    fn read_directory(&self) -> Result<Vec<Child>, NarError> {
        let path = &self.path;
        let entries = fs::read_dir(path).map_err(fs_error("opening directory", path))?;
        let mut children = Vec::new();
        for entry in entries {
            let entry = entry.map_err(fs_error("reading directory", path))?;
            let metadata = entry.metadata().map_err(|source| NarError::Fs {
                op: "getting status of",
                path: entry.path(),
                source,
            })?;
            children.push(Child {
                name: entry.file_name(),
                metadata,
            });
        }
        children.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(children)
    }
}
