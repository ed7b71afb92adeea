//! `nixferry nar ...`

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;

use anyhow::Context as _;
use nixferry::nar::{self, RestoreOptions};

use crate::cli::{HashFormat, NarCommand};
use crate::exit::Failure;

pub(super) fn run(cmd: NarCommand) -> Result<(), Failure> {
    match cmd {
        NarCommand::Dump { path, output } => {
            let what = || format!("dumping '{}'", path.display());
            match output {
                Some(out) => {
                    let f = File::create(&out)
                        .with_context(|| format!("creating '{}'", out.display()))?;
                    let mut w = BufWriter::with_capacity(1 << 20, f);
                    nar::dump(&path, &mut w).with_context(what)?;
                    w.into_inner()
                        .map_err(|e| e.into_error())?
                        .sync_all()
                        .with_context(|| format!("writing '{}'", out.display()))?;
                }
                None => {
                    let mut w = super::stdout();
                    nar::dump(&path, &mut w).with_context(what)?;
                    w.flush()?;
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
            nar::restore(input, dest, &opts)
                .with_context(|| format!("restoring into '{}'", dest.display()))?;
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
        } => {
            let summary =
                nar::hash_path(&path).with_context(|| format!("hashing '{}'", path.display()))?;
            let h = summary.nar_hash;
            let format = if base32 { HashFormat::Base32 } else { format };
            let text = match format {
                HashFormat::Sri => h.to_sri(),
                HashFormat::Base32 => h.to_nix32(),
                HashFormat::Base16 => h.to_hex(),
                HashFormat::Nix32 => h.to_string(),
            };
            super::print(&format!("{text}\n"))?;
        }
    }
    Ok(())
}
