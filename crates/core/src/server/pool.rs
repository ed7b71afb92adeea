//! Bounds on the CPU work requests make: a pool of a few slots that
//! listings and on-the-fly compression share, and a cache of listings.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Semaphore;

/// Work that takes a CPU for a while (listing a NAR, compressing a chunk
/// of one) runs on a blocking thread once one of a fixed number of slots
/// is free; requests beyond that wait their turn. Many clients asking
/// for listings or compressed NARs at once then share the machine instead
/// of each getting a thread of its own.
#[derive(Debug, Clone)]
pub(super) struct CpuPool {
    slots: Arc<Semaphore>,
}

impl CpuPool {
    pub(super) fn new(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
        }
    }

    /// Runs `work` on a blocking thread once a slot is free.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// The number of CPU slots by default: one per core.
pub(super) fn default_cpu_slots() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Listings (`.ls`) made, by path hash part and NAR hash, up to a total
/// size; the oldest go first.
#[derive(Debug)]
pub(super) struct Listings {
    inner: Mutex<ListingsInner>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct ListingsInner {
    map: HashMap<String, Bytes>,
    order: VecDeque<String>,
    bytes: usize,
}

impl Listings {
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_bytes,
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<Bytes> {
        self.inner.lock().ok()?.map.get(key).cloned()
    }

    /// Keeps `json` under `key`, unless it alone is over a quarter of the
    /// budget (it is made again when asked for again).
    pub(super) fn put(&self, key: String, json: Bytes) {
        if json.len() > self.max_bytes / 4 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.map.contains_key(&key) {
            return;
        }
        while inner.bytes + json.len() > self.max_bytes {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.map.remove(&old) {
                inner.bytes -= gone.len();
            }
        }
        inner.bytes += json.len();
        inner.order.push_back(key.clone());
        inner.map.insert(key, json);
    }
}

/// How many bytes of listings are kept by default.
pub(super) const LISTINGS_BYTES: usize = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_runs_at_most_its_slots_at_once() {
        let pool = Arc::new(CpuPool::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..8)
            .map(|_| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                    .await
                })
            })
            .collect();
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn listings_stay_within_their_budget() {
        let l = Listings::new(100);
        l.put("a".into(), Bytes::from(vec![0; 20]));
        l.put("b".into(), Bytes::from(vec![0; 20]));
        assert_eq!(l.get("a").unwrap().len(), 20);
        // Too big to keep.
        l.put("huge".into(), Bytes::from(vec![0; 26]));
        assert!(l.get("huge").is_none());
        for i in 0..10 {
            l.put(format!("k{i}"), Bytes::from(vec![0; 20]));
        }
        let inner = l.inner.lock().unwrap();
        assert!(inner.bytes <= 100);
        assert_eq!(inner.map.len(), 5);
        assert!(!inner.map.contains_key("a"), "the oldest went first");
    }
}
