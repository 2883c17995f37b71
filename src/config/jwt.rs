//! `[auth.jwt]`'s key file: an HS256 shared secret, or an Ed25519 or P-256
//! public key in PEM (SubjectPublicKeyInfo, `-----BEGIN PUBLIC KEY-----`).
//! Read at start and on every reload (so a rotated key takes effect with a
//! reload), and checked against the configured algorithm.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;

/// The JWS algorithms accepted (`alg` in a token's header must be this one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// HMAC-SHA256 with a shared secret.
    Hs256,
    /// Ed25519 signatures.
    EdDsa,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl Alg {
    /// Every algorithm, as written in the config and in a token's `alg`.
    pub const ALL: [Alg; 3] = [Alg::Hs256, Alg::EdDsa, Alg::Es256];

    /// The name in the config and in a token's `alg`.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::EdDsa => "EdDSA",
            Alg::Es256 => "ES256",
        }
    }
}

/// What verifies a signature.
pub enum Material {
    /// The HS256 secret.
    Hmac(ring::hmac::Key),
    /// An Ed25519 public key (32 bytes).
    Ed25519(Vec<u8>),
    /// A P-256 public key, an uncompressed point (65 bytes).
    P256(Vec<u8>),
}

/// The key as read, kept in the config.
#[derive(Clone)]
pub struct Loaded(pub Arc<Material>);

impl PartialEq for Loaded {
    /// The same file read at another time compares unequal: a reload re-reads it.
    fn eq(&self, other: &Loaded) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<key>")
    }
}

/// `auth.jwt.key`: the path, and what it held once read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyFile {
    pub path: PathBuf,
    pub loaded: Option<Loaded>,
}

/// The shortest HS256 secret: as long as the hash output (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// SubjectPublicKeyInfo of an Ed25519 key, before its 32 bytes.
const ED25519_SPKI: &[u8] = &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// SubjectPublicKeyInfo of a P-256 key, before its 65-byte uncompressed point.
const P256_SPKI: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// Object identifiers, to name a key of the wrong kind.
const OID_EC: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_RSA: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// Reads the key file for `alg`.
///
/// # Errors
/// Why the file cannot be used (naming the path): unreadable, a secret too
/// short, no PEM public key, or a key that does not fit `alg`.
pub fn read(path: &Path, alg: Alg) -> Result<Loaded, String> {
    let p = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {p}: {e}"))?;
    let pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    let material = match alg {
        Alg::Hs256 if pem => {
            return Err(format!("{p} holds a PEM block; algorithm HS256 needs a file holding the shared secret"))
        }
        Alg::Hs256 => {
            let secret = bytes.trim_ascii();
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "{p} holds a secret of {} bytes; HS256 needs at least {MIN_SECRET_BYTES} (RFC 7518 §3.2)",
                    secret.len()
                ));
            }
            Material::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
        }
        Alg::EdDsa | Alg::Es256 => {
            let der = SubjectPublicKeyInfoDer::from_pem_slice(&bytes).map_err(|_| {
                let private = bytes.windows(11).any(|w| w == b"PRIVATE KEY");
                let hint =
                    if private { " (it holds a private key: `openssl pkey -pubout` gives the public one)" } else { "" };
                format!("{p} holds no PEM public key (-----BEGIN PUBLIC KEY-----){hint}")
            })?;
            let der: &[u8] = der.as_ref();
            let want = if alg == Alg::EdDsa { "an Ed25519 key" } else { "a P-256 key" };
            match (alg, der.strip_prefix(ED25519_SPKI), der.strip_prefix(P256_SPKI)) {
                (Alg::EdDsa, Some(k), _) if k.len() == 32 => Material::Ed25519(k.to_vec()),
                (Alg::Es256, _, Some(k)) if k.len() == 65 && k[0] == 4 => Material::P256(k.to_vec()),
                (_, Some(_), _) => {
                    return Err(format!("{p} holds an Ed25519 key; algorithm {} needs {want}", alg.name()))
                }
                (_, _, Some(_)) => return Err(format!("{p} holds a P-256 key; algorithm {} needs {want}", alg.name())),
                _ => {
                    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
                    let kind = if has(OID_RSA) {
                        "an RSA key"
                    } else if has(OID_EC) {
                        "an EC key on a curve other than P-256, or a compressed point"
                    } else {
                        "a key of another kind"
                    };
                    return Err(format!("{p} holds {kind}; algorithm {} needs {want}", alg.name()));
                }
            }
        }
    };
    Ok(Loaded(Arc::new(material)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn each_key_fits_its_algorithm_and_a_misfit_is_named() {
        let dir = std::env::temp_dir().join(format!("edgepush-jwt-unit-{}", std::process::id()));
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let ed_pub = write(&dir, "ed.pem", ed.public_key_pem().as_bytes());
        let ec_pub = write(&dir, "ec.pem", ec.public_key_pem().as_bytes());
        let p384_pub = write(&dir, "p384.pem", p384.public_key_pem().as_bytes());
        let ec_priv = write(&dir, "ec-private.pem", ec.serialize_pem().as_bytes());
        let secret = write(&dir, "secret", b"0123456789abcdef0123456789abcdef\n");
        let short = write(&dir, "short", b"hunter2\n");

        assert!(matches!(*read(&ed_pub, Alg::EdDsa).unwrap().0, Material::Ed25519(_)));
        assert!(matches!(*read(&ec_pub, Alg::Es256).unwrap().0, Material::P256(_)));
        assert!(matches!(*read(&secret, Alg::Hs256).unwrap().0, Material::Hmac(_)));

        let why = |path: &Path, alg| read(path, alg).err().unwrap();
        assert!(why(&ed_pub, Alg::Es256).contains("holds an Ed25519 key; algorithm ES256 needs a P-256 key"));
        assert!(why(&ec_pub, Alg::EdDsa).contains("holds a P-256 key; algorithm EdDSA needs an Ed25519 key"));
        assert!(why(&p384_pub, Alg::Es256).contains("curve other than P-256"));
        assert!(why(&ec_priv, Alg::Es256).contains("private key"));
        assert!(why(&ec_pub, Alg::Hs256).contains("HS256 needs a file holding the shared secret"));
        let w = why(&short, Alg::Hs256);
        assert!(w.contains("7 bytes") && w.contains("at least 32"), "{w}");
        assert!(!w.contains("hunter2"), "the secret never shows");
        assert!(why(&secret, Alg::EdDsa).contains("no PEM public key"));
        assert!(why(&dir.join("nope"), Alg::EdDsa).contains("cannot read"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
