//! A throwaway OpenSSH server on 127.0.0.1, for tests of `ssh://` stores,
//! and smoke tests showing that `nix-store --serve` works through it.
//!
//! [`Sshd::start`] runs the system's `sshd` in the foreground on a free port
//! with its own host key, a single authorized user key and a configuration
//! that live in a temporary directory. Nothing outside that directory is
//! changed, except that the privilege separation directory is created when
//! running as root and it is missing. The server is killed when the
//! [`Sshd`] is dropped.
//!
//! Tests log in as the user running them (root included). Commands run
//! remotely find Nix on `PATH` and get the same Nix settings as
//! [`crate::common::nix`]: no sandbox, no build users, `nix-command`.
//!
//! Tests that need the server call [`have_sshd`] first, as they call
//! [`crate::common::have_nix`] for Nix.

#![allow(dead_code)]

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::io::{ErrorKind, Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nixferry::store::StoreUrl;

use crate::common::{have_nix, nix, run_text, skip};

/// The address the server listens on.
const HOST: &str = "127.0.0.1";

/// Where the privilege separation directory of Debian's `sshd` is; `sshd`
/// refuses to start as root without it.
const PRIVSEP_DIR: &str = "/run/sshd";

/// How many ports to try when the chosen one is taken before `sshd` binds it.
const START_ATTEMPTS: usize = 5;

/// How long one attempt to start `sshd` may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Sshd::kill`] waits for connections to be over.
const SESSION_GRACE: Duration = Duration::from_secs(2);

/// The Nix settings of commands run through the server, as in
/// [`crate::common::nix`].
const NIX_CONF: &str = "experimental-features = nix-command\n\
                        sandbox = false\n\
                        build-users-group =\n\
                        substituters =\n";

/// The `sshd` binary: the one on `PATH`, else the usual places (`sbin`
/// directories are often not on a normal user's `PATH`). `sshd` must be run
/// by an absolute path, because it re-executes itself.
pub(crate) fn sshd_binary() -> Option<PathBuf> {
    let on_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .filter(|dir| dir.is_absolute())
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("sshd"))
        .find(|p| p.is_file())
}

/// Finds `program` on `PATH`.
fn on_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Whether OpenSSH (`sshd`, `ssh`, `ssh-keygen`) is installed; when it is
/// not, the test [skips](skip) (install openssh-server and openssh-client,
/// see scripts/install-deps.sh).
pub(crate) fn have_sshd() -> bool {
    let missing: Vec<&str> = [
        ("sshd", sshd_binary().is_some()),
        ("ssh", on_path("ssh").is_some()),
        ("ssh-keygen", on_path("ssh-keygen").is_some()),
    ]
    .into_iter()
    .filter(|(_, found)| !found)
    .map(|(name, _)| name)
    .collect();
    if !missing.is_empty() {
        skip(&format!(
            "OpenSSH not found ({}; see scripts/install-deps.sh)",
            missing.join(", ")
        ));
    }
    missing.is_empty()
}

/// An `sshd` listening on 127.0.0.1, with everything it needs in a
/// temporary directory. Dropping it kills the server.
pub(crate) struct Sshd {
    /// The running server, until [`Sshd::kill`].
    child: Option<Child>,
    port: u16,
    user: String,
    user_key: PathBuf,
    known_hosts: PathBuf,
    /// The host's public key as `ssh-ed25519 AAAA…`, without a comment.
    host_public_key: String,
    log: PathBuf,
    /// Keys, configuration and log; removed on drop, after the server is
    /// killed.
    dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts a server and waits until it accepts connections.
    ///
    /// # Panics
    /// If OpenSSH is missing (call [`have_sshd`] first) or the server does
    /// not come up; the message has the server's log.
    pub(crate) fn start() -> Self {
        Self::start_with(false)
    }

    /// Like [`Sshd::start`], with the directory of the `nixferry` binary
    /// under test first on the `PATH` of remote commands, so that an
    /// `ssh://` copy finds `nixferry remote` there.
    pub(crate) fn start_with_nixferry() -> Self {
        Self::start_with(true)
    }

    fn start_with(with_nixferry: bool) -> Self {
        let sshd = sshd_binary()
            .expect("sshd not found (install openssh-server; tests should call have_sshd first)");
        let dir = tempfile::Builder::new()
            .prefix("nixferry-sshd-")
            .tempdir()
            .expect("creating a temporary directory for sshd");
        let d = dir.path();
        assert!(
            !d.to_string_lossy().contains(char::is_whitespace),
            "the temporary directory {} has whitespace, which NIX_SSHOPTS cannot carry",
            d.display()
        );

        let host_key = d.join("host_ed25519");
        let user_key = d.join("user_ed25519");
        keygen(&host_key);
        keygen(&user_key);
        let host_public_key = public_key(&host_key);
        let authorized_keys = d.join("authorized_keys");
        fs::write(&authorized_keys, public_key(&user_key) + "\n").expect("writing authorized_keys");
        let nix_conf = d.join("nix.conf");
        fs::write(&nix_conf, NIX_CONF).expect("writing nix.conf");
        let user = current_user();
        ensure_privsep_dir();

        let config = d.join("sshd_config");
        let pid_file = d.join("sshd.pid");
        let log = d.join("sshd.log");
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let text = format!(
                "ListenAddress {HOST}:{port}\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized_keys}\n\
                 AllowUsers {user}\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PrintMotd no\n\
                 PrintLastLog no\n\
                 PidFile {pid_file}\n\
                 LogLevel ERROR\n\
                 MaxStartups 100\n\
                 SetEnv \"PATH={path}\" \"NIX_USER_CONF_FILES={nix_conf}\" \
                 \"XDG_STATE_HOME={state}\"\n",
                host_key = host_key.display(),
                authorized_keys = authorized_keys.display(),
                pid_file = pid_file.display(),
                path = remote_path(with_nixferry),
                state = d.join("state").display(),
                nix_conf = nix_conf.display(),
            );
            fs::write(&config, text).expect("writing sshd_config");
            let log_file = fs::File::create(&log).expect("creating the sshd log");
            let mut child = Command::new(&sshd)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", sshd.display()));
            match wait_ready(&mut child, &pid_file, port) {
                Ready::Yes => {
                    let known_hosts = d.join("known_hosts");
                    fs::write(&known_hosts, format!("[{HOST}]:{port} {host_public_key}\n"))
                        .expect("writing known_hosts");
                    return Self {
                        child: Some(child),
                        port,
                        user,
                        user_key,
                        known_hosts,
                        host_public_key,
                        log,
                        dir,
                    };
                }
                Ready::Exited(status) => {
                    last_log = fs::read_to_string(&log).unwrap_or_default();
                    let port_taken = last_log.contains("Address already in use")
                        || last_log.contains("Cannot bind");
                    assert!(
                        port_taken,
                        "sshd exited with {status} while starting; its log:\n{last_log}"
                    );
                }
                Ready::TimedOut => {
                    // Killing the child we started, by its pid.
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "sshd did not accept connections on {HOST}:{port} within \
                         {START_TIMEOUT:?}; its log:\n{}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        panic!(
            "sshd could not bind a free port in {START_ATTEMPTS} attempts; last log:\n{last_log}"
        )
    }

    /// The port the server listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on, `127.0.0.1`.
    pub(crate) fn host(&self) -> &'static str {
        HOST
    }

    /// The user to log in as: the one running the tests.
    pub(crate) fn user(&self) -> &str {
        &self.user
    }

    /// The private key the server accepts (no passphrase).
    pub(crate) fn user_key(&self) -> &Path {
        &self.user_key
    }

    /// A `known_hosts` file with the server's host key for
    /// `[127.0.0.1]:PORT`.
    pub(crate) fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// The server's host key as a `known_hosts` key: `ssh-ed25519 AAAA…`.
    pub(crate) fn host_public_key(&self) -> &str {
        &self.host_public_key
    }

    /// The host key as Nix's `base64-ssh-public-host-key` store parameter
    /// wants it: the base64 of the whole `ssh-ed25519 AAAA…` line.
    pub(crate) fn host_public_key_base64(&self) -> String {
        base64(self.host_public_key.as_bytes())
    }

    /// A directory of the server's own, removed with it, for tests to put
    /// things in (a remote store, say).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The spool of `nixferry remote` run through this server: remote
    /// commands get `XDG_STATE_HOME` in [`Sshd::dir`].
    pub(crate) fn spool_dir(&self) -> PathBuf {
        self.dir().join("state/nixferry/incoming")
    }

    /// What the server logged so far (errors only), to show when a test
    /// fails.
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The options that make `ssh` reach this server with its key and
    /// check its host key, without prompting or reading the user's SSH
    /// configuration. The destination is not included.
    pub(crate) fn ssh_args(&self) -> Vec<String> {
        self.ssh_args_with(&self.user_key, &self.known_hosts)
    }

    /// [`Sshd::ssh_args`] with another user key and `known_hosts` file.
    fn ssh_args_with(&self, key: &Path, known_hosts: &Path) -> Vec<String> {
        vec![
            "-F".to_owned(),
            "/dev/null".to_owned(),
            "-p".to_owned(),
            self.port.to_string(),
            "-i".to_owned(),
            key.display().to_string(),
            format!("-oUserKnownHostsFile={}", known_hosts.display()),
            "-oStrictHostKeyChecking=yes".to_owned(),
            "-oBatchMode=yes".to_owned(),
            "-oIdentitiesOnly=yes".to_owned(),
            "-oConnectTimeout=10".to_owned(),
        ]
    }

    /// [`Sshd::ssh_args`] as a `NIX_SSHOPTS` value (Nix splits it at
    /// whitespace).
    pub(crate) fn ssh_opts(&self) -> String {
        self.ssh_args().join(" ")
    }

    /// `USER@127.0.0.1`.
    pub(crate) fn destination(&self) -> String {
        format!("{}@{HOST}", self.user)
    }

    /// A store URL for a store in `remote_store` (a chroot store, as in
    /// `nix-store --store DIR`) reached through this server:
    /// `ssh://USER@127.0.0.1:PORT?ssh-key=…&base64-ssh-public-host-key=…&remote-store=DIR`.
    ///
    /// Nix 2.8 itself takes no port in `ssh://` URLs; for Nix use
    /// [`Sshd::nix_store_url`] with `NIX_SSHOPTS` set to
    /// [`Sshd::ssh_opts`].
    pub(crate) fn store_url(&self, remote_store: &Path) -> String {
        format!(
            "ssh://{}@{HOST}:{}?ssh-key={}&base64-ssh-public-host-key={}&remote-store={}",
            self.user,
            self.port,
            percent_encode(&self.user_key.display().to_string()),
            percent_encode(&self.host_public_key_base64()),
            percent_encode(&remote_store.display().to_string()),
        )
    }

    /// A store URL for the same store as [`Sshd::store_url`] in the form
    /// Nix 2.8 understands: without the port, which comes, with the key and
    /// the host key, from `NIX_SSHOPTS` (set it to [`Sshd::ssh_opts`]).
    pub(crate) fn nix_store_url(&self, remote_store: &Path) -> String {
        format!(
            "ssh://{}@{HOST}?remote-store={}",
            self.user,
            percent_encode(&remote_store.display().to_string()),
        )
    }

    /// `ssh` with [`Sshd::ssh_args`] and the destination; add the remote
    /// command with `arg`/`args` (`ssh` joins them with spaces for the
    /// remote shell).
    pub(crate) fn ssh_command(&self) -> Command {
        self.ssh_command_with(&self.user_key, &self.known_hosts)
    }

    /// Like [`Sshd::ssh_command`], with another user key or `known_hosts`
    /// file, to test what happens when they are wrong.
    pub(crate) fn ssh_command_with(&self, key: &Path, known_hosts: &Path) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.ssh_args_with(key, known_hosts))
            .arg(self.destination());
        c
    }

    /// Stops the server (the process started by [`Sshd::start`], by its
    /// pid) and waits for it. It first gives the processes serving
    /// connections a moment to end, as they do soon after their clients, so
    /// that the server reaps them; sessions still open after that end with
    /// their clients. Does nothing the second time.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            wait_for_sessions(child.id());
            // An error means the process has already exited.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits up to [`SESSION_GRACE`] for the server `pid` to have no child
/// processes left (one serves each connection).
fn wait_for_sessions(pid: u32) {
    let deadline = Instant::now() + SESSION_GRACE;
    while children_of(pid) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

/// How many processes have `pid` as their parent, according to `/proc`
/// (none where there is no `/proc`).
fn children_of(pid: u32) -> usize {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // `PID (COMMAND) STATE PPID …`, where COMMAND may hold anything.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            ppid == Some(pid)
        })
        .count()
}

/// How an attempt to start `sshd` ended.
enum Ready {
    /// It listens.
    Yes,
    /// It exited; perhaps because its port was taken meanwhile.
    Exited(std::process::ExitStatus),
    /// It neither exited nor came up in time.
    TimedOut,
}

/// Waits for `child` to write its pid file, which `sshd` does once its
/// socket listens, and for the port to greet like an SSH server. The pid
/// file tells our server apart from some other process that took the port.
fn wait_ready(child: &mut Child, pid_file: &Path, port: u16) -> Ready {
    let deadline = Instant::now() + START_TIMEOUT;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Some(status) = child.try_wait().expect("waiting for sshd") {
            return Ready::Exited(status);
        }
        let ours = fs::read_to_string(pid_file)
            .is_ok_and(|pid| pid.trim().parse::<u32>().ok() == Some(child.id()));
        if ours && speaks_ssh(&addr) {
            return Ready::Yes;
        }
        if Instant::now() > deadline {
            return Ready::TimedOut;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a server at `addr` accepts a connection and greets with an SSH
/// identification line. The probe answers with its own identification
/// before hanging up, which `sshd` does not count as an error worth logging.
fn speaks_ssh(addr: &SocketAddr) -> bool {
    let probe = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut greeting = [0u8; 4];
        stream.read_exact(&mut greeting)?;
        stream.write_all(b"SSH-2.0-nixferry-test-probe\r\n")?;
        Ok(&greeting == b"SSH-")
    };
    probe().unwrap_or(false)
}

/// A port on 127.0.0.1 that is free now. Another process may take it
/// before `sshd` binds it; [`Sshd::start`] then tries another.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding a free port on 127.0.0.1")
        .port()
}

/// Generates an ed25519 key pair without a passphrase: `path` and
/// `path.pub`.
fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("running ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The public key of the key pair at `private`, as `TYPE BASE64`.
fn public_key(private: &Path) -> String {
    let mut pub_file = private.as_os_str().to_owned();
    pub_file.push(".pub");
    let pub_file = PathBuf::from(pub_file);
    let text = fs::read_to_string(&pub_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", pub_file.display()));
    let fields: Vec<&str> = text.split_whitespace().take(2).collect();
    assert_eq!(fields.len(), 2, "malformed public key {text:?}");
    fields.join(" ")
}

/// The name of the user running the tests.
fn current_user() -> String {
    run_text(Command::new("id").arg("-un"))
}

/// Creates the privilege separation directory if it is missing. Only root
/// can, and only an `sshd` started by root needs it; if it cannot be
/// created, `sshd` says so in its log when it matters.
fn ensure_privsep_dir() {
    if !Path::new(PRIVSEP_DIR).is_dir() {
        let _ = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(PRIVSEP_DIR);
    }
}

/// `PATH` for remote commands: the directory of the `nixferry` under test
/// if asked, where this process finds `nix-store`, then the standard
/// directories.
fn remote_path(with_nixferry: bool) -> String {
    let nixferry = Path::new(env!("CARGO_BIN_EXE_nixferry"))
        .parent()
        .map(|d| d.display().to_string())
        .filter(|_| with_nixferry);
    let mut dirs: Vec<String> = nixferry
        .into_iter()
        .chain(on_path("nix-store").and_then(|p| p.parent().map(|d| d.display().to_string())))
        .collect();
    for d in ["/usr/local/bin", "/usr/bin", "/bin"] {
        if !dirs.iter().any(|x| x == d) {
            dirs.push(d.to_owned());
        }
    }
    dirs.join(":")
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encodes everything in a URL query value but unreserved
/// characters and `/`.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            write!(out, "%{b:02X}").expect("writing to a String");
        }
    }
    out
}

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `cmd` with `input` on its stdin (then closed), and returns its
/// output and how long it took; panics if it takes longer than `limit`,
/// after killing it.
fn output_within(cmd: &mut Command, input: &[u8], limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // A closed pipe is the command's business: it shows in its output.
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let reader = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a command") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = stderr.join().unwrap_or_default();
            panic!(
                "{cmd:?} did not finish within {limit:?}; stderr: {}",
                String::from_utf8_lossy(&err)
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    writer.join().expect("stdin writer thread");
    let out = Output {
        status,
        stdout: stdout.join().expect("stdout reader thread"),
        stderr: stderr.join().expect("stderr reader thread"),
    };
    (out, elapsed)
}

/// How long a failing connection may take before it counts as a hang.
const FAIL_FAST: Duration = Duration::from_secs(20);

#[test]
fn runs_a_command() {
    if !have_sshd() {
        return;
    }
    let sshd = Sshd::start();
    let (out, _) = output_within(sshd.ssh_command().args(["echo", "ok"]), b"", FAIL_FAST);
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "ssh echo ok: {}\nstdout: {:?}\nstderr: {}\nsshd log: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
}

/// The handshake of Nix's serve protocol against `nix-store --serve
/// --write` run through the server on a chroot store.
#[test]
fn nix_store_serve_handshake() {
    if !have_sshd() || !have_nix() {
        return;
    }
    const SERVE_MAGIC_1: u64 = 0x390c_9deb;
    const SERVE_MAGIC_2: u64 = 0x5452_eecb;
    const CLIENT_VERSION: u64 = 0x0207;
    let sshd = Sshd::start();
    let store = sshd.dir().join("remote-store");
    let mut hello = SERVE_MAGIC_1.to_le_bytes().to_vec();
    hello.extend_from_slice(&CLIENT_VERSION.to_le_bytes());
    let remote = format!(
        "nix-store --serve --write --store {}",
        shell_quote(&store.display().to_string())
    );
    let (out, _) = output_within(
        sshd.ssh_command().arg(remote),
        &hello,
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && out.stdout.len() >= 16,
        "nix-store --serve: {}\nstdout: {:02x?}\nstderr: {stderr}\nsshd log: {}",
        out.status,
        out.stdout,
        sshd.log()
    );
    let word = |i: usize| {
        let bytes: [u8; 8] = out.stdout[8 * i..8 * (i + 1)].try_into().expect("8 bytes");
        u64::from_le_bytes(bytes)
    };
    assert_eq!(word(0), SERVE_MAGIC_2, "magic; stderr: {stderr}");
    let version = word(1);
    assert_eq!(version >> 8, 2, "protocol version {version:#x}");
}

/// Real Nix copies a path to a chroot store through the server, given the
/// port and keys in `NIX_SSHOPTS`.
#[test]
fn nix_copies_through_it() {
    if !have_sshd() || !have_nix() {
        return;
    }
    let sshd = Sshd::start();
    let src = sshd.dir().join("payload");
    fs::write(&src, b"carried over ssh\n").expect("writing a file to add");
    let path = run_text(nix("nix-store").arg("--add").arg(&src));
    let store = sshd.dir().join("remote-store");
    let (out, _) = output_within(
        nix("nix").env("NIX_SSHOPTS", sshd.ssh_opts()).args([
            "copy",
            "--to",
            &sshd.nix_store_url(&store),
            &path,
        ]),
        b"",
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "nix copy: {}\nstderr: {}\nsshd log: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    let copied = store.join(path.trim_start_matches('/'));
    assert_eq!(
        fs::read(&copied).expect("reading the copied path"),
        b"carried over ssh\n"
    );
}

#[test]
fn wrong_host_key_fails_fast() {
    if !have_sshd() {
        return;
    }
    let sshd = Sshd::start();
    let other = sshd.dir().join("other_host_ed25519");
    keygen(&other);
    let wrong = sshd.dir().join("wrong_known_hosts");
    fs::write(
        &wrong,
        format!("[{HOST}]:{} {}\n", sshd.port(), public_key(&other)),
    )
    .expect("writing known_hosts");
    let (out, took) = output_within(
        sshd.ssh_command_with(sshd.user_key(), &wrong)
            .args(["echo", "ok"]),
        b"",
        FAIL_FAST,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "logged in despite a wrong host key");
    assert!(
        stderr.contains("Host key verification failed"),
        "stderr: {stderr}"
    );
    assert!(out.stdout.is_empty());
    assert!(took < FAIL_FAST, "took {took:?}");
}

#[test]
fn unauthorized_key_is_denied() {
    if !have_sshd() {
        return;
    }
    let sshd = Sshd::start();
    let stranger = sshd.dir().join("stranger_ed25519");
    keygen(&stranger);
    let (out, took) = output_within(
        sshd.ssh_command_with(&stranger, sshd.known_hosts())
            .args(["echo", "ok"]),
        b"",
        FAIL_FAST,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "logged in with an unauthorized key");
    assert!(stderr.contains("Permission denied"), "stderr: {stderr}");
    assert!(out.stdout.is_empty());
    assert!(took < FAIL_FAST, "took {took:?}");
}

/// After `kill` the port no longer accepts connections.
#[test]
fn kill_stops_the_server() {
    if !have_sshd() {
        return;
    }
    let mut sshd = Sshd::start();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, sshd.port()));
    sshd.kill();
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .err()
        .map(|e| e.kind());
    assert_eq!(refused, Some(ErrorKind::ConnectionRefused));
    sshd.kill();
}

/// nixferry's URL parser reads back what [`Sshd::store_url`] puts in.
#[test]
fn store_url_parses() {
    if !have_sshd() {
        return;
    }
    let sshd = Sshd::start();
    let store = sshd.dir().join("remote-store");
    let url = StoreUrl::parse(&sshd.store_url(&store)).expect("parsing the store URL");
    assert!(url.as_str().starts_with("ssh://"), "{url}");
    assert_eq!(
        url.location(),
        format!("{}@{HOST}:{}", sshd.user(), sshd.port())
    );
    let user_key = sshd.user_key().display().to_string();
    let store = store.display().to_string();
    assert_eq!(url.param("ssh-key"), Some(user_key.as_str()));
    assert_eq!(url.param("remote-store"), Some(store.as_str()));
    assert_eq!(
        url.param("base64-ssh-public-host-key"),
        Some(sshd.host_public_key_base64().as_str())
    );
}

#[test]
fn base64_matches_rfc4648() {
    let cases: [(&str, &str); 7] = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, encoded) in cases {
        assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
    }
}
