//! Multipart uploads of NAR files: parts read from the staged file and
//! sent in parallel, the upload aborted if anything fails or the copy is
//! cancelled, and each running upload written down in a journal so that a
//! later run aborts those a killed process left.
//!
//! The journal is a directory of small files, one per running upload
//! (`$XDG_STATE_HOME/nixferry/s3-uploads/`, else
//! `~/.local/state/nixferry/s3-uploads/`), each naming the process, the
//! server and bucket, the key and the upload id. Before its first upload,
//! a store aborts the uploads of its bucket whose process is gone. Writing
//! the journal is best effort: an upload does not fail for it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{MultipartId, PutPayload};
use tokio::io::AsyncReadExt as _;
use tokio::task::{JoinHandle, JoinSet};

use super::{StoreError, MAX_PARTS, S3};
use crate::store::cache_writer::io_err;
use crate::store::remote::Blobs as _;

/// Where running uploads are written down.
#[derive(Debug)]
pub(super) struct Journal {
    dir: PathBuf,
}

/// Journal entries older than this are stale even where it cannot be told
/// whether their process still runs (no `/proc`).
const STALE_AGE: Duration = Duration::from_secs(24 * 3600);

impl Journal {
    /// The journal of this user, if it has a home or state directory.
    pub(super) fn open() -> Option<Self> {
        Some(Self {
            dir: crate::state::dir()?.join("s3-uploads"),
        })
    }

    /// Writes down an upload; `None` if that fails.
    fn record(&self, identity: &str, key: &Key, id: &str) -> Option<PathBuf> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        fs::create_dir_all(&self.dir).ok()?;
        let name = format!(
            "{}-{}.upload",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let entry = self.dir.join(name);
        let text = format!("{}\n{identity}\n{key}\n{id}\n", std::process::id());
        fs::write(&entry, text).ok()?;
        Some(entry)
    }

    /// The entries for `identity` whose process is gone: (entry, key, id).
    fn stale(&self, identity: &str) -> Vec<(PathBuf, Key, MultipartId)> {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let have_proc = Path::new("/proc/self").exists();
        dir.flatten()
            .filter_map(|e| {
                let path = e.path();
                let text = fs::read_to_string(&path).ok()?;
                let mut lines = text.lines();
                let pid = lines.next()?;
                if lines.next()? != identity {
                    return None;
                }
                let key = Key::parse(lines.next()?).ok()?;
                let id = lines.next()?.to_owned();
                let gone = if have_proc {
                    pid.parse::<u32>().ok()? != std::process::id()
                        && !Path::new("/proc").join(pid).exists()
                } else {
                    let modified = e.metadata().ok()?.modified().ok()?;
                    SystemTime::now()
                        .duration_since(modified)
                        .is_ok_and(|age| age > STALE_AGE)
                };
                gone.then_some((path, key, id))
            })
            .collect()
    }
}

/// A multipart upload to abort.
#[derive(Debug)]
pub(super) struct Pending {
    key: Key,
    id: MultipartId,
    /// Its journal entry, removed once it is aborted or completed.
    entry: Option<PathBuf>,
}

impl Pending {
    fn forget(&mut self) {
        if let Some(entry) = self.entry.take() {
            let _ = fs::remove_file(entry);
        }
    }

    /// Aborts the upload (one the server no longer knows counts as
    /// aborted), keeping it for another try if that fails.
    async fn abort(mut self, client: &AmazonS3, aborts: &Mutex<Aborts>) {
        match client.abort_multipart(&self.key, &self.id).await {
            Ok(()) => self.forget(),
            // `NoSuchUpload`: aborted already, or completed.
            Err(e) if super::failure::status(&e) == Some(404) => self.forget(),
            Err(_) => {
                if let Ok(mut a) = aborts.lock() {
                    a.failed.push(self);
                }
            }
        }
    }
}

/// Multipart uploads to abort: those of cancelled copies (being aborted
/// by tasks), and those whose abort failed (tried again by `close`).
#[derive(Debug, Default)]
pub(super) struct Aborts {
    tasks: Vec<JoinHandle<()>>,
    failed: Vec<Pending>,
}

/// A multipart upload that is aborted unless completed; if dropped
/// unfinished (the copy was cancelled), the abort runs on its own and
/// `close` waits for it.
struct Unfinished<'a> {
    pending: Option<Pending>,
    s3: &'a S3,
}

impl Unfinished<'_> {
    async fn abort(&mut self) {
        if let Some(p) = self.pending.take() {
            p.abort(&self.s3.client, &self.s3.aborts).await;
        }
    }

    fn completed(&mut self) {
        if let Some(mut p) = self.pending.take() {
            p.forget();
        }
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let client = self.s3.client.clone();
            let aborts = Arc::clone(&self.s3.aborts);
            let task = rt.spawn(async move { pending.abort(&client, &aborts).await });
            if let Ok(mut a) = self.s3.aborts.lock() {
                a.tasks.retain(|t| !t.is_finished());
                a.tasks.push(task);
            }
        }
    }
}

impl S3 {
    /// Uploads a file of `size` bytes in parts of `part_size` (or more, so
    /// that there are at most [`MAX_PARTS`]), at most
    /// [`super::PARTS_IN_FLIGHT`] in memory over all uploads; aborts the
    /// upload if anything fails or the upload is dropped. The content type
    /// comes from the key's suffix (set up when the client is built).
    pub(super) async fn put_multipart(
        &self,
        key: &str,
        file: &Path,
        size: u64,
    ) -> Result<(), StoreError> {
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(io_err("reading", file))?;
        let path = self.key(key)?;
        self.abort_stale().await;
        let id = self
            .client
            .create_multipart(&path)
            .await
            .map_err(|e| self.failed("starting the upload of", key, e))?;
        let entry = self
            .journal
            .as_ref()
            .and_then(|j| j.record(&self.identity, &path, &id));
        let mut upload = Unfinished {
            pending: Some(Pending {
                key: path.clone(),
                id: id.clone(),
                entry,
            }),
            s3: self,
        };
        let part_size = self.part_size.max(size.div_ceil(MAX_PARTS));
        let mut parts: JoinSet<object_store::Result<(usize, PartId)>> = JoinSet::new();
        let mut ids: Vec<Option<PartId>> = Vec::new();
        let mut left = size;
        let mut collect = |done: Result<object_store::Result<(usize, PartId)>, _>| {
            let (idx, part) = done
                .map_err(|e| {
                    StoreError::task_died(
                        format_args!("uploading a part of {}", self.locate(key)),
                        e,
                    )
                })?
                .map_err(|e| self.failed("uploading a part of", key, e))?;
            if ids.len() <= idx {
                ids.resize(idx + 1, None);
            }
            ids[idx] = Some(part);
            Ok::<(), StoreError>(())
        };
        let result = async {
            let mut idx = 0;
            while left > 0 {
                // Finished parts free their permits; collect their ids.
                while let Some(done) = parts.try_join_next() {
                    collect(done)?;
                }
                let permit = Arc::clone(&self.parts)
                    .acquire_owned()
                    .await
                    .map_err(|_| self.upload_failed(key, "semaphore closed"))?;
                let n = left.min(part_size);
                let mut buf = vec![0; usize::try_from(n).unwrap_or(usize::MAX)];
                f.read_exact(&mut buf)
                    .await
                    .map_err(io_err("reading", file))?;
                left -= n;
                let (client, path, id) = (self.client.clone(), path.clone(), id.clone());
                let data = PutPayload::from(buf);
                parts.spawn(async move {
                    let part = client.put_part(&path, &id, idx, data).await;
                    drop(permit);
                    part.map(|p| (idx, p))
                });
                idx += 1;
            }
            while let Some(done) = parts.join_next().await {
                collect(done)?;
            }
            Ok(())
        }
        .await;
        let result = match result {
            Ok(()) => {
                let ids: Vec<PartId> = ids.into_iter().flatten().collect();
                self.client
                    .complete_multipart(&path, &id, ids)
                    .await
                    .map_err(|e| self.failed("completing the upload of", key, e))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => {
                upload.completed();
                Ok(())
            }
            Err(e) => {
                parts.abort_all();
                upload.abort().await;
                Err(e)
            }
        }
    }

    /// Aborts, once per store, the uploads to this bucket that the journal
    /// holds for processes that are gone.
    async fn abort_stale(&self) {
        let Some(journal) = &self.journal else { return };
        self.cleaned
            .get_or_init(|| async {
                for (entry, key, id) in journal.stale(&self.identity) {
                    let pending = Pending {
                        key,
                        id,
                        entry: Some(entry),
                    };
                    pending.abort(&self.client, &self.aborts).await;
                }
            })
            .await;
    }

    /// Waits for the aborts of cancelled uploads, then tries once more to
    /// abort those whose abort failed (the server may be back). What
    /// still fails stays in the journal, for a later run.
    pub(super) async fn finish_aborts(&self) {
        let tasks = match self.aborts.lock() {
            Ok(mut a) => std::mem::take(&mut a.tasks),
            Err(_) => return,
        };
        for task in tasks {
            let _ = task.await;
        }
        let failed = match self.aborts.lock() {
            Ok(mut a) => std::mem::take(&mut a.failed),
            Err(_) => return,
        };
        for pending in failed {
            pending.abort(&self.client, &self.aborts).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_entries() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal {
            dir: dir.path().join("j"),
        };
        let key = Key::parse("p/nar/x.nar.xz").unwrap();
        let mine = j.record("http://h:1 b", &key, "id-1").unwrap();
        // This process runs: its entries are not stale.
        assert!(j.stale("http://h:1 b").is_empty());
        // An entry of a process that is gone, for this bucket and another.
        let dead = u32::MAX;
        fs::write(
            j.dir.join("dead.upload"),
            format!("{dead}\nhttp://h:1 b\np/nar/y.nar\nid-2\n"),
        )
        .unwrap();
        fs::write(
            j.dir.join("other.upload"),
            format!("{dead}\nhttp://h:1 c\np/nar/z.nar\nid-3\n"),
        )
        .unwrap();
        let stale = j.stale("http://h:1 b");
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].1.as_ref(), "p/nar/y.nar");
        assert_eq!(stale[0].2, "id-2");
        let mut p = Pending {
            key,
            id: "id-1".into(),
            entry: Some(mine.clone()),
        };
        p.forget();
        assert!(!mine.exists());
    }
}
