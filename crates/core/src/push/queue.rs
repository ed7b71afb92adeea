//! The push queue on disk ([`Queue`]).

use std::fs::{self, File};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::atomic::{self, WriteError};
use crate::store_path::StorePath;

/// Why the queue could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// There is no state directory to keep the queue in.
    #[error("no state directory for the push queue: neither XDG_STATE_HOME nor HOME is set")]
    NoStateDir,
    /// A file or directory of the queue could not be read or made.
    #[error("{what} '{}': {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file of the queue could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Another watcher holds the queue.
    #[error(
        "another watcher{} is pushing from the queue in '{}'; one at a time",
        pid.map(|p| format!(" (process {p})")).unwrap_or_default(),
        dir.display()
    )]
    Busy {
        /// The queue directory.
        dir: PathBuf,
        /// The process holding it, as its lock file says.
        pid: Option<u32>,
    },
}

/// The error of `what` done to `path`.
fn failed<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> QueueError + 'p {
    move |source| QueueError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A push queue: the store paths waiting to be pushed, kept in a
/// directory so that they outlive the process that queued them and the
/// one that pushes them. Cheap to open: it only makes the directories.
///
/// The directory (`<state dir>/push`) holds:
///
/// | file | what |
/// |---|---|
/// | `queue/<hash>-<name>` | a path waiting: an empty file named by the path's base name |
/// | `cursor` | how far the watcher has followed the Nix database: the database file, then the id of the last row it queued |
/// | `lock` | locked (`flock`) by the one watcher at work, and naming its process |
///
/// Any number of processes queue paths at once, without a lock: an entry
/// holds nothing but its name, so creating it is atomic (a reader sees it
/// or not, never half of it), and queueing a path twice leaves one entry.
/// The directory is flushed to disk before queueing returns. Only the
/// watcher removes entries, once the path's closure is in every
/// destination; the entries stay through a crash, a restart or a
/// destination that is down.
#[derive(Debug, Clone)]
pub struct Queue {
    dir: PathBuf,
    entries: PathBuf,
}

/// A path waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path.
    pub path: StorePath,
    /// When it was queued (last).
    pub queued: SystemTime,
}

impl Queue {
    /// The queue of this user's state directory:
    /// `$XDG_STATE_HOME/nixferry/push`, else
    /// `~/.local/state/nixferry/push`.
    ///
    /// # Errors
    /// [`QueueError::NoStateDir`] without either variable; as
    /// [`Queue::open`].
    pub fn open_default() -> Result<Self, QueueError> {
        Self::open_in(&crate::state::dir().ok_or(QueueError::NoStateDir)?)
    }

    /// The queue of the state directory `state_dir`: `<state_dir>/push`.
    ///
    /// # Errors
    /// As [`Queue::open`].
    pub fn open_in(state_dir: &Path) -> Result<Self, QueueError> {
        Self::open(&state_dir.join("push"))
    }

    /// The queue in `dir`, made if it does not exist.
    ///
    /// # Errors
    /// [`QueueError::Io`] when the directories cannot be made.
    pub fn open(dir: &Path) -> Result<Self, QueueError> {
        let entries = dir.join("queue");
        fs::create_dir_all(&entries).map_err(failed("creating the queue directory", &entries))?;
        Ok(Self {
            dir: dir.to_owned(),
            entries,
        })
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues `path`, durably: its entry is on disk when this returns.
    /// Queueing a path that waits already queues it once.
    ///
    /// # Errors
    /// [`QueueError::Io`] or [`QueueError::Write`] when the entry cannot
    /// be made.
    pub fn push(&self, path: &StorePath) -> Result<(), QueueError> {
        let entry = self.entries.join(path.as_str());
        File::create(&entry).map_err(failed("creating the queue entry", &entry))?;
        atomic::sync_dir(&self.entries)?;
        Ok(())
    }

    /// The paths waiting, longest waiting first. Files that are not named
    /// as store paths are not entries; an entry removed while they are
    /// listed is left out.
    ///
    /// # Errors
    /// [`QueueError::Io`] when the directory cannot be read.
    pub fn entries(&self) -> Result<Vec<Entry>, QueueError> {
        let listing = fs::read_dir(&self.entries).map_err(failed("reading", &self.entries))?;
        let mut entries = Vec::new();
        for item in listing {
            let item = item.map_err(failed("reading", &self.entries))?;
            let name = item.file_name();
            let Some(path) = name
                .to_str()
                .and_then(|n| StorePath::from_base_name(n).ok())
            else {
                continue;
            };
            let queued = match item.metadata().and_then(|m| m.modified()) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(failed("reading", &item.path())(e)),
            };
            entries.push(Entry { path, queued });
        }
        entries.sort_by(|a, b| (a.queued, &a.path).cmp(&(b.queued, &b.path)));
        Ok(entries)
    }

    /// How many paths wait.
    ///
    /// # Errors
    /// As [`Queue::entries`].
    pub fn len(&self) -> Result<usize, QueueError> {
        self.entries().map(|e| e.len())
    }

    /// Whether no path waits.
    ///
    /// # Errors
    /// As [`Queue::entries`].
    pub fn is_empty(&self) -> Result<bool, QueueError> {
        self.len().map(|n| n == 0)
    }

    /// Removes an entry; one already gone is no error.
    ///
    /// # Errors
    /// [`QueueError::Io`] when it cannot be removed.
    pub fn remove(&self, entry: &Entry) -> Result<(), QueueError> {
        let file = self.entries.join(entry.path.as_str());
        match fs::remove_file(&file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(failed("removing the queue entry", &file)(e))
            }
            _ => Ok(()),
        }
    }

    /// Takes the queue for the one watcher of this process: locks the
    /// lock file and writes this process's id into it. The lock is held
    /// until the returned value is dropped, or the process ends.
    ///
    /// # Errors
    /// [`QueueError::Busy`] when another watcher holds it;
    /// [`QueueError::Io`] when the lock file cannot be used.
    pub fn lock(&self) -> Result<QueueLock, QueueError> {
        let path = self.dir.join("lock");
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed("opening the lock file", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(QueueError::Busy {
                    dir: self.dir.clone(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(failed("locking", &path)(e)),
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(failed("writing", &path))?;
        Ok(QueueLock {
            _file: file,
            cursor: self.dir.join("cursor"),
        })
    }
}

/// The queue, held by one watcher ([`Queue::lock`]): what only the
/// watcher reads and writes.
#[derive(Debug)]
pub struct QueueLock {
    _file: File,
    cursor: PathBuf,
}

impl QueueLock {
    /// The id of the last database row queued from the database `db`, if
    /// the watcher followed that database before.
    ///
    /// # Errors
    /// [`QueueError::Io`] when the cursor file exists but cannot be read.
    pub fn cursor(&self, db: &Path) -> Result<Option<i64>, QueueError> {
        let text = match fs::read_to_string(&self.cursor) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(failed("reading", &self.cursor)(e)),
        };
        let mut lines = text.lines();
        let (Some(file), Some(id)) = (lines.next(), lines.next()) else {
            return Ok(None);
        };
        Ok((Path::new(file) == db).then(|| id.parse().ok()).flatten())
    }

    /// Records that the rows of the database `db` up to id `id` are
    /// queued, durably.
    ///
    /// # Errors
    /// [`QueueError::Write`] when the cursor file cannot be written.
    pub fn set_cursor(&self, db: &Path, id: i64) -> Result<(), QueueError> {
        let text = format!("{}\n{id}\n", db.display());
        atomic::write_atomic(&self.cursor, text.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    const A: &str = "3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-hi.txt";
    const B: &str = "jgs69zx98r4fpm73d82y357pps9llcic-drv";

    #[test]
    fn entries_are_made_once_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open_in(tmp.path()).unwrap();
        assert_eq!(q.dir(), tmp.path().join("push"));
        assert!(q.is_empty().unwrap());
        q.push(&path(A)).unwrap();
        q.push(&path(B)).unwrap();
        q.push(&path(A)).unwrap();
        let entries = q.entries().unwrap();
        let mut got: Vec<_> = entries.iter().map(|e| e.path.clone()).collect();
        got.sort();
        assert_eq!(got, [path(A), path(B)]);
        assert!(tmp.path().join("push/queue").join(A).is_file());
        q.remove(&entries[0]).unwrap();
        q.remove(&entries[0]).unwrap();
        assert_eq!(q.len().unwrap(), 1);
    }

    #[test]
    fn many_writers_at_once_and_a_reader() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(tmp.path()).unwrap();
        let name = |w: u8, i: u8| {
            let mut digest = [0; 20];
            (digest[0], digest[1]) = (w, i);
            StorePath::from_digest(&digest, &format!("p-{w}-{i}")).unwrap()
        };
        std::thread::scope(|s| {
            for w in 0..8 {
                let q = q.clone();
                s.spawn(move || {
                    for i in 0..50 {
                        // Each path twice, as two hooks might.
                        q.push(&name(w, i)).unwrap();
                        q.push(&name(w, i)).unwrap();
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..20 {
                    for e in q.entries().unwrap() {
                        assert!(e.path.name().starts_with("p-"), "{}", e.path);
                    }
                }
            });
        });
        let mut got: Vec<StorePath> = q.entries().unwrap().into_iter().map(|e| e.path).collect();
        got.sort();
        let mut want: Vec<StorePath> = (0..8)
            .flat_map(|w| (0..50).map(move |i| name(w, i)))
            .collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn files_not_named_as_paths_are_not_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(tmp.path()).unwrap();
        let dir = tmp.path().join("queue");
        fs::write(dir.join("notes.txt"), "x").unwrap();
        fs::write(dir.join(".hidden"), "x").unwrap();
        fs::write(dir.join(A), "").unwrap();
        let entries = q.entries().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].path, path(A));
    }

    #[test]
    fn one_watcher_at_a_time_and_the_cursor_is_per_database() {
        let tmp = tempfile::tempdir().unwrap();
        let q = Queue::open(tmp.path()).unwrap();
        let held = q.lock().unwrap();
        match q.lock() {
            Err(QueueError::Busy { pid, dir }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(dir, tmp.path());
            }
            other => panic!("{other:?}"),
        }
        let db = Path::new("/nix/var/nix/db/db.sqlite");
        assert_eq!(held.cursor(db).unwrap(), None);
        held.set_cursor(db, 42).unwrap();
        assert_eq!(held.cursor(db).unwrap(), Some(42));
        assert_eq!(held.cursor(Path::new("/other/db.sqlite")).unwrap(), None);
        drop(held);
        let again = q.lock().unwrap();
        assert_eq!(again.cursor(db).unwrap(), Some(42));
    }
}
