//! Both ends' shared plumbing: one task writes the frames every request
//! and stream hands it, measuring how much of its time the link keeps it
//! waiting; compressors read that to pick their level.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::wire::{Frame, Kind, MAX_DATA};

/// Frames queued for the writer at most.
const QUEUE: usize = 64;

/// The zstd levels compressors move between, and where they start.
pub(super) const MIN_LEVEL: i32 = 1;
pub(super) const MAX_LEVEL: i32 = 7;
pub(super) const START_LEVEL: i32 = 3;

/// How long the writer measures before it adjusts the level.
const WINDOW: Duration = Duration::from_millis(250);

/// Windows in a row the link must keep the writer blocked before the
/// level goes up.
const WINDOWS_UP: u32 = 4;

/// The compression level the link calls for: raised while writing the
/// frames keeps the writer blocked nearly all the time for a second (the
/// link is the bottleneck: spend CPU to save bytes), lowered as soon as
/// the writer waits for frames half the time (compression is the
/// bottleneck). Levels above 7 are left out: on machine code they save a
/// few percent of the bytes for several times the CPU, and a compressor
/// that falls behind leaves the link idle.
#[derive(Debug)]
pub(super) struct Level {
    level: AtomicI32,
    /// Blocked windows in a row.
    streak: AtomicU32,
}

impl Level {
    pub(super) fn new(level: i32) -> Arc<Self> {
        Arc::new(Self {
            level: AtomicI32::new(level),
            streak: AtomicU32::new(0),
        })
    }

    pub(super) fn get(&self) -> i32 {
        self.level.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(super) fn set(&self, level: i32) {
        self.level.store(level, Ordering::Relaxed);
    }

    fn adjust(&self, blocked: f64) {
        let level = self.get();
        let streak = if blocked >= 0.9 {
            self.streak.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.streak.store(0, Ordering::Relaxed);
            0
        };
        let next = if streak >= WINDOWS_UP {
            self.streak.store(0, Ordering::Relaxed);
            level + 1
        } else if blocked < 0.5 {
            level - 1
        } else {
            level
        };
        self.level
            .store(next.clamp(MIN_LEVEL, MAX_LEVEL), Ordering::Relaxed);
    }
}

/// The sending half: hands frames to the writer task.
#[derive(Debug, Clone)]
pub(super) struct Sender {
    tx: mpsc::Sender<Frame>,
}

impl Sender {
    /// Queues a frame; `false` when the writer is gone (the connection
    /// broke).
    pub(super) async fn send(&self, frame: Frame) -> bool {
        self.tx.send(frame).await.is_ok()
    }

    /// As [`Sender::send`], from a blocking thread.
    pub(super) fn blocking_send(&self, frame: Frame) -> bool {
        self.tx.blocking_send(frame).is_ok()
    }

    /// Queues `data` as data frames of stream `id`.
    pub(super) fn blocking_data(&self, id: u32, data: &[u8]) -> bool {
        data.chunks(MAX_DATA).all(|chunk| {
            self.blocking_send(Frame {
                kind: Kind::Data,
                stream: id,
                payload: Bytes::copy_from_slice(chunk),
            })
        })
    }

    /// Queues the end of stream `id`.
    pub(super) async fn end(&self, id: u32) -> bool {
        self.send(Frame {
            kind: Kind::End,
            stream: id,
            payload: Bytes::new(),
        })
        .await
    }

    /// Queues an abort of stream `id`.
    pub(super) async fn abort(&self, id: u32, why: &str) -> bool {
        let why: String = why.chars().take(1000).collect();
        self.send(Frame {
            kind: Kind::Abort,
            stream: id,
            payload: Bytes::from(why),
        })
        .await
    }
}

/// Starts the writer task on `out`; it ends when every [`Sender`] is gone
/// or writing fails, returning the error.
pub(super) fn writer<W>(
    mut out: W,
    level: Arc<Level>,
) -> (Sender, tokio::task::JoinHandle<std::io::Result<()>>)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Frame>(QUEUE);
    let task = tokio::spawn(async move {
        let mut window = Instant::now();
        let mut blocked = Duration::ZERO;
        let mut buf = Vec::with_capacity(256 * 1024);
        while let Some(first) = rx.recv().await {
            // Whatever is queued goes out in one write.
            let mut next = Some(first);
            while let Some(frame) = next {
                buf.extend_from_slice(&frame.header());
                buf.extend_from_slice(&frame.payload);
                next = if buf.len() < 256 * 1024 {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            let start = Instant::now();
            out.write_all(&buf).await?;
            if rx.is_empty() {
                out.flush().await?;
            }
            blocked += start.elapsed();
            buf.clear();
            let elapsed = window.elapsed();
            if elapsed >= WINDOW {
                level.adjust(blocked.as_secs_f64() / elapsed.as_secs_f64());
                window = Instant::now();
                blocked = Duration::ZERO;
            }
        }
        out.flush().await?;
        out.shutdown().await
    });
    (Sender { tx }, task)
}
