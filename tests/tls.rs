//! `[tls]`: HTTPS and wss on the one listener, with a certificate made here.

mod common;

use std::sync::Arc;

use async_tungstenite::tungstenite::Message;
use common::*;
use edgepush_protocol::{ClientMsg, ServerMsg};
use futures_rustls::rustls::pki_types::{CertificateDer, ServerName};
use futures_rustls::rustls::{ClientConfig, RootCertStore};
use futures_rustls::TlsConnector;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::stream::StreamExt;
use smol::Async;

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
fn certificate(dir: &std::path::Path) -> (String, CertificateDer<'static>) {
    let k = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), k.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), k.key_pair.serialize_pem()).unwrap();
    let section =
        format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", dir.join("cert.pem").display(), dir.join("key.pem").display());
    (section, k.cert.der().clone())
}

fn connector(trusted: CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(trusted).unwrap();
    let provider = Arc::new(futures_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// The ServerMsg values of the next binary message, failing the test after 5 s.
async fn next<S: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin>(
    ws: &mut async_tungstenite::WebSocketStream<S>,
) -> Vec<ServerMsg> {
    match timeout(5000, "a wss message", ws.next()).await {
        Some(Ok(Message::Binary(b))) => ServerMsg::decode_all(&b).unwrap(),
        other => panic!("expected a binary message, got {other:?}"),
    }
}

#[test]
fn https_and_wss_share_the_listener_and_plain_http_gets_nothing() {
    let broker = Broker::start();
    let dir = scratch_dir("tls");
    let (section, cert) = certificate(&dir);
    let server = Server::start_linked(&config(broker.port, &section));
    let addr = server.addr;
    let tls = connector(cert);
    let name = ServerName::try_from("localhost").unwrap();
    block_on_timeout(20_000, "TLS exchanges", async {
        // HTTPS: the health check and the dashboard.
        for (path, want) in [("/healthz", "\"status\":\"ok\""), ("/", "<html")] {
            let tcp = Async::<std::net::TcpStream>::connect(addr).await.unwrap();
            let mut s = tls.connect(name.clone(), tcp).await.expect("TLS handshake");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
            let mut body = Vec::new();
            let _ = timeout(5000, "the HTTPS answer", s.read_to_end(&mut body)).await;
            let text = String::from_utf8_lossy(&body);
            assert!(text.starts_with("HTTP/1.1 200 ") && text.contains(want), "{path}: {text}");
        }

        // wss: Hello, Subscribe, a live event.
        let tcp = Async::<std::net::TcpStream>::connect(addr).await.unwrap();
        let s = tls.connect(name.clone(), tcp).await.unwrap();
        let url = format!("wss://localhost:{}/ws", addr.port());
        let (mut ws, resp) = async_tungstenite::client_async(url.as_str(), s).await.expect("wss upgrade");
        assert_eq!(resp.status().as_u16(), 101);
        assert!(matches!(next(&mut ws).await[0], ServerMsg::Hello { .. }));
        let sub = ClientMsg::Subscribe { id: 1, filters: vec!["tls/#".into()], resume: None };
        ws.send(Message::Binary(sub.encode().into())).await.unwrap();
        let mut synced = false;
        while !synced {
            synced = next(&mut ws).await.iter().any(|m| matches!(m, ServerMsg::Synced { .. }));
        }
        let mut p = Publisher::connect(broker.port);
        p.publish("tls/t", "21.5");
        let mut got = None;
        while got.is_none() {
            got = next(&mut ws).await.into_iter().find(|m| matches!(m, ServerMsg::Event { .. }));
        }
        ws.close(None).await.unwrap();

        // Plain HTTP to the TLS listener: no HTTP answer, the server goes on.
        let mut plain = Async::<std::net::TcpStream>::connect(addr).await.unwrap();
        plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = timeout(5000, "the plain request's end", plain.read_to_end(&mut answer)).await;
        assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1"), "{answer:?}");
    });
    // Counted once the failed handshake is handled, which may be just after
    // the socket closed (the reader saw its end): wait for it, bounded.
    let deadline = std::time::Instant::now() + scaled(5000);
    while server.metrics().refused_count(edgepush::internals::Refusal::BadRequest) == 0 {
        assert!(std::time::Instant::now() < deadline, "the plain request counted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_silent_peer_is_dropped_at_the_handshake_timeout_under_tls_too() {
    let broker = Broker::start();
    let dir = scratch_dir("tls-silent");
    let (section, _) = certificate(&dir);
    let server =
        Server::start_linked(&config(broker.port, &format!("{section}[limits]\nhandshake-timeout-ms = 300\n")));
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(scaled(5000))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    assert!(started.elapsed() < scaled(3000), "after {:?}", started.elapsed());
    // Counted just after the socket is dropped (the handshake future owns it).
    let m = server.metrics();
    wait_until(5000, "the timeout counted", || m.refused_count(edgepush::internals::Refusal::Timeout) == 1);
}

#[test]
fn bad_tls_files_are_config_errors_naming_the_path() {
    let dir = scratch_dir("tls-bad");
    let (section, _) = certificate(&dir);
    let cases = [
        (section.replace("cert.pem", "missing.pem"), "missing.pem", "tls.cert"),
        (section.replace("key.pem", "cert.pem"), "cert.pem", "tls.key"),
        ("[tls]\ncert = \"x.pem\"\n".to_string(), "is required", "tls.key"),
    ];
    for (text, path, key) in cases {
        let cfg = dir.join("edgepush.toml");
        std::fs::write(&cfg, open_auth(&text)).unwrap();
        let out = edgepush_command().args(["check-config", "--config"]).arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(err.contains(key) && err.contains(path), "{key} {path}: {err}");
    }
}

#[test]
fn watch_follows_a_wss_server_with_a_token_trusting_its_certificate() {
    let broker = Broker::start();
    let dir = scratch_dir("tls-watch");
    let (section, _) = certificate(&dir);
    let secret = "watch-token-9a8b7c6d5e4f3a2b";
    let hash = edgepush::internals::hex::encode(&edgepush::internals::sha256(secret.as_bytes()));
    let auth = format!("[[auth.tokens]]\nname = \"cli\"\nsha256 = \"{hash}\"\nsubscribe = [\"w/#\"]\n");
    let server = Server::start_linked(&config(broker.port, &format!("{section}{auth}")));
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let watch = |ca: Option<&std::path::Path>, token: &str| {
        let mut cmd = edgepush_command();
        cmd.args(["watch", &url, "w/#"]).env("EDGEPUSH_TOKEN", token);
        if let Some(ca) = ca {
            cmd.env("EDGEPUSH_CA", ca);
        }
        cmd
    };
    // Not trusting anything, a wrong token: clear failures.
    let out = output_within(&mut watch(None, secret), b"", 10_000);
    assert!(String::from_utf8_lossy(&out.stderr).contains("EDGEPUSH_CA"), "{out:?}");
    let out = output_within(&mut watch(Some(&dir.join("cert.pem")), "wrong"), b"", 10_000);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");
    // Trusting the server's certificate, with the token: events.
    let mut p = Publisher::connect(broker.port);
    p.publish("w/t", "21.5");
    p.flush();
    let w = Daemon::spawn(watch(Some(&dir.join("cert.pem")), secret));
    assert_eq!(w.out.next(10_000), "w/t 1 21.5");
    p.publish("w/door", "open");
    assert_eq!(w.out.next(5000), "w/door 2 \"open\"");
}
