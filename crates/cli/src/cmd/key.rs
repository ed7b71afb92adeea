//! `nixferry key ...`

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use nixferry::atomic::AtomicFile;
use nixferry::signing::{KeyFileError, SecretKey};

use crate::cli::KeyCommand;
use crate::exit::Failure;

pub(super) fn run(cmd: KeyCommand) -> Result<(), Failure> {
    match cmd {
        KeyCommand::Generate {
            name,
            secret_file,
            public_file,
        } => {
            let key = SecretKey::generate(&name)?;
            // Like Nix: the secret file is private from the moment it exists,
            // and neither file ends in a newline.
            write_new(&secret_file, 0o600, &key.to_file_string())?;
            write_new(&public_file, 0o644, &key.public().to_string())?;
            Ok(())
        }
        KeyCommand::Public { secret_file } => {
            let key = load_secret_key(&secret_file)?;
            super::print(&format!("{}\n", key.public()))?;
            Ok(())
        }
    }
}

/// Creates `path` (which must not exist) with `mode` and writes `text`,
/// whole or not at all (a temporary file, put in place only if `path` is
/// still free).
fn write_new(path: &Path, mode: u32, text: &str) -> anyhow::Result<()> {
    if path.symlink_metadata().is_ok() {
        anyhow::bail!(
            "'{}' exists already: key files are never overwritten (remove it, or name another file)",
            path.display()
        );
    }
    let mut tmp = AtomicFile::create_with_mode(path, mode)?;
    tmp.as_file_mut()
        .write_all(text.as_bytes())
        .with_context(|| format!("writing '{}'", tmp.path().display()))?;
    tmp.commit_new(path)?;
    Ok(())
}

/// Loads a secret key file, warning when others can read it.
pub(super) fn load_secret_key(path: &Path) -> anyhow::Result<SecretKey> {
    use std::os::unix::fs::MetadataExt as _;
    let loaded = SecretKey::from_file(path);
    // A file that could be read is worth the warning, even if it is not a key.
    if !matches!(loaded, Err(KeyFileError::Read { .. })) {
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.mode() & 0o077 != 0 {
                eprintln!(
                    "nixferry: warning: secret key file '{}' is readable by other users (mode {:o})",
                    path.display(),
                    meta.mode() & 0o777
                );
            }
        }
    }
    Ok(loaded?)
}
