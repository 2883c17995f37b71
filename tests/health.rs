//! Health checks against the real binary and a real mosquitto: `/healthz`
//! names the part that fails (the broker link, a wedged hub), the WebSocket
//! health upgrade (101, one binary message, close 1000) needs no token and no
//! slot but is rate-limited, and `edgepush probe`'s line and exit codes.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Output;

use common::*;
use edgepush_client::ClientError;

/// `GET /healthz` as a WebSocket upgrade, from a fresh socket: the status
/// line's code, the head, and the frames that follow until the server closes.
fn health_upgrade(addr: SocketAddr) -> (u16, String, Vec<(u8, Vec<u8>)>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(scaled(10_000))).unwrap();
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    if status != 101 {
        // The body of a plain answer, to the end.
        let _ = s.read_to_end(&mut buf);
        return (status, String::from_utf8_lossy(&buf).into_owned(), Vec::new());
    }
    buf.drain(..end);
    let mut frames = Vec::new();
    loop {
        if let Some((op, payload, used)) = frame_in(&buf) {
            buf.drain(..used);
            let close = op == OP_CLOSE;
            frames.push((op, payload));
            if close {
                // Answer the close as a client does; the server then ends the connection.
                let _ = s.write_all(&encode_frame(true, OP_CLOSE, &1000u16.to_be_bytes(), true));
            }
            assert!(frames.len() <= 4, "more frames than a health answer has: {frames:?}");
            continue;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(buf.is_empty(), "a partial frame at the end: {buf:?}");
    (status, head, frames)
}

/// One unmasked server frame at the start of `b`: opcode, payload, bytes used.
fn frame_in(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (first, second) = (*b.first()?, *b.get(1)?);
    assert_eq!(first & 0xf0, 0x80, "a final frame without extensions");
    assert_eq!(second & 0x80, 0, "server frames are unmasked");
    let (len, at) = match second & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => panic!("a health message is small"),
        n => (n as usize, 2),
    };
    Some((first & 0x0f, b.get(at..at + len)?.to_vec(), at + len))
}

/// A config text for `run_binary` linked to the broker on `port`.
fn linked(port: u16, extra: &str) -> String {
    format!("{extra}\n[mqtt]\nport = {port}\nreconnect-min-ms = 50\nreconnect-max-ms = 200\n")
}

#[test]
fn healthz_names_the_broker_when_its_link_is_down() {
    let mut broker = Broker::start();
    let (_server, addr) = run_binary(&linked(broker.port, ""));
    wait_linked(addr, 10_000);
    let (status, body) = get(addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("{\"status\":\"ok\",\"hub\":\"ok\",\"bridge\":\"ok\",\"broker\":\"up\",\"shutting_down\":false,"),
        "{body}"
    );
    assert!(body.contains("\"broker_up\":true") && body.contains("\"connections\":0"), "{body}");

    broker.stop();
    wait_until(10_000, "healthz 503", || healthz(addr) == 503);
    let (status, body) = get(addr, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"status\":\"fail\",\"hub\":\"ok\",\"bridge\":\"ok\",\"broker\":\"down\""), "{body}");
    // The WebSocket health check says the same, without upgrading.
    let (status, answer, frames) = health_upgrade(addr);
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("\"broker\":\"down\"") && frames.is_empty(), "{answer}");

    broker.restart();
    wait_until(10_000, "healthz 200 again", || healthz(addr) == 200);
}

#[test]
fn healthz_names_the_hub_when_it_stops_answering() {
    // The hub is wedged by the hook the watchdog test uses (tests/systemd.rs):
    // it blocks the hub's thread for good, as a deadlock would.
    let broker = Broker::start();
    let port = free_port();
    let addr = loopback(port);
    let path = write_config(&scratch_dir("wedge"), &linked(broker.port, &format!("listen = \"127.0.0.1:{port}\"")));
    let mut cmd = edgepush_command();
    cmd.args(["run", "--config"])
        .arg(&path)
        .env("EDGEPUSH_TEST_WEDGE_HUB_AFTER_MS", scaled(3000).as_millis().to_string());
    let d = Daemon::spawn(cmd);
    wait_linked(addr, 20_000);
    assert!(!d.lines().iter().any(|l| l.contains("wedged by the test hook")), "wedged before it was linked");
    d.wait_log("wedged by the test hook", 10_000);
    // Past the stale bound (10 s) with no answer from the hub: 503 naming it,
    // while the executor still answers HTTP.
    wait_until(40_000, "healthz 503", || healthz(addr) == 503);
    let (status, body) = get(addr, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"status\":\"fail\",\"hub\":\"stalled\",\"bridge\":\"ok\",\"broker\":\"up\""), "{body}");
    let (status, _, _) = health_upgrade(addr);
    assert_eq!(status, 503);
    let warned = d.wait_log("health: the hub has not answered", 20_000);
    assert!(warned.starts_with("<4>"), "a warning: {warned}");
}

#[test]
fn the_websocket_health_check_needs_no_token_and_takes_no_slot() {
    let broker = Broker::start();
    let secret = "health-test-token-0123456789";
    let hash = edgepush::internals::hex::encode(&edgepush::internals::sha256(secret.as_bytes()));
    let cfg = format!(
        "[limits]\nmax-connections = 1\nmax-connections-per-ip = 1\n\
         [auth]\nmode = \"tokens\"\n[[auth.tokens]]\nname = \"wall\"\nsha256 = \"{hash}\"\nsubscribe = [\"#\"]\nmax-connections = 1\n"
    );
    let (_server, addr) = run_binary(&linked(broker.port, &cfg));
    wait_linked(addr, 10_000);
    let url = format!("ws://{addr}/ws");
    let with_token = edgepush_client::with_token(&url, secret);
    block_on_timeout(20_000, "the health upgrade beside a full server", async {
        let anonymous = timeout(5000, "a client without token", edgepush_client::Client::connect(&url)).await;
        assert!(matches!(anonymous, Err(ClientError::Refused { status: 401, .. })), "a token is really required");
        // The only slot (global, the address's and the token's) is taken.
        let (mut held, _) = subscribed(&with_token, &["#"]).await;
        let refused = timeout(5000, "a second client", edgepush_client::Client::connect(&with_token)).await;
        assert!(matches!(refused, Err(ClientError::Refused { status: 503, .. })), "the cap is really full");
        for round in 0..3 {
            let started = std::time::Instant::now();
            let (status, head, frames) = health_upgrade(addr);
            // Closed right after the message: not held for the 500 ms a
            // lingering close may wait for a peer that stays.
            assert!(started.elapsed() < scaled(400), "round {round} took {:?}", started.elapsed());
            assert_eq!(status, 101, "round {round}: {head}");
            assert!(head.contains("Upgrade: websocket") && head.contains("Sec-WebSocket-Accept: "), "{head}");
            assert_eq!(frames.len(), 2, "one message and the close: {frames:?}");
            let (op, msg) = &frames[0];
            assert_eq!(*op, OP_BINARY);
            let text = String::from_utf8(msg.clone()).unwrap();
            assert!(
                text.starts_with("{\"status\":\"ok\",\"hub\":\"ok\",\"bridge\":\"ok\",\"broker\":\"up\""),
                "{text}"
            );
            assert!(text.contains("\"connections\":1"), "{text}");
            assert_eq!(frames[1], (OP_CLOSE, 1000u16.to_be_bytes().to_vec()));
        }
        // The held client was not disturbed and the slot is still its own.
        timeout(5000, "a Ping", held.send(&edgepush_protocol::ClientMsg::Ping { nonce: 9 })).await.unwrap();
        until(&mut held, 5000, |m| matches!(m, edgepush_protocol::ServerMsg::Pong { nonce: 9 })).await;
        assert_eq!(metric(addr, "connections"), 1);
    });
}

#[test]
fn the_websocket_health_check_is_rate_limited_per_address() {
    let broker = Broker::start();
    let (_server, addr) = run_binary(&linked(broker.port, "[limits]\nconnections-per-second-per-ip = 1\n"));
    wait_linked(addr, 10_000);
    let before = metric(addr, "refused_total{reason=\"rate\"}");
    let (first, head, _) = health_upgrade(addr);
    assert_eq!(first, 101, "{head}");
    // The bucket holds one connection a second: attempts right after it are
    // refused (bounded: each attempt takes far less than a second, even emulated).
    let mut statuses = Vec::new();
    while statuses.len() < 20 && !statuses.contains(&429) {
        statuses.push(health_upgrade(addr).0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 429 || *s == 101), "{statuses:?}");
    assert!(metric(addr, "refused_total{reason=\"rate\"}") > before);
    // A /ws upgrade draws from the same bucket: one admitted, a health check
    // right after it is refused.
    let url = format!("ws://{addr}/ws");
    let shared = (0..10).any(|_| {
        if !poll_until(3000, || block_on_timeout(5000, "connect", edgepush_client::Client::connect(&url)).is_ok()) {
            return false;
        }
        health_upgrade(addr).0 == 429
    });
    assert!(shared, "a /ws connection did not take from the health check's bucket");
}

/// `edgepush probe ARGS`, with `env` set (and nothing else of ours), run to its end.
fn probe(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = edgepush_command();
    cmd.arg("probe").args(args).env_remove("EDGEPUSH_TOKEN").env_remove("EDGEPUSH_CA");
    if !args.iter().any(|a| a.starts_with("--timeout-ms")) {
        // The default 10 s, scaled for emulation.
        cmd.args(["--timeout-ms", &scaled(10_000).as_millis().to_string()]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output { status, stdout, stderr } = output_within(&mut cmd, b"", 30_000);
    let out = String::from_utf8_lossy(&stdout).into_owned();
    (status.code().unwrap_or(-1), out, String::from_utf8_lossy(&stderr).into_owned())
}

/// A step's time as the probe prints it: `12.3 ms`.
fn is_ms(s: &str) -> bool {
    s.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.len() == 1 && b.bytes().all(|c| c.is_ascii_digit())
    })
}

/// Checks the OK/WARNING line's form: `STATE - connect X ms, synced Y ms, ping Z ms... | connect=Xms;;;0 synced=Yms;;;0 ping=Zms;;;0 total=Tms;W;C;0`.
fn check_line(line: &str, state: &str, warn: &str) {
    let (text, perf) = line.trim_end().split_once(" | ").unwrap_or_else(|| panic!("no perfdata: {line:?}"));
    let rest = text.strip_prefix(&format!("{state} - connect ")).unwrap_or_else(|| panic!("{line:?}"));
    let words: Vec<&str> = rest.split(' ').collect();
    assert!(is_ms(words[0]) && words[1] == "ms," && words[2] == "synced", "{line:?}");
    assert!(is_ms(words[3]) && words[4] == "ms," && words[5] == "ping" && is_ms(words[6]), "{line:?}");
    let perf: Vec<&str> = perf.split(' ').collect();
    assert_eq!(perf.len(), 4, "{line:?}");
    for (p, label) in perf.iter().zip(["connect", "synced", "ping"]) {
        let v = p.strip_prefix(&format!("{label}=")).and_then(|v| v.strip_suffix("ms;;;0"));
        assert!(v.is_some_and(is_ms), "{p:?} in {line:?}");
    }
    let total = perf[3].strip_prefix("total=").and_then(|t| t.strip_suffix(&format!("ms;{warn};;0")));
    assert!(total.is_some_and(is_ms), "{line:?}");
}

#[test]
fn probe_exit_codes_and_its_line() {
    let mut broker = Broker::start();
    let secret = "probe-test-token-0123456789";
    let hash = edgepush::internals::hex::encode(&edgepush::internals::sha256(secret.as_bytes()));
    let cfg = format!(
        "[auth]\nmode = \"tokens\"\n[[auth.tokens]]\nname = \"monitor\"\nsha256 = \"{hash}\"\nsubscribe = [\"#\"]\n"
    );
    let (_server, addr) = run_binary(&linked(broker.port, &cfg));
    wait_linked(addr, 10_000);
    let url = format!("ws://{addr}/ws");
    let token = [("EDGEPUSH_TOKEN", secret)];

    // OK, with a warning threshold no emulated run reaches.
    let warn = scaled(20_000).as_millis().to_string();
    let (code, out, err) = probe(&[&url, "sensors/#", "--warn-ms", &warn], &token);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    check_line(&out, "OK", &format!("{warn}.0"));

    // WARNING over --warn-ms.
    let (code, out, err) = probe(&[&url, "--warn-ms", "0"], &token);
    assert_eq!(code, 1, "{out}{err}");
    check_line(&out, "WARNING", "0.0");
    assert!(out.contains(" over --warn-ms 0 | "), "{out}");

    // CRITICAL: over --crit-ms; refused (no token); a closed port.
    let (code, out, _) = probe(&[&url, "--crit-ms=0"], &token);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("CRITICAL - ") && out.contains("over --crit-ms 0"), "{out}");
    let (code, out, _) = probe(&[&url], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("CRITICAL - connect failed: refused with HTTP 401"), "{out}");
    let closed = format!("ws://127.0.0.1:{}/ws", free_port());
    let (code, out, _) = probe(&[&closed], &token);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("CRITICAL - connect failed: ") && !out.contains(" | "), "{out}");

    // CRITICAL: the server answers but its broker link is down.
    broker.stop();
    wait_until(10_000, "the link down", || healthz(addr) == 503);
    let (code, out, _) = probe(&[&url], &token);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("CRITICAL - the server's broker link is down; connect "), "{out}");
    assert!(out.contains(" | connect=") && out.contains(" ping="), "every step still timed: {out}");

    // UNKNOWN: bad arguments, a bad URL, an unreadable CA.
    for bad in
        [&[][..], &["http://x/ws"], &["ws:///ws"], &[&url, "--warn-ms", "soon"], &[&url, "--bogus"], &[&url, "a", "b"]]
    {
        let (code, out, err) = probe(bad, &[]);
        assert_eq!(code, 3, "{bad:?}: {out}{err}");
        assert!(out.starts_with("UNKNOWN - "), "{bad:?}: {out}");
        assert!(err.contains("usage: edgepush probe"), "{bad:?}: {err}");
    }
    let (code, out, _) = probe(&[&url], &[("EDGEPUSH_CA", "/nonexistent/ca.pem")]);
    assert_eq!(code, 3, "{out}");
    let help = output_within(edgepush_command().arg("--help"), b"", 10_000);
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(help.contains("edgepush probe URL [FILTER]") && help.contains("3 UNKNOWN"), "{help}");
}

#[test]
fn probe_gives_up_at_its_timeout() {
    // A peer that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let (code, out, _) = probe(&[&url, "--timeout-ms", "300"], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("CRITICAL - connect failed: timed out"), "{out}");
    assert!(started.elapsed() < scaled(10_000), "{:?}", started.elapsed());
    drop(silent);
}
