//! nixferry's own remote protocol (docs/formats.md §7): `nixferry remote`
//! on the far end of an ssh connection, instead of `nix-store --serve`.
//!
//! One connection carries everything: a batched question for a whole
//! closure (which paths the remote has, how much of each missing one it
//! kept from an interrupted try, and which similar path it has to send a
//! delta against), many paths at once as multiplexed streams, each
//! zstd-compressed at a level that follows the link, or as a delta
//! against a base both ends have (§8). The remote writes what it receives
//! to a spool file, checks it against the path's `narHash` and `narSize`,
//! and only then imports it into its store; an add cut off by a broken
//! connection resumes from the end of the spool file.
//!
//! An `ssh://` URL ([`open_ssh`]) speaks this protocol when the remote has
//! `nixferry` on its `PATH` (or `remote-program` names it), and the serve
//! protocol otherwise, saying so once.
//!
//! # Untrusted peers
//!
//! Neither end trusts the other: frames and messages are bounded before
//! anything is allocated ([`wire`]), a reply may only concern what was
//! asked, NARs pulled from the remote are checked by the copy engine like
//! any source's, and the remote imports nothing that does not match its
//! info.

#[cfg(feature = "ssh")]
mod client;
mod codec;
mod mux;
#[cfg(feature = "local")]
mod server;
pub mod wire;

use std::fmt;
use std::sync::Arc;

#[cfg(feature = "ssh")]
pub use client::FerryStore;
#[cfg(feature = "local")]
pub use server::{serve_remote, RemoteOptions};

#[cfg(feature = "ssh")]
pub use auto::open_ssh;

/// Decompresses a plain zstd stream as the protocol carries it, giving at
/// most `limit` bytes (for the fuzz target).
#[doc(hidden)]
pub fn decompress_into(
    input: impl std::io::Read,
    out: impl std::io::Write,
    limit: u64,
) -> std::io::Result<u64> {
    codec::decompress_to(input, out, limit)
}

#[cfg(feature = "ssh")]
mod auto {
    use std::collections::{BTreeMap, BTreeSet};

    use tokio::sync::OnceCell;

    use super::client::{ConnectError, FerryStore};
    use super::{fmt, Arc};
    use crate::store::serve::process::shell_quote;
    use crate::store::serve::ServeStore;
    use crate::store::{Capabilities, NarStream, PathInfo, Store, StoreError, StoreUrl};
    use crate::store_path::{StoreDir, StorePath};

    /// Opens the store of an `ssh://` URL: [`ServeStore`]'s parameters,
    /// and
    /// - `remote-program`: unset, the remote runs `nixferry remote` if it
    ///   has `nixferry` on its `PATH` and `nix-store --serve --write`
    ///   otherwise (one warning says so); a program named `nixferry` (as
    ///   a path or not) is run as `<program> remote`; any other is a serve
    ///   protocol server, as in Nix;
    /// - `delta`: `false` sends every path whole (compressed), never as a
    ///   delta (default `true`);
    /// - `delta-base`: a store path or profile on the remote (such as
    ///   `/nix/var/nix/profiles/system`) whose closure holds the
    ///   preferred bases for deltas; several separated by commas.
    ///
    /// # Errors
    /// As [`ServeStore::open`], and a bad `delta` value.
    pub fn open_ssh(url: &StoreUrl) -> Result<Arc<dyn Store>, StoreError> {
        let serve = ServeStore::open(url)?;
        let delta = url.bool_param("delta", true)?;
        let bases: Vec<String> = url
            .param("delta-base")
            .unwrap_or_default()
            .split(',')
            .filter(|b| !b.is_empty())
            .map(str::to_owned)
            .collect();
        let program = url.param("remote-program").filter(|p| !p.trim().is_empty());
        let store = url
            .param("remote-store")
            .filter(|s| !s.is_empty())
            .map(|s| format!(" --store {}", shell_quote(s)))
            .unwrap_or_default();
        let names_nixferry = |p: &str| {
            p.split_whitespace()
                .next()
                .and_then(|first| first.rsplit('/').next())
                == Some("nixferry")
        };
        let (command, forced) = match program {
            Some(p) if names_nixferry(p) => (format!("{p} remote{store}"), true),
            Some(_) => return Ok(Arc::new(serve)),
            None => {
                let script = format!(
                    "if command -v nixferry >/dev/null 2>&1; then exec nixferry remote{store}; \
                     else exec nix-store --serve --write{store}; fi"
                );
                (format!("sh -c {}", shell_quote(&script)), false)
            }
        };
        let ferry = FerryStore::new(
            url.as_str().to_owned(),
            serve.launcher_with(&command),
            delta,
            bases,
        );
        Ok(Arc::new(SshStore {
            serve,
            ferry,
            forced,
            mode: OnceCell::new(),
        }))
    }

    /// An `ssh://` store that speaks nixferry's protocol if the remote
    /// can, the serve protocol otherwise.
    pub(super) struct SshStore {
        serve: ServeStore,
        ferry: FerryStore,
        forced: bool,
        /// Whether the remote speaks nixferry's protocol, once known.
        mode: OnceCell<bool>,
    }

    impl fmt::Debug for SshStore {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("SshStore")
                .field("ferry", &self.ferry)
                .field("serve", &self.serve)
                .finish_non_exhaustive()
        }
    }

    impl SshStore {
        async fn pick(&self) -> Result<&dyn Store, StoreError> {
            let ferry = self
                .mode
                .get_or_try_init(|| async {
                    match self.ferry.conn().await {
                        Ok(_) => Ok(true),
                        Err(ConnectError::NoFerry(process, stdout, stdin)) if !self.forced => {
                            // The server that answered goes on as the
                            // first serve protocol connection.
                            self.serve.adopt(process, stdout, stdin).await?;
                            eprintln!(
                                "warning: '{}' has no nixferry: copying with nix-store --serve \
                                 (uncompressed, no resume, no deltas); install nixferry there \
                                 to get them",
                                self.ferry.url()
                            );
                            Ok(false)
                        }
                        Err(ConnectError::NoFerry(..)) => Err(StoreError::Remote {
                            store: self.ferry.url().to_owned(),
                            message: "remote-program speaks nix-store --serve, not nixferry remote"
                                .to_owned(),
                        }),
                        Err(ConnectError::Store(e)) => Err(e),
                    }
                })
                .await?;
            Ok(if *ferry { &self.ferry } else { &self.serve })
        }

        fn known(&self) -> &dyn Store {
            match self.mode.get() {
                Some(true) => &self.ferry,
                _ => &self.serve,
            }
        }
    }

    #[async_trait::async_trait]
    impl Store for SshStore {
        fn url(&self) -> &str {
            self.serve.url()
        }

        fn store_dir(&self) -> &StoreDir {
            self.serve.store_dir()
        }

        /// The serve protocol's until the remote is known.
        fn capabilities(&self) -> Capabilities {
            self.known().capabilities()
        }

        async fn query_path_infos(
            &self,
            paths: &[StorePath],
        ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
            self.pick().await?.query_path_infos(paths).await
        }

        async fn query_valid_paths(
            &self,
            paths: &[StorePath],
        ) -> Result<BTreeSet<StorePath>, StoreError> {
            self.pick().await?.query_valid_paths(paths).await
        }

        async fn query_derivation_outputs(
            &self,
            drvs: &[StorePath],
        ) -> Result<Vec<StorePath>, StoreError> {
            self.pick().await?.query_derivation_outputs(drvs).await
        }

        async fn substitute_paths(
            &self,
            paths: &[StorePath],
        ) -> Result<BTreeSet<StorePath>, StoreError> {
            self.pick().await?.substitute_paths(paths).await
        }

        async fn query_closure(
            &self,
            roots: &[StorePath],
        ) -> Result<Option<BTreeMap<StorePath, PathInfo>>, StoreError> {
            self.pick().await?.query_closure(roots).await
        }

        async fn nar(&self, info: &PathInfo) -> Result<NarStream, StoreError> {
            self.pick().await?.nar(info).await
        }

        async fn add_path(&self, info: &PathInfo, nar: NarStream) -> Result<(), StoreError> {
            self.pick().await?.add_path(info, nar).await
        }

        async fn query_path_from_hash_part(
            &self,
            hash: &str,
        ) -> Result<Option<PathInfo>, StoreError> {
            self.pick().await?.query_path_from_hash_part(hash).await
        }

        async fn close(&self) {
            self.known().close().await;
        }
    }
}
