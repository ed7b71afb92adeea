//! Moving a path's bytes: one try at copying a path to some destinations,
//! as the compressed NAR file where both ends are binary caches of the
//! same compression, otherwise as one read of the NAR from the source,
//! checked on the way and streamed to each destination.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

use super::tasks::{self, Keyed};
use super::{CopyError, Engine, Event};
use crate::store::chunks::{ChannelReader, CHUNKS_AHEAD, CHUNK_SIZE};
use crate::store::verify::Verified;
use crate::store::{NarStream, PathInfo, StoreError};

/// A try's result in one destination: whether the compressed NAR file
/// moved as it is, or why it failed.
type Tried = (usize, Result<bool, CopyError>);

impl Engine {
    /// One try at copying `info` to `dests`: the compressed NAR file as it
    /// is where that works, and for the others one read of the NAR from
    /// the source, checked on the way and streamed to each of them.
    pub(super) async fn attempt(&self, info: &PathInfo, dests: &[usize]) -> Vec<Tried> {
        let mut results = Vec::new();
        let mut streamed = Vec::new();
        for &dest in dests {
            match self.try_passthrough(dest, info).await {
                Ok(true) => results.push((dest, Ok(true))),
                Ok(false) => streamed.push(dest),
                Err(e) => results.push((dest, Err(e.into()))),
            }
        }
        if streamed.is_empty() {
            return results;
        }
        let nar = match self.src.nar(info).await {
            Ok(nar) => nar,
            Err(e) => {
                let mut e = CopyError::from(e);
                results.extend(streamed.into_iter().map(|d| (d, Err(e.duplicate()))));
                return results;
            }
        };
        let full = self.src.store_dir().full(&info.path);
        let bytes = Arc::clone(&self.bytes);
        let on_event = Arc::clone(&self.on_event);
        let report = Arc::new(move |n: u64| {
            bytes.fetch_add(n, Ordering::Relaxed);
            on_event(Event::Bytes { bytes: n });
        });
        // Hashed here unless every destination checks the hash itself.
        let all_verify = streamed
            .iter()
            .all(|&d| self.dsts[d].capabilities().verifies_nar);
        let checked: NarStream = if all_verify {
            Box::pin(Verified::size_only(
                nar,
                full.clone(),
                info.nar_hash,
                info.nar_size,
                report,
            ))
        } else {
            Box::pin(Verified::new(
                nar,
                full.clone(),
                info.nar_hash,
                info.nar_size,
                report,
            ))
        };
        if let [dest] = streamed[..] {
            let r = self.dsts[dest].add_path(info, checked).await;
            results.push((dest, r.map(|()| false).map_err(CopyError::from)));
            return results;
        }

        let mut adds = Keyed::new();
        let mut outs = Vec::new();
        for &dest in &streamed {
            let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
            outs.push(tx);
            let dst = Arc::clone(&self.dsts[dest]);
            let info = info.clone();
            adds.spawn(dest, async move {
                let r = dst.add_path(&info, Box::pin(ChannelReader::new(rx))).await;
                r.map(|()| false).map_err(CopyError::from)
            });
        }
        let collect = async {
            let mut added = Vec::new();
            while let Some((dest, joined)) = adds.next().await {
                let r = tasks::or_died(joined, format_args!("adding '{full}'"));
                added.push((dest, r));
            }
            added
        };
        let ((), added) = tokio::join!(tee(checked, outs, &full), collect);
        results.extend(added);
        results
    }

    /// Moves the compressed NAR file as it is when both stores are binary
    /// caches of the same compression. Returns whether it did.
    async fn try_passthrough(&self, dest: usize, info: &PathInfo) -> Result<bool, StoreError> {
        let dst = &self.dsts[dest];
        let Some(want) = dst.capabilities().writes_compression else {
            return Ok(false);
        };
        let same = info
            .file
            .as_ref()
            .is_some_and(|f| f.compression == want && f.file_hash.is_some());
        if !self.opts.passthrough || !same {
            return Ok(false);
        }
        let Some(file) = self.src.compressed_nar(info).await? else {
            return Ok(false);
        };
        // The narinfo may declare another compression than the file has
        // (Nix reads by magic bytes, so old caches get away with it): then
        // the file is recompressed like any other.
        if file.compression != want {
            return Ok(false);
        }
        dst.add_compressed(info, file).await?;
        (self.on_event)(Event::Bytes {
            bytes: info.nar_size,
        });
        Ok(true)
    }
}

/// A chunk of a NAR on its way to several destinations.
type SharedChunk = io::Result<Arc<[u8]>>;

/// Reads `nar` and sends each chunk to every one of `outs` still
/// listening (a destination that failed stops listening), in step, so
/// that memory stays bounded; an error reading goes to all of them.
async fn tee(mut nar: NarStream, mut outs: Vec<mpsc::Sender<SharedChunk>>, full: &str) {
    let mut buf = vec![0; CHUNK_SIZE];
    loop {
        match nar.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                let chunk: Arc<[u8]> = Arc::from(&buf[..n]);
                let mut open = Vec::with_capacity(outs.len());
                for tx in outs {
                    if tx.send(Ok(Arc::clone(&chunk))).await.is_ok() {
                        open.push(tx);
                    }
                }
                outs = open;
                if outs.is_empty() {
                    return;
                }
            }
            Err(e) => {
                let kind = e.kind();
                let mut shared = StoreError::from_stream(e, "reading the NAR of", full);
                for tx in &outs {
                    let _ = tx.send(Err(io::Error::new(kind, shared.share()))).await;
                }
                return;
            }
        }
    }
}
