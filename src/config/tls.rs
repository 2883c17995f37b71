//! `[tls]`: the rustls server config from PEM files. HTTPS and wss share the
//! listener; every accepted connection starts with a TLS handshake, within
//! `handshake-timeout-ms` like the request head.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::Tls;

/// Reads the certificate chain and key and checks that they belong together.
///
/// # Errors
/// The config key (`cert` or `key`) and the reason, naming the path.
pub fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>, (&'static str, String)> {
    let (cert, key) = (&tls.cert, &tls.key);
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
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &std::path::Path) -> Tls {
        std::fs::create_dir_all(dir).unwrap();
        let k = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, k.cert.pem()).unwrap();
        std::fs::write(&key, k.key_pair.serialize_pem()).unwrap();
        Tls { cert, key }
    }

    #[test]
    fn loads_a_pair_and_names_the_file_of_each_mistake() {
        let dir = std::env::temp_dir().join(format!("edgepush-tls-unit-{}", std::process::id()));
        let good = pair(&dir);
        assert!(server_config(&good).is_ok());
        let missing = Tls { cert: dir.join("nope.pem"), key: good.key.clone() };
        let (k, why) = server_config(&missing).unwrap_err();
        assert!(k == "cert" && why.contains("nope.pem"), "{why}");
        // A key where the certificate should be, and the other way round.
        let swapped = Tls { cert: good.key.clone(), key: good.cert.clone() };
        let (k, why) = server_config(&swapped).unwrap_err();
        assert!(k == "cert" && why.contains("key.pem") && why.contains("no CERTIFICATE"), "{why}");
        let other = pair(&dir.join("other"));
        let mismatched = Tls { cert: good.cert.clone(), key: other.key.clone() };
        let (k, why) = server_config(&mismatched).unwrap_err();
        assert!(k == "key" && why.contains("does not fit"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
