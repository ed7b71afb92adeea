//! Files that appear whole or not at all, for every writer in nixferry.
//!
//! A file is written to a temporary file beside its target, named
//! `<target>.tmp.<pid>.<random>` (the scheme Nix uses, so that what a crash
//! leaves behind is recognisable), flushed to disk if asked, and renamed
//! into place with [`tempfile::NamedTempFile::persist`] (or
//! [`persist_noclobber`](tempfile::NamedTempFile::persist_noclobber), which
//! never replaces a file); then, if asked, the directory is flushed too, so
//! that the rename survives a crash. A temporary file dropped before that
//! is removed.
//!
//! A large file can be flushed while it is written, by a thread of its own
//! (`BackgroundSync`), so that the flush before the rename finds little
//! left to do.

use std::fs::{File, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use tempfile::NamedTempFile;

/// A step of writing a file that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} '{}': {source}", path.display())]
pub struct WriteError {
    /// What was being done: "creating", "writing", "renaming", "syncing".
    pub what: &'static str,
    /// The file or directory it was done to.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> Self {
        io::Error::new(e.source.kind(), e)
    }
}

impl From<WriteError> for crate::store::StoreError {
    fn from(e: WriteError) -> Self {
        crate::store::StoreError::Io {
            what: e.what,
            path: e.path.display().to_string(),
            source: e.source,
        }
    }
}

/// The error of `what` done to `path`.
fn failed<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> WriteError + 'p {
    move |source| WriteError {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A temporary file beside its target, removed when dropped unless
/// persisted.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: NamedTempFile,
    /// Its path, for messages.
    pub(crate) path: PathBuf,
}

impl AtomicFile {
    /// A new, empty temporary file for `target` (which need not exist
    /// yet), in its directory: `<target>.tmp.<pid>.<random>`, readable as
    /// a file created with the process's umask is.
    ///
    /// # Errors
    /// If the file cannot be created.
    pub fn create(target: &Path) -> Result<Self, WriteError> {
        Self::create_with_mode(target, 0o666)
    }

    /// [`create`](Self::create) with the permission bits `mode` (before
    /// the umask), such as `0o600` for a file only its owner may read.
    ///
    /// # Errors
    /// If the file cannot be created.
    pub fn create_with_mode(target: &Path, mode: u32) -> Result<Self, WriteError> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut prefix = target.file_name().unwrap_or_default().to_owned();
        prefix.push(format!(".tmp.{}.", std::process::id()));
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .permissions(Permissions::from_mode(mode))
            .tempfile_in(dir)
            .map_err(failed("creating a temporary file for", target))?;
        let path = tmp.path().to_owned();
        Ok(Self { tmp, path })
    }

    /// The temporary file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for reading and writing.
    pub fn as_file(&self) -> &File {
        self.tmp.as_file()
    }

    /// The open file, mutably.
    pub fn as_file_mut(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Renames the file to `dest`, replacing what is there, and nothing
    /// more: flushing is the caller's (see [`commit`](Self::commit)).
    ///
    /// # Errors
    /// If the rename fails; the temporary file is removed then.
    pub fn persist(self, dest: &Path) -> Result<(), WriteError> {
        self.tmp
            .persist(dest)
            .map_err(|e| failed("renaming", dest)(e.error))?;
        Ok(())
    }

    /// Flushes the file to disk if `fsync`, renames it to `dest` (replacing
    /// what is there), then flushes `dest`'s directory if `fsync`.
    ///
    /// # Errors
    /// If a step fails; the temporary file is removed then.
    pub fn commit(self, dest: &Path, fsync: bool) -> Result<(), WriteError> {
        if fsync {
            self.as_file()
                .sync_all()
                .map_err(failed("writing", &self.path))?;
        }
        self.persist(dest)?;
        if fsync {
            sync_parent(dest)?;
        }
        Ok(())
    }

    /// As [`commit`](Self::commit) with flushing, but never replaces a
    /// file: an existing `dest` is an error of kind
    /// [`AlreadyExists`](io::ErrorKind::AlreadyExists).
    ///
    /// # Errors
    /// If a step fails or `dest` exists; the temporary file is removed
    /// then.
    pub fn commit_new(self, dest: &Path) -> Result<(), WriteError> {
        self.as_file()
            .sync_all()
            .map_err(failed("writing", &self.path))?;
        self.tmp
            .persist_noclobber(dest)
            .map_err(|e| failed("creating", dest)(e.error))?;
        sync_parent(dest)
    }
}

/// Writes `data` to `path` through a temporary file renamed into place,
/// flushing the file and then its directory to disk if `fsync`.
///
/// # Errors
/// If a step fails; the temporary file is removed then.
pub fn write(path: &Path, data: &[u8], fsync: bool) -> Result<(), WriteError> {
    let mut tmp = AtomicFile::create(path)?;
    tmp.as_file_mut()
        .write_all(data)
        .map_err(failed("writing", &tmp.path))?;
    tmp.commit(path, fsync)
}

/// Writes `data` to `path` atomically and durably: [`write()`] with
/// flushing.
///
/// # Errors
/// If a step fails; the temporary file is removed then.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), WriteError> {
    write(path, data, true)
}

/// Makes renames in `dir` durable.
///
/// # Errors
/// If `dir` cannot be opened or flushed.
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed("syncing", dir))
}

/// [`sync_dir`] of the directory `path` is in.
fn sync_parent(path: &Path) -> Result<(), WriteError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// A thread that flushes a file's data to disk each time it is asked to,
/// while the file is being written.
#[derive(Debug)]
pub(crate) struct BackgroundSync {
    requests: mpsc::SyncSender<()>,
    thread: thread::JoinHandle<io::Result<()>>,
}

impl BackgroundSync {
    /// Starts the thread for `file` (a handle to the file being written).
    pub(crate) fn start(file: File) -> io::Result<Self> {
        // One request may wait while a flush runs; more would be no use.
        let (requests, rx) = mpsc::sync_channel::<()>(1);
        let thread = thread::Builder::new()
            .name("nixferry-fsync".into())
            .spawn(move || {
                for () in rx {
                    file.sync_data()?;
                }
                Ok(())
            })?;
        Ok(Self { requests, thread })
    }

    /// Asks for what is written so far to go to disk, without waiting.
    pub(crate) fn request(&self) {
        // Full: a flush is pending, which will cover this data too.
        // Disconnected: it failed, and `finish` reports why.
        let _ = self.requests.try_send(());
    }

    /// Waits for the flushes asked for so far.
    pub(crate) fn finish(self) -> io::Result<()> {
        drop(self.requests);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the fsync thread panicked")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_whole_files_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.narinfo");
        for fsync in [true, false] {
            write(&target, b"one\n", fsync).unwrap();
            assert_eq!(std::fs::read(&target).unwrap(), b"one\n");
            write_atomic(&target, b"two\n").unwrap();
            assert_eq!(std::fs::read(&target).unwrap(), b"two\n");
        }
        assert_eq!(names(dir.path()), ["a.narinfo"]);
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_ne!(mode & 0o044, 0, "not only for its owner: {mode:o}");
    }

    #[test]
    fn temporary_files_are_named_after_their_target_and_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.nar");
        let mut tmp = AtomicFile::create(&target).unwrap();
        let name = tmp.path().file_name().unwrap().to_str().unwrap().to_owned();
        let prefix = format!("x.nar.tmp.{}.", std::process::id());
        assert!(name.starts_with(&prefix), "{name}");
        tmp.as_file_mut().write_all(b"partial").unwrap();
        drop(tmp);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn commit_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("key");
        let mut tmp = AtomicFile::create_with_mode(&target, 0o600).unwrap();
        tmp.as_file_mut().write_all(b"secret").unwrap();
        tmp.commit_new(&target).unwrap();
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = AtomicFile::create(&target).unwrap();
        let e = again.commit_new(&target).unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&target).unwrap(), b"secret");
        assert_eq!(names(dir.path()), ["key"]);
    }

    #[test]
    fn errors_name_the_step_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("missing-dir/a");
        let e = write(&target, b"x", true).unwrap_err();
        assert_eq!(e.what, "creating a temporary file for");
        assert!(e.to_string().contains("missing-dir/a"), "{e}");
    }
}
