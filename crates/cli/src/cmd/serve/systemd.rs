//! Running under a service manager: sockets passed by socket activation,
//! readiness notification, and room for many connections.
//!
//! The protocols are systemd's (`sd_listen_fds(3)`, `sd_notify(3)`):
//!
//! - socket activation: the manager binds the sockets and starts the
//!   service with them as file descriptors 3, 4, …, and with
//!   `LISTEN_FDS` (how many) and `LISTEN_PID` (the service's process id;
//!   the sockets are for no other process);
//! - readiness: with `NOTIFY_SOCKET` set (`Type=notify`), the service
//!   sends `READY=1` to that datagram socket once it serves, and
//!   `STOPPING=1` when it begins to stop. A name starting with `@` is in
//!   the abstract namespace.

use std::net::TcpListener;

use anyhow::{bail, Context as _};

/// The first file descriptor of passed sockets.
const FIRST_FD: i32 = 3;

/// The listening sockets the service manager passed to this process, if
/// it passed any (none when `LISTEN_PID` names another process). The
/// variables are removed, so that they are not taken twice.
#[cfg(unix)]
pub(super) fn passed_sockets() -> anyhow::Result<Vec<TcpListener>> {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let n: i32 = fds
        .trim()
        .parse()
        .with_context(|| format!("LISTEN_FDS is not a number: '{fds}'"))?;
    if !(1..=64).contains(&n) {
        bail!("LISTEN_FDS={n}: expected between 1 and 64 sockets");
    }
    (FIRST_FD..FIRST_FD + n)
        .map(|fd| {
            // The descriptors from 3 on are the passed sockets, ours
            // alone: LISTEN_PID names this process, and nothing in it
            // opened a file before this runs (the runtime is started
            // after), so nothing else owns them.
            #[allow(unsafe_code)]
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            rustix::io::fcntl_getfd(borrowed).map_err(|e| {
                anyhow::anyhow!("LISTEN_FDS names file descriptor {fd}, which is not open: {e}")
            })?;
            #[allow(unsafe_code)]
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let listener = TcpListener::from(owned);
            listener.local_addr().with_context(|| {
                format!("file descriptor {fd} of LISTEN_FDS is not a TCP socket")
            })?;
            Ok(listener)
        })
        .collect()
}

#[cfg(not(unix))]
pub(super) fn passed_sockets() -> anyhow::Result<Vec<TcpListener>> {
    Ok(Vec::new())
}

/// Tells the service manager `state` (`READY=1`, `STOPPING=1`) if it asked
/// to be told (`NOTIFY_SOCKET`); a failure to tell it is printed, not
/// fatal.
pub(super) fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket, state) {
        eprintln!(
            "telling the service manager {state} through '{}': {e}",
            socket.to_string_lossy()
        );
    }
}

#[cfg(unix)]
fn send(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::net::UnixDatagram;

    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "android")]
        use std::os::android::net::SocketAddrExt as _;
        #[cfg(target_os = "linux")]
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
        return Ok(());
    }
    sock.send_to(state.as_bytes(), std::path::Path::new(socket))?;
    Ok(())
}

#[cfg(not(unix))]
fn send(_: &std::ffi::OsStr, _: &str) -> std::io::Result<()> {
    Ok(())
}

/// Raises this process's limit of open files (`RLIMIT_NOFILE`) to its
/// hard limit, as far as `wanted` needs, and returns the limit then in
/// effect (`None` where it cannot be known). Every connection takes a
/// file descriptor, and the usual soft limit of 1024 is far below what a
/// server of a fleet needs.
#[cfg(unix)]
pub(super) fn raise_open_files(wanted: u64) -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

    let limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    if current >= wanted {
        return Some(current);
    }
    let raised = limit.maximum.map_or(wanted, |max| max.min(wanted));
    if raised <= current {
        return Some(current);
    }
    let new = Rlimit {
        current: Some(raised),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => Some(raised),
        Err(_) => Some(current),
    }
}

#[cfg(not(unix))]
pub(super) fn raise_open_files(_: u64) -> Option<u64> {
    None
}
