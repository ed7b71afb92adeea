//! The machine's Nix store, or a chroot store, read straight from its SQLite
//! database and its files (docs/formats.md §6). No `nix` binary is needed.
//!
//! [`LocalStore`] answers path-info questions from `<state>/db/db.sqlite`
//! and streams NARs by dumping `<real store dir>/<path>`. Adding paths goes
//! through Nix itself: the store runs `nix-store --serve --write` (with
//! `--store` for a chroot store) when it is first written to and hands it
//! the paths over the serve protocol ([`super::serve`]), so Nix registers
//! them, takes the locks and keeps the garbage collector informed, exactly
//! as when `nix-copy-closure` delivers them. A chroot store that does not
//! exist yet is created with `nix-store --init`, as Nix creates one when it
//! opens it.
//!
//! # Reading beside a running Nix
//!
//! The database is opened read-only (`file:…?mode=ro`), once per store, and
//! every batch of queries runs in one read transaction, so it sees one
//! consistent snapshot: Nix registers a path and its references in one
//! transaction, and a reader in WAL mode neither blocks Nix nor is blocked
//! by it (docs/formats.md §6.5). Queries run on tokio's blocking pool.
//!
//! Without write access to the database directory, SQLite can read a WAL
//! database only while some Nix process has it open (it needs the `-shm`
//! file). Opening then fails with an error that says so; `?read-only=true`
//! opens the database as immutable instead, which is only safe when no Nix
//! process can be writing to it (a read-only mount, a stopped daemon).
//!
//! A valid path is *registered*; reading the database does not keep it
//! alive. A garbage collection running during a copy can delete a path
//! being dumped, which then fails with an I/O error.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension as _};

use super::chunks::{blocking_chunks, Chunks};
use super::serve::ServeStore;
use super::{Capabilities, NarStream, PathInfo, Store, StoreError, StoreUrl};
use crate::hash::NixHash;
use crate::nar::{self, NarError};
use crate::store_path::{ContentAddress, StoreDir, StorePath};

/// The only database schema version this backend reads: that of Nix 2.0
/// through current Nix (docs/formats.md §6.1).
pub const SCHEMA_VERSION: &str = "10";

/// How long a query waits for a lock before it fails. SQLite readers in
/// WAL mode wait only during recovery or a checkpoint restart; Nix itself
/// waits an hour (docs/formats.md §6.1), and so do we.
const BUSY_TIMEOUT: Duration = Duration::from_secs(3600);

/// The `ValidPaths` columns of a path-info row (docs/formats.md §6.3), then the id of
/// one reference (NULL for a path without references). A path with `n`
/// references gives `n` rows; [`Collector`] folds them back together.
macro_rules! info_columns {
    () => {
        "SELECT v.id, v.path, v.hash, v.registrationTime, v.deriver, v.narSize, \
         v.ultimate, v.sigs, v.ca, r.reference "
    };
}

/// One path and its references (docs/formats.md §6.4).
/// With the reference's path too, so that no query per reference follows.
const PATH_INFO_SQL: &str = concat!(
    info_columns!(),
    ", rv.path FROM ValidPaths v LEFT JOIN Refs r ON r.referrer = v.id ",
    "LEFT JOIN ValidPaths rv ON rv.id = r.reference WHERE v.path = ?1"
);

/// The path with a hash part, as [`PATH_INFO_SQL`]: full paths from
/// `?1` (`<store dir>/<hash part>-`) up to `?2` (the same ending in `.`,
/// the character after `-`), a range the unique index on `path` answers
/// (Nix's `queryPathFromHashPart` asks the same index).
const HASH_PART_SQL: &str = concat!(
    info_columns!(),
    ", rv.path FROM ValidPaths v LEFT JOIN Refs r ON r.referrer = v.id ",
    "LEFT JOIN ValidPaths rv ON rv.id = r.reference WHERE v.path >= ?1 AND v.path < ?2"
);

/// The path of a row, for references outside the rows read.
const PATH_BY_ID_SQL: &str = "SELECT path FROM ValidPaths WHERE id = ?1";

/// Whether one path is valid.
const VALID_SQL: &str = "SELECT 1 FROM ValidPaths WHERE path = ?1";

/// The valid outputs of one derivation (docs/formats.md §6.3: `DerivationOutputs`).
const OUTPUTS_SQL: &str = concat!(
    "SELECT o.path FROM ValidPaths d JOIN DerivationOutputs o ON o.drv = d.id ",
    "WHERE d.path = ?1 AND EXISTS (SELECT 1 FROM ValidPaths v WHERE v.path = o.path)"
);

/// The paths registered after row `?1`, oldest first, at most `?2`:
/// `id` is an autoincrement key (docs/formats.md §6.2), so a path
/// registered later has a larger id, and Nix registers in transactions
/// that SQLite runs one after another, so a reader never sees a row
/// before those with smaller ids.
const REGISTERED_AFTER_SQL: &str =
    "SELECT id, path FROM ValidPaths WHERE id > ?1 ORDER BY id LIMIT ?2";

/// The id of the path registered last: 0 for an empty store.
const LAST_REGISTERED_SQL: &str = "SELECT coalesce(max(id), 0) FROM ValidPaths";

/// The closure of a JSON array of full paths, walked over `Refs` inside
/// SQLite (`UNION` drops ids already seen, so cycles end). `CROSS JOIN`
/// makes SQLite start from the closure instead of scanning `ValidPaths`.
const CLOSURE_SQL: &str = concat!(
    "WITH RECURSIVE closure(id) AS (",
    "SELECT id FROM ValidPaths WHERE path IN (SELECT value FROM json_each(?1))",
    " UNION ",
    "SELECT Refs.reference FROM Refs JOIN closure ON Refs.referrer = closure.id",
    ") ",
    info_columns!(),
    "FROM closure c CROSS JOIN ValidPaths v ON v.id = c.id ",
    "LEFT JOIN Refs r ON r.referrer = v.id"
);

/// A local Nix store: `local`, `/nix/store`, or a chroot store
/// (`local?root=/x`, or just `/x`).
///
/// Reads only: [`Store::add_path`] returns [`StoreError::Unsupported`].
///
/// ```no_run
/// # async fn example() -> Result<(), nixferry::store::StoreError> {
/// use nixferry::store::{local::LocalStore, Store, StoreUrl};
/// let store = LocalStore::open(&StoreUrl::parse("local")?)?;
/// let path = store.store_dir().parse("/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt")?;
/// let infos = store.query_path_infos(&[path]).await?;
/// # Ok(()) }
/// ```
pub struct LocalStore {
    inner: Arc<Inner>,
}

/// What the blocking threads share.
struct Inner {
    url: String,
    store_dir: StoreDir,
    real_dir: PathBuf,
    db_path: PathBuf,
    /// How connections are opened.
    mode: Access,
    /// Idle connections: queries on several threads each take one (or
    /// open one), so that they run in parallel.
    conns: Mutex<Vec<Connection>>,
    /// The `--store` argument that gives Nix this store (`None` for the
    /// machine's own).
    nix_store_arg: Option<String>,
    /// `nix-store --serve --write`, started when the store is first
    /// written to.
    writer: std::sync::OnceLock<ServeStore>,
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("url", &self.inner.url)
            .field("store_dir", &self.inner.store_dir)
            .field("real_dir", &self.inner.real_dir)
            .field("db_path", &self.inner.db_path)
            .finish_non_exhaustive()
    }
}

impl LocalStore {
    /// Opens the store a `local` URL names and checks its database.
    ///
    /// Parameters, as in Nix 2.8's `LocalFSStoreConfig`:
    /// - `root`: a chroot store; the state directory becomes
    ///   `<root>/nix/var/nix` and the files `<root>/nix/store`, while the
    ///   logical store directory stays `/nix/store`;
    /// - `store`: the logical store directory (default `/nix/store`);
    /// - `state`: the state directory holding `db/` (default
    ///   `/nix/var/nix`, or as above);
    /// - `real`: where the store's files are (default the store directory,
    ///   or as above);
    /// - `read-only=true`: open the database as immutable (no locking, no
    ///   WAL), for when no Nix process can be writing to it.
    ///
    /// `log`, `require-sigs` and `trusted` are accepted and ignored: they
    /// matter only for writing. Nix's `NIX_STORE_DIR` and `NIX_STATE_DIR`
    /// environment variables are not read.
    ///
    /// # Errors
    /// [`StoreError::Url`] for a bad parameter value; [`StoreError::Io`]
    /// when the schema file or database cannot be read (with a hint when
    /// permissions are at fault, docs/formats.md §6.5); [`StoreError::Corrupt`] when
    /// the schema version is not 10; [`StoreError::Database`] when SQLite
    /// fails otherwise.
    pub fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        let root = url
            .param("root")
            .filter(|r| !r.is_empty())
            .map(|r| absolute(url, "root", r))
            .transpose()?;
        let store_dir = match url.param("store") {
            Some(dir) => StoreDir::new(dir).map_err(|_| {
                url.bad_value(
                    "store",
                    dir,
                    "expected an absolute directory such as /nix/store",
                )
            })?,
            None => StoreDir::default(),
        };
        let state_dir = match (url.param("state"), &root) {
            (Some(dir), _) => absolute(url, "state", dir)?,
            (None, Some(root)) => root.join("nix/var/nix"),
            (None, None) => PathBuf::from("/nix/var/nix"),
        };
        // Nix 2.8 puts a chroot store's files at `<root>/nix/store` even
        // when `store=` names another logical directory.
        let real_dir = match (url.param("real"), &root) {
            (Some(dir), _) => absolute(url, "real", dir)?,
            (None, Some(root)) => root.join("nix/store"),
            (None, None) => PathBuf::from(store_dir.as_str()),
        };
        let immutable = url.bool_param("read-only", false)?;
        let nix_store_arg = root.as_ref().map(|root| {
            let mut arg = format!("local?root={}", root.display());
            for param in ["store", "state", "real"] {
                if let Some(v) = url.param(param) {
                    arg.push_str(&format!("&{param}={v}"));
                }
            }
            arg
        });

        let db_dir = state_dir.join("db");
        if let (Some(arg), false) = (&nix_store_arg, db_dir.exists()) {
            init_chroot_store(arg);
        }
        check_schema(url.as_str(), &db_dir.join("schema"))?;
        let db_path = db_dir.join("db.sqlite");
        // Opening the file first also gives a better message than SQLite's
        // "unable to open database file".
        let wal = uses_wal(&db_path)?;
        let mode = if immutable {
            Access::Immutable
        } else if wal {
            Access::Wal
        } else {
            Access::Rollback
        };
        let conn = open_db(&db_path, mode)?;
        Ok(Self {
            inner: Arc::new(Inner {
                url: url.as_str().to_owned(),
                store_dir,
                real_dir,
                db_path,
                mode,
                conns: Mutex::new(vec![conn]),
                nix_store_arg,
                writer: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The `nix-store --serve --write` process paths are added through,
    /// started on first use.
    fn writer(&self) -> &ServeStore {
        self.inner.writer.get_or_init(|| {
            let mut args = vec!["--serve".to_owned(), "--write".to_owned()];
            if let Some(arg) = &self.inner.nix_store_arg {
                args.extend(["--store".to_owned(), arg.clone()]);
            }
            ServeStore::local_command(
                "nix-store",
                args,
                self.inner.store_dir.clone(),
                self.inner.url.clone(),
            )
        })
    }

    /// The directory the store's files are in: the store directory, or
    /// `<root>/nix/store` for a chroot store.
    pub fn real_store_dir(&self) -> &Path {
        &self.inner.real_dir
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.inner.db_path
    }

    /// The path infos of the closure of `roots` (the roots, their
    /// references, theirs, and so on), in one recursive query over `Refs`
    /// in one read transaction. Faster than walking the closure with
    /// [`Store::query_path_infos`] (`crate::closure` does that for any
    /// store), with the same result.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] naming a root that is not valid;
    /// [`StoreError::Database`] or [`StoreError::Corrupt`] when reading
    /// fails.
    pub async fn closure(
        &self,
        roots: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        let roots = roots.to_vec();
        self.with_db(move |inner, conn| {
            let json = json_array(roots.iter().map(|p| inner.store_dir.full(p)));
            let infos = read_tx(inner, conn, |tx| {
                let mut stmt = tx
                    .prepare_cached(CLOSURE_SQL)
                    .map_err(|e| inner.db_error(e))?;
                let mut rows = Collector::new(inner);
                rows.add(stmt.query([json]).map_err(|e| inner.db_error(e))?)?;
                rows.finish(tx)
            })?;
            if let Some(missing) = roots.iter().find(|r| !infos.contains_key(*r)) {
                return Err(inner.not_found(missing));
            }
            Ok(infos)
        })
        .await
    }

    /// The id of the path registered last (0 for an empty store): where
    /// [`registered_after`](Self::registered_after) starts to see only
    /// what comes next.
    ///
    /// # Errors
    /// [`StoreError::Database`] when reading fails.
    pub async fn last_registered(&self) -> Result<i64, StoreError> {
        self.with_db(|inner, conn| {
            conn.query_row(LAST_REGISTERED_SQL, [], |row| row.get(0))
                .map_err(|e| inner.db_error(e))
        })
        .await
    }

    /// Up to `limit` paths registered after the path with id `after`,
    /// oldest first, with their ids: the paths that became valid since
    /// then and still are (a path registered and deleted in between is
    /// not seen). Following the store is asking this again with the last
    /// id seen.
    ///
    /// # Errors
    /// [`StoreError::Database`] when reading fails; [`StoreError::Corrupt`]
    /// for a row that does not hold a store path.
    pub async fn registered_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, StorePath)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_db(move |inner, conn| {
            let mut stmt = conn
                .prepare_cached(REGISTERED_AFTER_SQL)
                .map_err(|e| inner.db_error(e))?;
            let rows = stmt
                .query_map([after, limit], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(|e| inner.db_error(e))?;
            rows.map(|row| {
                let (id, full): (i64, String) = row.map_err(|e| inner.db_error(e))?;
                let path = inner
                    .store_dir
                    .parse(&full)
                    .map_err(|e| inner.corrupt(&full, "path", &full, e))?;
                Ok((id, path))
            })
            .collect()
        })
        .await
    }

    /// Runs `work` with a connection of its own on a blocking thread: an
    /// idle one, or a new one. At most [`MAX_IDLE_CONNECTIONS`] are kept.
    async fn with_db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner, &mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || with_conn(&inner, work))
            .await
            .map_err(|e| {
                let db = self.inner.db_path.display();
                StoreError::task_died(format_args!("querying the Nix database '{db}'"), e)
            })?
    }

    /// [`Store::query_path_from_hash_part`] on the calling thread, which
    /// it blocks for one read of the database's index (tens of
    /// microseconds when the database is in the page cache): for a caller
    /// answering many small requests, such as a server, cheaper than the
    /// hand-off to a blocking thread and back.
    ///
    /// # Errors
    /// As [`Store::query_path_from_hash_part`].
    pub fn query_path_from_hash_part_now(
        &self,
        hash: &str,
    ) -> Result<Option<PathInfo>, StoreError> {
        with_conn(&self.inner, |inner, conn| {
            path_from_hash_part(inner, conn, hash)
        })
    }

    /// The NAR of a path the store has, as [`Store::nar`], in the chunks
    /// (up to 256 KiB) it is dumped in: for a caller that passes them on
    /// whole, such as a server, without copying them into its own
    /// buffers.
    ///
    /// # Errors
    /// As [`Store::nar`].
    pub async fn nar_chunks(&self, info: &PathInfo) -> Result<Chunks, StoreError> {
        let file = self.inner.real_dir.join(info.path.as_str());
        tokio::fs::symlink_metadata(&file)
            .await
            .map_err(|source| StoreError::Io {
                what: "reading store path",
                path: file.display().to_string(),
                source,
            })?;
        // The reader checks the hash; hashing here too would only cost time.
        Ok(blocking_chunks(move |out| {
            nar::dump_unhashed(&file, out).map(drop).map_err(nar_to_io)
        }))
    }
}

/// The path with hash part `hash`, read through `conn`.
fn path_from_hash_part(
    inner: &Inner,
    conn: &mut Connection,
    hash: &str,
) -> Result<Option<PathInfo>, StoreError> {
    if !crate::store_path::is_hash_part(hash) {
        return Ok(None);
    }
    let dir = inner.store_dir.as_str();
    let (from, to) = (format!("{dir}/{hash}-"), format!("{dir}/{hash}."));
    let infos = read_tx(inner, conn, |tx| {
        let mut stmt = tx
            .prepare_cached(HASH_PART_SQL)
            .map_err(|e| inner.db_error(e))?;
        let mut rows = Collector::new(inner);
        rows.add(stmt.query([&from, &to]).map_err(|e| inner.db_error(e))?)?;
        drop(stmt);
        rows.finish(tx)
    })?;
    Ok(infos.into_values().next())
}

/// Runs `work` with a connection of its own on this thread: an idle one,
/// or a new one. At most [`MAX_IDLE_CONNECTIONS`] are kept.
fn with_conn<T>(
    inner: &Inner,
    work: impl FnOnce(&Inner, &mut Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let idle = inner
        .conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    let mut conn = match idle {
        Some(c) => c,
        None => open_db(&inner.db_path, inner.mode)?,
    };
    // A panic in `work` drops the connection, and with it the transaction
    // it held.
    let result = work(inner, &mut conn);
    let mut conns = inner.conns.lock().unwrap_or_else(PoisonError::into_inner);
    if conns.len() < MAX_IDLE_CONNECTIONS {
        conns.push(conn);
    }
    result
}

/// Creates a chroot store that does not exist yet, as Nix does when it
/// opens one. Failing (no `nix-store` here) is left to the schema check
/// that follows, which says what is missing.
fn init_chroot_store(nix_store_arg: &str) {
    let _ = std::process::Command::new("nix-store")
        .args(["--init", "--store", nix_store_arg])
        .stdin(std::process::Stdio::null())
        .status();
}

/// Runs `work` in one read transaction: one consistent snapshot of the
/// database (docs/formats.md §6.5).
fn read_tx<T>(
    inner: &Inner,
    conn: &mut Connection,
    work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = conn.transaction().map_err(|e| inner.db_error(e))?;
    let result = work(&tx)?;
    tx.commit().map_err(|e| inner.db_error(e))?;
    Ok(result)
}

/// A path-valued URL parameter, which must be absolute.
fn absolute(url: &StoreUrl, name: &str, value: &str) -> Result<PathBuf, StoreError> {
    if value.starts_with('/') {
        Ok(PathBuf::from(value))
    } else {
        Err(url
            .bad_value(name, value, "expected an absolute path")
            .into())
    }
}

/// Refuses a database whose `schema` file does not say 10 (docs/formats.md §6.5):
/// an older one needs a migration by Nix, a newer one may mean anything.
fn check_schema(url: &str, file: &Path) -> Result<(), StoreError> {
    let found = std::fs::read_to_string(file).map_err(|source| StoreError::Io {
        what: "reading the Nix database schema version (is this a Nix store?)",
        path: file.display().to_string(),
        source,
    })?;
    if found.trim() == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            store: url.to_owned(),
            message: format!(
                "'{}' says database schema version '{}'; nixferry reads only version \
                 {SCHEMA_VERSION} (Nix 2.x)",
                file.display(),
                found.trim().escape_debug(),
            ),
        })
    }
}

/// Idle database connections kept for later queries.
const MAX_IDLE_CONNECTIONS: usize = 8;

/// How to open the database so as to agree with Nix on locking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// WAL mode, Nix's default (`use-sqlite-wal = true`).
    Wal,
    /// A rollback journal (`use-sqlite-wal = false`): Nix then uses the
    /// `unix-dotfile` VFS, and readers must too (docs/formats.md §6.5).
    Rollback,
    /// `?read-only=true`: no locking at all.
    Immutable,
}

/// Whether the database is in WAL mode: bytes 18 and 19 of its header
/// (the file format versions) are 2 in WAL mode, 1 otherwise. An empty
/// file (a database never written to) counts as WAL, Nix's default.
fn uses_wal(db_path: &Path) -> Result<bool, StoreError> {
    use std::io::Read as _;
    let io_err = |source| StoreError::Io {
        what: "opening the Nix database",
        path: db_path.display().to_string(),
        source,
    };
    let mut header = Vec::with_capacity(20);
    std::fs::File::open(db_path)
        .and_then(|f| f.take(20).read_to_end(&mut header))
        .map_err(io_err)?;
    Ok(header.get(18..20).is_none_or(|v| v != [1, 1]))
}

/// Opens the database read-only and reads from it once, so that
/// permission problems show now rather than at the first query.
fn open_db(db_path: &Path, mode: Access) -> Result<Connection, StoreError> {
    let db_error = |e| db_error(db_path, e);
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(sqlite_uri(db_path, mode), flags).map_err(db_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
    conn.query_row("SELECT 1 FROM ValidPaths LIMIT 1", [], |_| Ok(()))
        .optional()
        .map_err(db_error)?;
    Ok(conn)
}

/// Wraps a SQLite error, explaining the permission cases of docs/formats.md §6.5.
fn db_error(db_path: &Path, e: rusqlite::Error) -> StoreError {
    let db = db_path.display().to_string();
    let dir = db_path.parent().unwrap_or(db_path).display();
    let hint = match e.sqlite_error_code() {
        Some(ErrorCode::ReadOnly) => format!(
            "{e}: without write access to '{dir}', SQLite can read the database only while \
             a Nix process has it open; run as root or as the store's owner, or add \
             '?read-only=true' to the store URL if no Nix process can be writing to it"
        ),
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            format!("{e}: check that the database and '{dir}' are readable by this user")
        }
        _ => return StoreError::Database { db, source: e },
    };
    StoreError::Io {
        what: "opening the Nix database read-only",
        path: db,
        source: io::Error::new(io::ErrorKind::PermissionDenied, hint),
    }
}

/// `file:<path>?mode=ro…`, with the path percent-encoded as SQLite's URI
/// parser wants (`?`, `#` and `%` would otherwise end or escape it).
fn sqlite_uri(path: &Path, mode: Access) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str(match mode {
        Access::Wal => "?mode=ro",
        Access::Rollback => "?mode=ro&vfs=unix-dotfile",
        Access::Immutable => "?mode=ro&immutable=1",
    });
    uri
}

/// A JSON array of strings, for `json_each`.
fn json_array(items: impl Iterator<Item = String>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

impl Inner {
    fn db_error(&self, e: rusqlite::Error) -> StoreError {
        db_error(&self.db_path, e)
    }

    fn not_found(&self, path: &StorePath) -> StoreError {
        StoreError::NotFound {
            store: self.url.clone(),
            path: self.store_dir.full(path),
        }
    }

    fn corrupt(&self, path: &str, what: &str, value: &str, why: impl fmt::Display) -> StoreError {
        StoreError::Corrupt {
            store: self.url.clone(),
            message: format!(
                "path '{path}' has an invalid {what} '{value}' in the database: {why}"
            ),
        }
    }

    /// The `ValidPaths` columns of a row (docs/formats.md §6.3), without references.
    fn row_to_info(&self, row: &rusqlite::Row<'_>) -> Result<PathInfo, StoreError> {
        let get_err = |e| self.db_error(e);
        let full: String = row.get(1).map_err(get_err)?;
        let path = self
            .store_dir
            .parse(&full)
            .map_err(|e| self.corrupt(&full, "path", &full, e))?;
        let hash: String = row.get(2).map_err(get_err)?;
        let nar_hash = NixHash::parse(&hash).map_err(|e| self.corrupt(&full, "hash", &hash, e))?;
        let registration_time: i64 = row.get(3).map_err(get_err)?;
        let registration_time = u64::try_from(registration_time).map_err(|e| {
            self.corrupt(&full, "registrationTime", &registration_time.to_string(), e)
        })?;
        let deriver = match row.get::<_, Option<String>>(4).map_err(get_err)? {
            Some(d) if !d.is_empty() => Some(
                self.store_dir
                    .parse(&d)
                    .map_err(|e| self.corrupt(&full, "deriver", &d, e))?,
            ),
            _ => None,
        };
        // NULL means unknown, which Nix reads as 0.
        let nar_size: i64 = row.get::<_, Option<i64>>(5).map_err(get_err)?.unwrap_or(0);
        let nar_size = u64::try_from(nar_size)
            .map_err(|e| self.corrupt(&full, "narSize", &nar_size.to_string(), e))?;
        let ultimate = row.get::<_, Option<i64>>(6).map_err(get_err)?.unwrap_or(0) != 0;
        let signatures = row
            .get::<_, Option<String>>(7)
            .map_err(get_err)?
            .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let ca = match row.get::<_, Option<String>>(8).map_err(get_err)? {
            Some(ca) if !ca.is_empty() => {
                Some(ContentAddress::parse(&ca).map_err(|e| self.corrupt(&full, "ca", &ca, e))?)
            }
            _ => None,
        };
        Ok(PathInfo {
            registration_time,
            deriver,
            signatures,
            ca,
            ultimate,
            ..PathInfo::new(path, nar_hash, nar_size)
        })
    }
}

/// Folds path-info rows ([`info_columns!`], in any order) into path infos.
struct Collector<'a> {
    inner: &'a Inner,
    infos: HashMap<i64, PathInfo>,
    /// (referrer, reference) ids.
    refs: Vec<(i64, i64)>,
    /// The full paths of references, by id, where the rows named them.
    named: HashMap<i64, String>,
}

impl<'a> Collector<'a> {
    fn new(inner: &'a Inner) -> Self {
        Self {
            inner,
            infos: HashMap::new(),
            refs: Vec::new(),
            named: HashMap::new(),
        }
    }

    fn add(&mut self, mut rows: rusqlite::Rows<'_>) -> Result<(), StoreError> {
        let inner = self.inner;
        while let Some(row) = rows.next().map_err(|e| inner.db_error(e))? {
            let id: i64 = row.get(0).map_err(|e| inner.db_error(e))?;
            if let Entry::Vacant(entry) = self.infos.entry(id) {
                entry.insert(inner.row_to_info(row)?);
            }
            if let Some(reference) = row.get(9).map_err(|e| inner.db_error(e))? {
                self.refs.push((id, reference));
                // The reference's path, in rows that have it.
                if row.as_ref().column_count() > 10 {
                    let full: Option<String> = row.get(10).map_err(|e| inner.db_error(e))?;
                    if let Some(full) = full {
                        self.named.entry(reference).or_insert(full);
                    }
                }
            }
        }
        Ok(())
    }

    /// The path infos with their references, sorted. References to rows
    /// not read are looked up in `tx`, the transaction the rows came from.
    fn finish(
        mut self,
        tx: &rusqlite::Transaction<'_>,
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        let inner = self.inner;
        let mut by_id = tx
            .prepare_cached(PATH_BY_ID_SQL)
            .map_err(|e| inner.db_error(e))?;
        let mut outside: HashMap<i64, StorePath> = HashMap::new();
        for (referrer, reference) in std::mem::take(&mut self.refs) {
            let path = match (self.infos.get(&reference), outside.entry(reference)) {
                (Some(info), _) => info.path.clone(),
                (None, Entry::Occupied(known)) => known.get().clone(),
                (None, Entry::Vacant(slot)) => {
                    let full: Option<String> = match self.named.remove(&reference) {
                        Some(full) => Some(full),
                        None => by_id
                            .query_row([reference], |row| row.get(0))
                            .optional()
                            .map_err(|e| inner.db_error(e))?,
                    };
                    let referrer = &self.infos[&referrer].path;
                    let full = full.ok_or_else(|| StoreError::Corrupt {
                        store: inner.url.clone(),
                        message: format!(
                            "path '{}' refers to row {reference}, which does not exist",
                            inner.store_dir.full(referrer)
                        ),
                    })?;
                    let path = inner.store_dir.parse(&full).map_err(|e| {
                        inner.corrupt(&inner.store_dir.full(referrer), "reference", &full, e)
                    })?;
                    slot.insert(path).clone()
                }
            };
            if let Some(info) = self.infos.get_mut(&referrer) {
                info.references.push(path);
            }
        }
        Ok(self
            .infos
            .into_values()
            .map(|mut info| {
                info.references.sort();
                info.references.dedup();
                (info.path.clone(), info)
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl Store for LocalStore {
    fn url(&self) -> &str {
        &self.inner.url
    }

    fn store_dir(&self) -> &StoreDir {
        &self.inner.store_dir
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            needs_references_first: true,
            keeps_signatures: true,
            // What a Nix store holds is trusted as Nix trusts it: whoever can
            // read the database and files can change them.
            trusted_source: true,
            ..Capabilities::default()
        }
    }

    async fn substitute_paths(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        self.writer().substitute_paths(paths).await
    }

    async fn query_path_infos(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        let paths = paths.to_vec();
        self.with_db(move |inner, conn| {
            read_tx(inner, conn, |tx| {
                let mut stmt = tx
                    .prepare_cached(PATH_INFO_SQL)
                    .map_err(|e| inner.db_error(e))?;
                let mut rows = Collector::new(inner);
                for path in &paths {
                    rows.add(
                        stmt.query([inner.store_dir.full(path)])
                            .map_err(|e| inner.db_error(e))?,
                    )?;
                }
                drop(stmt);
                rows.finish(tx)
            })
        })
        .await
    }

    async fn query_path_from_hash_part(&self, hash: &str) -> Result<Option<PathInfo>, StoreError> {
        let hash = hash.to_owned();
        self.with_db(move |inner, conn| path_from_hash_part(inner, conn, &hash))
            .await
    }

    async fn query_valid_paths(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        let paths = paths.to_vec();
        self.with_db(move |inner, conn| {
            read_tx(inner, conn, |tx| {
                let mut stmt = tx
                    .prepare_cached(VALID_SQL)
                    .map_err(|e| inner.db_error(e))?;
                let mut valid = BTreeSet::new();
                for path in paths {
                    if stmt
                        .exists([inner.store_dir.full(&path)])
                        .map_err(|e| inner.db_error(e))?
                    {
                        valid.insert(path);
                    }
                }
                Ok(valid)
            })
        })
        .await
    }

    async fn query_derivation_outputs(
        &self,
        drvs: &[StorePath],
    ) -> Result<Vec<StorePath>, StoreError> {
        let drvs = drvs.to_vec();
        self.with_db(move |inner, conn| {
            read_tx(inner, conn, |tx| {
                let mut stmt = tx
                    .prepare_cached(OUTPUTS_SQL)
                    .map_err(|e| inner.db_error(e))?;
                let mut outputs = BTreeSet::new();
                for drv in drvs {
                    let rows = stmt
                        .query_map([inner.store_dir.full(&drv)], |row| row.get::<_, String>(0))
                        .map_err(|e| inner.db_error(e))?;
                    for row in rows {
                        let path = row.map_err(|e| inner.db_error(e))?;
                        outputs.insert(inner.store_dir.parse(&path)?);
                    }
                }
                Ok(outputs.into_iter().collect())
            })
        })
        .await
    }

    async fn query_closure(
        &self,
        roots: &[StorePath],
    ) -> Result<Option<BTreeMap<StorePath, PathInfo>>, StoreError> {
        self.closure(roots).await.map(Some)
    }

    /// Dumps `<real store dir>/<path>` on a blocking thread. The stream
    /// holds at most a few chunks in memory; a failure while dumping is
    /// an error of the stream, never a silently short NAR.
    async fn nar(&self, info: &PathInfo) -> Result<NarStream, StoreError> {
        Ok(self.nar_chunks(info).await?.into_reader())
    }

    /// Hands the path to `nix-store --serve --write`, which checks the
    /// NAR against `info` and registers the path.
    async fn add_path(&self, info: &PathInfo, nar: NarStream) -> Result<(), StoreError> {
        self.writer().add_path(info, nar).await
    }
}

/// A NAR error as the I/O error of a stream, keeping its kind where it has one.
fn nar_to_io(e: NarError) -> io::Error {
    let kind = match &e {
        NarError::Io(source) | NarError::Fs { source, .. } => source.kind(),
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_escapes_what_sqlite_would_read() {
        assert_eq!(
            sqlite_uri(Path::new("/nix/var/nix/db/db.sqlite"), Access::Wal),
            "file:/nix/var/nix/db/db.sqlite?mode=ro"
        );
        assert_eq!(
            sqlite_uri(Path::new("/tmp/a b?#%/db.sqlite"), Access::Immutable),
            "file:/tmp/a%20b%3F%23%25/db.sqlite?mode=ro&immutable=1"
        );
        assert_eq!(
            sqlite_uri(Path::new("/db.sqlite"), Access::Rollback),
            "file:/db.sqlite?mode=ro&vfs=unix-dotfile"
        );
    }

    #[test]
    fn json_array_escapes() {
        assert_eq!(json_array(std::iter::empty()), "[]");
        assert_eq!(
            json_array(["/a".to_owned(), "b\"\\\n".to_owned()].into_iter()),
            r#"["/a","b\"\\\u000a"]"#
        );
    }
}
