//! The tree walk behind [`super::dump`]: the nodes of a file system tree in
//! NAR order, in [`Batch`]es, with file contents read into them (or left
//! to the writer).
//!
//! The walk is separate from the writing so that it can run on a thread of
//! its own (see `encode.rs`). For a tree of small files nearly all the time
//! goes into system calls (`getdents`, `statx`, `open`, `read`, `close`);
//! for large files, into hashing. On two threads, the walk and the writing
//! overlap, and how much of the reading the walk does is chosen per file
//! ([`Share`]) to keep the two threads equally busy.

use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::vec;

use super::file::SizedFile;
use super::{fs_error, NarError};

/// Files up to this size are small: read whole, by the walk or the writer
/// (see [`Share`]). Larger ones are read in [`CHUNK`]s (or left to the
/// writer, see [`LargeFiles`]), so that memory does not grow with file size.
pub(super) const SMALL_FILE_MAX: u64 = 64 * 1024;

/// The size of the reads of a large file.
pub(super) const CHUNK: u64 = 256 * 1024;

/// A batch is complete when its data reaches this many bytes...
const BATCH_DATA: usize = 256 * 1024;
/// ...or it has this many items...
pub(super) const BATCH_ITEMS: usize = 1024;
/// ...or this many open files, which count against the process's limit on
/// file descriptors.
const BATCH_OPEN_FILES: usize = 16;

/// One step of the walk, in NAR order. Byte strings are ranges of
/// [`Batch::data`].
pub(super) enum Item {
    /// A directory entry's name; its node comes next.
    Entry(Range<usize>),
    /// A directory node; its entries follow, then [`Item::EndDirectory`].
    Directory,
    /// The end of the innermost open directory.
    EndDirectory,
    /// A symlink node and its target.
    Symlink(Range<usize>),
    /// A regular file node.
    Regular {
        /// Whether the owner-execute bit is set (docs/formats.md §1.1 rule 2).
        executable: bool,
        /// The contents.
        contents: Contents,
    },
    /// The next piece of the contents of a [`Contents::Chunked`] file.
    Chunk(Range<usize>),
}

/// A regular file's contents.
pub(super) enum Contents {
    /// Read by the walk: exactly the `lstat` size, already checked.
    Read(Range<usize>),
    /// Being read by the walk: `size` bytes (the `lstat` size) in the
    /// [`Item::Chunk`]s that follow, in this batch and the next ones.
    Chunked {
        /// The size from `lstat`.
        size: u64,
    },
    /// Left to the writer, to be streamed and checked against the `lstat`
    /// size.
    File {
        /// The file, if the walk opened it.
        file: Option<File>,
        /// Its size from `lstat`.
        size: u64,
        /// Its path, to open it by and for errors.
        path: Range<usize>,
    },
}

/// How much of reading a small file the walk does itself; what is left is
/// done by whoever writes the batch. On two threads, this is what balances
/// the walk against the writing (see `encode.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Share {
    /// Nothing: the writer opens and reads it.
    Nothing,
    /// Opening it.
    Open,
    /// Opening and reading it (into the batch).
    Read,
}

/// What the walk does with large files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LargeFiles {
    /// Reads them into the batches, as [`Contents::Chunked`]: the writer
    /// then only hashes and writes.
    Chunked,
    /// Opens them and leaves them to the writer, which can have the kernel
    /// copy them when it does not hash.
    Open,
}

/// A run of [`Item`]s and the bytes they refer to.
///
/// A batch bounds the work and memory in flight (see the `BATCH_*`
/// constants): about half a MiB of data at most. Batches are reused, so
/// that a walk allocates little once under way.
pub(super) struct Batch {
    /// The items, in NAR order.
    pub(super) items: Vec<Item>,
    /// Names, targets and contents, back to back. Only `..used` is
    /// meaningful; the rest is room kept initialised, so that reading a
    /// file into it needs no zeroing first.
    pub(super) data: Vec<u8>,
    used: usize,
    open_files: usize,
}

impl Batch {
    /// Empties the batch, keeping its memory.
    pub(super) fn clear(&mut self) {
        self.items.clear();
        self.used = 0;
        self.open_files = 0;
    }

    fn is_full(&self) -> bool {
        self.items.len() >= BATCH_ITEMS
            || self.used >= BATCH_DATA
            || self.open_files >= BATCH_OPEN_FILES
    }

    /// `len` bytes of room at the end of the data, for [`Batch::commit`].
    fn room(&mut self, len: usize) -> &mut [u8] {
        let end = self.used + len;
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        &mut self.data[self.used..end]
    }

    /// Keeps the first `len` bytes of the last [`Batch::room`].
    fn commit(&mut self, len: usize) -> Range<usize> {
        let range = self.used..self.used + len;
        self.used = range.end;
        range
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> Range<usize> {
        self.room(bytes.len()).copy_from_slice(bytes);
        self.commit(bytes.len())
    }

    /// The contents of a file left to the writer: the file if it was
    /// opened, and its path.
    fn left_to_writer(&mut self, file: Option<File>, size: u64, path: &Path) -> Contents {
        self.open_files += usize::from(file.is_some());
        Contents::File {
            file,
            size,
            path: self.push_bytes(path.as_os_str().as_bytes()),
        }
    }
}

impl Default for Batch {
    /// An empty batch, with room for the most data a batch normally holds:
    /// just under [`BATCH_DATA`], and then a small file or a chunk. (Only
    /// very long paths or targets can make it grow.) The memory comes
    /// zeroed from the allocator, which maps it lazily; it is never zeroed
    /// again.
    fn default() -> Self {
        Self {
            items: Vec::new(),
            data: vec![0; BATCH_DATA + SMALL_FILE_MAX.max(CHUNK) as usize + 1],
            used: 0,
            open_files: 0,
        }
    }
}

/// A depth-first walk of a tree, without recursion and without following
/// symlinks, that yields its nodes in NAR order.
pub(super) struct Walker {
    /// The current node's path: the root, then one name pushed per level.
    path: PathBuf,
    /// The root's metadata, until the root has been walked.
    root: Option<Metadata>,
    /// One iterator per open directory, innermost last.
    dirs: Vec<vec::IntoIter<Child>>,
    /// The large file being read into batches, if any. Like a directory,
    /// it keeps its name on `path` until it ends.
    chunked: Option<SizedFile>,
    large_files: LargeFiles,
}

/// A directory entry, with the metadata read along with the directory.
struct Child {
    name: OsString,
    metadata: Metadata,
}

impl Walker {
    /// A walk of the tree at `path`, whose `lstat` metadata is `metadata`.
    pub(super) fn new(path: PathBuf, metadata: Metadata, large_files: LargeFiles) -> Self {
        Self {
            path,
            root: Some(metadata),
            dirs: Vec::new(),
            chunked: None,
            large_files,
        }
    }

    /// Adds the next items of the walk to `batch`, until it is full or the
    /// walk is complete; returns whether it is complete.
    ///
    /// `share` says, for each small file, how much of reading it the walk
    /// does; it is asked again for every file, so that it can follow how
    /// busy the writer is.
    ///
    /// # Errors
    /// [`NarError::Fs`] naming the file when reading the tree fails,
    /// [`NarError::UnsupportedFileType`] for a socket, FIFO or device,
    /// [`NarError::FileChanged`] when a file's size changes while it is
    /// read. The items before the failure are in `batch`; the walk cannot
    /// go on.
    pub(super) fn fill(
        &mut self,
        batch: &mut Batch,
        share: impl Fn() -> Share,
    ) -> Result<bool, NarError> {
        if let Some(metadata) = self.root.take() {
            self.node(&metadata, batch, &share)?;
        }
        loop {
            if let Some(file) = &mut self.chunked {
                if !read_chunks(file, &self.path, batch)? {
                    return Ok(false);
                }
                self.chunked = None;
                self.leave_node();
            }
            if batch.is_full() {
                return Ok(self.dirs.is_empty());
            }
            let Some(dir) = self.dirs.last_mut() else {
                return Ok(true);
            };
            match dir.next() {
                Some(child) => {
                    self.path.push(&child.name);
                    let name = batch.push_bytes(child.name.as_bytes());
                    batch.items.push(Item::Entry(name));
                    if !self.node(&child.metadata, batch, &share)? {
                        self.path.pop();
                    }
                }
                None => {
                    self.dirs.pop();
                    batch.items.push(Item::EndDirectory);
                    self.leave_node();
                }
            }
        }
    }

    /// After a directory or a chunked file has ended: takes its name off
    /// the path, unless it is the root, whose path was given, not pushed.
    fn leave_node(&mut self) {
        if !self.dirs.is_empty() {
            self.path.pop();
        }
    }

    /// Adds the node at `self.path`. Returns whether it is still open: a
    /// directory, whose entries are queued for [`Walker::fill`], or a file
    /// being read in chunks.
    fn node(
        &mut self,
        metadata: &Metadata,
        batch: &mut Batch,
        share: impl Fn() -> Share,
    ) -> Result<bool, NarError> {
        let file_type = metadata.file_type();
        if file_type.is_file() {
            return self.regular(metadata, batch, share);
        }
        if file_type.is_symlink() {
            let target =
                fs::read_link(&self.path).map_err(fs_error("reading symlink", &self.path))?;
            let target = batch.push_bytes(target.as_os_str().as_bytes());
            batch.items.push(Item::Symlink(target));
            return Ok(false);
        }
        if file_type.is_dir() {
            let children = self.read_directory()?;
            batch.items.push(Item::Directory);
            self.dirs.push(children.into_iter());
            return Ok(true);
        }
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
        Err(NarError::UnsupportedFileType { path, kind })
    }

    /// Adds a regular file; returns whether it is being read in chunks. Its
    /// size is the one `lstat` gave (docs/formats.md §1.1 rule 6), and the file must
    /// still have exactly that many bytes when it is read.
    fn regular(
        &mut self,
        metadata: &Metadata,
        batch: &mut Batch,
        share: impl Fn() -> Share,
    ) -> Result<bool, NarError> {
        let size = metadata.len();
        let executable = metadata.permissions().mode() & 0o100 != 0;
        let path = &self.path;
        let open = || File::open(path).map_err(fs_error("opening file", path));
        let contents = match (size <= SMALL_FILE_MAX, self.large_files) {
            (true, _) => match share() {
                Share::Read => {
                    let mut file = SizedFile::new(open()?, size);
                    // One byte of room more than the contents, so that one
                    // read both reads the file and shows that it ends there.
                    let room = batch.room(size as usize + 1);
                    let read = file.read_all(room, path)?;
                    Contents::Read(batch.commit(read))
                }
                Share::Open => batch.left_to_writer(Some(open()?), size, path),
                Share::Nothing => batch.left_to_writer(None, size, path),
            },
            // Opening is a small part of the cost of a large file: the
            // walk always does it.
            (false, LargeFiles::Open) => batch.left_to_writer(Some(open()?), size, path),
            (false, LargeFiles::Chunked) => {
                self.chunked = Some(SizedFile::new(open()?, size));
                Contents::Chunked { size }
            }
        };
        let chunked = matches!(contents, Contents::Chunked { .. });
        batch.items.push(Item::Regular {
            executable,
            contents,
        });
        Ok(chunked)
    }

    /// The entries of the directory at `self.path`, in bytewise order of
    /// their names (docs/formats.md §1.1 rule 4). Their metadata comes from `fstatat`
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

/// Reads the next chunks of `file` (at `path`) into `batch`, until the
/// batch is full or the file has ended; returns whether it has ended.
fn read_chunks(file: &mut SizedFile, path: &Path, batch: &mut Batch) -> Result<bool, NarError> {
    loop {
        // One byte more than is left, so that the last chunk shows the end
        // of the file (see `SizedFile`).
        let want = file.remaining().saturating_add(1).min(CHUNK) as usize;
        let n = file.read(batch.room(want), path)?;
        if n == 0 {
            return Ok(true);
        }
        let chunk = batch.commit(n);
        batch.items.push(Item::Chunk(chunk));
        if batch.is_full() {
            return Ok(false);
        }
    }
}
