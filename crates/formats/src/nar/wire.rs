//! NAR tokens and the string primitive they are made of (docs/formats.md §0, §1.2).
//!
//! Every NAR token is `bytes(s)`: a little-endian u64 length, the bytes, and
//! zero padding to a multiple of 8. The fixed token sequences the writer
//! emits are encoded once, at compile time.

/// The padding of `bytes(s)`, the string primitive of NARs and of Nix's
/// wire protocols (docs/formats.md §0): how many zero bytes follow `len`
/// bytes of data to reach a multiple of 8 (0 to 7).
///
/// ```
/// use nixferry_formats::nar::padding_len;
///
/// assert_eq!(padding_len(0), 0);
/// assert_eq!(padding_len(13), 3);
/// assert_eq!(padding_len(16), 0);
/// ```
pub const fn padding_len(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Zero bytes to copy padding from.
pub(super) const ZEROS: [u8; 8] = [0; 8];

/// The encoded length of a sequence of tokens.
const fn encoded_len(tokens: &[&[u8]]) -> usize {
    let mut total = 0;
    let mut i = 0;
    while i < tokens.len() {
        let len = tokens[i].len();
        total += 8 + len + padding_len(len as u64);
        i += 1;
    }
    total
}

/// Encodes a sequence of tokens; `N` must be `encoded_len(tokens)`.
const fn encode<const N: usize>(tokens: &[&[u8]]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut at = 0;
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i];
        let len = (token.len() as u64).to_le_bytes();
        let mut j = 0;
        while j < 8 {
            out[at + j] = len[j];
            j += 1;
        }
        at += 8;
        j = 0;
        while j < token.len() {
            out[at + j] = token[j];
            j += 1;
        }
        at += token.len() + padding_len(token.len() as u64);
        i += 1;
    }
    out
}

/// The encoding of a fixed token sequence, as a `&'static [u8]`.
macro_rules! tokens {
    ($($token:expr),+ $(,)?) => {{
        const TOKENS: &[&[u8]] = &[$($token),+];
        const BYTES: [u8; encoded_len(TOKENS)] = encode(TOKENS);
        &BYTES
    }};
}

/// The magic: `str("nix-archive-1")`.
pub(super) const MAGIC: &[u8] = tokens!(b"nix-archive-1");
/// The magic string itself.
pub(super) const MAGIC_STR: &[u8] = b"nix-archive-1";
/// Opens a regular file node; `executable ""` may follow, then `contents`.
pub(super) const REGULAR: &[u8] = tokens!(b"(", b"type", b"regular");
/// The executable marker with its empty value.
pub(super) const EXECUTABLE: &[u8] = tokens!(b"executable", b"");
/// Precedes the contents' length.
pub(super) const CONTENTS: &[u8] = tokens!(b"contents");
/// Opens a symlink node, up to its target string.
pub(super) const SYMLINK: &[u8] = tokens!(b"(", b"type", b"symlink", b"target");
/// Opens a directory node; entries follow.
pub(super) const DIRECTORY: &[u8] = tokens!(b"(", b"type", b"directory");
/// Opens a directory entry, up to its name string.
pub(super) const ENTRY: &[u8] = tokens!(b"entry", b"(", b"name");
/// Between an entry's name and its node.
pub(super) const NODE: &[u8] = tokens!(b"node");
/// Closes a node or an entry.
pub(super) const CLOSE: &[u8] = tokens!(b")");

/// Whether `name` may name a directory entry (docs/formats.md §1.4): not empty, not `.`
/// or `..`, and without `/` or NUL. Length limits are checked separately.
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.iter().any(|&b| b == b'/' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::from_hex;

    /// The token table of docs/formats.md §1.2.
    #[test]
    fn tokens_match_spec_table() {
        let hex = |s: &str| from_hex(&s.replace(' ', "")).unwrap();
        assert_eq!(
            MAGIC,
            hex("0d00000000000000 6e69782d617263686976652d31 000000")
        );
        assert_eq!(CLOSE, hex("0100000000000000 29 00000000000000"));
        assert_eq!(
            EXECUTABLE,
            hex("0a00000000000000 65786563757461626c65 000000000000 0000000000000000")
        );
        assert_eq!(CONTENTS, hex("0800000000000000 636f6e74656e7473"));
        assert_eq!(
            DIRECTORY,
            hex("0100000000000000 28 00000000000000 \
                 0400000000000000 74797065 00000000 \
                 0900000000000000 6469726563746f7279 00000000000000")
        );
        assert_eq!(
            ENTRY,
            hex("0500000000000000 656e747279 000000 \
                 0100000000000000 28 00000000000000 \
                 0400000000000000 6e616d65 00000000")
        );
        assert_eq!(NODE, hex("0400000000000000 6e6f6465 00000000"));
        assert_eq!(REGULAR.len(), 48);
        assert_eq!(SYMLINK.len(), 64);
    }

    #[test]
    fn padding() {
        assert_eq!(padding_len(0), 0);
        assert_eq!(padding_len(1), 7);
        assert_eq!(padding_len(8), 0);
        assert_eq!(padding_len(13), 3);
        assert_eq!(padding_len(u64::MAX), 1);
    }
}
