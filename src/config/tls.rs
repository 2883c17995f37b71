//! `[tls]`: the rustls server config from PEM files. HTTPS and wss share the
//! listener; every accepted connection starts with a TLS handshake, within
//! `handshake-timeout-ms` like the request head.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

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
    std::fs::metadata(cert).map_err(|e| ("cert", format!("cannot read {}: {e}", cert.display())))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| ("cert", format!("{} is not a PEM certificate chain: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(("cert", format!("{} holds no CERTIFICATE block", cert.display())));
    }
    std::fs::metadata(key).map_err(|e| ("key", format!("cannot read {}: {e}", key.display())))?;
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ("key", format!("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert", format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, der)
        .map_err(|e| ("key", format!("{} does not fit the certificate in {}: {e}", key.display(), cert.display())))?;
    Ok(Loaded(Arc::new(config)))
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
}
