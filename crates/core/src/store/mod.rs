//! Stores: places that hold store paths.
//!
//! [`file`] is a binary cache in a local directory, in exactly the layout
//! `nix copy --to file://` writes (SPEC §3).

pub mod file;
