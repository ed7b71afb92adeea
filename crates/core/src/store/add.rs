//! Adding content that Nix never saw, as `nix-store --add` would.

use std::fs::File;
use std::io::{BufWriter, Seek as _, Write as _};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{PathInfo, Store, StoreError};
use crate::nar;
use crate::signing::SecretKey;
use crate::store_path::{validate_name, ContentAddress, FileIngestion};

/// Buffer for writing the NAR to its temporary file.
const BUFFER: usize = 1 << 20;

/// Adds a file, directory or symlink to `store` as the content-addressed
/// path `nix-store --add` makes of it (recursive SHA-256, no references,
/// docs/formats.md §2.6), with its `CA` field set and signed by each of `keys`.
/// Returns the path's info; a path the store has already is left alone
/// and its info returned.
///
/// The NAR is written once, to an anonymous temporary file (in
/// `$TMPDIR`), while it is hashed; the store path follows from the hash,
/// and the store then reads the NAR back from that file. `source` is read
/// once, so content changing meanwhile cannot make the NAR disagree with
/// its hash.
///
/// # Errors
/// [`StoreError::StorePath`] for an invalid `name`; [`StoreError::Nar`] if
/// `source` cannot be read or holds a file a NAR cannot (a socket, a
/// device); [`StoreError::Io`] for the temporary file; and what the store's
/// [`Store::add_path`] returns.
pub async fn add_to_store(
    store: &dyn Store,
    source: &Path,
    name: &str,
    keys: &[SecretKey],
) -> Result<PathInfo, StoreError> {
    validate_name(name)?;
    let src = source.to_owned();
    let (file, summary) = tokio::task::spawn_blocking(move || dump_to_temp(&src))
        .await
        .map_err(|e| StoreError::task_died(format_args!("packing '{}'", source.display()), e))??;

    let ca = ContentAddress::Fixed {
        method: FileIngestion::Recursive,
        hash: summary.nar_hash,
    };
    let store_dir = store.store_dir();
    let path = store_dir.make_ca_path(name, &ca, [], false)?;
    if let Some(existing) = store
        .query_path_infos(std::slice::from_ref(&path))
        .await?
        .remove(&path)
    {
        return Ok(existing);
    }

    let mut info = PathInfo::new(path, summary.nar_hash, summary.nar_size);
    info.ca = Some(ca);
    info.ultimate = true;
    info.registration_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fingerprint = info.fingerprint(store_dir);
    for key in keys {
        let sig = key.sign(fingerprint.as_bytes()).to_string();
        if !info.signatures.contains(&sig) {
            info.signatures.push(sig);
        }
    }
    info.signatures.sort();

    let stream = tokio::io::BufReader::with_capacity(BUFFER, tokio::fs::File::from_std(file));
    store.add_path(&info, Box::pin(stream)).await?;
    Ok(info)
}

/// Dumps `source` as a NAR into an unlinked temporary file, rewound.
fn dump_to_temp(source: &Path) -> Result<(File, nar::NarSummary), StoreError> {
    // Already removed from the temporary directory, so that nothing is
    // left behind whatever happens.
    let io_err = |what| {
        move |source| StoreError::Io {
            what,
            path: format!("a temporary file in '{}'", std::env::temp_dir().display()),
            source,
        }
    };
    let mut file = tempfile::tempfile().map_err(io_err("creating"))?;
    let mut w = BufWriter::with_capacity(BUFFER, &mut file);
    let summary = nar::dump(source, &mut w)?;
    w.flush().map_err(io_err("writing"))?;
    drop(w);
    file.rewind().map_err(io_err("writing"))?;
    Ok((file, summary))
}
