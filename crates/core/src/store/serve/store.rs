//! [`ServeStore`]: a Nix store reached through `nix-store --serve --write`,
//! over ssh or as a local child process, with a pool of connections.

use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connection::{AddReplies, AddSender, NarReader, ServeConnection};
use super::process::{
    failure, known_hosts_file, remote_command, shell_quote, ssh_args, wait_exit, Exit, Launcher,
    Process, SshOptions, SshTarget, EXIT_WAIT,
};
use super::ServeError;
use crate::store::url::Scheme;
use crate::store::{Capabilities, NarStream, PathInfo, Store, StoreError, StoreUrl, UrlError};
use crate::store_path::{StoreDir, StorePath};

/// Most connections a store may keep open (`max-connections`).
const MAX_CONNECTIONS: usize = 1024;

/// Connections an `ssh://` store may keep open unless its URL says
/// otherwise: more connections let the server import several paths at
/// once (and a copy runs no more adds at once than a store has
/// connections), and few enough are opened together (only as adds wait
/// for them) to stay well under OpenSSH's `MaxStartups` (10 by default,
/// beyond which unauthenticated connections are dropped at random).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4;

/// The most output [`ServeStore::run_script`] keeps.
const MAX_SCRIPT_OUTPUT: u64 = 1 << 20;

/// A Nix store on another machine (`ssh://[user@]host[:port]`), or one
/// reached by a local `nix-store --serve --write` process, spoken to with
/// the serve protocol (docs/formats.md §5).
///
/// Connections are opened when first needed, up to `max-connections`
/// (default [`DEFAULT_MAX_CONNECTIONS`]) at a time, and kept for reuse;
/// each is one `ssh` (or local) process, killed when its connection is
/// dropped. Questions about many paths are one command each; NARs are
/// streamed both ways. Adds are pipelined: the next path's request and NAR
/// go out on a connection while the server is still importing the ones
/// before, and a further connection is opened only when an add comes
/// while every open one is sending another. A copy runs no more adds at
/// once than the store may have connections.
///
/// Paths are added with AddToStoreNar (ImportPaths for servers older than
/// protocol 2.5). The server checks each NAR's hash but not signatures
/// (docs/formats.md §5.1, trust note), so write access over ssh amounts to write
/// access to the remote store; signatures are kept as given.
///
/// ```no_run
/// # async fn example() -> Result<(), nixferry::store::StoreError> {
/// use nixferry::store::{serve::ServeStore, Store, StoreUrl};
/// let store = ServeStore::open(&StoreUrl::parse("ssh://builder.example?max-connections=4")?)?;
/// let path = store.store_dir().parse("/nix/store/3pl2infwzaw2zw5fxxp3pvm3xasr0w4b-nixspec-hi.txt")?;
/// let valid = store.query_valid_paths(&[path]).await?;
/// # Ok(()) }
/// ```
pub struct ServeStore {
    url: String,
    store_dir: StoreDir,
    launcher: Launcher,
    /// How the server is reached, for [`ServeStore::run_script`]; `None`
    /// for a store run by a given local command.
    shell: Option<Shell>,
    substitute: bool,
    pool: Arc<Pool>,
}

/// What an `ssh://` URL says about the remote side.
#[derive(Debug, Clone)]
struct Shell {
    /// `remote-program`, or `nix-store`.
    program: String,
    /// `remote-store`, if given.
    store: Option<String>,
}

impl fmt::Debug for ServeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeStore")
            .field("url", &self.url)
            .field("store_dir", &self.store_dir)
            .field("command", &self.launcher.argv())
            .field("substitute", &self.substitute)
            .finish_non_exhaustive()
    }
}

/// Idle connections, connections carrying adds, and permits for as many
/// as may be open.
struct Pool {
    idle: Mutex<Vec<Remote>>,
    /// Connections split for pipelined adds, each with adds in flight.
    lanes: Mutex<Vec<Arc<Lane>>>,
    /// Told when a connection's sending half comes free.
    changed: tokio::sync::Notify,
    /// `max-connections`.
    max: usize,
    slots: Arc<Semaphore>,
}

impl Pool {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            lanes: Mutex::new(Vec::new()),
            changed: tokio::sync::Notify::new(),
            max,
            slots: Arc::new(Semaphore::new(max)),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Remote>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Lane>>> {
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection and the process it runs over.
struct Remote {
    conn: ServeConnection<ChildStdout, ChildStdin>,
    process: Process,
}

/// A connection taken from the pool. Dropped, it goes back to the pool if
/// it is idle (every reply read, nothing interrupted), and is killed
/// otherwise.
struct Pooled {
    /// Present until the guard is dropped or fails.
    remote: Option<Remote>,
    pool: Arc<Pool>,
    /// Present until the guard is dropped or split.
    permit: Option<OwnedSemaphorePermit>,
}

impl Pooled {
    /// The connection and its permit, no longer in the pool's care.
    fn take(mut self) -> (Remote, OwnedSemaphorePermit) {
        let remote = self.remote.take();
        let permit = self.permit.take();
        match (remote, permit) {
            (Some(remote), Some(permit)) => (remote, permit),
            _ => unreachable!("a pooled connection is present until dropped"),
        }
    }

    fn remote(&self) -> &Remote {
        self.remote
            .as_ref()
            .expect("a pooled connection is present until dropped")
    }

    fn remote_mut(&mut self) -> &mut Remote {
        self.remote
            .as_mut()
            .expect("a pooled connection is present until dropped")
    }

    /// The error for `error`, with the server's own account of it when the
    /// connection broke; the connection is not reused.
    async fn fail(mut self, store: &str, error: ServeError) -> StoreError {
        match self.remote.take() {
            Some(mut remote) => remote.process.explain(store, error).await,
            None => error.into_store_error(store),
        }
    }
}

impl Deref for Pooled {
    type Target = ServeConnection<ChildStdout, ChildStdin>;

    fn deref(&self) -> &Self::Target {
        &self.remote().conn
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.remote_mut().conn
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(remote) = self.remote.take() {
            if remote.conn.is_idle() {
                self.pool.idle().push(remote);
            }
        }
    }
}

impl ServeStore {
    /// Opens the store an `ssh://[user@]host[:port]` URL names. Nothing is
    /// started until the first operation.
    ///
    /// The system `ssh` runs `<remote-program> --serve --write [--store
    /// <remote-store>]` on the host, with `-x -a -oBatchMode=yes` (no
    /// forwarding, never a prompt), the options in `NIX_SSHOPTS` (split on
    /// whitespace), and the URL's parameters, as in Nix:
    /// - `ssh-key`: an identity file (`-i`);
    /// - `compress=true`: ssh compression (`-C`);
    /// - `remote-program`: instead of `nix-store` (taken as written, so it
    ///   may carry arguments);
    /// - `remote-store`: the store the remote command opens;
    /// - `max-connections`: how many ssh processes may run at once
    ///   (default [`DEFAULT_MAX_CONNECTIONS`], 4). Adds are pipelined on
    ///   each connection, and a further one is opened only when an add
    ///   comes while every open one is sending another, so connections are
    ///   never opened in a burst beyond this number (OpenSSH's
    ///   `MaxStartups` drops unauthenticated connections beyond 10 by
    ///   default);
    /// - `base64-ssh-public-host-key`: the host's key (base64 of a
    ///   `known_hosts` key such as `ssh-ed25519 AAAA…`), which ssh must
    ///   then see (`StrictHostKeyChecking=yes`, with a `known_hosts` file
    ///   of its own).
    ///
    /// As in Nix, the host `localhost` (exactly that) runs the command
    /// locally with `sh -c` instead of ssh. `trusted` is accepted and
    /// ignored.
    ///
    /// # Errors
    /// [`StoreError::Url`] for a malformed host or a bad parameter value;
    /// [`StoreError::Io`] when the `known_hosts` file cannot be written.
    pub fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        let malformed = |reason| UrlError::Malformed {
            url: url.as_str().to_owned(),
            reason,
        };
        if url.scheme() != Scheme::Ssh {
            return Err(malformed("not an ssh:// URL").into());
        }
        let target = SshTarget::parse(url.location()).map_err(malformed)?;
        let compress = url.bool_param("compress", false)?;
        url.bool_param("trusted", false)?;
        let program = url
            .param("remote-program")
            .filter(|p| !p.trim().is_empty())
            .unwrap_or("nix-store");
        let remote_store = url.param("remote-store").filter(|s| !s.is_empty());
        let max = match url.int_param("max-connections")? {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
                .ok_or_else(|| {
                    url.bad_value(
                        "max-connections",
                        &n.to_string(),
                        "expected a number from 1 to 1024",
                    )
                })?,
        };
        let command = remote_command(program, remote_store);
        let launcher = if url.location() == "localhost" {
            Launcher::new("sh".into(), vec!["-c".into(), command.into()], None)
        } else {
            let known_hosts = match url.param("base64-ssh-public-host-key") {
                Some(key) if !key.is_empty() => {
                    let line = crate::hash::from_base64(key)
                        .and_then(|b| String::from_utf8(b).ok())
                        .filter(|l| !l.trim().is_empty() && !l.trim().contains(['\n', '\r']))
                        .ok_or_else(|| {
                            url.bad_value(
                                "base64-ssh-public-host-key",
                                key,
                                "expected the base64 of a host key line such as \
                                 'ssh-ed25519 AAAA…'",
                            )
                        })?;
                    let written =
                        known_hosts_file(&target, &line).map_err(|source| StoreError::Io {
                            what: "writing a known_hosts file in",
                            path: std::env::temp_dir().display().to_string(),
                            source,
                        })?;
                    Some(written)
                }
                _ => None,
            };
            let options = SshOptions {
                key: url
                    .param("ssh-key")
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned),
                compress,
                extra: std::env::var("NIX_SSHOPTS")
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
            };
            let file = known_hosts.as_ref().map(|(_, file)| file.as_path());
            let args = ssh_args(&target, &options, file, &command);
            Launcher::new("ssh".into(), args, known_hosts.map(|(dir, _)| dir))
        };
        Ok(Self {
            url: url.as_str().to_owned(),
            store_dir: StoreDir::default(),
            launcher,
            shell: Some(Shell {
                program: program.to_owned(),
                store: remote_store.map(str::to_owned),
            }),
            substitute: false,
            pool: Pool::new(max),
        })
    }

    /// A store reached by running `program` with `args` locally, which
    /// must speak the serve protocol on its stdin and stdout: typically
    /// `nix-store --serve --write [--store <store>]`. `store_dir` is the
    /// server's store directory; `url` names the store in messages. It
    /// keeps one connection at a time (see
    /// [`set_max_connections`](Self::set_max_connections)).
    pub fn local_command<I, A>(
        program: impl Into<OsString>,
        args: I,
        store_dir: StoreDir,
        url: impl Into<String>,
    ) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        Self {
            url: url.into(),
            store_dir,
            launcher: Launcher::new(
                program.into(),
                args.into_iter().map(Into::into).collect(),
                None,
            ),
            shell: None,
            substitute: false,
            pool: Pool::new(1),
        }
    }

    /// Whether [`Store::query_valid_paths`] lets the server substitute
    /// missing paths first (QueryValidPaths' `substitute` flag, as
    /// `nix-copy-closure --use-substitutes`). Off by default.
    pub fn set_substitute(&mut self, substitute: bool) {
        self.substitute = substitute;
    }

    /// How many connections may be open at once (at least 1). Connections
    /// already open are closed.
    pub fn set_max_connections(&mut self, max: usize) {
        self.pool = Pool::new(max.clamp(1, MAX_CONNECTIONS));
    }

    /// Sets an environment variable for the processes this store starts.
    pub fn set_env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        self.launcher.env(key.into(), value.into());
    }

    /// How a connection is started, running `command` on the remote
    /// instead of the serve command.
    #[cfg(all(feature = "ssh", feature = "zstd"))]
    pub(super) fn launcher_with(&self, command: &str) -> Launcher {
        self.launcher.with_command(command)
    }

    /// The command a connection runs: the program and its arguments.
    pub fn command(&self) -> Vec<OsString> {
        self.launcher.argv()
    }

    /// The program the remote side runs in place of `nix-store`
    /// (`remote-program`), for an `ssh://` store.
    pub fn remote_program(&self) -> Option<&str> {
        self.shell.as_ref().map(|s| s.program.as_str())
    }

    /// The store the remote command opens (`remote-store`), if the URL
    /// names one.
    pub fn remote_store(&self) -> Option<&str> {
        self.shell.as_ref().and_then(|s| s.store.as_deref())
    }

    /// Runs `script` with `sh` where the store is, over the same settings
    /// as the store's connections (ssh, its options and host key; `sh`
    /// here for `localhost`), with no input, and returns what it printed
    /// on stdout (at most 1 MiB). The script should end with `exit 0`:
    /// any other status is a failure.
    ///
    /// # Errors
    /// [`StoreError::Login`] when ssh cannot log in (unknown host, host
    /// key not verified, key refused), [`StoreError::Connection`] when the
    /// connection fails otherwise, [`StoreError::Remote`] when the script
    /// fails, with what it said on stderr; [`StoreError::Unsupported`] for
    /// a store run by a given local command.
    pub async fn run_script(&self, script: &str) -> Result<String, StoreError> {
        use tokio::io::AsyncReadExt as _;
        if self.shell.is_none() {
            return Err(StoreError::Unsupported {
                store: self.url.clone(),
                what: "running commands",
            });
        }
        let launcher = self
            .launcher
            .with_command(&format!("sh -c {}", shell_quote(script)));
        let (mut process, stdout, stdin) = launcher.spawn().map_err(|source| StoreError::Io {
            what: "running",
            path: launcher.program(),
            source,
        })?;
        drop(stdin);
        let mut out = Vec::new();
        let read = stdout.take(MAX_SCRIPT_OUTPUT).read_to_end(&mut out).await;
        let stderr = process.stderr.finish(EXIT_WAIT).await;
        let exit = wait_exit(&mut process.child, EXIT_WAIT).await;
        match (exit, read) {
            (Exit::Code(0), Ok(_)) => Ok(String::from_utf8_lossy(&out).into_owned()),
            (exit, read) => {
                let source = read
                    .err()
                    .unwrap_or_else(|| io::ErrorKind::UnexpectedEof.into());
                let error = ServeError::Read {
                    what: "the output of a remote command",
                    source,
                };
                Err(failure(&self.url, &error, exit, &stderr))
            }
        }
    }

    /// The protocol version the server announces, connecting if needed.
    ///
    /// # Errors
    /// As connecting: see [`Store`]'s methods.
    pub async fn remote_version(&self) -> Result<u64, StoreError> {
        Ok(self.connection().await?.remote_version())
    }

    /// QueryValidPaths, letting the server substitute first if asked.
    async fn valid_paths(
        &self,
        paths: &[StorePath],
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        let paths = path_set(paths);
        if paths.is_empty() {
            return Ok(BTreeSet::new());
        }
        let mut conn = self.connection().await?;
        match conn.query_valid_paths(false, substitute, &paths).await {
            Ok(valid) => Ok(valid),
            Err(e) => Err(conn.fail(&self.url, e).await),
        }
    }

    /// Ends the idle connections cleanly: closes their input, which makes
    /// the server exit, and waits (briefly) for the processes. Connections
    /// in use are not affected; dropping the store kills whatever is left.
    pub async fn close(&self) {
        let idle = std::mem::take(&mut *self.pool.idle());
        for remote in idle {
            let Remote { conn, mut process } = remote;
            drop(conn.into_inner());
            wait_exit(&mut process.child, EXIT_WAIT).await;
        }
    }

    /// A connection from the pool, or a new one.
    async fn connection(&self) -> Result<Pooled, StoreError> {
        let permit = Arc::clone(&self.pool.slots)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Connection {
                store: self.url.clone(),
                message: "the connection pool is closed".to_owned(),
            })?;
        self.connection_with(permit).await
    }

    /// A connection from the pool, or a new one, for a permit held.
    async fn connection_with(&self, permit: OwnedSemaphorePermit) -> Result<Pooled, StoreError> {
        let reused = loop {
            let Some(mut remote) = self.pool.idle().pop() else {
                break None;
            };
            // A server that went away meanwhile is dropped, not reused.
            if matches!(remote.process.child.try_wait(), Ok(None)) {
                break Some(remote);
            }
        };
        let remote = match reused {
            Some(remote) => remote,
            None => self.connect().await?,
        };
        Ok(Pooled {
            remote: Some(remote),
            pool: Arc::clone(&self.pool),
            permit: Some(permit),
        })
    }

    /// Takes a connection to a serve protocol server that was started and
    /// greeted elsewhere, up to the server's magic number, into the pool
    /// (so that finding out what the remote speaks costs no second login).
    ///
    /// # Errors
    /// The rest of the handshake failed.
    #[cfg(all(feature = "ssh", feature = "zstd"))]
    pub(super) async fn adopt(
        &self,
        mut process: Process,
        stdout: ChildStdout,
        stdin: ChildStdin,
    ) -> Result<(), StoreError> {
        match ServeConnection::after_magic(stdout, stdin, self.store_dir.clone()).await {
            Ok(conn) => {
                self.pool.idle().push(Remote { conn, process });
                Ok(())
            }
            Err(e) => Err(process.explain(&self.url, e).await),
        }
    }

    /// Starts a server and shakes hands.
    async fn connect(&self) -> Result<Remote, StoreError> {
        let (mut process, stdout, stdin) =
            self.launcher.spawn().map_err(|source| StoreError::Io {
                what: "running",
                path: self.launcher.program(),
                source,
            })?;
        match ServeConnection::handshake(stdout, stdin, self.store_dir.clone()).await {
            Ok(conn) => Ok(Remote { conn, process }),
            Err(e) => Err(process.explain(&self.url, e).await),
        }
    }

    /// `error` as [`StoreError::NotFound`] when the server said that one of
    /// `paths` is not valid.
    fn not_found(&self, error: StoreError, paths: &[StorePath]) -> StoreError {
        if let StoreError::Remote { message, .. } = &error {
            for path in paths {
                let full = self.store_dir.full(path);
                if message.contains(&format!("path '{full}' is not valid")) {
                    return StoreError::NotFound {
                        store: self.url.clone(),
                        path: full,
                    };
                }
            }
        }
        error
    }
}

/// Sorted and without duplicates, as Nix sends path sets.
fn path_set(paths: &[StorePath]) -> Vec<StorePath> {
    paths
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[async_trait::async_trait]
impl Store for ServeStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            needs_references_first: true,
            accepts_pending_references: false,
            keeps_signatures: true,
            writes_compression: None,
            signs: false,
            trusted_source: false,
            // AddToStoreNar: the server checks the hash, and nothing is
            // registered on a mismatch; ImportPaths: checked while sending.
            // The size is checked while sending, either way.
            verifies_nar: true,
            // See `ServeStore::lane`: no add waits for another's NAR.
            max_parallel_adds: Some(self.pool.max),
        }
    }

    async fn query_path_infos(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeMap<StorePath, PathInfo>, StoreError> {
        let paths = path_set(paths);
        if paths.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut conn = self.connection().await?;
        match conn.query_path_infos(&paths).await {
            Ok(infos) => Ok(infos),
            Err(e) => Err(conn.fail(&self.url, e).await),
        }
    }

    async fn query_valid_paths(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        self.valid_paths(paths, self.substitute).await
    }

    /// QueryValidPaths with the `substitute` flag set: the server fetches
    /// what it can from its substituters first.
    async fn substitute_paths(
        &self,
        paths: &[StorePath],
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        self.valid_paths(paths, true).await
    }

    /// QueryClosure, then QueryPathInfos for the whole closure: two round
    /// trips whatever its size. A root the server does not have is
    /// [`StoreError::NotFound`].
    async fn query_closure(
        &self,
        roots: &[StorePath],
    ) -> Result<Option<BTreeMap<StorePath, PathInfo>>, StoreError> {
        let roots = path_set(roots);
        if roots.is_empty() {
            return Ok(Some(BTreeMap::new()));
        }
        let mut conn = self.connection().await?;
        let closure = match conn.query_closure(false, &roots).await {
            Ok(closure) => closure.into_iter().collect::<Vec<_>>(),
            Err(e) => return Err(self.not_found(conn.fail(&self.url, e).await, &roots)),
        };
        let infos = match conn.query_path_infos(&closure).await {
            Ok(infos) => infos,
            Err(e) => return Err(conn.fail(&self.url, e).await),
        };
        drop(conn);
        // A path deleted between the two questions.
        if let Some(missing) = closure.iter().find(|p| !infos.contains_key(*p)) {
            return Err(StoreError::NotFound {
                store: self.url.clone(),
                path: self.store_dir.full(missing),
            });
        }
        Ok(Some(infos))
    }

    /// DumpStorePath on a pooled connection. The connection goes back to
    /// the pool when the stream has been read to the NAR's end; a stream
    /// dropped earlier takes its connection (and process) with it.
    async fn nar(&self, info: &PathInfo) -> Result<NarStream, StoreError> {
        let mut conn = self.connection().await?;
        if let Err(e) = conn.send_dump_store_path(&info.path).await {
            return Err(conn.fail(&self.url, e).await);
        }
        match NarReader::recv(conn).await {
            Ok(reader) => Ok(Box::pin(PooledNar {
                state: NarState::Reading(Box::new(reader)),
                url: self.url.clone(),
                path: self.store_dir.full(&info.path),
            })),
            Err((e, conn)) => {
                let e = conn.fail(&self.url, e).await;
                Err(self.not_found(e, std::slice::from_ref(&info.path)))
            }
        }
    }

    /// AddToStoreNar, or ImportPaths for servers older than protocol 2.5
    /// (which then compute the hash themselves and drop signatures and CA).
    /// `ultimate` is sent as false: the path was not built there. The
    /// NAR's last bytes are sent only once the stream has ended without an
    /// error, so a stream failing its hash check leaves nothing behind.
    ///
    /// Adds are pipelined: a connection carrying adds takes the next one
    /// as soon as the previous one's NAR has been sent, while the server
    /// is still importing it, and the replies are read in order as they
    /// come. The server stops at the first add that fails (it exits): that
    /// path fails with the server's message, and those sent after it on the
    /// same connection with a retryable [`StoreError::Connection`]. A
    /// further connection is opened (up to `max-connections`) only when an
    /// add comes while every open one is sending another.
    async fn add_path(&self, info: &PathInfo, nar: NarStream) -> Result<(), StoreError> {
        let info = PathInfo {
            ultimate: false,
            ..info.clone()
        };
        let (lane, guard) = self.lane().await?;
        let result = lane
            .lane()
            .add(&self.url, guard, &self.pool.changed, &info, nar)
            .await;
        drop(lane);
        self.pool.changed.notify_waiters();
        match result {
            Ok(()) => Ok(()),
            // Nix: "hash mismatch importing path '…'; specified: …".
            Err(StoreError::Remote { message, .. }) if message.contains("hash mismatch") => {
                Err(StoreError::NarMismatch {
                    path: self.store_dir.full(&info.path),
                    message,
                })
            }
            Err(e) => Err(e),
        }
    }
}

impl ServeStore {
    /// A connection to send an add on, its sending half held: the least
    /// busy connection carrying adds whose sending half is free, else a
    /// further one (an idle pooled one, or a new one) if one may be opened,
    /// else the first of these to come.
    ///
    /// An add never waits here for another add's NAR to finish, as long as
    /// no more adds run at once than connections may be open (which
    /// [`Capabilities::max_parallel_adds`] asks of the copy engine): when
    /// every connection's sending half is busy, one more may be opened.
    /// Waiting for one would deadlock a copy to several stores, whose
    /// NARs are read once and fed to every store in step.
    async fn lane(&self) -> Result<(LaneUse, SenderGuard), StoreError> {
        let permit = loop {
            let changed = self.pool.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut lanes = self.pool.lanes();
                let mut open: Vec<Arc<Lane>> = lanes
                    .iter()
                    .filter(|l| !l.closed.load(Ordering::SeqCst))
                    .cloned()
                    .collect();
                open.sort_by_key(|l| l.in_flight.load(Ordering::SeqCst));
                for lane in open {
                    if let Ok(guard) = Arc::clone(&lane.sender).try_lock_owned() {
                        return Ok((LaneUse::new(lane, &self.pool, &mut lanes), guard));
                    }
                }
                if let Ok(permit) = Arc::clone(&self.pool.slots).try_acquire_owned() {
                    break permit;
                }
            }
            // Every connection is busy (sending, being opened, or
            // answering questions): the first one to come free.
            tokio::select! {
                permit = Arc::clone(&self.pool.slots).acquire_owned() => {
                    break permit.map_err(|_| StoreError::Connection {
                        store: self.url.clone(),
                        message: "the connection pool is closed".to_owned(),
                    })?;
                }
                () = &mut changed => {}
            }
        };
        let (remote, permit) = self.connection_with(permit).await?.take();
        let Remote { conn, process } = remote;
        let (sender, replies) = match conn.split_adds() {
            Ok(halves) => halves,
            Err((e, _)) => return Err(e.into_store_error(&self.url)),
        };
        let sender = Arc::new(tokio::sync::Mutex::new(Some(sender)));
        let guard = Arc::clone(&sender)
            .try_lock_owned()
            .map_err(|_| StoreError::Protocol {
                store: self.url.clone(),
                message: "a new connection is in use".to_owned(),
            })?;
        let lane = Arc::new(Lane {
            sender,
            replies: tokio::sync::Mutex::new(Replies {
                half: Some(replies),
                process,
                read: 0,
                outcomes: HashMap::new(),
                failed: None,
            }),
            in_flight: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            permit,
        });
        let mut lanes = self.pool.lanes();
        lanes.push(Arc::clone(&lane));
        let lane = LaneUse::new(lane, &self.pool, &mut lanes);
        drop(lanes);
        Ok((lane, guard))
    }
}

/// The sending half of a [`Lane`], held.
type SenderGuard = tokio::sync::OwnedMutexGuard<Option<AddSender<ChildStdin>>>;

/// A connection split for pipelined adds (see [`ServeStore::add_path`]).
struct Lane {
    /// `None` once sending failed or was interrupted: the server's input
    /// is then closed, and nothing more is sent.
    sender: Arc<tokio::sync::Mutex<Option<AddSender<ChildStdin>>>>,
    replies: tokio::sync::Mutex<Replies>,
    /// Adds given this lane and not yet answered; changed only with the
    /// pool's lane list locked.
    in_flight: AtomicUsize,
    /// No more adds are to be given this lane.
    closed: AtomicBool,
    permit: OwnedSemaphorePermit,
}

/// The reading side of a [`Lane`].
struct Replies {
    /// `None` once reading failed.
    half: Option<AddReplies<ChildStdout>>,
    process: Process,
    /// How many adds' outcomes have been read, in the order they were sent.
    read: u64,
    /// Outcomes read for adds that have not yet taken them.
    outcomes: HashMap<u64, Result<(), StoreError>>,
    /// How the connection failed, once it has.
    failed: Option<String>,
}

impl Lane {
    /// Sends an add, then waits for its outcome.
    async fn add(
        &self,
        url: &str,
        mut guard: SenderGuard,
        changed: &tokio::sync::Notify,
        info: &PathInfo,
        nar: NarStream,
    ) -> Result<(), StoreError> {
        let closed = |why: &str| StoreError::Connection {
            store: url.to_owned(),
            message: format!("the connection ended after an earlier add on it {why}"),
        };
        let (ticket, sent) = {
            if !guard.as_ref().is_some_and(AddSender::is_usable) {
                *guard = None;
                self.closed.store(true, Ordering::SeqCst);
                return Err(closed("failed"));
            }
            let Some(sender) = guard.as_mut() else {
                return Err(closed("failed"));
            };
            let ticket = sender.begun();
            let sent = sender.send_add(info, nar).await;
            if sender.begun() == ticket {
                // Refused before anything was written.
                return sent.map_err(|e| e.into_store_error(url));
            }
            if sent.is_err() {
                // Ends the server's input: it gives up on this path.
                *guard = None;
                self.closed.store(true, Ordering::SeqCst);
            }
            (ticket, sent)
        };
        drop(guard);
        changed.notify_waiters();
        match sent {
            // The NAR failed here: this path's own failure. Its reply is
            // never read (there is none: the server, its input ended
            // midway, fails), nor is anything sent after it.
            Err(e) if !e.is_connection_error() => return Err(e.into_store_error(url)),
            // Sent, or the connection broke while sending: the replies
            // tell whether this add or an earlier one broke it.
            _ => {}
        }
        let mut replies = self.replies.lock().await;
        loop {
            if let Some(outcome) = replies.outcomes.remove(&ticket) {
                return outcome;
            }
            let n = replies.read;
            let outcome = replies.next(url).await;
            replies.read += 1;
            if outcome.is_err() {
                self.closed.store(true, Ordering::SeqCst);
            }
            if n == ticket {
                return outcome;
            }
            replies.outcomes.insert(n, outcome);
        }
    }

    /// The connection made whole again, when nothing failed and every
    /// reply has been read and taken.
    fn into_remote(self) -> Option<(Remote, OwnedSemaphorePermit)> {
        let sender = Arc::try_unwrap(self.sender).ok()?.into_inner()?;
        let replies = self.replies.into_inner();
        if replies.failed.is_some() || !replies.outcomes.is_empty() {
            return None;
        }
        let conn = sender.rejoin(replies.half?)?;
        let remote = Remote {
            conn,
            process: replies.process,
        };
        Some((remote, self.permit))
    }
}

impl Replies {
    /// Reads the outcome of the oldest add not yet answered: after a
    /// failure, every later add fails as a broken connection.
    async fn next(&mut self, url: &str) -> Result<(), StoreError> {
        if let Some(why) = &self.failed {
            return Err(StoreError::Connection {
                store: url.to_owned(),
                message: format!("the connection ended after an earlier add on it failed: {why}"),
            });
        }
        let error = match self.half.as_mut() {
            Some(half) if half.is_usable() => match half.recv_add().await {
                Ok(()) => return Ok(()),
                Err(e) => self.process.explain(url, e).await,
            },
            _ => StoreError::Connection {
                store: url.to_owned(),
                message: "an earlier read on the connection was interrupted".to_owned(),
            },
        };
        self.half = None;
        self.failed = Some(error.to_string());
        Err(error)
    }
}

/// An add's hold on a [`Lane`]. Dropped by the lane's last add, it takes
/// the lane out of the pool's list and gives the connection back to the
/// pool when it is still sound (or else ends it).
struct LaneUse {
    lane: Option<Arc<Lane>>,
    pool: Arc<Pool>,
}

impl LaneUse {
    fn new(lane: Arc<Lane>, pool: &Arc<Pool>, _locked: &mut Vec<Arc<Lane>>) -> Self {
        lane.in_flight.fetch_add(1, Ordering::SeqCst);
        Self {
            lane: Some(lane),
            pool: Arc::clone(pool),
        }
    }

    fn lane(&self) -> &Lane {
        self.lane
            .as_ref()
            .expect("a lane is held until its use is dropped")
    }
}

impl Drop for LaneUse {
    fn drop(&mut self) {
        let Some(lane) = self.lane.take() else {
            return;
        };
        let mut lanes = self.pool.lanes();
        if lane.in_flight.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        lanes.retain(|l| !Arc::ptr_eq(l, &lane));
        drop(lanes);
        if let Some((remote, permit)) = Arc::try_unwrap(lane).ok().and_then(Lane::into_remote) {
            self.pool.idle().push(remote);
            drop(permit);
        }
    }
}

/// The NAR stream of [`ServeStore::nar`]: reads the NAR off a pooled
/// connection; on a failure, asks the process why before failing.
struct PooledNar {
    state: NarState,
    url: String,
    /// The full store path, for messages.
    path: String,
}

enum NarState {
    Reading(Box<NarReader<Pooled>>),
    /// Finding out why the connection failed.
    Failing(Pin<Box<dyn Future<Output = io::Error> + Send>>),
    /// Failed: every further read fails too.
    Failed,
    /// The NAR has ended and the connection is back in the pool.
    Done,
}

impl AsyncRead for PooledNar {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                NarState::Reading(reader) => {
                    match ready!(Pin::new(&mut *reader).poll_read(cx, buf)) {
                        Ok(()) => {
                            if reader.is_done() {
                                // Back to the pool now, not when the stream is dropped.
                                this.state = NarState::Done;
                            }
                            return Poll::Ready(Ok(()));
                        }
                        Err(e) => {
                            let NarState::Reading(reader) =
                                std::mem::replace(&mut this.state, NarState::Failed)
                            else {
                                return Poll::Ready(Err(e));
                            };
                            let conn = (*reader).into_inner();
                            let kind = e.kind();
                            let error = serve_error(e);
                            let url = this.url.clone();
                            let path = this.path.clone();
                            this.state = NarState::Failing(Box::pin(async move {
                                let e = match conn.fail(&url, error).await {
                                    StoreError::Remote { message, .. }
                                        if message
                                            .contains(&format!("path '{path}' is not valid")) =>
                                    {
                                        StoreError::NotFound { store: url, path }
                                    }
                                    e => e,
                                };
                                io::Error::new(kind, e)
                            }));
                        }
                    }
                }
                NarState::Failing(explain) => {
                    let e = ready!(explain.as_mut().poll(cx));
                    this.state = NarState::Failed;
                    return Poll::Ready(Err(e));
                }
                NarState::Failed => {
                    return Poll::Ready(Err(io::Error::other(format!(
                        "the NAR stream of '{}' failed earlier",
                        this.path
                    ))))
                }
                NarState::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// The [`ServeError`] inside a [`NarReader`]'s error.
fn serve_error(e: io::Error) -> ServeError {
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<ServeError>()) {
        Some(Ok(e)) => *e,
        Some(Err(other)) => ServeError::Read {
            what: "the NAR",
            source: io::Error::new(kind, other),
        },
        None => ServeError::Read {
            what: "the NAR",
            source: kind.into(),
        },
    }
}
