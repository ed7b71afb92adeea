//! `nixferry config`: Nix's configuration as nixferry reads it.

use std::io::Write as _;

use crate::exit::Failure;

pub(super) fn run(json: bool) -> Result<(), Failure> {
    let config = super::settings::nix_config()?;
    let mut out = super::stdout();
    if json {
        writeln!(out, "{}", config.to_json())?;
    } else {
        for (name, setting) in config.settings() {
            writeln!(out, "{name} = {setting}")?;
            writeln!(out, "    # from {}", setting.origins.join(", "))?;
        }
    }
    out.flush()?;
    Ok(())
}
