//! File descriptor limits: the standard process metrics on /metrics, the
//! start-up warning when `RLIMIT_NOFILE` is short of what the config needs,
//! and running out of descriptors at accept (counted, warned about once).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

/// The value of an unlabelled series (integer or float) in Prometheus text.
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// `edgepush run --config <config>` with soft and hard `RLIMIT_NOFILE` both
/// `nofile`, once it listens on `addr`.
fn run_with_nofile(config: &Path, addr: SocketAddr, nofile: u64) -> Daemon {
    let mut cmd = edgepush_command();
    cmd.args(["run", "--config"]).arg(config);
    // rlim_t is 32 bits on armv7.
    #[allow(clippy::unnecessary_cast)]
    let limit = libc::rlimit { rlim_cur: nofile as libc::rlim_t, rlim_max: nofile as libc::rlim_t };
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls setrlimit(2), which is async-signal-safe, on a struct it owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let d = Daemon::spawn(cmd);
    wait_until(20_000, "the server to listen", || TcpStream::connect(addr).is_ok());
    d
}

/// A config file listening on a free port; returns it and the address.
fn config_file(text: &str) -> (std::path::PathBuf, SocketAddr) {
    let port = free_port();
    let path = write_config(&scratch_dir("limits"), &format!("listen = \"127.0.0.1:{port}\"\n{text}"));
    (path, loopback(port))
}

#[test]
fn metrics_have_the_standard_process_series_with_sane_values() {
    let broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, ""));
    let text = metrics_text(server.addr);
    for name in [
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no TYPE line in\n{text}");
        assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP line in\n{text}");
    }
    let (open, max) = (value(&text, "process_open_fds"), value(&text, "process_max_fds"));
    assert!(open > 3.0 && open <= max, "open fds {open}, max {max}");
    assert!(value(&text, "process_resident_memory_bytes") > 1_048_576.0, "{text}");
    assert!(value(&text, "process_cpu_seconds_total") >= 0.0, "{text}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let start = value(&text, "process_start_time_seconds");
    assert!(start > now - 3600.0 && start <= now + 1.0, "start {start}, now {now}");
    assert!(text.contains("\nedgepush_accept_errors_total{reason=\"emfile\"} 0\n"), "{text}");
    assert!(text.contains("\nedgepush_accept_errors_total{reason=\"enfile\"} 0\n"), "{text}");
}

#[test]
fn a_descriptor_limit_below_the_configs_need_is_warned_about_at_start() {
    let (path, addr) =
        config_file("[limits]\nmax-connections = 1000\nmax-connections-per-ip = 1000\n[mqtt]\nport = 1\n");
    let d = run_with_nofile(&path, addr, 128);
    // 1000 connections + 3000 pending heads + 64 busy answers + a margin of 64.
    let line = d.wait_log("LimitNOFILE", 5000);
    for part in ["limit 128 ", "4128", "ulimit -n", "max-connections = 1000"] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    // The server works regardless, and reports the limit it has.
    let text = metrics_text(addr);
    assert_eq!(value(&text, "process_max_fds"), 128.0, "{text}");
}

#[test]
fn running_out_of_descriptors_at_accept_is_counted_and_warned_about_once() {
    let broker = Broker::start();
    // A long handshake timeout: the silent sockets below stay open on the
    // server's side. Fewer descriptors (64) than the cap on pending heads
    // (64), so it is the limit that stops the accepts.
    let (path, addr) = config_file(&format!(
        "[limits]\nmax-connections = 4\nhandshake-timeout-ms = 60000\n[mqtt]\nport = {}\n",
        broker.port
    ));
    let d = run_with_nofile(&path, addr, 64);
    wait_linked(addr, 10_000);
    assert!(d.wait_log("file descriptor limit 64 is below the 196", 5000).contains("LimitNOFILE=196"));
    // Silent sockets until the server cannot accept: the rest wait in its backlog.
    let mut held = Vec::new();
    for _ in 0..80 {
        match TcpStream::connect_timeout(&addr, scaled(1000)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    let warning = d.wait_log("accept failed", 5000);
    for part in ["Too many open files", "(64)", "LimitNOFILE=", "ulimit -n", "once a minute"] {
        assert!(warning.contains(part), "{part:?} in {warning}");
    }
    // Several retries (one each 100 ms) while still out of descriptors.
    std::thread::sleep(Duration::from_millis(500));
    // /metrics takes a descriptor too: let the held ones go first.
    drop(held);
    let mut emfile = 0;
    wait_until(10_000, "accept errors on /metrics", || {
        let text = metrics_text(addr);
        emfile = metric_in(&text, "edgepush_accept_errors_total{reason=\"emfile\"}").unwrap_or(0);
        emfile >= 1
    });
    assert!(emfile >= 2, "one failure per retry while out of descriptors: {emfile}");
    let warnings: Vec<String> = d.lines().into_iter().filter(|l| l.contains("accept failed")).collect();
    assert_eq!(warnings.len(), 1, "at most one warning a minute: {warnings:#?}");
    // Serving again.
    assert_eq!(healthz(addr), 200);
}
