//! `GET /access` answers, as JSON a page can read, what a `/ws` handshake
//! with the same credentials, Origin and address would decide (ok with the
//! token's own scopes, token required, invalid or expired, origin not
//! allowed, full with Retry-After, rate-limited), without taking a slot;
//! `GET /dashboard.json` serves `[dashboard]` to the same credentials, and a
//! reload (SIGHUP) changes it without a restart. The real binary throughout.

mod common;

use std::net::SocketAddr;

use common::*;
use edgepush::internals::hex::encode as hex;
use edgepush::internals::{now_ms, sha256};
use edgepush_client::{with_token, Client};
use serde_json::Value as Json;

const WALL: &str = "wall-t0ken";
const OPS: &str = "ops-t0ken";

fn tokens() -> String {
    format!(
        "[[auth.tokens]]\nname = \"wall\"\nsha256 = \"{}\"\nsubscribe = [\"sensors/#\"]\n\
         [[auth.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nsubscribe = [\"#\"]\npublish = [\"cmd/#\"]\nmax-connections = 1\n",
        hex(&sha256(WALL.as_bytes())),
        hex(&sha256(OPS.as_bytes()))
    )
}

/// `GET path` with extra header lines: the status, the headers and the JSON body.
fn get_json(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, Json) {
    let (status, text) = http(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no body in {text:?}"));
    assert!(head.contains("Content-Type: application/json"), "{head}");
    (status, head.to_owned(), serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}")))
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// An HS256 JWT with these claims.
fn jwt(secret: &[u8], claims: &str) -> String {
    let input = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(claims.as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!("{input}.{}", b64(ring::hmac::sign(&key, input.as_bytes()).as_ref()))
}

#[test]
fn access_says_what_the_handshake_would_decide_for_each_reason() {
    let broker = Broker::start();
    let dir = scratch_dir("access");
    let secret = "0123456789abcdef0123456789abcdef";
    std::fs::write(dir.join("jwt.key"), secret).unwrap();
    let port = free_port();
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\n[mqtt]\nport = {}\n[limits]\nmax-connections = 2\nconnections-per-second-per-ip = 1000\n\
         [auth]\nallowed-origins = [\"http://dash.lan\"]\n[auth.jwt]\nkey = \"{}\"\nalgorithm = \"HS256\"\nleeway-s = 0\n{}",
        broker.port,
        dir.join("jwt.key").display(),
        tokens()
    );
    let addr = loopback(port);
    let _d = Daemon::run(&write_config(&dir, &text), addr);
    wait_linked(addr, 10_000);

    // ok: the presented token's own scopes, and nobody else's.
    let (status, _, j) = get_json(addr, "/access", &bearer(WALL));
    assert_eq!((status, &j["access"]), (200, &Json::from("ok")), "{j}");
    assert_eq!(j["subscribe"], serde_json::json!(["sensors/#"]));
    assert_eq!(j["publish"], serde_json::json!([]));
    assert!(!j.to_string().contains("cmd/#") && !j.to_string().contains("ops"), "{j}");
    // The same token transports as /ws: the query and the cookie.
    let (_, _, j) = get_json(addr, &format!("/access?token={OPS}"), "");
    assert_eq!((j["access"].as_str(), &j["publish"]), (Some("ok"), &serde_json::json!(["cmd/#"])));
    let (_, _, j) = get_json(addr, "/access", &format!("Cookie: edgepush_token={WALL}\r\n"));
    assert_eq!(j["access"], "ok");

    // Token required, invalid, expired (a JWT), and a valid JWT's own scopes.
    let (status, head, j) = get_json(addr, "/access", "");
    assert_eq!((status, j["access"].as_str()), (401, Some("token-required")), "{j}");
    assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
    let (status, _, j) = get_json(addr, "/access?token=nope", "");
    assert_eq!(
        (status, j["access"].as_str(), j["reason"].as_str()),
        (401, Some("token-invalid"), Some("unknown token"))
    );
    let now_s = now_ms() / 1000;
    let expired = jwt(secret.as_bytes(), &format!(r#"{{"sub":"old","exp":{}}}"#, now_s - 60));
    let (status, _, j) = get_json(addr, "/access", &bearer(&expired));
    assert_eq!((status, j["access"].as_str()), (401, Some("token-expired")), "{j}");
    let fresh = jwt(
        secret.as_bytes(),
        &format!(
            r#"{{"sub":"kiosk","exp":{},"edgepush_subscribe":["a/#"],"edgepush_publish":["a/set"]}}"#,
            now_s + 600
        ),
    );
    let (status, _, j) = get_json(addr, "/access", &bearer(&fresh));
    assert_eq!((status, &j["publish"]), (200, &serde_json::json!(["a/set"])), "{j}");

    // Origin: the header, else the page's own `origin=` (a same-origin GET carries none).
    let (status, _, j) = get_json(addr, "/access", &format!("{}Origin: http://evil.example\r\n", bearer(WALL)));
    assert_eq!((status, j["access"].as_str()), (403, Some("origin-not-allowed")), "{j}");
    let (status, _, _) = get_json(addr, "/access?origin=http%3A%2F%2Fevil.example", &bearer(WALL));
    assert_eq!(status, 403);
    let (status, _, _) = get_json(addr, "/access?origin=http%3A%2F%2Fdash.lan", &bearer(WALL));
    assert_eq!(status, 200);
    // Credentials before the Origin, as in the handshake.
    let (status, _, _) = get_json(addr, "/access", "Origin: http://evil.example\r\n");
    assert_eq!(status, 401);

    // The token's own cap, then the gateway full; the checks themselves take no slot.
    let url = format!("ws://{addr}/ws");
    let connect = |token| smol::block_on(timeout(5000, "connect", Client::connect(&with_token(&url, token)))).unwrap();
    let ops = connect(OPS);
    let (status, head, j) = get_json(addr, &format!("/access?token={OPS}"), "");
    assert_eq!((status, j["access"].as_str()), (429, Some("rate-limited")), "{j}");
    assert!(j["reason"].as_str().unwrap().contains("token"), "{j}");
    assert!(head.contains("Retry-After: 1"), "{head}");
    for _ in 0..5 {
        assert_eq!(get_json(addr, "/access", &bearer(WALL)).0, 200, "a check is not a connection");
    }
    let wall = connect(WALL);
    let (status, head, j) = get_json(addr, "/access", &bearer(WALL));
    assert_eq!((status, j["access"].as_str(), j["retry_after_s"].as_u64()), (503, Some("full"), Some(5)), "{j}");
    assert!(head.contains("Retry-After: 5"), "{head}");
    drop((ops, wall));
    wait_until(5000, "the slots to be free", || get_json(addr, "/access", &bearer(WALL)).0 == 200);
}

#[test]
fn access_is_rate_limited_like_connection_attempts() {
    let broker = Broker::start();
    let (d, addr) = run_binary(&format!(
        "[mqtt]\nport = {}\n[limits]\nconnections-per-second-per-ip = 1\n{}",
        broker.port,
        tokens()
    ));
    // One attempt a second: the first check passes, one soon after it is refused.
    assert_eq!(get_json(addr, "/access", &bearer(WALL)).0, 200);
    let refused = (0..10).map(|_| get_json(addr, "/access", &bearer(WALL))).find(|(s, _, _)| *s != 200);
    let (status, head, j) = refused.expect("a check past the rate is refused");
    assert_eq!((status, j["access"].as_str()), (429, Some("rate-limited")), "{j}");
    assert!(head.contains("Retry-After: 1"), "{head}");
    // The checks spent the address's attempts: a WebSocket now is refused the same way.
    let (ws, _) = http(addr, &upgrade_request(addr, &bearer(WALL)));
    assert_eq!(ws, 429);
    assert!(metric(addr, "refused_total{reason=\"rate\"}") >= 2);
    drop(d);
}

const DASHBOARD: &str = "[dashboard]\ntitle = \"Plant 3\"\ngroups = [\"Hall\"]\n\
    [[dashboard.rule]]\nfilter = \"sensors/+/temperature\"\nlabel = \"Temperature\"\nunit = \"°C\"\ndecimals = 1\n\
    alarm-above = 30\ngroup = \"Hall\"\n";

#[test]
fn dashboard_json_needs_the_credentials_and_a_reload_changes_it() {
    let broker = Broker::start();
    let dir = scratch_dir("dashboard-json");
    let port = free_port();
    let text = |dashboard: &str| {
        format!("listen = \"127.0.0.1:{port}\"\n[mqtt]\nport = {}\n{}{dashboard}", broker.port, tokens())
    };
    let path = write_config(&dir, &text(DASHBOARD));
    let addr = loopback(port);
    let d = Daemon::run(&path, addr);

    let (status, _, j) = get_json(addr, "/dashboard.json", &bearer(WALL));
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["title"], "Plant 3");
    assert_eq!(j["groups"], serde_json::json!(["Hall"]));
    let rule = &j["rules"][0];
    assert_eq!(
        (rule["filter"].as_str(), rule["unit"].as_str(), rule["decimals"].as_u64(), rule["alarm_above"].as_f64()),
        (Some("sensors/+/temperature"), Some("°C"), Some(1), Some(30.0)),
        "{j}"
    );
    // Without the credentials /ws would take: the /access answer instead.
    let (status, _, j) = get_json(addr, "/dashboard.json", "");
    assert_eq!((status, j["access"].as_str()), (401, Some("token-required")), "{j}");
    assert!(j.get("rules").is_none());

    // A reload applies a changed section, no restart.
    let pid = d.child.id();
    write_config(&dir, &text(&DASHBOARD.replace("Plant 3", "Plant 4").replace("alarm-above = 30", "alarm-above = 35")));
    d.signal(libc::SIGHUP);
    d.wait_log("reload: config applied", 10_000);
    let (_, _, j) = get_json(addr, "/dashboard.json", &bearer(WALL));
    assert_eq!((j["title"].as_str(), j["rules"][0]["alarm_above"].as_f64()), (Some("Plant 4"), Some(35.0)), "{j}");
    assert_eq!(d.child.id(), pid);
    // A bad section is refused, its key named, and the running one stays.
    write_config(&dir, &text("[[dashboard.rule]]\nfilter = \"x\"\nwarning-above = 5\nalarm-above = 1\n"));
    d.signal(libc::SIGHUP);
    d.wait_log("dashboard.rule[0].alarm-above: must not be below warning-above (1 vs 5)", 10_000);
    assert!(d.lines().iter().any(|l| l.contains("reload refused")), "{:#?}", d.lines());
    assert_eq!(get_json(addr, "/dashboard.json", &bearer(WALL)).2["title"], "Plant 4");
}
