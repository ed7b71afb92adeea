//! Finding store path references in content.
//!
//! Nix decides which store paths a path refers to by searching its NAR for
//! the 32-character hash part of each candidate (Nix's `references.cc`).
//! [`RefScanner`] does the same, streaming: feed it the NAR in chunks of any
//! size, through [`RefScanner::update`] or as an [`std::io::Write`], and
//! it reports which candidates occurred. Matches that straddle two chunks
//! are found too.
//!
//! ```
//! use nixferry_formats::refscan::RefScanner;
//! use nixferry_formats::store_path::StorePath;
//!
//! let dep = StorePath::from_base_name("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-hi").unwrap();
//! let mut scan = RefScanner::new([&dep]);
//! scan.update(b"#!/nix/store/3pl2infwzaw2z");
//! scan.update(b"w5fxxp3pvm3xasr0w4b-hi/bin/sh");
//! assert_eq!(scan.found().collect::<Vec<_>>(), vec![&dep]);
//! ```

use std::collections::HashMap;
use std::io;

use crate::hash::nix32;
use crate::store_path::{StorePath, HASH_PART_LEN};

/// Streaming search for store path hash parts.
#[derive(Debug, Clone)]
pub struct RefScanner {
    /// Candidates not yet seen, by hash part.
    pending: HashMap<[u8; HASH_PART_LEN], StorePath>,
    /// Candidates seen so far.
    found: Vec<StorePath>,
    /// The last bytes of the previous chunk (fewer than a hash part), so a
    /// match across a chunk boundary is not missed.
    tail: Vec<u8>,
    /// Reused buffer for the boundary region.
    scratch: Vec<u8>,
}

impl RefScanner {
    /// A scanner looking for the hash parts of `candidates`.
    pub fn new<'a>(candidates: impl IntoIterator<Item = &'a StorePath>) -> Self {
        let pending = candidates
            .into_iter()
            .map(|p| {
                let mut key = [0u8; HASH_PART_LEN];
                key.copy_from_slice(p.hash_part().as_bytes());
                (key, p.clone())
            })
            .collect();
        Self {
            pending,
            found: Vec::new(),
            tail: Vec::with_capacity(HASH_PART_LEN),
            scratch: Vec::with_capacity(2 * HASH_PART_LEN),
        }
    }

    /// Scans the next chunk of content.
    pub fn update(&mut self, chunk: &[u8]) {
        if self.pending.is_empty() || chunk.is_empty() {
            return;
        }
        // Windows that start in the saved tail and end in this chunk.
        if !self.tail.is_empty() {
            let head = &chunk[..chunk.len().min(HASH_PART_LEN - 1)];
            let mut boundary = std::mem::take(&mut self.scratch);
            boundary.clear();
            boundary.extend_from_slice(&self.tail);
            boundary.extend_from_slice(head);
            self.search(&boundary);
            self.scratch = boundary;
        }
        self.search(chunk);
        self.save_tail(chunk);
    }

    /// Keeps the last `HASH_PART_LEN - 1` bytes of the stream so far.
    fn save_tail(&mut self, chunk: &[u8]) {
        const KEEP: usize = HASH_PART_LEN - 1;
        if chunk.len() >= KEEP {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - KEEP..]);
        } else {
            self.tail.extend_from_slice(chunk);
            let excess = self.tail.len().saturating_sub(KEEP);
            self.tail.drain(..excess);
        }
    }

    /// Nix's search: slide a 32-byte window, skipping past any byte that is
    /// not a nix32 digit, and look up each all-digit window.
    fn search(&mut self, s: &[u8]) {
        let mut i = 0;
        'outer: while i + HASH_PART_LEN <= s.len() {
            // Checking from the right lets one bad byte skip the whole window.
            for j in (0..HASH_PART_LEN).rev() {
                if !nix32::is_digit(s[i + j]) {
                    i += j + 1;
                    continue 'outer;
                }
            }
            let window: &[u8; HASH_PART_LEN] = s[i..i + HASH_PART_LEN]
                .try_into()
                .unwrap_or(&[0; HASH_PART_LEN]);
            if let Some(p) = self.pending.remove(window) {
                self.found.push(p);
                if self.pending.is_empty() {
                    return;
                }
            }
            i += 1;
        }
    }

    /// The candidates seen so far, in the order they were first seen.
    pub fn found(&self) -> impl Iterator<Item = &StorePath> {
        self.found.iter()
    }

    /// The candidates seen, sorted.
    pub fn into_found(self) -> Vec<StorePath> {
        let mut v = self.found;
        v.sort();
        v
    }
}

impl io::Write for RefScanner {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(h: &str) -> StorePath {
        StorePath::from_base_name(&format!("{h}-x")).unwrap()
    }

    #[test]
    fn finds_across_every_split() {
        let a = path("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b");
        let b = path("jgs69zx98r4fpm73d82y357pps9llcic");
        let c = path("87irrh29q0wh52p7x40p8q882998xm4x");
        let text = b"xx 3pl2infwzaw2zw5fxxp3pvm3xasr0w4b yy/jgs69zx98r4fpm73d82y357pps9llcic";
        for split in 0..text.len() {
            let mut s = RefScanner::new([&a, &b, &c]);
            s.update(&text[..split]);
            s.update(&text[split..]);
            assert_eq!(s.into_found(), vec![a.clone(), b.clone()], "split {split}");
        }
        // One byte at a time.
        let mut s = RefScanner::new([&a, &b, &c]);
        for byte in text {
            s.update(std::slice::from_ref(byte));
        }
        assert_eq!(s.into_found(), vec![a.clone(), b.clone()]);
    }

    #[test]
    fn needs_the_whole_hash() {
        let a = path("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b");
        let mut s = RefScanner::new([&a]);
        s.update(b"3pl2infwzaw2zw5fxxp3pvm3xasr0w4");
        s.update(b"e");
        assert_eq!(s.into_found(), Vec::<StorePath>::new());
    }

    #[test]
    fn hash_inside_a_longer_digit_run() {
        // Nix slides the window one byte at a time, so a hash embedded in a
        // longer run of nix32 digits still counts.
        let a = path("3pl2infwzaw2zw5fxxp3pvm3xasr0w4b");
        let mut s = RefScanner::new([&a]);
        s.update(b"0003pl2infwzaw2zw5fxxp3pvm3xasr0w4b000");
        assert_eq!(s.into_found(), vec![a]);
    }
}
