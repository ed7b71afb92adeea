//! `nixferry config`: Nix's configuration as nixferry reads it.

use std::io::Write as _;

use crate::exit::Failure;

pub(super) fn run(json: bool) -> Result<(), Failure> {
    let config = super::settings::nix_config()?;
    let mut out = super::stdout();
    if json {
        let mut v = serde_json::Map::new();
        for (name, setting) in config.settings() {
            let value = match name {
                "connect-timeout" => serde_json::json!(config.connect_timeout()),
                "netrc-file" => serde_json::json!(setting.to_string()),
                _ => serde_json::json!(setting.value),
            };
            v.insert(
                name.to_owned(),
                serde_json::json!({"value": value, "origins": setting.origins}),
            );
        }
        writeln!(out, "{}", serde_json::Value::Object(v))?;
    } else {
        for (name, setting) in config.settings() {
            writeln!(out, "{name} = {setting}")?;
            writeln!(out, "    # from {}", setting.origins.join(", "))?;
        }
    }
    out.flush()?;
    Ok(())
}
