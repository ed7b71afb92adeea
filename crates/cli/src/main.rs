//! The `nixferry` command.

fn main() {}
