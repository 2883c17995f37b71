//! `[tls]`: the rustls server config from PEM files. HTTPS and wss share the
//! listener; every accepted connection starts with a TLS handshake, within
//! `handshake-timeout-ms` like the request head. And `[mqtt] ca`, `cert`,
//! `key`: the rustls client config of the broker link, from the same kind of files.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use std::fmt;
use std::path::Path;

/// The rustls server config made from the `[tls]` files, read once per start
/// or reload and kept in the config.
#[derive(Clone)]
pub struct Loaded(pub Arc<ServerConfig>);

impl PartialEq for Loaded {
    /// The same files read at another time compare unequal: a reload re-reads them.
    fn eq(&self, other: &Loaded) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<certificate and key>")
    }
}

/// Reads the certificate chain and key and checks that they belong together.
///
/// # Errors
/// The config key (`cert` or `key`) and the reason, naming the path.
pub fn read(cert: &Path, key: &Path) -> Result<Loaded, (&'static str, String)> {
    let chain = certificates(cert, "cert")?;
    let der = private_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert", format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, der)
        .map_err(|e| ("key", format!("{} does not fit the certificate in {}: {e}", key.display(), cert.display())))?;
    Ok(Loaded(Arc::new(config)))
}

/// The certificates of a PEM file (at least one); mistakes under config key `k`.
fn certificates(path: &Path, k: &'static str) -> Result<Vec<CertificateDer<'static>>, (&'static str, String)> {
    std::fs::metadata(path).map_err(|e| (k, format!("cannot read {}: {e}", path.display())))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| (k, format!("{} is not a PEM certificate chain: {e}", path.display())))?;
    if chain.is_empty() {
        return Err((k, format!("{} holds no CERTIFICATE block", path.display())));
    }
    Ok(chain)
}

/// The private key of a PEM file; mistakes under config key `key`.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, (&'static str, String)> {
    std::fs::metadata(path).map_err(|e| ("key", format!("cannot read {}: {e}", path.display())))?;
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| ("key", format!("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}", path.display())))
}

/// The rustls client config of the broker link, made from the `[mqtt]` files
/// once per start and kept in the config.
#[derive(Clone)]
pub struct Client(pub Arc<ClientConfig>);

impl PartialEq for Client {
    fn eq(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<broker CA and client certificate>")
    }
}

/// The broker link's TLS: trusting the CAs in `ca` alone, presenting the
/// `identity` (certificate chain, key) if the broker asks for one, and
/// checking the broker's certificate for `server_name` when given (else for
/// the host the link connects to).
///
/// # Errors
/// The config key (`ca`, `cert`, `key` or `server-name`) and the reason, naming the path.
pub fn client(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    server_name: Option<&str>,
) -> Result<Client, (&'static str, String)> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca, "ca")? {
        roots.add(c).map_err(|e| ("ca", format!("{}: a certificate rustls cannot use as a CA: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ("ca", format!("{}: {e}", ca.display())))?;
    let verifier: Arc<dyn ServerCertVerifier> = match server_name {
        None => webpki,
        Some(n) => {
            let name = ServerName::try_from(n.to_owned())
                .map_err(|_| ("server-name", format!("must be a DNS name or an IP address, got {n:?}")))?;
            Arc::new(Named { inner: webpki, name })
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("ca", format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates(cert, "cert")?;
            let der = private_key(key)?;
            builder.with_client_auth_cert(chain, der).map_err(|e| {
                ("key", format!("{} does not fit the certificate in {}: {e}", key.display(), cert.display()))
            })?
        }
    };
    Ok(Client(Arc::new(config)))
}

/// The standard WebPKI check of the broker's certificate, for a name of our
/// choosing (`[mqtt] server-name`) rather than the host connected to: a
/// broker reached by address, or through a name its certificate does not carry.
#[derive(Debug)]
struct Named {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for Named {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _connected_to: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;

    fn pair(dir: &Path) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let k = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, k.cert.pem()).unwrap();
        std::fs::write(&key, k.key_pair.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn loads_a_pair_and_names_the_file_of_each_mistake() {
        let dir = std::env::temp_dir().join(format!("edgepush-tls-unit-{}", std::process::id()));
        let good = pair(&dir);
        assert!(read(&good.0, &good.1).is_ok());
        let (k, why) = read(&dir.join("nope.pem"), &good.1).unwrap_err();
        assert!(k == "cert" && why.contains("nope.pem"), "{why}");
        // A key where the certificate should be, and the other way round.
        let (k, why) = read(&good.1, &good.0).unwrap_err();
        assert!(k == "cert" && why.contains("key.pem") && why.contains("no CERTIFICATE"), "{why}");
        let other = pair(&dir.join("other"));
        let (k, why) = read(&good.0, &other.1).unwrap_err();
        assert!(k == "key" && why.contains("does not fit"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_broker_link_config_names_the_key_of_each_mistake() {
        let dir = std::env::temp_dir().join(format!("edgepush-tls-client-unit-{}", std::process::id()));
        let (ca, _) = pair(&dir.join("ca"));
        let (cert, key) = pair(&dir.join("client"));
        assert!(client(&ca, None, None).is_ok());
        assert!(client(&ca, Some((&cert, &key)), Some("broker.site.lan")).is_ok());
        assert!(client(&ca, None, Some("10.0.0.7")).is_ok());
        let (k, why) = client(&dir.join("nope.pem"), None, None).unwrap_err();
        assert!(k == "ca" && why.contains("nope.pem"), "{why}");
        let (k, why) = client(&key, None, None).unwrap_err();
        assert!(k == "ca" && why.contains("no CERTIFICATE"), "{why}");
        let (k, why) = client(&ca, Some((&key, &key)), None).unwrap_err();
        assert!(k == "cert" && why.contains("key.pem"), "{why}");
        let (k, why) = client(&ca, Some((&cert, &cert)), None).unwrap_err();
        assert!(k == "key" && why.contains("no PEM private key"), "{why}");
        let (_, other) = pair(&dir.join("other"));
        let (k, why) = client(&ca, Some((&cert, &other)), None).unwrap_err();
        assert!(k == "key" && why.contains("does not fit"), "{why}");
        let (k, why) = client(&ca, None, Some("not a name")).unwrap_err();
        assert!(k == "server-name" && why.contains("not a name"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
