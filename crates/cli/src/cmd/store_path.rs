//! `nixferry store-path ...`

use anyhow::Context as _;
use nixferry::nar;
use nixferry::store_path::{FileIngestion, StoreDir};

use crate::cli::StorePathCommand;
use crate::exit::Failure;

pub(super) fn run(cmd: StorePathCommand) -> Result<(), Failure> {
    match cmd {
        StorePathCommand::Add {
            path,
            name,
            store_dir,
        } => {
            let store_dir = StoreDir::new(&store_dir)?;
            let name = match name {
                Some(n) => n,
                None => super::add::default_name(&path)?,
            };
            let summary =
                nar::hash_path(&path).with_context(|| format!("hashing '{}'", path.display()))?;
            let p = store_dir.make_fixed_output_path(
                &name,
                FileIngestion::Recursive,
                &summary.nar_hash,
                [],
                false,
            )?;
            super::print(&format!("{}\n", store_dir.display(&p)))?;
            Ok(())
        }
    }
}
