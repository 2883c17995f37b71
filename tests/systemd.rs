//! The binary under a service manager, as systemd runs it: readiness, watchdog,
//! reload and stopping notifications on a `NOTIFY_SOCKET` this test binds;
//! the watchdog going quiet when the hub wedges; socket activation from a
//! listener passed as descriptor 3; journald-style log lines.

mod common;

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use edgepush_client::{Client, ClientError};

/// The datagram socket systemd would listen on.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let path = scratch_dir("notify").join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket { sock, path }
    }

    /// The next notification within `limit`, if any.
    fn next(&self, limit: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(limit.max(Duration::from_millis(1)))).unwrap();
        let mut buf = [0u8; 1024];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Reads notifications until one starts with `prefix`; returns it and
    /// the ones before it.
    fn expect(&self, prefix: &str, limit_ms: u64) -> (String, Vec<String>) {
        let deadline = Instant::now() + scaled(limit_ms);
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(m) if m.starts_with(prefix) => return (m, before),
                Some(m) => before.push(m),
                None => panic!("no {prefix:?} within {:?}; got {before:?}", scaled(limit_ms)),
            }
        }
    }

    /// Everything that arrives within `window`.
    fn collect(&self, window: Duration) -> Vec<String> {
        let end = Instant::now() + window;
        let mut got = Vec::new();
        while let Some(m) = self.next(end.saturating_duration_since(Instant::now())) {
            got.push(m);
            if Instant::now() >= end {
                break;
            }
        }
        got
    }
}

/// Config text listening on `port`, the broker on `broker`, `extra` on top.
fn client_config(port: u16, broker: u16, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\n{extra}\n[mqtt]\nport = {broker}\nreconnect-min-ms = 50\nreconnect-max-ms = 200\n"
    )
}

async fn connect(url: &str) -> Result<Client, ClientError> {
    timeout(10_000, "connect", Client::connect(url)).await
}

#[test]
fn notify_ready_watchdog_reload_and_stopping_with_journald_log_lines() {
    let broker = Broker::start();
    let notify = NotifySocket::bind();
    let port = free_port();
    let addr = loopback(port);
    let dir = scratch_dir("reload");
    let cfg_path = write_config(
        &dir,
        &client_config(port, broker.port, "[limits]\nmax-connections = 2\nmax-connections-per-ip = 2\n"),
    );

    let watchdog = scaled(400);
    let mut cmd = edgepush_command();
    cmd.args(["run", "--config"])
        .arg(&cfg_path)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string());
    let mut d = Daemon::spawn(cmd);

    // READY=1 only once the listener is bound: a connection right after it works.
    let (ready, _) = notify.expect("READY=1", 10_000);
    TcpStream::connect(addr).expect("listening when READY=1 arrives");
    assert!(ready.contains(&format!("STATUS=serving 127.0.0.1:{port}")), "{ready}");

    // Pings at half the watchdog period.
    let pings = notify.collect(watchdog * 3).iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 3, "{pings} watchdog pings in 3 periods");

    let url = format!("ws://{addr}/ws");
    let mut publisher = Publisher::connect(broker.port);
    let (mut a, mut b) = block_on_timeout(10_000, "two clients", async {
        (subscribed(&url, &["#"]).await.0, subscribed(&url, &["#"]).await.0)
    });
    let third = block_on_timeout(10_000, "a third client", connect(&url));
    assert!(matches!(third, Err(ClientError::Refused { status: 503, .. })), "cap 2: {:?}", third.err());

    // Reload with a higher cap and a smaller history: applied, nobody dropped.
    write_config(
        &dir,
        &client_config(port, broker.port, "[limits]\nmax-connections = 4\nhistory = 16\nmax-connections-per-ip = 4\n"),
    );
    d.signal(libc::SIGHUP);
    let (reloading, _) = notify.expect("RELOADING=1", 10_000);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    notify.expect("READY=1", 10_000);
    d.wait_log("reload: config applied", 5_000);
    publisher.publish("plant/t", "21.5");
    block_on_timeout(10_000, "the connected clients keep receiving", async {
        for c in [&mut a, &mut b] {
            let got = until(c, 5000, |m| number(m) == Some(21.5)).await;
            assert!(!got.is_empty());
        }
    });
    let c = block_on_timeout(10_000, "a third client", connect(&url)).expect("cap 4 admits a third");
    assert_eq!(c.hello().version, 1);

    // A bad config is refused with the key named; the old one stays in force.
    write_config(&dir, &client_config(port, broker.port, "[limits]\nmax-connections = 0\nbogus = 1\n"));
    d.signal(libc::SIGHUP);
    notify.expect("RELOADING=1", 10_000);
    notify.expect("READY=1", 10_000);
    let refused = d.wait_log("reload refused", 5_000);
    assert!(refused.starts_with("<3>"), "an error-priority line: {refused}");
    // One line per problem follows the summary line; each names its key.
    d.wait_log("limits.max-connections", 5_000);
    d.wait_log("limits.bogus", 5_000);
    let _fourth = block_on_timeout(10_000, "a fourth client", connect(&url)).expect("cap 4 still in force");
    let fifth = block_on_timeout(10_000, "a fifth client", connect(&url));
    assert!(matches!(fifth, Err(ClientError::Refused { status: 503, .. })), "cap 4: {:?}", fifth.err());

    // A change that needs a restart is said to, and the rest applies.
    let other = free_port();
    write_config(
        &dir,
        &client_config(other, broker.port, "[limits]\nmax-connections = 5\nmax-connections-per-ip = 5\n"),
    );
    d.signal(libc::SIGHUP);
    notify.expect("READY=1", 10_000);
    let warned = d.wait_log("takes a restart", 5_000);
    assert!(warned.starts_with("<4>") && warned.contains("listen"), "{warned}");
    assert_eq!(get(addr, "/healthz").0, 200, "still serving on the old address");

    // SIGTERM: STOPPING=1, clients get 1001, exit 0.
    d.signal(libc::SIGTERM);
    notify.expect("STOPPING=1", 10_000);
    assert_eq!(block_on_timeout(10_000, "close", close_code(&mut a)), Some(1001));
    assert!(d.wait_exit(10_000).success());

    // journald format on a pipe: every line a <N> syslog priority, no timestamps, no colours.
    let lines = d.lines();
    assert!(lines.iter().any(|l| l.starts_with("<6>edgepush::daemon::start: listening on")), "{lines:#?}");
    for l in &lines {
        let prio = l.strip_prefix('<').and_then(|r| r.split_once('>')).map(|(p, _)| p);
        assert!(matches!(prio, Some("3" | "4" | "6" | "7")), "not a journald line: {l:?}");
        assert!(!l.contains("\u{1b}["), "colour in {l:?}");
        assert!(!l.contains(" INFO ") && !l.contains(" WARN "), "simple_logger's format in {l:?}");
    }
}

#[test]
fn watchdog_pings_stop_when_the_hub_wedges_while_the_rest_still_answers() {
    let broker = Broker::start();
    let notify = NotifySocket::bind();
    let port = free_port();
    let addr = loopback(port);
    let cfg_path = write_config(&scratch_dir("wedge"), &client_config(port, broker.port, ""));
    let watchdog = scaled(300);
    let mut cmd = edgepush_command();
    cmd.args(["run", "--config"])
        .arg(&cfg_path)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .env("EDGEPUSH_TEST_WEDGE_HUB_AFTER_MS", scaled(1500).as_millis().to_string());
    let d = Daemon::spawn(cmd);
    notify.expect("READY=1", 10_000);
    notify.expect("WATCHDOG=1", 5_000);
    d.wait_log("wedged by the test hook", 10_000);
    // Pings already on their way may still land; then silence.
    let _ = notify.collect(watchdog);
    let after = notify.collect(watchdog * 5);
    assert!(!after.iter().any(|m| m == "WATCHDOG=1"), "pings from a wedged server: {after:?}");
    // Not a dead process: the executor still answers HTTP, so the pings
    // stopped because the hub did not answer, not because everything stopped.
    assert_eq!(get(addr, "/metrics").0, 200);
    let warned = d.wait_log("did not answer", 5_000);
    assert!(warned.starts_with("<4>"), "{warned}");
}

#[test]
fn watchdog_meant_for_another_process_is_ignored() {
    let broker = Broker::start();
    let notify = NotifySocket::bind();
    let cfg_path = write_config(&scratch_dir("wdpid"), &client_config(free_port(), broker.port, ""));
    let mut cmd = edgepush_command();
    cmd.args(["run", "--config"])
        .arg(&cfg_path)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "100000")
        .env("WATCHDOG_PID", "1");
    let _d = Daemon::spawn(cmd);
    notify.expect("READY=1", 10_000);
    let got = notify.collect(Duration::from_millis(500));
    assert!(!got.iter().any(|m| m == "WATCHDOG=1"), "{got:?}");
}

/// `edgepush run` with `listener` as descriptor 3 and `LISTEN_FDS=1`,
/// `LISTEN_PID` set to its own pid (by `sh`, which then execs it).
fn activated(listener: &TcpListener, config: &std::path::Path) -> Daemon {
    let inner = edgepush_command();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$@\"").arg("sh").arg(inner.get_program());
    cmd.args(inner.get_args()).args(["run", "--config"]).arg(config);
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Daemon::spawn(cmd)
}

/// A client that connects now and waits (in the backlog if need be) for its Hello.
fn hello_later(url: String) -> std::thread::JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        smol::block_on(async {
            let c = timeout(30_000, "hello", Client::connect(&url)).await.map_err(|e| e.to_string())?;
            Ok(c.hello().epoch)
        })
    })
}

#[test]
fn socket_activation_serves_the_passed_listener_and_a_restart_refuses_nobody() {
    let broker = Broker::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("ws://{addr}/ws");
    // `listen` names another port: with a socket passed, it must not be bound.
    let unused = free_port();
    let cfg_path = write_config(&scratch_dir("activation"), &client_config(unused, broker.port, ""));

    // A dashboard connecting before the server runs waits in the backlog.
    let early = hello_later(url.clone());
    wait_until(10_000, "the early client in the accept queue", || accept_backlog(addr.port()) == 1);
    let mut first = activated(&listener, &cfg_path);
    let epoch1 = early.join().unwrap().expect("the early client is served");
    first.wait_log("socket activation: serving", 5_000);
    assert!(TcpStream::connect(("127.0.0.1", unused)).is_err(), "listen was bound despite the passed socket");

    // Restart: while no server runs, a reconnect waits instead of being refused.
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(10_000).success());
    let during = hello_later(url.clone());
    wait_until(10_000, "the reconnect in the accept queue", || accept_backlog(addr.port()) == 1);
    let _second = activated(&listener, &cfg_path);
    let epoch2 = during.join().unwrap().expect("the reconnect during the restart is served");
    assert_ne!(epoch1, epoch2, "served by the new process");
}

#[test]
fn reload_swaps_tokens_and_origins_without_dropping_connected_clients_and_never_logs_a_token() {
    use edgepush_client::{with_token, ConnectOptions};
    let broker = Broker::start();
    let port = free_port();
    let addr = loopback(port);
    let (old, new) = ("old-token-1f0e3dad99908345", "new-token-f4d3c2b1a0998877");
    let token = |name: &str, secret: &str| {
        let hash = edgepush::internals::hex::encode(&edgepush::internals::sha256(secret.as_bytes()));
        format!("[[auth.tokens]]\nname = \"{name}\"\nsha256 = \"{hash}\"\nsubscribe = [\"#\"]\n")
    };
    let dir = scratch_dir("reload-auth");
    let text = |auth: &str| {
        format!(
            "listen = \"127.0.0.1:{port}\"\n[log]\nlevel = \"debug\"\n[mqtt]\nport = {}\nreconnect-min-ms = 50\n{auth}",
            broker.port
        )
    };
    let cfg_path = write_config(&dir, &text(&token("screen", old)));
    let d = Daemon::run(&cfg_path, addr);
    wait_linked(addr, 10_000);
    let url = format!("ws://{addr}/ws");
    let (mut kept, _) =
        block_on_timeout(10_000, "a client with the old token", subscribed(&with_token(&url, old), &["#"]));

    // The old token out, a new one in, and an explicit origin list.
    let auth = format!("[auth]\nallowed-origins = [\"http://dash.lan:9000\"]\n{}", token("screen", new));
    write_config(&dir, &text(&auth));
    d.signal(libc::SIGHUP);
    d.wait_log("reload: config applied", 10_000);
    let mut publisher = Publisher::connect(broker.port);
    publisher.publish("plant/t", "7.5");
    block_on_timeout(10_000, "the connected client keeps receiving", async {
        until(&mut kept, 5000, |m| number(m) == Some(7.5)).await;
    });
    let with_origin = |o: &str| ConnectOptions { headers: vec![("Origin".into(), o.into())], ..Default::default() };
    block_on_timeout(10_000, "new connections under the new config", async {
        let stale = Client::connect(&with_token(&url, old)).await;
        assert!(matches!(stale, Err(ClientError::Refused { status: 401, .. })), "{:?}", stale.err());
        Client::connect(&with_token(&url, new)).await.expect("the new token");
        let own = Client::connect_with(&with_token(&url, new), &with_origin(&format!("http://{addr}"))).await;
        assert!(matches!(own, Err(ClientError::Refused { status: 403, .. })), "the list replaces the default");
        Client::connect_with(&with_token(&url, new), &with_origin("http://dash.lan:9000")).await.expect("listed");
    });
    // Debug logging, every refusal logged: neither token, nor its hash, anywhere.
    let log = d.lines().join("\n");
    assert!(log.contains("token \"screen\""), "the name is logged:\n{log}");
    for secret in [old, new] {
        let hash = edgepush::internals::hex::encode(&edgepush::internals::sha256(secret.as_bytes()));
        assert!(!log.contains(secret) && !log.contains(&hash[..16]), "a token or its hash in the log:\n{log}");
    }
}
