//! The `edgepush` binary: SIGTERM closes every client with 1001 and exits 0
//! within 2 s; config errors exit 78 naming every key; check-config redacts;
//! `watch` prints events and reports refusals.

mod common;

use std::process::Command;
use std::time::Instant;

use common::*;
use edgepush_client::Client;

fn bin() -> Command {
    edgepush_command()
}

/// `config` written to a fresh scratch directory; returns its path.
fn config_file(text: &str) -> std::path::PathBuf {
    write_config(&scratch_dir("config"), text)
}

/// `edgepush watch` with `args`, its stdout and stderr read line by line.
fn watch(args: &[&str]) -> Daemon {
    let mut cmd = bin();
    cmd.arg("watch").args(args);
    Daemon::spawn(cmd)
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0_within_2s() {
    let broker = Broker::start();
    let (mut server, addr) = run_binary(&format!("[mqtt]\nport = {}\n", broker.port));
    let url = format!("ws://{addr}/ws");
    let mut clients: Vec<Client> = block_on_timeout(10_000, "clients", async {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(subscribed(&url, &["#"]).await.0);
        }
        v
    });
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    block_on_timeout(5000, "close frames", async {
        for c in &mut clients {
            assert_eq!(close_code(c).await, Some(1001));
        }
    });
    let status = server.wait_exit(2000);
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < scaled(2000), "{:?}", started.elapsed());
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn sigint_also_exits_0() {
    let (mut server, _) = run_binary("[mqtt]\nport = 1\n");
    server.signal(libc::SIGINT);
    assert!(server.wait_exit(2000).success());
}

#[test]
fn a_bad_config_exits_78_and_names_every_key() {
    let path = config_file(
        "listen = \"nowhere\"\n[limits]\nmax-connections = -1\nmax-conections = 5\n[mqtt]\npassword = \"hunter2\"\n",
    );
    for cmd in ["run", "check-config"] {
        let out = bin().args([cmd, "--config"]).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(78), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        for key in ["listen:", "limits.max-connections:", "limits.max-conections: unknown key", "mqtt.password:"] {
            assert!(err.contains(key), "{cmd}: {key} missing in {err}");
        }
        assert!(!err.contains("hunter2"), "{err}");
    }
    let out = bin().args(["run", "--config", "/nonexistent/edgepush.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/edgepush.toml"));
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let path = config_file("[mqtt]\nusername = \"gw\"\npassword = \"hunter2\"\n[limits]\nhistory = 10\n");
    let out = bin().args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("hunter2"));
    assert!(text.contains("password = \"<redacted>\""), "{text}");
    assert!(text.contains("history = 10") && text.contains("max-connections = 1024"), "{text}");
    assert!(text.contains("board = \"generic\""));
}

#[test]
fn help_version_and_usage_errors() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "check-config", "watch"] {
        assert!(help.contains(cmd));
    }
    let out = bin().arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("edgepush {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(bin().arg("frobnicate").output().unwrap().status.code(), Some(64));
    assert_eq!(bin().args(["run", "--bogus"]).output().unwrap().status.code(), Some(64));
}

#[test]
fn watch_prints_one_line_per_event_and_notices() {
    let broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, ""));
    let mut p = Publisher::connect(broker.port);
    p.publish("w/t", "21.5");
    p.publish("w/env", r#"{"t":1,"h":2}"#);
    p.flush();
    let m = server.metrics();
    wait_until(5000, "events in", || m.events_in.load(std::sync::atomic::Ordering::Relaxed) == 2);
    let w = watch(&[&server.url(), "w/#"]);
    // The snapshot first, then live events.
    assert_eq!(w.out.next(10_000), "w/t 1 21.5");
    assert_eq!(w.out.next(5000), "w/env 2 t=1 h=2");
    p.publish("w/door", "open");
    assert_eq!(w.out.next(5000), "w/door 3 \"open\"");
    w.wait_log("# connected to edgepush", 5000);
    w.wait_log("# synced at seq 2", 5000);
}

#[test]
fn watch_exits_non_zero_with_the_http_status_when_refused() {
    let broker = Broker::start();
    let server =
        Server::start_linked(&config(broker.port, "[limits]\nmax-connections = 1\nmax-connections-per-ip = 1"));
    let _held = block_on_timeout(5000, "connect", Client::connect(&server.url())).unwrap();
    let out = output_within(bin().args(["watch", &server.url()]), b"", 10_000);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HTTP 503"), "{err}");
    let out = output_within(bin().args(["watch", "http://nope"]), b"", 10_000);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn watch_shows_broker_notices() {
    let mut broker = Broker::start();
    let server = Server::start_linked(&config(broker.port, ""));
    let w = watch(&[&server.url()]);
    // In this order: `until` passes over the lines before the one it finds.
    w.log.until("# synced", 10_000);
    broker.stop();
    w.log.until("# broker down", 10_000);
    broker.restart();
    w.log.until("# broker up", 15_000);
}

#[cfg(feature = "demo")]
#[test]
fn demo_runs_the_whole_pipeline_without_a_broker_installed() {
    let port = free_port();
    let mut cmd = bin();
    cmd.args(["demo", "--listen", &format!("127.0.0.1:{port}")]);
    let mut demo = Daemon::spawn(cmd);
    let line = demo.out.next(20_000);
    assert_eq!(line, format!("edgepush demo: dashboard at http://127.0.0.1:{port}/  (Ctrl-C to stop)"));
    let url = format!("ws://127.0.0.1:{port}/ws");
    let topics = block_on_timeout(20_000, "demo events", async {
        let mut c = Client::connect(&url).await.unwrap();
        c.subscribe(1, &["#"], None).await.unwrap();
        let mut topics = std::collections::BTreeSet::new();
        let mut kinds = std::collections::HashSet::new();
        while topics.len() < 12 || kinds.len() < 3 {
            if let edgepush_protocol::ServerMsg::Event { topic, value, .. } = next(&mut c).await {
                topics.insert(c.topic_name(topic).unwrap().to_owned());
                kinds.insert(std::mem::discriminant(&value));
            }
        }
        topics
    });
    assert!(topics.contains("doors/front") && topics.contains("meters/main/power"), "{topics:?}");
    let (status, page) = get(loopback(port), "/");
    assert_eq!(status, 200);
    assert!(page.contains("/app.mjs"));
    demo.signal(libc::SIGTERM);
    assert!(demo.wait_exit(3000).success());
}

#[test]
fn board_profiles_are_selected_by_flag_or_key_and_flag_wins() {
    let out = bin().args(["check-config", "--board", "raspberry-pi-zero-2w"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("board = \"raspberry-pi-zero-2w\"") && text.contains("max-connections = 512"), "{text}");
    let path = config_file("board = \"beaglebone-black\"\n[limits]\nhistory = 100\n");
    let out = bin().args(["check-config", "--config"]).arg(&path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("max-connections = 256") && text.contains("history = 100"), "{text}");
    let out = bin().args(["check-config", "--board", "raspberry-pi-4", "--config"]).arg(&path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("max-connections = 2560") && text.contains("history = 100"), "{text}");
    let out = bin().args(["check-config", "--board", "toaster"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown board \"toaster\""));
}

#[test]
fn hash_token_reads_stdin_and_check_config_never_shows_a_hash() {
    let hash = |input: &str| output_within(bin().arg("hash-token"), input.as_bytes(), 10_000);
    // `printf abc | sha256sum`; the line end is not part of the token.
    let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    for input in ["abc", "abc\n", "abc\r\n"] {
        let out = hash(input);
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "{input:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("easy to guess"), "a short token is warned about");
    }
    let out = hash("a-long-enough-random-token-0123456789\n");
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("a-long-enough"), "the token is never echoed");
    assert_eq!(hash("\n").status.code(), Some(64), "empty");
    assert_eq!(bin().args(["hash-token", "abc"]).output().unwrap().status.code(), Some(64), "not from argv");

    // check-config: the entry's name and scopes, not its hash; the warnings on stderr.
    let path = config_file(&format!(
        "[auth]\nallowed-origins = [\"*\"]\n[[auth.tokens]]\nname = \"wall\"\nsha256 = \"{want}\"\nsubscribe = [\"s/#\"]\n"
    ));
    let out = bin().args(["check-config", "--config"]).arg(&path).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("name = \"wall\"") && !stdout.contains(&want[..16]), "{stdout}");
    assert!(stderr.contains("allowed-origins") && stderr.contains("cross-site"), "{stderr}");
    let open = config_file("listen = \"0.0.0.0:8080\"\n");
    let out = bin().args(["check-config", "--config"]).arg(&open).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a token"), "mode = \"none\" is warned about");
}
