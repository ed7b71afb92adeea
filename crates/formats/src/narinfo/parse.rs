//! The narinfo reader (docs/formats.md §3.3, "How the 2.8 reader tokenises a narinfo").
//!
//! Two layers: [`split_line`] cuts the text into `Key: value` lines and
//! checks their syntax; [`Reader`] interprets each known field, rejects
//! repetitions and finally checks that the required fields are there.

use super::{Compression, Field, Line, NarInfoError, ValueError, Values};
use crate::hash::NixHash;
use crate::store_path::{ContentAddress, StoreDir, StorePath, HASH_PART_LEN};

/// The largest narinfo accepted, in bytes. Nix has no limit; this one keeps
/// memory bounded for untrusted input while leaving room to spare: the
/// largest document in the cache.nixos.org sample is 37 KB.
pub const MAX_NARINFO_LEN: usize = 1 << 20;

/// The longest line accepted, in bytes. Only `References` gets long: this
/// fits over 2,000 references of the maximal 244-byte base name (plus a
/// space), and about 9,000 of typical length. The longest line in the
/// cache.nixos.org sample has 721 references in 37 KB.
pub const MAX_LINE_LEN: usize = 512 << 10;

/// What `Deriver` says when the deriver is not known (Nix's
/// `unknown-deriver`).
const UNKNOWN_DERIVER: &str = "unknown-deriver";

/// Parses `text`: every line in order, and the typed values.
pub(super) fn parse(text: &str, store_dir: &StoreDir) -> Result<(Vec<Line>, Values), NarInfoError> {
    if text.len() > MAX_NARINFO_LEN {
        return Err(NarInfoError::TooLarge {
            len: text.len(),
            max: MAX_NARINFO_LEN,
        });
    }
    // Nix writes about ten lines.
    let mut lines = Vec::with_capacity(12);
    let mut reader = Reader::new(store_dir);
    let mut start = 0;
    while start < text.len() {
        let number = lines.len() + 1;
        let line = split_line(text, start, number)?;
        if let Some(field) = line.field {
            reader.read(field, line.value(text), number)?;
        }
        start = line.end + 1;
        lines.push(line);
    }
    Ok((lines, reader.finish()?))
}

/// Splits the line that starts at `start` into key and value. Unlike Nix
/// 2.8, which assumes the `": "` separator and finds the key's `:` even on a
/// later line, this requires each line to be `Key: value\n` itself.
fn split_line(text: &str, start: usize, number: usize) -> Result<Line, NarInfoError> {
    let rest = &text[start..];
    let len = rest
        .find('\n')
        .ok_or(NarInfoError::MissingNewline { line: number })?;
    let raw = &rest[..len];
    if len > MAX_LINE_LEN {
        return Err(NarInfoError::LineTooLong {
            line: number,
            len,
            max: MAX_LINE_LEN,
        });
    }
    if raw.is_empty() {
        return Err(NarInfoError::BlankLine { line: number });
    }
    if raw.contains('\r') {
        return Err(NarInfoError::CarriageReturn { line: number });
    }
    let colon = raw
        .find(':')
        .ok_or(NarInfoError::MissingColon { line: number })?;
    if raw.as_bytes().get(colon + 1) != Some(&b' ') {
        return Err(NarInfoError::MissingSpace { line: number });
    }
    Ok(Line {
        start,
        colon: start + colon,
        end: start + len,
        field: Field::from_key(&raw[..colon]),
    })
}

/// Collects the typed values field by field.
struct Reader<'d> {
    store_dir: &'d StoreDir,
    /// The line number where each field was first seen, 0 if not yet.
    seen: [usize; Field::ALL.len()],
    store_path: Option<StorePath>,
    compression: Option<Compression>,
    file_hash: Option<NixHash>,
    file_size: Option<u64>,
    nar_hash: Option<NixHash>,
    nar_size: Option<u64>,
    references: Vec<StorePath>,
    deriver: Option<StorePath>,
    ca: Option<ContentAddress>,
}

impl<'d> Reader<'d> {
    fn new(store_dir: &'d StoreDir) -> Self {
        Self {
            store_dir,
            seen: [0; Field::ALL.len()],
            store_path: None,
            compression: None,
            file_hash: None,
            file_size: None,
            nar_hash: None,
            nar_size: None,
            references: Vec::new(),
            deriver: None,
            ca: None,
        }
    }

    /// Reads one field's value from line `line`.
    fn read(&mut self, field: Field, value: &str, line: usize) -> Result<(), NarInfoError> {
        self.note_occurrence(field, line)?;
        let invalid = |error: ValueError| NarInfoError::InvalidValue { line, field, error };
        match field {
            Field::StorePath => {
                let path = self.store_dir.parse(value).map_err(|e| invalid(e.into()))?;
                self.store_path = Some(path);
            }
            // Kept in the text only; `NarInfo::url` reads it from there.
            Field::Url if value.is_empty() => return Err(invalid(ValueError::Empty)),
            Field::Url | Field::System | Field::Sig => {}
            Field::Compression => self.compression = Some(Compression::parse(value)),
            Field::FileHash => self.file_hash = Some(parse_hash(value).map_err(invalid)?),
            Field::FileSize => self.file_size = Some(parse_number(value).map_err(invalid)?),
            Field::NarHash => self.nar_hash = Some(parse_hash(value).map_err(invalid)?),
            Field::NarSize => match parse_number(value).map_err(invalid)? {
                0 => return Err(invalid(ValueError::Zero)),
                size => self.nar_size = Some(size),
            },
            Field::References => self.references = parse_references(value).map_err(invalid)?,
            Field::Deriver => self.deriver = parse_deriver(value).map_err(invalid)?,
            Field::Ca => self.ca = parse_ca(value).map_err(invalid)?,
        }
        Ok(())
    }

    /// Records that `field` is on `line`, rejecting a repetition of a field
    /// that may appear once.
    fn note_occurrence(&mut self, field: Field, line: usize) -> Result<(), NarInfoError> {
        if field.is_repeatable() {
            return Ok(());
        }
        let first = &mut self.seen[field as usize];
        if *first != 0 {
            return Err(NarInfoError::DuplicateField {
                line,
                field,
                first: *first,
            });
        }
        *first = line;
        Ok(())
    }

    /// Checks that the fields Nix requires are present (2.8 throws "corrupt"
    /// unless it has `StorePath`, `NarHash`, a non-empty `URL` and a
    /// non-zero `NarSize`; emptiness and zero are caught per line).
    fn finish(self) -> Result<Values, NarInfoError> {
        let missing = NarInfoError::MissingField;
        let store_path = self.store_path.ok_or(missing(Field::StorePath))?;
        if self.seen[Field::Url as usize] == 0 {
            return Err(missing(Field::Url));
        }
        Ok(Values {
            store_path,
            compression: self.compression.unwrap_or(Compression::Bzip2),
            file_hash: self.file_hash,
            file_size: self.file_size,
            nar_hash: self.nar_hash.ok_or(missing(Field::NarHash))?,
            nar_size: self.nar_size.ok_or(missing(Field::NarSize))?,
            references: self.references,
            deriver: self.deriver,
            ca: self.ca,
        })
    }
}

/// A prefixed or SRI hash; a bare one is an error, as in Nix.
fn parse_hash(value: &str) -> Result<NixHash, ValueError> {
    Ok(NixHash::parse(value)?)
}

/// A decimal `u64`: ASCII digits only, no sign or spaces.
fn parse_number(value: &str) -> Result<u64, ValueError> {
    let not_a_number = || ValueError::NotANumber(value.to_owned());
    // `u64::from_str` alone would also take a leading `+`.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_number());
    }
    value.parse().map_err(|_| not_a_number())
}

/// Base names separated by spaces; empty tokens (extra spaces) are skipped
/// as in Nix. Each reference may appear once.
fn parse_references(value: &str) -> Result<Vec<StorePath>, ValueError> {
    // An upper bound (a reference and its space take at least 35 bytes), so
    // the vector never grows.
    let mut refs = Vec::with_capacity(value.len() / (HASH_PART_LEN + 3) + 1);
    for token in words(value) {
        refs.push(StorePath::from_base_name(token)?);
    }
    check_unique(&refs)?;
    Ok(refs)
}

/// The non-empty space-separated words of `s`, for a list of base names.
///
/// This is the hot loop of parsing, so it skips what cannot hold the
/// separator: a valid base name has no space in its first 33 bytes (the hash
/// part and the dash), so the search for the space that ends a word starts
/// after them. A word that does have a space there comes out with the space
/// inside it, which no base name allows, so it is still rejected.
fn words(s: &str) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let mut pos = 0;
    std::iter::from_fn(move || {
        while bytes.get(pos) == Some(&b' ') {
            pos += 1;
        }
        if pos == bytes.len() {
            return None;
        }
        let start = pos;
        let search_from = (start + HASH_PART_LEN + 1).min(bytes.len());
        pos = bytes[search_from..]
            .iter()
            .position(|&b| b == b' ')
            .map_or(bytes.len(), |i| search_from + i);
        // Both ends are at a space or an end of `s`, so on char boundaries.
        s.get(start..pos)
    })
}

fn check_unique(refs: &[StorePath]) -> Result<(), ValueError> {
    // Writers sort references, so a strictly increasing list is the norm
    // and needs no sorting to prove uniqueness.
    if refs.windows(2).all(|pair| pair[0] < pair[1]) {
        return Ok(());
    }
    let mut sorted: Vec<&StorePath> = refs.iter().collect();
    sorted.sort_unstable();
    match sorted.windows(2).find(|pair| pair[0] == pair[1]) {
        Some(pair) => Err(ValueError::DuplicateReference(pair[0].to_string())),
        None => Ok(()),
    }
}

/// A base name, or `unknown-deriver` for none.
fn parse_deriver(value: &str) -> Result<Option<StorePath>, ValueError> {
    if value == UNKNOWN_DERIVER {
        return Ok(None);
    }
    Ok(Some(StorePath::from_base_name(value)?))
}

/// A content address, or the empty string for none.
fn parse_ca(value: &str) -> Result<Option<ContentAddress>, ValueError> {
    if value.is_empty() {
        return Ok(None);
    }
    Ok(Some(ContentAddress::parse(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_plain_decimal() {
        assert_eq!(parse_number("808"), Ok(808));
        assert_eq!(parse_number("0808"), Ok(808));
        assert_eq!(parse_number("18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "",
            "+1",
            "-1",
            " 1",
            "1 ",
            "0x10",
            "18446744073709551616",
            "1e3",
        ] {
            assert!(parse_number(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn references_skip_extra_spaces_and_reject_repeats() {
        let a = "3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt";
        let b = "jgs69zx98r4fpm73d82y357pps9llcic-nixspec-drv";
        assert_eq!(parse_references(&format!(" {b}  {a} ")).unwrap().len(), 2);
        assert_eq!(parse_references("").unwrap(), []);
        assert_eq!(
            parse_references(&format!("{b} {a} {b}")),
            Err(ValueError::DuplicateReference(b.into()))
        );
    }
}
