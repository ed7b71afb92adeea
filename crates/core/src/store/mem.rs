//! [`MemStore`]: a store in memory, for the unit tests of what sits on the
//! [`Store`] trait (the copy engine, closures, `path-info --json`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::{Capabilities, NarStream, PathInfo, Store, StoreError};
use crate::store_path::{StoreDir, StorePath};

/// Paths and their NARs in a map; a trusted source or not.
#[derive(Debug, Default)]
pub(crate) struct MemStore {
    trusted: bool,
    paths: Mutex<BTreeMap<StorePath, (PathInfo, Vec<u8>)>>,
}

impl MemStore {
    /// An empty store, [trusted](Capabilities::trusted_source) as a source
    /// or not.
    pub(crate) fn new(trusted: bool) -> Arc<Self> {
        Arc::new(Self {
            trusted,
            paths: Mutex::default(),
        })
    }

    /// A store holding `infos`, each with an empty NAR.
    pub(crate) fn with_infos(infos: impl IntoIterator<Item = PathInfo>) -> Arc<Self> {
        let store = Self::new(false);
        for info in infos {
            store.insert(info, Vec::new());
        }
        store
    }

    /// Puts `info` and its NAR in, replacing what the path had.
    pub(crate) fn insert(&self, info: PathInfo, nar: Vec<u8>) {
        self.paths
            .lock()
            .unwrap()
            .insert(info.path.clone(), (info, nar));
    }

    /// Takes `path` out.
    pub(crate) fn remove(&self, path: &StorePath) {
        self.paths.lock().unwrap().remove(path);
    }

    /// The info of `path`, if the store has it.
    pub(crate) fn get(&self, path: &StorePath) -> Option<PathInfo> {
        self.paths.lock().unwrap().get(path).map(|(i, _)| i.clone())
    }
}

#[async_trait::async_trait]
impl Store for MemStore {
    fn url(&self) -> &str {
        "mem://"
    }

    fn store_dir(&self) -> &StoreDir {
        static DIR: OnceLock<StoreDir> = OnceLock::new();
        DIR.get_or_init(StoreDir::default)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            trusted_source: self.trusted,
            keeps_signatures: true,
            ..Capabilities::default()
        }
    }

    async fn query_path_infos(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        Ok(paths
            .iter()
            .filter_map(|p| self.get(p).map(|i| (p.clone(), i)))
            .collect())
    }

    async fn nar(&self, info: &PathInfo) -> Result<NarStream, StoreError> {
        let nar = self.paths.lock().unwrap()[&info.path].1.clone();
        Ok(Box::pin(std::io::Cursor::new(nar)))
    }

    async fn add_path(&self, info: &PathInfo, mut nar: NarStream) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut nar, &mut bytes)
            .await
            .map_err(|e| StoreError::from_stream(e, "reading", "mem://"))?;
        self.insert(info.clone(), bytes);
        Ok(())
    }
}
