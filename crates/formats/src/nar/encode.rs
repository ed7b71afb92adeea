//! [`dump`], [`dump_unhashed`] and [`hash_path`]: the NAR of a file system
//! tree, as `nix-store --dump` writes it (docs/formats.md §1.1).
//!
//! The work is split in two: a [`Walker`] walks the tree in NAR order, and
//! reads files, into [`Batch`]es, and an [`Encoder`] writes (and hashes)
//! what the batches hold. With a directory to walk and a second CPU, the
//! walk runs on a thread of its own, a bounded number of batches ahead of
//! the writing, so that system calls overlap hashing and writing instead
//! of adding to them; how much of the reading each thread does is adjusted
//! file by file to keep both busy.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread;

use super::file::SizedFile;
use super::walk::{Batch, Contents, Item, LargeFiles, Share, Walker};
use super::writer::{ContentsCopy, Encoder};
use super::{fs_error, NarError, NarSummary, NarWriter};

/// Complete batches the walk may be ahead of the writing. With the batch
/// bounds of `walk.rs`, at most about 5 MiB of names and contents are in
/// flight (these batches, one being filled and one being written), and at
/// most 160 open files.
const BATCHES_AHEAD: usize = 8;

/// A file to hash on its own gets a second thread to read it from this size.
const THREAD_MIN_FILE: u64 = 1 << 20;

/// Writes the NAR of `path` to `out` and returns its hash and size.
///
/// Symlinks are archived, never followed, at the top as below. Directory
/// entries are written in bytewise order of their raw names, a file is
/// executable when its owner-execute bit is set, and a file's size is taken
/// from `lstat` (docs/formats.md §1.1). The tree is walked without recursion, on a
/// second thread when there is a directory to walk (or a large file to
/// read) and more than one CPU to run on. Memory is bounded whatever the file sizes: contents are read
/// at most a few MiB ahead of the writing. `out` is written in large
/// chunks; it need not be buffered.
///
/// # Errors
/// [`NarError::Fs`] naming the file when reading the tree fails,
/// [`NarError::UnsupportedFileType`] for a socket, FIFO or device,
/// [`NarError::FileChanged`] when a file's size changes while it is read,
/// [`NarError::Io`] when writing to `out` fails. After an error, what was
/// written to `out` is not a valid NAR.
pub fn dump(path: &Path, out: impl Write) -> Result<NarSummary, NarError> {
    let mut writer = NarWriter::new(out);
    encode(path, writer.encoder(), LargeFiles::Chunked)?;
    Ok(writer.finish()?.1)
}

/// Writes the NAR of `path` to `out`, as [`dump`] does, without hashing it;
/// returns its size.
///
/// Without the hash, the contents of large files need not pass through
/// this process: they are copied with [`std::io::copy`], which on Linux
/// lets the kernel move them (`copy_file_range` when `out` is a regular
/// file, `sendfile` when it is, say, `/dev/null`) as long as `out` is a
/// std type that owns a file descriptor (`File`, `StdoutLock`, or a
/// `BufWriter` or `&mut` of one). Other outputs, pipes and sockets among
/// them, get the contents through a buffer as usual. The exact `lstat` size
/// is copied, and a file that turns out shorter or longer is still
/// [`NarError::FileChanged`].
///
/// # Errors
/// As [`dump`]; in addition, a failure while the kernel copies a file is
/// [`NarError::Fs`] naming the file, as the kernel does not say whether
/// reading or writing failed.
pub fn dump_unhashed(path: &Path, out: impl Write) -> Result<u64, NarError> {
    let mut encoder = Encoder::new(out, ContentsCopy::Kernel);
    encode(path, &mut encoder, LargeFiles::Open)?;
    Ok(encoder.finish()?.1)
}

/// The NAR hash and size of `path`, without keeping the NAR: what
/// `nix hash path` and `nix-store --add` compute (docs/formats.md §1.7).
///
/// # Errors
/// As [`dump`].
pub fn hash_path(path: &Path) -> Result<NarSummary, NarError> {
    dump(path, io::sink())
}

/// Walks the tree at `path` and writes its NAR into `encoder`.
fn encode<S: Write>(
    path: &Path,
    encoder: &mut Encoder<S>,
    large_files: LargeFiles,
) -> Result<(), NarError> {
    let metadata = fs::symlink_metadata(path).map_err(fs_error("getting status of", path))?;
    // A second thread pays with a tree to walk ahead through, or a file
    // large enough that reading it on one thread while hashing on the
    // other beats starting a thread; and with a second CPU to run it on
    // (not under `taskset -c 0`, say).
    let worth_a_thread = metadata.is_dir()
        || (large_files == LargeFiles::Chunked && metadata.len() >= THREAD_MIN_FILE);
    if worth_a_thread && thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        let walker = Walker::new(path.to_path_buf(), metadata.clone(), large_files);
        if let Some(result) = encode_walking_ahead(walker, encoder) {
            return result;
        }
    }
    let walker = Walker::new(path.to_path_buf(), metadata, large_files);
    // On one thread, who reads a file makes no difference.
    encode_on_this_thread(walker, encoder, || Share::Read)
}

/// [`encode`] with the walk and the writing taking turns on this thread.
fn encode_on_this_thread<S: Write>(
    mut walker: Walker,
    encoder: &mut Encoder<S>,
    share: impl Fn() -> Share,
) -> Result<(), NarError> {
    let mut batch = Batch::default();
    loop {
        let walked = walker.fill(&mut batch, &share);
        // What was walked before a failure is written first, so that the
        // output is the same as with the walk on its own thread.
        write_batch(encoder, &mut batch)?;
        if walked? {
            return Ok(());
        }
    }
}

/// [`encode`] with the walk on a second thread; `None` if the thread could
/// not be started (nothing has been written then).
fn encode_walking_ahead<S: Write>(
    walker: Walker,
    encoder: &mut Encoder<S>,
) -> Option<Result<(), NarError>> {
    let (full_tx, full_rx) = mpsc::sync_channel(BATCHES_AHEAD);
    let (empty_tx, empty_rx) = mpsc::channel();
    let waiting = AtomicUsize::new(0);
    thread::scope(|scope| {
        let waiting = &waiting;
        thread::Builder::new()
            .name("nar-walk".into())
            .spawn_scoped(scope, move || {
                walk_ahead(walker, &full_tx, &empty_rx, waiting);
            })
            .ok()?;
        Some(write_walked(full_rx, &empty_tx, waiting, encoder))
    })
}

/// A batch and how the walk stood after it: complete, going on, or failed.
type Walked = (Batch, Result<bool, NarError>);

/// The walking thread: fills batches (reusing the ones the writer is done
/// with) and sends them on, until the walk ends or the writer hangs up.
/// `waiting` counts the batches sent and not yet taken by the writer.
fn walk_ahead(
    mut walker: Walker,
    full: &SyncSender<Walked>,
    empty: &Receiver<Batch>,
    waiting: &AtomicUsize,
) {
    // Which thread reads a small file is decided file by file, to keep
    // both busy. No batch waiting means the writer is idle or about to be:
    // the walk is the slower side, and leaves the files to the writer
    // (opening them too is cheaper than reading them, so there is a middle
    // step). A backlog means the writer is the slower side (hashing large
    // amounts of data, say), and the walk reads the files for it.
    let share = || match waiting.load(Ordering::Relaxed) {
        0 => Share::Nothing,
        n if n < BATCHES_AHEAD / 2 => Share::Open,
        _ => Share::Read,
    };
    loop {
        let mut batch = empty.try_recv().unwrap_or_default();
        let walked = walker.fill(&mut batch, share);
        let going_on = matches!(walked, Ok(false));
        waiting.fetch_add(1, Ordering::Relaxed);
        if full.send((batch, walked)).is_err() || !going_on {
            return;
        }
    }
}

/// The writing side of [`encode_walking_ahead`]. Returning drops `full`,
/// which stops the walk at its next batch if it is still going.
fn write_walked<S: Write>(
    full: Receiver<Walked>,
    empty: &Sender<Batch>,
    waiting: &AtomicUsize,
    encoder: &mut Encoder<S>,
) -> Result<(), NarError> {
    for (mut batch, walked) in full {
        waiting.fetch_sub(1, Ordering::Relaxed);
        write_batch(encoder, &mut batch)?;
        if walked? {
            return Ok(());
        }
        // The walk is still going (it ends with a batch that says so) and
        // takes the batch back; should it have panicked, it is dropped.
        let _ = empty.send(batch);
    }
    // The walk ended without saying so: it panicked, and `thread::scope`
    // passes the panic on.
    Err(NarError::Io(io::Error::other("the tree walk stopped")))
}

/// Writes the items of `batch`, and empties it.
fn write_batch<S: Write>(encoder: &mut Encoder<S>, batch: &mut Batch) -> Result<(), NarError> {
    let data = &batch.data;
    for item in batch.items.drain(..) {
        match item {
            Item::Entry(name) => encoder.entry(&data[name])?,
            Item::Directory => encoder.begin_directory()?,
            Item::EndDirectory => encoder.end_directory()?,
            Item::Symlink(target) => encoder.symlink(&data[target])?,
            Item::Regular {
                executable,
                contents: Contents::Read(contents),
            } => encoder.regular_bytes(executable, &data[contents])?,
            Item::Regular {
                executable,
                contents: Contents::Chunked { size },
            } => encoder.begin_regular(executable, size)?,
            Item::Chunk(chunk) => encoder.contents(&data[chunk])?,
            Item::Regular {
                executable,
                contents: Contents::File { file, size, path },
            } => {
                let path = Path::new(OsStr::from_bytes(&data[path]));
                let file = match file {
                    Some(file) => file,
                    None => File::open(path).map_err(fs_error("opening file", path))?,
                };
                encoder.regular_file(executable, SizedFile::new(file, size), path)?;
            }
        }
    }
    batch.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::walk::{BATCH_ITEMS, CHUNK, SMALL_FILE_MAX};
    use std::os::unix::fs::{symlink, PermissionsExt as _};

    /// A tree to create on disk, and to encode independently of the walk.
    enum Node {
        File { contents: Vec<u8>, executable: bool },
        Symlink(&'static str),
        Dir(Vec<(String, Node)>),
    }

    fn file(size: u64) -> Node {
        Node::File {
            contents: (0..size).map(|i| (i * 131 % 251) as u8).collect(),
            executable: size.is_multiple_of(3),
        }
    }

    fn create(path: &Path, node: &Node) {
        match node {
            Node::File {
                contents,
                executable,
            } => {
                fs::write(path, contents).unwrap();
                let mode = if *executable { 0o755 } else { 0o644 };
                fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
            }
            Node::Symlink(target) => symlink(target, path).unwrap(),
            Node::Dir(entries) => {
                fs::create_dir(path).unwrap();
                for (name, child) in entries {
                    create(&path.join(name), child);
                }
            }
        }
    }

    /// The NAR of `node`, written with `NarWriter` directly.
    fn expected(node: &Node) -> Vec<u8> {
        fn write(w: &mut NarWriter<Vec<u8>>, node: &Node) {
            match node {
                Node::File {
                    contents,
                    executable,
                } => w.regular_bytes(*executable, contents).unwrap(),
                Node::Symlink(target) => w.symlink(target.as_bytes()).unwrap(),
                Node::Dir(entries) => {
                    w.begin_directory().unwrap();
                    let mut sorted: Vec<_> = entries.iter().collect();
                    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                    for (name, child) in sorted {
                        w.entry(name.as_bytes()).unwrap();
                        write(w, child);
                    }
                    w.end_directory().unwrap();
                }
            }
        }
        let mut w = NarWriter::new(Vec::new());
        write(&mut w, node);
        w.finish().unwrap().0
    }

    /// Files around every size bound of the walk, a chunked file deep down
    /// with entries after it at every level (its name must leave the path
    /// when it ends), and more entries than fit in one batch.
    fn tree() -> Node {
        let sizes = [
            0,
            1,
            7,
            8,
            9,
            SMALL_FILE_MAX - 1,
            SMALL_FILE_MAX,
            SMALL_FILE_MAX + 1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 5,
        ];
        let mut top: Vec<_> = sizes.iter().map(|&n| (format!("f{n}"), file(n))).collect();
        let mut deep = Node::Dir(vec![
            ("big".into(), file(2 * CHUNK + 3)),
            ("z-after".into(), file(3)),
        ]);
        for level in 0..4 {
            deep = Node::Dir(vec![
                ("0-before".into(), file(level)),
                (format!("d{level}"), deep),
                ("z-after".into(), Node::Symlink("../x")),
            ]);
        }
        top.push(("deep".into(), deep));
        let many = (0..BATCH_ITEMS + 500)
            .map(|i| (format!("n{i}"), file(i as u64 % 300)))
            .collect();
        top.push(("many".into(), Node::Dir(many)));
        top.push(("empty-dir".into(), Node::Dir(Vec::new())));
        top.push(("link".into(), Node::Symlink("f0")));
        Node::Dir(top)
    }

    fn walker(path: &Path, large_files: LargeFiles) -> Walker {
        let metadata = fs::symlink_metadata(path).unwrap();
        Walker::new(path.to_path_buf(), metadata, large_files)
    }

    /// The NAR as written by every combination of: the walk on this thread
    /// (with each share of the reading) or on its own, large files chunked
    /// or left open, and the hashing or the kernel-copying encoder.
    fn every_way(path: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for large in [LargeFiles::Chunked, LargeFiles::Open] {
            for copy in [ContentsCopy::Buffered, ContentsCopy::Kernel] {
                for share in [Share::Nothing, Share::Open, Share::Read] {
                    let mut e = Encoder::new(Vec::new(), copy);
                    encode_on_this_thread(walker(path, large), &mut e, || share).unwrap();
                    let what = format!("{large:?} {copy:?} {share:?}");
                    out.push((what, e.finish().unwrap().0));
                }
                let mut e = Encoder::new(Vec::new(), copy);
                encode_walking_ahead(walker(path, large), &mut e)
                    .unwrap()
                    .unwrap();
                out.push((format!("{large:?} {copy:?} ahead"), e.finish().unwrap().0));
            }
        }
        out
    }

    #[test]
    fn every_way_of_walking_writes_the_same_nar() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = [
            ("tree", tree()),
            ("large-file", file(CHUNK + 7)),
            ("small-file", file(5)),
            ("symlink", Node::Symlink("somewhere")),
        ];
        for (name, node) in roots {
            let path = tmp.path().join(name);
            create(&path, &node);
            let want = expected(&node);
            for (how, got) in every_way(&path) {
                assert!(got == want, "{name}, {how}: NAR differs");
            }
            let mut nar = Vec::new();
            let summary = dump(&path, &mut nar).unwrap();
            assert!(nar == want, "{name}: dump differs");
            assert_eq!(summary.nar_size, want.len() as u64);
            assert_eq!(hash_path(&path).unwrap(), summary);
        }
    }

    /// Into a regular file (`copy_file_range`), a pipe (read and write
    /// through the buffer) and `/dev/null` (`sendfile`), `dump_unhashed`
    /// writes what `dump` writes.
    #[test]
    fn dump_unhashed_writes_the_nar_into_any_output() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tree");
        let node = tree();
        create(&path, &node);
        let want = expected(&node);
        let size = want.len() as u64;

        let mut vec = Vec::new();
        assert_eq!(dump_unhashed(&path, &mut vec).unwrap(), size);
        assert!(vec == want);

        let nar_path = tmp.path().join("out.nar");
        let mut f = File::create(&nar_path).unwrap();
        // Something before the NAR, to check that the copies start where
        // the file's offset is.
        f.write_all(b"head").unwrap();
        assert_eq!(dump_unhashed(&path, &mut f).unwrap(), size);
        drop(f);
        let written = fs::read(&nar_path).unwrap();
        assert!(written[..4] == *b"head" && written[4..] == want);

        let (mut reader, writer) = io::pipe().unwrap();
        let read = thread::spawn(move || {
            let mut all = Vec::new();
            io::Read::read_to_end(&mut reader, &mut all).unwrap();
            all
        });
        assert_eq!(dump_unhashed(&path, writer).unwrap(), size);
        assert!(read.join().unwrap() == want);

        let null = File::create("/dev/null").unwrap();
        assert_eq!(dump_unhashed(&path, null).unwrap(), size);
    }

    /// A writer that fails once it has taken `0` more bytes.
    struct FailAfter(usize);

    impl Write for FailAfter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.len() > self.0 {
                return Err(io::Error::other("full"));
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// When the output fails, the walk stops too (it may be blocked on a
    /// full queue then), and the output's error comes back.
    #[test]
    fn an_output_error_stops_the_walk() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tree");
        create(&path, &tree());
        for limit in [0, 100, 1 << 20] {
            let e = dump(&path, FailAfter(limit)).unwrap_err();
            assert!(
                matches!(e, NarError::Io(ref io) if io.to_string() == "full"),
                "{e:?}"
            );
            let e = dump_unhashed(&path, FailAfter(limit)).unwrap_err();
            assert!(matches!(e, NarError::Io(_) | NarError::Fs { .. }), "{e:?}");
        }
    }

    /// A walk that fails part of the way writes the same bytes before
    /// failing on its own thread as on this one.
    #[test]
    fn a_walk_error_comes_after_what_was_walked() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tree");
        create(&path, &tree());
        let socket = path.join("zz-socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let run = |ahead: bool| {
            let mut out = Vec::new();
            let mut e = Encoder::new(&mut out, ContentsCopy::Buffered);
            let walker = walker(&path, LargeFiles::Chunked);
            let result = if ahead {
                encode_walking_ahead(walker, &mut e).unwrap()
            } else {
                encode_on_this_thread(walker, &mut e, || Share::Read)
            };
            let err = result.unwrap_err();
            assert!(
                matches!(&err, NarError::UnsupportedFileType { path, kind: "socket" } if *path == socket),
                "{err:?}"
            );
            // Dropping the encoder flushes what it buffered into `out`.
            drop(e);
            out
        };
        let here = run(false);
        assert!(here.len() > 1 << 20);
        assert!(run(true) == here);
    }
}
