//! The parts of systemd's service protocol edgepush speaks, without libsystemd:
//! `sd_notify` (datagrams to `$NOTIFY_SOCKET`), the watchdog period
//! (`$WATCHDOG_USEC`, `$WATCHDOG_PID`) and socket activation (`$LISTEN_FDS`,
//! `$LISTEN_PID`, descriptors from 3). Outside systemd every part is a no-op.

use std::io;
use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::time::Duration;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Sends state changes to the service manager.
pub struct Notifier {
    socket: Option<(UnixDatagram, UnixAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`. A path, or `@name` for an abstract socket.
    /// Without it (not run by systemd) every notification is dropped.
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Notifier { socket: None } };
        let addr = {
            use std::os::unix::ffi::OsStrExt;
            let bytes = path.as_bytes();
            match bytes.strip_prefix(b"@") {
                Some(name) => abstract_addr(name),
                None => UnixAddr::from_pathname(&path),
            }
        };
        let socket = match (addr, UnixDatagram::unbound()) {
            (Ok(addr), Ok(sock)) => Some((sock, addr)),
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("NOTIFY_SOCKET {path:?} unusable: {e}; systemd will not hear from edgepush");
                None
            }
        };
        Notifier { socket }
    }

    /// True when a service manager listens.
    #[cfg(test)]
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one notification such as `READY=1` (newline-separated assignments).
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.socket {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
                log::warn!("sd_notify {:?}: {e}", state.lines().next().unwrap_or(""));
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// `RELOADING=1` with the monotonic timestamp systemd (253+) asks for.
    pub fn reloading(&self) {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=shutting down");
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<UnixAddr> {
    use std::os::linux::net::SocketAddrExt;
    UnixAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_: &[u8]) -> io::Result<UnixAddr> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract sockets are Linux-only"))
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// True when a variable names this process, or is absent.
fn for_this_process(var: &str) -> Result<bool, String> {
    match std::env::var(var) {
        Err(_) => Ok(true),
        Ok(v) => v.trim().parse::<u32>().map(|pid| pid == std::process::id()).map_err(|_| format!("{var}={v:?}")),
    }
}

/// The watchdog period systemd expects pings within (`WatchdogSec=`), if any.
pub fn watchdog_timeout() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?.trim().parse::<u64>().ok().filter(|&u| u > 0)?;
    match for_this_process("WATCHDOG_PID") {
        Ok(true) => Some(Duration::from_micros(usec)),
        Ok(false) => None,
        Err(bad) => {
            log::warn!("ignoring the watchdog: bad {bad}");
            None
        }
    }
}

/// The listening socket systemd passed (socket activation), if any.
///
/// Takes exactly one stream socket on descriptor 3; more than one is an error
/// (one `ListenStream=` per unit). The variables are removed so nothing this
/// process starts would take them for its own.
///
/// # Errors
/// The variables are malformed, or descriptor 3 is not a listening TCP socket.
pub fn activated_listener() -> io::Result<Option<TcpListener>> {
    let Ok(fds) = std::env::var("LISTEN_FDS") else { return Ok(None) };
    let ours = for_this_process("LISTEN_PID").map_err(|bad| invalid(format!("bad {bad}")))?;
    if std::env::var_os("LISTEN_PID").is_none() || !ours {
        return Ok(None);
    }
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        // SAFETY (edition 2024 wording): called while the process is single-threaded, before any
        // thread starts, so nothing reads the environment concurrently.
        std::env::remove_var(var);
    }
    let n: i32 = fds.trim().parse().map_err(|_| invalid(format!("bad LISTEN_FDS={fds:?}")))?;
    match n {
        0 => return Ok(None),
        1 => {}
        n => return Err(invalid(format!("systemd passed {n} sockets; edgepush takes one (one ListenStream=)"))),
    }
    let fd = LISTEN_FDS_START;
    let listening = sockopt(fd, libc::SO_ACCEPTCONN)?;
    let kind = sockopt(fd, libc::SO_TYPE)?;
    if listening != 1 || kind != libc::SOCK_STREAM {
        return Err(invalid("descriptor 3 is not a listening stream socket (ListenStream=)".into()));
    }
    // SAFETY: systemd hands descriptor 3 to this process to own; it was just checked to be a
    // listening stream socket, and nothing else in the process refers to it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    // SAFETY: plain fcntl on a descriptor this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    match listener.local_addr() {
        Ok(a) if a.is_ipv4() || a.is_ipv6() => Ok(Some(listener)),
        _ => Err(invalid("descriptor 3 is not a TCP socket (ListenStream= takes a port or address)".into())),
    }
}

fn sockopt(fd: i32, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of the sizes given.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&mut v as *mut libc::c_int).cast(), &mut len) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("socket activation: descriptor 3: {e}")));
    }
    Ok(v)
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("socket activation: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_arrive_as_datagrams() {
        let dir = std::env::temp_dir().join(format!("edgepush-notify-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { socket: Some((UnixDatagram::unbound().unwrap(), UnixAddr::from_pathname(&path).unwrap())) };
        n.ready("listening");
        n.reloading();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=listening");
        let len = rx.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        let usec: u64 = text.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").unwrap().parse().unwrap();
        assert!(usec > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_socket_means_silence() {
        let n = Notifier { socket: None };
        assert!(!n.enabled());
        n.ready("x");
    }
}
