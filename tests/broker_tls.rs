//! The broker link over TLS (`[mqtt] ca`, `cert`, `key`, `server-name`):
//! against a mosquitto TLS listener with certificates the test makes, with
//! and without a client certificate required, and refused with a clear log
//! line when the CA or the name is wrong, retried all along.

mod common;

use std::path::PathBuf;

use common::*;
use edgepush_protocol::ServerMsg;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// A CA of the test's own, writing PEM files into a scratch directory.
struct Pki {
    dir: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = scratch_dir(name);
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Pki { dir, cert, key }
    }

    fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// A certificate for `names`, signed by this CA: (cert, key) paths.
    fn issue(&self, file: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

/// A mosquitto with its plain listener (for the test's publisher) and a TLS
/// one on `tls_port` whose certificate, signed by `pki`, names `broker.test`
/// alone; `require_certificate`: clients must present one signed by `pki`.
fn tls_broker(pki: &Pki, tls_port: u16, require_certificate: bool) -> Broker {
    let (cert, key) = pki.issue("broker", &["broker.test"], ExtendedKeyUsagePurpose::ServerAuth);
    let extra = format!(
        "allow_anonymous true\nlistener {tls_port} 127.0.0.1\ncafile {}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate {require_certificate}\n",
        pki.ca()
    );
    Broker::start_with(free_port(), &extra)
}

/// `[mqtt]` for the binary: the TLS port, fast retries, and `tls` lines.
fn mqtt(port: u16, tls: &str) -> String {
    format!("[mqtt]\nport = {port}\nreconnect-min-ms = 50\nreconnect-max-ms = 200\n{tls}\n")
}

/// A dashboard subscribed to `s/#` at `url` sees what is published on the
/// broker's plain port.
fn events_reach_a_dashboard(url: &str, broker: &Broker) {
    block_on_timeout(20_000, "an event over the TLS link", async {
        let (mut c, _) = subscribed(url, &["s/#"]).await;
        let mut p = Publisher::connect(broker.port);
        p.publish("s/t", "21.5");
        let got = until(&mut c, 10_000, |m| matches!(m, ServerMsg::Event { .. })).await;
        assert_eq!(got.last().and_then(number), Some(21.5), "{got:?}");
    });
}

#[test]
fn events_flow_over_tls_checked_against_the_ca_and_the_server_name() {
    let pki = Pki::new("edgepush-test-ca");
    let tls_port = free_port();
    let broker = tls_broker(&pki, tls_port, false);
    // Reached by address; its certificate names broker.test.
    let tls = format!("[mqtt]\nca = \"{}\"\nserver-name = \"broker.test\"\n", pki.ca());
    let server = Server::start_linked(&config(tls_port, &tls));
    events_reach_a_dashboard(&server.url(), &broker);
}

#[test]
fn a_broker_that_requires_a_client_certificate_gets_ours() {
    let pki = Pki::new("edgepush-test-ca");
    let tls_port = free_port();
    let broker = tls_broker(&pki, tls_port, true);
    let name = "server-name = \"broker.test\"";

    // Without one: refused, said, retried.
    let (without, addr) = run_binary(&mqtt(tls_port, &format!("ca = \"{}\"\n{name}", pki.ca())));
    let line = without.wait_log("check mqtt.cert and mqtt.key", 10_000);
    assert!(line.contains(&format!("cannot connect to 127.0.0.1:{tls_port}: TLS:")), "{line}");
    without.wait_log("(attempt 2)", 10_000);
    assert_eq!(healthz(addr), 503);
    drop(without);

    let (cert, key) = pki.issue("client", &["edgepush.test"], ExtendedKeyUsagePurpose::ClientAuth);
    let tls = format!("ca = \"{}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n{name}", pki.ca());
    let (with, addr) = run_binary(&mqtt(tls_port, &tls));
    wait_linked(addr, 20_000);
    events_reach_a_dashboard(&format!("ws://{addr}/ws"), &broker);
    drop(with);
}

#[test]
fn a_wrong_ca_or_name_is_refused_with_a_clear_line_and_retried() {
    let pki = Pki::new("edgepush-test-ca");
    let other = Pki::new("some-other-ca");
    let tls_port = free_port();
    let _broker = tls_broker(&pki, tls_port, false);

    let (d, addr) = run_binary(&mqtt(tls_port, &format!("ca = \"{}\"\nserver-name = \"broker.test\"", other.ca())));
    let line = d.wait_log("cannot connect", 10_000);
    for part in [&format!("127.0.0.1:{tls_port}: TLS: invalid peer certificate: UnknownIssuer"), "check mqtt.ca"] {
        assert!(line.contains(part), "{part:?} not in {line}");
    }
    d.wait_log("(attempt 2)", 10_000);
    assert_eq!(healthz(addr), 503);
    drop(d);

    // The right CA, but the certificate does not name the host connected to.
    let (d, addr) = run_binary(&mqtt(tls_port, &format!("ca = \"{}\"", pki.ca())));
    let line = d.wait_log("cannot connect", 10_000);
    assert!(line.contains("check mqtt.server-name"), "{line}");
    assert_eq!(healthz(addr), 503);
}

#[test]
fn the_tls_files_are_checked_when_the_config_loads() {
    let pki = Pki::new("edgepush-test-ca");
    let (cert, _) = pki.issue("client", &["edgepush.test"], ExtendedKeyUsagePurpose::ClientAuth);
    let (_, other_key) = pki.issue("other", &["other.test"], ExtendedKeyUsagePurpose::ClientAuth);
    let dir = scratch_dir("edgepush-tls-config");
    let path =
        write_config(&dir, &format!("[mqtt]\nca = \"{cert}.missing\"\ncert = \"{cert}\"\nkey = \"{other_key}\"\n"));
    let out = output_within(edgepush_command().args(["check-config", "--config"]).arg(&path), b"", 20_000);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("mqtt.ca: cannot read") && err.contains(".missing"), "{err}");
    let path =
        write_config(&dir, &format!("[mqtt]\nca = \"{}\"\ncert = \"{cert}\"\nkey = \"{other_key}\"\n", pki.ca()));
    let out = output_within(edgepush_command().args(["check-config", "--config"]).arg(&path), b"", 20_000);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("mqtt.key:") && err.contains("does not fit"), "{err}");
}
