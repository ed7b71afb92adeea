//! The machine's Nix store (or a chroot store), read through its SQLite
//! database (SPEC §6). Placeholder while the backend is being written.

use std::collections::BTreeMap;

use super::{Capabilities, NarStream, PathInfo, Store, StoreError, StoreUrl};
use crate::store_path::{StoreDir, StorePath};

/// A local Nix store.
#[derive(Debug)]
pub struct LocalStore {
    url: String,
    store_dir: StoreDir,
}

impl LocalStore {
    /// Opens the store a `local` URL names.
    ///
    /// # Errors
    /// Never yet.
    pub fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        Ok(Self {
            url: url.as_str().to_owned(),
            store_dir: StoreDir::default(),
        })
    }
}

#[async_trait::async_trait]
impl Store for LocalStore {
    fn url(&self) -> &str {
        &self.url
    }
    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn query_path_infos(
        &self,
        _paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        Err(StoreError::Unsupported {
            store: self.url.clone(),
            what: "queries",
        })
    }
    async fn nar(&self, _info: &PathInfo) -> Result<NarStream, StoreError> {
        Err(StoreError::Unsupported {
            store: self.url.clone(),
            what: "reading",
        })
    }
    async fn add_path(&self, _info: &PathInfo, _nar: NarStream) -> Result<(), StoreError> {
        Err(StoreError::Unsupported {
            store: self.url.clone(),
            what: "writing",
        })
    }
}
