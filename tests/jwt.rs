//! Signed, expiring tokens (`[auth.jwt]`) against the real binary and
//! mosquitto: HS256, EdDSA and ES256 tokens presented like static ones get
//! the scopes of their claims; expired, tampered, mis-addressed and
//! other-algorithm tokens get 401; a connection is closed with 1008 when its
//! token expires; a reload re-reads the key file; a key that does not fit
//! its algorithm is a config error naming `auth.jwt.key`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use common::*;
use edgepush::internals::hex::encode as hex;
use edgepush::internals::{now_ms, sha256};
use edgepush_client::{with_token, Client, ConnectOptions};
use edgepush_protocol::ServerMsg;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// A static token beside the JWTs, to show both work together.
const STATIC: &str = "static-t0ken";

/// What signs tokens, and the key file the server checks them with.
enum Signer {
    Hs(ring::hmac::Key),
    Ed(Ed25519KeyPair),
    Es(EcdsaKeyPair),
}

impl Signer {
    /// A fresh key for `alg`, its server-side file written to `path`.
    fn new(alg: &str, path: &Path) -> Signer {
        let rng = SystemRandom::new();
        match alg {
            "HS256" => {
                let mut secret = [0u8; 32];
                rng.fill(&mut secret).unwrap();
                // The file holds the secret as text; the server trims the newline.
                let text = hex(&secret);
                std::fs::write(path, format!("{text}\n")).unwrap();
                Signer::Hs(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, text.as_bytes()))
            }
            "EdDSA" => {
                let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
                std::fs::write(path, kp.public_key_pem()).unwrap();
                Signer::Ed(Ed25519KeyPair::from_pkcs8_maybe_unchecked(&kp.serialize_der()).unwrap())
            }
            "ES256" => {
                let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                std::fs::write(path, kp.public_key_pem()).unwrap();
                let a = &ECDSA_P256_SHA256_FIXED_SIGNING;
                Signer::Es(EcdsaKeyPair::from_pkcs8(a, &kp.serialize_der(), &rng).unwrap())
            }
            _ => unreachable!(),
        }
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Hs(_) => "HS256",
            Signer::Ed(_) => "EdDSA",
            Signer::Es(_) => "ES256",
        }
    }

    /// A token with `claims`, its header naming `alg`.
    fn sign_as(&self, alg: &str, claims: &str) -> String {
        let input =
            format!("{}.{}", b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes()), b64(claims.as_bytes()));
        let sig = match self {
            Signer::Hs(k) => ring::hmac::sign(k, input.as_bytes()).as_ref().to_vec(),
            Signer::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Es(k) => k.sign(&SystemRandom::new(), input.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&sig))
    }

    fn sign(&self, claims: &str) -> String {
        self.sign_as(self.alg(), claims)
    }
}

/// Unix seconds `ds` from now.
fn in_s(ds: i64) -> i64 {
    now_ms() as i64 / 1000 + ds
}

/// Claims for `sub`, valid for an hour, for audience `edgepush`, subscribing within `sensors/#`.
fn claims(sub: &str) -> String {
    format!(
        r#"{{"sub":"{sub}","aud":"edgepush","iss":"portal","exp":{},"edgepush_subscribe":["sensors/#"]}}"#,
        in_s(3600)
    )
}

/// The config: `[auth.jwt]` with the key at `key`, and one static token.
fn config_text(broker: u16, alg: &str, key: &Path, leeway_s: u64) -> String {
    format!(
        "[mqtt]\nport = {broker}\nreconnect-min-ms = 50\nreconnect-max-ms = 200\n\
         [limits]\nconnections-per-second-per-ip = 1000\n\
         [auth.jwt]\nkey = \"{}\"\nalgorithm = \"{alg}\"\nissuer = \"portal\"\naudience = \"edgepush\"\nleeway-s = {leeway_s}\n\
         [[auth.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nsubscribe = [\"#\"]\n",
        key.display(),
        hex(&sha256(STATIC.as_bytes()))
    )
}

/// The binary with `[auth.jwt]` for `alg`, linked to the broker; the signer and its key file.
fn start(broker: &Broker, alg: &str, leeway_s: u64) -> (Daemon, SocketAddr, Signer, PathBuf) {
    let dir = scratch_dir("jwt");
    let key = dir.join("jwt.key");
    let signer = Signer::new(alg, &key);
    let port = free_port();
    let text = format!("listen = \"127.0.0.1:{port}\"\n{}", config_text(broker.port, alg, &key, leeway_s));
    let addr = loopback(port);
    let d = Daemon::run(&write_config(&dir, &text), addr);
    wait_linked(addr, 10_000);
    (d, addr, signer, key)
}

/// The status of a /ws upgrade presenting `token` as a Bearer header, and the answer's body.
fn upgrade_status(addr: SocketAddr, token: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(scaled(5000))).unwrap();
    s.write_all(upgrade_request(addr, &format!("Authorization: Bearer {token}\r\n")).as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut answer = line;
    if status != 101 {
        // A refusal closes the connection: read it whole.
        let _ = std::io::Read::read_to_string(&mut r, &mut answer);
    }
    (status, answer)
}

#[test]
fn tokens_of_each_algorithm_are_accepted_with_the_scopes_of_their_claims() {
    let broker = Broker::start();
    for (alg, presented) in [("HS256", "header"), ("EdDSA", "query"), ("ES256", "cookie")] {
        let (_server, addr, signer, _) = start(&broker, alg, 30);
        let token = signer.sign(&claims(&format!("wall-{alg}")));
        let url = format!("ws://{addr}/ws");
        let (url, opts) = match presented {
            "header" => (url, vec![("Authorization".to_string(), format!("Bearer {token}"))]),
            "query" => (with_token(&url, &token), vec![]),
            _ => (url, vec![("Cookie".to_string(), format!("theme=dark; edgepush_token={token}"))]),
        };
        block_on_timeout(20_000, alg, async {
            let opts = ConnectOptions { headers: opts, ..ConnectOptions::default() };
            let mut c = timeout(10_000, "connect", Client::connect_with(&url, &opts))
                .await
                .unwrap_or_else(|e| panic!("{alg} token ({presented}) refused: {e}"));
            // Within the claim's scope: synced. Outside: 403, and the connection stays.
            subscribe_synced(&mut c, 1, &["sensors/room1/#"], None).await;
            timeout(5000, "send a Subscribe", c.subscribe(2, &["cmd/#"], None)).await.unwrap();
            let seen = until(&mut c, 5000, |m| matches!(m, ServerMsg::Error { req: 2, .. })).await;
            assert!(
                matches!(seen.last(), Some(ServerMsg::Error { code: 403, req: 2, .. })),
                "{alg}: a filter outside the claims: {seen:?}"
            );
            subscribe_synced(&mut c, 3, &["sensors/#"], None).await;
            // The static token still works beside the JWTs.
            let mut ops = timeout(10_000, "connect", Client::connect(&with_token(&format!("ws://{addr}/ws"), STATIC)))
                .await
                .expect("the static token is accepted");
            subscribe_synced(&mut ops, 1, &["cmd/#"], None).await;
        });
    }
}

#[test]
fn expired_tampered_misaddressed_and_other_algorithm_tokens_get_401() {
    let broker = Broker::start();
    let (_server, addr, signer, key) = start(&broker, "ES256", 0);
    let good = signer.sign(&claims("wall"));
    assert_eq!(upgrade_status(addr, &good).0, 101, "the control: a good token upgrades");

    let sub = r#"["sensors/#"]"#;
    let with = |extra: &str| format!(r#"{{"sub":"wall","iss":"portal","edgepush_subscribe":{sub}{extra}}}"#);
    let aud = r#","aud":"edgepush""#;
    // The claims of a good token swapped for wider ones, its signature kept.
    let parts: Vec<&str> = good.split('.').collect();
    let wider = format!(
        r##"{{"sub":"wall","aud":"edgepush","iss":"portal","exp":{},"edgepush_subscribe":["#"]}}"##,
        in_s(3600)
    );
    let tampered = format!("{}.{}.{}", parts[0], b64(wider.as_bytes()), parts[2]);
    let other_key = Signer::new("ES256", &scratch_dir("jwt-other").join("k"));
    // HS256 with the server's public key file as the secret: the classic confusion.
    let public_pem = std::fs::read(&key).unwrap();
    let hs_confused = Signer::Hs(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public_pem));
    let exp = format!(r#","exp":{}"#, in_s(3600));
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", signer.sign(&with(&format!(r#"{aud},"exp":{}"#, in_s(-120)))), "JWT expired"),
        ("no exp", signer.sign(&with(aud)), "JWT has no exp"),
        ("not yet valid", signer.sign(&with(&format!(r#"{aud}{exp},"nbf":{}"#, in_s(600)))), "not yet valid"),
        ("tampered", tampered, "signature does not verify"),
        ("another key", other_key.sign(&claims("wall")), "signature does not verify"),
        ("wrong aud", signer.sign(&with(&format!(r#","aud":["other"]{exp}"#))), "aud"),
        ("no aud", signer.sign(&with(&exp)), "aud"),
        ("wrong iss", signer.sign(&claims("wall").replace("portal", "evil")), "iss"),
        ("alg none", format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(claims("wall").as_bytes())), "alg"),
        ("alg HS256", hs_confused.sign(&claims("wall")), "alg"),
        ("bad base64", format!("e30xy.{}.{}", parts[1], parts[2]), "malformed JWT"),
        ("bad JSON", signer.sign(r#"{"exp":1,"#), "malformed JWT"),
    ];
    for (what, token, reason) in cases {
        let (status, answer) = upgrade_status(addr, &token);
        assert_eq!(status, 401, "{what}: {answer}");
        assert!(answer.contains(reason), "{what}: {reason:?} not in {answer}");
        assert!(answer.contains("WWW-Authenticate: Bearer"), "{what}: {answer}");
    }
}

#[test]
fn a_connection_is_closed_with_1008_when_its_token_expires() {
    let broker = Broker::start();
    let (server, addr, signer, _) = start(&broker, "EdDSA", 0);
    // Long enough to connect and subscribe, even under emulation.
    let exp = (now_ms() + scaled(3000).as_millis() as u64).div_ceil(1000);
    let token = signer.sign(&format!(
        r##"{{"sub":"short","aud":"edgepush","iss":"portal","exp":{exp},"edgepush_subscribe":["#"]}}"##
    ));
    block_on_timeout(30_000, "the expiry", async {
        let mut c = timeout(10_000, "connect", Client::connect(&with_token(&format!("ws://{addr}/ws"), &token)))
            .await
            .expect("a token valid for a few seconds is accepted");
        let mut ops = timeout(10_000, "connect", Client::connect(&with_token(&format!("ws://{addr}/ws"), STATIC)))
            .await
            .expect("the static token is accepted");
        subscribe_synced(&mut c, 1, &["sensors/#"], None).await;
        assert!(now_ms() < exp * 1000, "the test was too slow to check before the expiry");
        assert_eq!(close_code(&mut c).await, Some(1008), "closed at its expiry with 1008");
        assert!(now_ms() >= exp * 1000, "closed {} ms before exp", exp * 1000 - now_ms());
        // The static token's connection is not touched.
        subscribe_synced(&mut ops, 1, &["sensors/#"], None).await;
    });
    server.wait_log("token expired", 5000);
}

#[test]
fn a_reload_rereads_the_key_file_and_a_misfit_key_is_a_config_error() {
    let broker = Broker::start();
    let (server, addr, old, key) = start(&broker, "HS256", 30);
    let before = old.sign(&claims("wall"));
    assert_eq!(upgrade_status(addr, &before).0, 101);
    // Key rotation: the new secret in the same file, and a reload.
    let new = Signer::new("HS256", &key);
    server.signal(libc::SIGHUP);
    server.wait_log("reload: config applied", 10_000);
    let (status, answer) = upgrade_status(addr, &before);
    assert_eq!(status, 401, "the old key's token after the rotation: {answer}");
    assert_eq!(upgrade_status(addr, &new.sign(&claims("wall"))).0, 101, "the new key's token");
    // A PEM public key where the HS256 secret should be: the reload is refused, the running key stays.
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap().public_key_pem();
    std::fs::write(&key, &pem).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("reload refused", 10_000);
    let why = server.wait_log("auth.jwt.key:", 5000);
    assert!(why.contains("holds a PEM block"), "{why}");
    assert_eq!(upgrade_status(addr, &new.sign(&claims("wall"))).0, 101, "the running key stays");

    // At start: exit 78 naming the key and the reason.
    let dir = scratch_dir("jwt-bad");
    let ed = dir.join("ed.pem");
    std::fs::write(&ed, &pem).unwrap();
    for (alg, why) in
        [("ES256", "auth.jwt.key: "), ("ES256", "holds an Ed25519 key; algorithm ES256 needs a P-256 key")]
    {
        let path = write_config(&dir, &config_text(broker.port, alg, &ed, 30));
        let out = edgepush_command().args(["check-config", "--config"]).arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(78));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{why:?} not in {err}");
    }
    let path = write_config(&dir, &config_text(broker.port, "RS256", &ed, 30));
    let out = edgepush_command().args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.jwt.algorithm: must be \"HS256\", \"EdDSA\" or \"ES256\", got \"RS256\""), "{err}");
}
