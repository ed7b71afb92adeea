//! Running the server: `ssh [options] host '<command>'`, `sh -c '<command>'`
//! for `localhost`, or a given local command; keeping the tail of its
//! stderr; and turning a hang-up into an error that says why.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::task::JoinHandle;

use super::ServeError;
use crate::store::StoreError;

/// How much of a server's stderr is kept for error messages.
pub(super) const STDERR_TAIL: usize = 8 * 1024;

/// How long to wait, after a hang-up, for the server's stderr to end and
/// for it to exit, before giving up on learning why.
pub(super) const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Where an `ssh://` URL points: `[user@]host[:port]`, with IPv6
/// addresses in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SshTarget {
    pub(super) user: Option<String>,
    pub(super) host: String,
    pub(super) port: Option<u16>,
}

impl SshTarget {
    /// Parses the location of an `ssh://` URL. Names that ssh could take
    /// for options (a leading `-`) or that hold spaces or control
    /// characters are refused.
    pub(super) fn parse(location: &str) -> Result<Self, &'static str> {
        let (user, rest) = match location.rsplit_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, location),
        };
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or("an IPv6 host needs its closing ']'")?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(after.strip_prefix(':').ok_or("unexpected text after ']'")?),
                ),
            }
        } else {
            match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or("the port must be a number from 1 to 65535")
            })
            .transpose()?;
        let plain = |s: &str| {
            !s.is_empty()
                && !s.starts_with('-')
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        if !plain(host) || host.contains(['/', '@', '[', ']']) {
            return Err("invalid host name");
        }
        if user.is_some_and(|u| !plain(u)) {
            return Err("invalid user name");
        }
        Ok(Self {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        })
    }

    /// The destination argument of ssh: `[user@]host`.
    pub(super) fn destination(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// The host's name in a `known_hosts` file.
    pub(super) fn known_hosts_name(&self) -> String {
        match self.port {
            Some(port) if port != 22 => format!("[{}]:{port}", self.host),
            _ => self.host.clone(),
        }
    }
}

/// The ssh options of an `ssh://` store, from its URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SshOptions {
    /// `ssh-key`: an identity file.
    pub(super) key: Option<String>,
    /// `compress`: ssh's own compression.
    pub(super) compress: bool,
    /// `NIX_SSHOPTS`, split on whitespace as Nix 2.8 does.
    pub(super) extra: Vec<String>,
}

/// The remote command: `<program> --serve --write [--store <store>]`. The
/// program is taken as written (it may carry arguments, as in Nix); the
/// store is quoted for the remote shell.
pub(super) fn remote_command(program: &str, store: Option<&str>) -> String {
    let mut command = format!("{program} --serve --write");
    if let Some(store) = store {
        command.push_str(" --store ");
        command.push_str(&shell_quote(store));
    }
    command
}

/// Quotes `s` as one word for a POSIX shell.
pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The arguments of `ssh` to run `command` on `target`: no X11 or agent
/// forwarding, never a prompt (`BatchMode`: stdin is the protocol's, and
/// a password prompt would hang), then `NIX_SSHOPTS` and the URL's
/// options, in Nix's order.
pub(super) fn ssh_args(
    target: &SshTarget,
    options: &SshOptions,
    known_hosts: Option<&Path>,
    command: &str,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-x".into(), "-a".into(), "-oBatchMode=yes".into()];
    args.extend(options.extra.iter().map(OsString::from));
    if let Some(key) = &options.key {
        args.push("-i".into());
        args.push(key.into());
    }
    if let Some(file) = known_hosts {
        // ssh splits this option's value on spaces unless it is quoted.
        let mut opt = OsString::from("-oUserKnownHostsFile=\"");
        opt.push(file);
        opt.push("\"");
        args.push(opt);
        args.push("-oStrictHostKeyChecking=yes".into());
    }
    if options.compress {
        args.push("-C".into());
    }
    if let Some(port) = target.port {
        args.push("-p".into());
        args.push(port.to_string().into());
    }
    args.push("--".into());
    args.push(target.destination().into());
    args.push(command.into());
    args
}

/// A private temporary directory, removed on drop.
pub(super) use tempfile::TempDir;

/// Creates `nixferry-ssh-<random>` in the temporary directory, readable by
/// the owner only.
fn private_temp_dir() -> io::Result<TempDir> {
    tempfile::Builder::new()
        .prefix("nixferry-ssh-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir()
}

/// Writes a `known_hosts` file naming `host_key` (the decoded
/// `base64-ssh-public-host-key`, such as `ssh-ed25519 AAAA…`) as the key of
/// `target`.
pub(super) fn known_hosts_file(
    target: &SshTarget,
    host_key: &str,
) -> io::Result<(TempDir, PathBuf)> {
    let dir = private_temp_dir()?;
    let file = dir.path().join("known_hosts");
    fs::write(
        &file,
        format!("{} {}\n", target.known_hosts_name(), host_key.trim()),
    )?;
    Ok((dir, file))
}

/// How to start a server process.
#[derive(Debug, Clone)]
pub(super) struct Launcher {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Keeps a `known_hosts` file alive as long as connections may start.
    _known_hosts: Option<Arc<TempDir>>,
}

/// A running server, without the pipes the protocol runs over.
#[derive(Debug)]
pub(super) struct Process {
    pub(super) child: Child,
    pub(super) stderr: StderrTail,
}

impl Launcher {
    /// Runs `program` with `args`.
    pub(super) fn new(
        program: OsString,
        args: Vec<OsString>,
        known_hosts: Option<TempDir>,
    ) -> Self {
        Self {
            program,
            args,
            env: Vec::new(),
            _known_hosts: known_hosts.map(Arc::new),
        }
    }

    /// Sets an environment variable for the processes started.
    pub(super) fn env(&mut self, key: OsString, value: OsString) {
        self.env.push((key, value));
    }

    /// The same launcher with its last argument replaced by `command`:
    /// for `ssh … host COMMAND` and `sh -c COMMAND`, another remote
    /// command over the same settings.
    pub(super) fn with_command(&self, command: &str) -> Self {
        let mut other = self.clone();
        if let Some(last) = other.args.last_mut() {
            *last = command.into();
        }
        other
    }

    /// The program, for messages.
    pub(super) fn program(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    /// The program and its arguments, for tests and messages.
    pub(super) fn argv(&self) -> Vec<OsString> {
        std::iter::once(self.program.clone())
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// Starts the process with its stdin, stdout and stderr piped; it is
    /// killed when its [`Child`] is dropped.
    pub(super) fn spawn(&self) -> io::Result<(Process, ChildStdout, ChildStdin)> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let missing = || io::Error::other("the child process has no pipe");
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let stderr = child.stderr.take().ok_or_else(missing)?;
        let process = Process {
            child,
            stderr: StderrTail::start(stderr),
        };
        Ok((process, stdout, stdin))
    }
}

/// The last [`STDERR_TAIL`] bytes of a process's stderr, collected by a
/// task as they come.
#[derive(Debug)]
pub(super) struct StderrTail {
    tail: Arc<Mutex<VecDeque<u8>>>,
    task: Option<JoinHandle<()>>,
}

impl StderrTail {
    fn start(mut stderr: ChildStderr) -> Self {
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let shared = Arc::clone(&tail);
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf).await {
                let mut tail = shared.lock().unwrap_or_else(PoisonError::into_inner);
                tail.extend(&buf[..n]);
                let excess = tail.len().saturating_sub(STDERR_TAIL);
                tail.drain(..excess);
            }
        });
        Self {
            tail,
            task: Some(task),
        }
    }

    /// Waits at most `limit` for stderr to end, then returns its tail.
    pub(super) async fn finish(&mut self, limit: Duration) -> Vec<u8> {
        if let Some(task) = &mut self.task {
            if tokio::time::timeout(limit, task).await.is_ok() {
                self.task = None;
            }
        }
        self.snapshot()
    }

    /// The tail collected so far.
    pub(super) fn snapshot(&self) -> Vec<u8> {
        let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.iter().copied().collect()
    }
}

impl Drop for StderrTail {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// How a server process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// Unknown: it did not exit in time, or waiting failed.
    Unknown,
}

/// Waits at most `limit` for `child` to exit; kills it if it does not.
pub(super) async fn wait_exit(child: &mut Child, limit: Duration) -> Exit {
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(status)) => match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            (None, None) => Exit::Unknown,
        },
        _ => {
            let _ = child.start_kill();
            Exit::Unknown
        }
    }
}

/// The error for a connection that failed with `error` (a read or write
/// failure), given how the server ended and what it wrote to stderr.
///
/// - A server that exited with an `error: …` message, or with a status
///   other than 0 and 255, failed on its own terms:
///   [`StoreError::Remote`] with its message, not retryable.
/// - ssh refusing to log in (a host key that does not match, a key the
///   server does not accept, a host name that does not resolve) fails
///   the same way however often it is tried: [`StoreError::Login`], not
///   retryable.
/// - ssh exiting with 255 otherwise (it could not connect, or the
///   connection broke),
///   a server killed by a signal, or a hang-up without a message is a
///   connection problem: [`StoreError::Connection`], retryable.
pub(super) fn failure(store: &str, error: &ServeError, exit: Exit, stderr: &[u8]) -> StoreError {
    let text = strip_ansi(&String::from_utf8_lossy(stderr));
    let message = error_message(&text);
    let connection = |how: String| StoreError::Connection {
        store: store.to_owned(),
        message: match last_lines(&text) {
            Some(tail) => format!("{error} ({how}: {tail})"),
            None => format!("{error} ({how})"),
        },
    };
    match (exit, message) {
        (Exit::Code(255), _) if lasting_ssh_failure(&text) => {
            let said = last_lines(&text).unwrap_or_else(|| "ssh exited with status 255".to_owned());
            let what = if text.contains("Could not resolve hostname") {
                "unknown host"
            } else if text.contains("Host key verification failed")
                || text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
                || text.contains("no matching host key type")
            {
                "host key not verified"
            } else {
                "cannot log in"
            };
            StoreError::Login {
                store: store.to_owned(),
                message: format!("{what}: {said}"),
            }
        }
        (Exit::Code(255), _) => connection("ssh exited with status 255".to_owned()),
        (Exit::Signal(signal), _) => {
            connection(format!("the server was killed by signal {signal}"))
        }
        (_, Some(message)) => StoreError::Remote {
            store: store.to_owned(),
            message,
        },
        (Exit::Code(code), None) if code != 0 => StoreError::Remote {
            store: store.to_owned(),
            message: last_lines(&text)
                .unwrap_or_else(|| format!("the server exited with status {code}")),
        },
        (Exit::Code(code), None) => connection(format!("the server exited with status {code}")),
        (Exit::Unknown, None) => connection("the server did not say why".to_owned()),
    }
}

/// Whether ssh's messages tell of a failure that trying again will not
/// mend.
fn lasting_ssh_failure(text: &str) -> bool {
    const LASTING: &[&str] = &[
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "Permission denied",
        "Could not resolve hostname",
        "Too many authentication failures",
        "Bad configuration option",
        "no matching host key type",
    ];
    LASTING.iter().any(|m| text.contains(m))
}

/// The message of the last `error:` line and the lines after it (Nix
/// prints traces there), without the `error: ` prefix.
pub(super) fn error_message(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("error:"))?;
    let first = lines[start].trim_start();
    let first = first.strip_prefix("error:").unwrap_or(first).trim_start();
    let mut message = first.to_owned();
    for line in &lines[start + 1..] {
        message.push('\n');
        message.push_str(line);
    }
    let message = message.trim_end().to_owned();
    (!message.is_empty()).then_some(message)
}

/// The last few non-empty lines of `text`, joined, for context.
fn last_lines(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join("; ");
    (!tail.is_empty()).then_some(tail)
}

/// Removes terminal escape sequences (Nix colours `error:`) and control
/// characters other than newlines and tabs.
pub(super) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters and intermediates, then a final byte.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' {
                            break;
                        }
                        if c == '\x1b' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                // nF escapes (`ESC ( B`): intermediates, then a final byte.
                Some(c) if ('\x20'..='\x2f').contains(&c) => {
                    while chars.next_if(|c| ('\x20'..='\x2f').contains(c)).is_some() {}
                    chars.next();
                }
                // Any other escape is two characters long.
                _ => {}
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

impl Process {
    /// Explains why a connection failed with `error`: for a read or write
    /// failure, waits (bounded) for the server to exit and its stderr to
    /// end, and reads both; anything else needs no waiting.
    pub(super) async fn explain(&mut self, store: &str, error: ServeError) -> StoreError {
        if !error.is_connection_error() {
            return error.into_store_error(store);
        }
        let stderr = self.stderr.finish(EXIT_WAIT).await;
        let exit = wait_exit(&mut self.child, EXIT_WAIT).await;
        failure(store, &error, exit, &stderr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = SshTarget::parse("me@host.example:2222").unwrap();
        assert_eq!(
            (t.user.as_deref(), t.host.as_str(), t.port),
            (Some("me"), "host.example", Some(2222))
        );
        assert_eq!(t.destination(), "me@host.example");
        assert_eq!(t.known_hosts_name(), "[host.example]:2222");
        let t = SshTarget::parse("[::1]:22").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", Some(22)));
        assert_eq!(t.known_hosts_name(), "::1");
        assert_eq!(SshTarget::parse("h").unwrap().destination(), "h");
        for bad in [
            "",
            "-oProxyCommand=x",
            "me@-h",
            "-u@h",
            "h:0",
            "h:99999",
            "h:x",
            "a b",
            "h/x",
            "[::1",
            "[::1]x",
            "@h",
        ] {
            assert!(SshTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ssh_command_line() {
        let target = SshTarget::parse("me@h:2222").unwrap();
        let options = SshOptions {
            key: Some("/k/id".into()),
            compress: true,
            extra: vec!["-oConnectTimeout=5".into(), "-v".into()],
        };
        let command = remote_command("/opt/nix-store", Some("/tmp/it's"));
        assert_eq!(
            command,
            r"/opt/nix-store --serve --write --store '/tmp/it'\''s'"
        );
        let args = ssh_args(
            &target,
            &options,
            Some(Path::new("/t/known hosts")),
            &command,
        );
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "-x",
                "-a",
                "-oBatchMode=yes",
                "-oConnectTimeout=5",
                "-v",
                "-i",
                "/k/id",
                "-oUserKnownHostsFile=\"/t/known hosts\"",
                "-oStrictHostKeyChecking=yes",
                "-C",
                "-p",
                "2222",
                "--",
                "me@h",
                command.as_str(),
            ]
        );
        let plain = ssh_args(
            &SshTarget::parse("h").unwrap(),
            &SshOptions::default(),
            None,
            "nix-store --serve --write",
        );
        assert_eq!(
            plain,
            [
                "-x",
                "-a",
                "-oBatchMode=yes",
                "--",
                "h",
                "nix-store --serve --write"
            ]
        );
    }

    #[test]
    fn known_hosts() {
        let target = SshTarget::parse("h:2222").unwrap();
        let (dir, file) = known_hosts_file(&target, "ssh-ed25519 AAAAC3Nz\n").unwrap();
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            "[h]:2222 ssh-ed25519 AAAAC3Nz\n"
        );
        let path = dir.path().to_owned();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn remote_messages() {
        let red = "\x1b[31;1merror:\x1b[0m path '/nix/store/x' is not valid\n";
        assert_eq!(strip_ansi(red), "error: path '/nix/store/x' is not valid\n");
        assert_eq!(
            strip_ansi("a\x1b]0;title\x07b\x1b]8;;u\x1b\\c\x1b(Bd\re"),
            "abcde"
        );
        let text = "warning: x\nerror: first\nerror: build failed\n  trace line\n";
        assert_eq!(
            error_message(text).as_deref(),
            Some("build failed\n  trace line")
        );
        assert_eq!(error_message("nothing"), None);

        let e = ServeError::Read {
            what: "x",
            source: io::ErrorKind::UnexpectedEof.into(),
        };
        let store = "ssh://h";
        let f = failure(store, &e, Exit::Code(1), red.as_bytes());
        assert_eq!(
            f.to_string(),
            "ssh://h: remote error: path '/nix/store/x' is not valid"
        );
        assert!(!f.is_retryable());
        let f = failure(
            store,
            &e,
            Exit::Code(255),
            b"ssh: connect to host h port 22: Connection refused\r\n",
        );
        assert!(f.is_retryable(), "{f}");
        for (refusal, what) in [
            ("Host key verification failed.\r\n", "host key not verified"),
            (
                "user@127.0.0.1: Permission denied (publickey).\r\n",
                "cannot log in",
            ),
            (
                "ssh: Could not resolve hostname nowhere.invalid: Name or service not known\r\n",
                "unknown host",
            ),
        ] {
            let f = failure(store, &e, Exit::Code(255), refusal.as_bytes());
            assert!(!f.is_retryable(), "{f}");
            assert!(f.to_string().contains(refusal.trim()), "{f}");
            assert!(f.to_string().contains(&format!(": {what}: ")), "{f}");
        }
        assert!(f.to_string().contains("Connection refused"), "{f}");
        let f = failure(
            store,
            &e,
            Exit::Code(127),
            b"sh: 1: nix-storex: not found\n",
        );
        assert!(!f.is_retryable());
        assert!(f.to_string().contains("nix-storex: not found"), "{f}");
        assert!(failure(store, &e, Exit::Signal(9), b"").is_retryable());
        assert!(failure(store, &e, Exit::Unknown, b"").is_retryable());
        assert!(failure(store, &e, Exit::Code(0), b"").is_retryable());
    }
}
