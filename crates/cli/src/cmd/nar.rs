//! `nixferry nar ...`

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsFd as _;
use std::path::Path;

use anyhow::Context as _;
use nixferry::nar::{self, RestoreOptions};

use crate::cli::{HashFormat, NarCommand};
use crate::exit::Failure;

pub(super) fn run(cmd: NarCommand) -> Result<(), Failure> {
    match cmd {
        NarCommand::Dump { path, output } => {
            // No hash is printed, so none is computed, and the contents of
            // large files can go from file to output inside the kernel
            // (`io::copy` does that for `File`s). The library buffers small
            // writes itself, so the outputs are plain files.
            let what = || format!("dumping '{}'", path.display());
            match output {
                Some(out) => {
                    let mut f = File::create(&out)
                        .with_context(|| format!("creating '{}'", out.display()))?;
                    nar::dump_unhashed(&path, &mut f).with_context(what)?;
                    f.sync_all()
                        .with_context(|| format!("writing '{}'", out.display()))?;
                }
                None => {
                    // Descriptor 1 as a `File`, rather than `Stdout`, which
                    // is line-buffered and would split binary output around
                    // newlines into extra writes. Nothing else writes to
                    // stdout in this command.
                    let mut w = File::from(io::stdout().as_fd().try_clone_to_owned()?);
                    nar::dump_unhashed(&path, &mut w).with_context(what)?;
                }
            }
        }
        NarCommand::Restore { args, force } => {
            let (file, dest) = match &args[..] {
                [file, dest] => (file.as_path(), dest),
                [dest] => (Path::new("-"), dest),
                _ => return Err(anyhow::anyhow!("usage: nar restore [FILE|-] DEST").into()),
            };
            let input = super::open_input(file)?;
            let opts = RestoreOptions {
                overwrite: force,
                ..RestoreOptions::default()
            };
            nar::restore(input, dest, &opts).map_err(|e| {
                let e = if matches!(e, nar::NarError::TargetExists { .. }) {
                    anyhow::anyhow!("{e}; give --force to replace it")
                } else {
                    anyhow::Error::from(e)
                };
                e.context(format!("restoring into '{}'", dest.display()))
            })?;
        }
        NarCommand::Ls { file, json } => {
            let listing = nar::list(super::open_input(&file)?)
                .with_context(|| format!("listing '{}'", file.display()))?;
            let mut out = super::stdout();
            if json {
                writeln!(out, "{}", listing.to_json())?;
            } else {
                for line in listing.lines() {
                    writeln!(out, "{line}")?;
                }
            }
            out.flush()?;
        }
        NarCommand::Cat { file, path } => {
            let mut out = super::stdout();
            nar::cat(super::open_input(&file)?, &path, &mut out)
                .with_context(|| format!("reading '{path}' from '{}'", file.display()))?;
            out.flush()?;
        }
        NarCommand::Hash {
            path,
            format,
            base32,
            base16,
            base64,
            sri,
        } => {
            let summary =
                nar::hash_path(&path).with_context(|| format!("hashing '{}'", path.display()))?;
            let h = summary.nar_hash;
            let format = match (base32, base16, base64, sri) {
                (true, ..) => HashFormat::Base32,
                (_, true, ..) => HashFormat::Base16,
                (_, _, true, _) => HashFormat::Base64,
                (.., true) => HashFormat::Sri,
                _ => format,
            };
            let text = match format {
                HashFormat::Sri => h.to_sri(),
                HashFormat::Base32 => h.to_nix32(),
                HashFormat::Base16 => h.to_hex(),
                HashFormat::Base64 => h.to_base64(),
                HashFormat::Nix32 => h.to_string(),
            };
            super::print(&format!("{text}\n"))?;
        }
    }
    Ok(())
}
