//! `nixferry narinfo ...`

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use nixferry::narinfo::NarInfo;
use nixferry::signing::TrustedKeys;

use crate::cli::{NarinfoCommand, VerifyArgs};
use crate::exit::Failure;

fn load(path: &Path) -> anyhow::Result<NarInfo> {
    let text = super::read_text(path)?;
    NarInfo::parse(&text).with_context(|| format!("parsing '{}'", path.display()))
}

pub(super) fn run(cmd: NarinfoCommand) -> Result<(), Failure> {
    match cmd {
        NarinfoCommand::Show { file, json } => {
            let info = load(&file)?;
            let text = if json {
                format!("{}\n", show_json(&info))
            } else {
                show_text(&info)
            };
            super::print(&text)?;
            Ok(())
        }
        NarinfoCommand::Sign {
            file,
            secret_key_files,
            in_place,
        } => {
            if in_place && file.as_os_str() == "-" {
                return Err(anyhow::anyhow!(
                    "-i rewrites a file in place: it needs a file, not standard input ('-')"
                )
                .into());
            }
            let mut info = load(&file)?;
            for k in &secret_key_files {
                info.sign(&super::key::load_secret_key(k)?);
            }
            let text = info.render();
            if in_place {
                nixferry::atomic::write_atomic(&file, text.as_bytes())?;
            } else {
                super::print(&text)?;
            }
            Ok(())
        }
        NarinfoCommand::Verify(args) => verify(args),
    }
}

fn show_text(info: &NarInfo) -> String {
    let dir = info.store_dir();
    let mut s = String::new();
    let mut line = |k: &str, v: &dyn std::fmt::Display| s.push_str(&format!("{k:<13} {v}\n"));
    line("path", &dir.display(info.store_path()));
    line("url", &info.url());
    line("compression", &info.compression().name());
    if let Some(h) = info.file_hash() {
        line("file hash", h);
    }
    if let Some(n) = info.file_size() {
        line("file size", &format!("{n} ({})", super::human_bytes(n)));
    }
    line("nar hash", info.nar_hash());
    let n = info.nar_size();
    line("nar size", &format!("{n} ({})", super::human_bytes(n)));
    for r in info.references() {
        line("reference", &dir.display(r));
    }
    if let Some(d) = info.deriver() {
        line("deriver", &dir.display(d));
    }
    if let Some(ca) = info.ca() {
        line("ca", ca);
    }
    for sig in info.signatures() {
        line("signature", &sig);
    }
    line("fingerprint", &info.fingerprint());
    s
}

fn show_json(info: &NarInfo) -> serde_json::Value {
    let dir = info.store_dir();
    serde_json::json!({
        "path": dir.full(info.store_path()),
        "url": info.url(),
        "compression": info.compression().name(),
        "downloadHash": info.file_hash().map(|h| h.to_sri()),
        "downloadSize": info.file_size(),
        "narHash": info.nar_hash().to_sri(),
        "narSize": info.nar_size(),
        "references": info.references().iter().map(|r| dir.full(r)).collect::<Vec<_>>(),
        "deriver": info.deriver().map(|d| dir.full(d)),
        "ca": info.ca().map(|c| c.to_string()),
        "signatures": info.signatures().collect::<Vec<_>>(),
        "fingerprint": info.fingerprint(),
    })
}

/// The keys `--trusted-key` and `--trusted-key-file` name. Unlike `copy`,
/// `narinfo verify` has no default keys: it checks against exactly the
/// keys it is given.
fn trusted_keys(args: &VerifyArgs) -> anyhow::Result<TrustedKeys> {
    super::settings::flag_trusted_keys(&args.trusted_keys, &args.trusted_key_files)?
        .ok_or_else(|| anyhow::anyhow!("no trusted keys: give --trusted-key or --trusted-key-file"))
}

fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let keys = trusted_keys(&args)?;
    let mut all_ok = true;
    let mut out = super::stdout();
    for file in &args.files {
        let info = load(file)?;
        let result = info.verify(&keys);
        all_ok &= result.is_ok();
        let name = file.display();
        if args.json {
            let v = match &result {
                Ok(key) => {
                    serde_json::json!({"file": name.to_string(), "verified": true, "key": key})
                }
                Err(e) => {
                    serde_json::json!({"file": name.to_string(), "verified": false, "reason": e.to_string()})
                }
            };
            writeln!(out, "{v}")?;
        } else {
            match &result {
                Ok(key) => writeln!(out, "{name}: verified by '{key}'")?,
                Err(e) => writeln!(out, "{name}: NOT verified: {e}")?,
            }
        }
    }
    out.flush()?;
    if all_ok {
        Ok(())
    } else {
        Err(Failure::Negative)
    }
}
