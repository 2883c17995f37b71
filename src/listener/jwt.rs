//! Signed, expiring tokens (JWT, RFC 7519, compact JWS): checks a token
//! against `[auth.jwt]` and gives its name, scopes and expiry. No I/O and no
//! clock: the caller passes the time.
//!
//! Order of the checks: three base64url parts; the header's `alg` is the
//! configured one (never `none`, never another); the signature (ring:
//! HMAC-SHA256 compared in constant time, Ed25519, ECDSA P-256); only then
//! the claims: `exp` required, `nbf` optional, `iss` and `aud` when
//! configured, the two scope lists valid MQTT filters.

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};

use crate::config::jwt::Material;
use crate::config::Jwt;
use crate::listener::json::{self, Json};
use edgepush_protocol::{topic, Permissions};

/// A token's claims that matter here, checked.
#[derive(Debug, PartialEq)]
pub struct Claims {
    /// `sub`: the name in logs.
    pub sub: Option<String>,
    /// When the token stops being valid (Unix ms): `exp` plus the leeway.
    pub expires_ms: u64,
    /// `edgepush_subscribe` and `edgepush_publish`.
    pub perms: Permissions,
}

/// Why a token was refused; each a short reason for the 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not three base64url parts, or a header or payload that is not a JSON object.
    Malformed,
    /// `alg` is not the configured algorithm (or a header with `crit`).
    Algorithm,
    /// The signature does not verify.
    Signature,
    /// No `exp`, or one that is not a number.
    NoExpiry,
    /// Past `exp` (plus the leeway).
    Expired,
    /// Before `nbf` (minus the leeway).
    NotYetValid,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` is not, or does not contain, the configured audience.
    Audience,
    /// A claim of the wrong type, or a scope that is not a valid MQTT filter.
    Claim,
}

impl Rejected {
    /// The reason in the 401's body.
    pub fn reason(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed JWT",
            Rejected::Algorithm => "JWT alg is not the configured algorithm",
            Rejected::Signature => "JWT signature does not verify",
            Rejected::NoExpiry => "JWT has no exp",
            Rejected::Expired => "JWT expired",
            Rejected::NotYetValid => "JWT not yet valid (nbf)",
            Rejected::Issuer => "JWT iss is not the expected issuer",
            Rejected::Audience => "JWT aud does not name this server",
            Rejected::Claim => "JWT claim of the wrong type or a bad scope filter",
        }
    }
}

/// Whether a presented credential has the shape of a JWT: three parts of
/// base64url characters, separated by dots (a static token is not tried then).
pub fn looks_like_jwt(token: &[u8]) -> bool {
    token.iter().filter(|&&c| c == b'.').count() == 2
        && token.iter().all(|&c| c == b'.' || c == b'-' || c == b'_' || c.is_ascii_alphanumeric())
}

/// Checks `token` against `cfg` at `now_ms` (Unix ms).
///
/// # Errors
/// The first check it fails.
pub fn verify(cfg: &Jwt, key: &Material, token: &[u8], now_ms: u64) -> Result<Claims, Rejected> {
    let alg = cfg.algorithm.ok_or(Rejected::Algorithm)?;
    let mut parts = token.splitn(3, |&c| c == b'.');
    let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Rejected::Malformed);
    };
    let header = b64url(h).and_then(|h| json::parse(&h)).ok_or(Rejected::Malformed)?;
    if !matches!(header, Json::Obj(_)) {
        return Err(Rejected::Malformed);
    }
    // `crit` names extensions that must be understood; none is.
    if header.get("alg") != Some(&Json::Str(alg.name().into())) || header.get("crit").is_some() {
        return Err(Rejected::Algorithm);
    }
    let sig = b64url(s).ok_or(Rejected::Malformed)?;
    let signed = &token[..h.len() + 1 + p.len()];
    let good = match key {
        Material::Hmac(k) => ring::hmac::verify(k, signed, &sig).is_ok(),
        Material::Ed25519(k) => UnparsedPublicKey::new(&ED25519, k).verify(signed, &sig).is_ok(),
        Material::P256(k) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k).verify(signed, &sig).is_ok(),
    };
    if !good {
        return Err(Rejected::Signature);
    }
    let claims = b64url(p).and_then(|p| json::parse(&p)).ok_or(Rejected::Malformed)?;
    if !matches!(claims, Json::Obj(_)) {
        return Err(Rejected::Malformed);
    }
    let leeway_ms = cfg.leeway_s.saturating_mul(1000);
    let exp = match claims.get("exp") {
        Some(Json::Num(n)) => unix_ms(*n),
        Some(_) => return Err(Rejected::Claim),
        None => return Err(Rejected::NoExpiry),
    };
    let expires_ms = exp.saturating_add(leeway_ms);
    if now_ms >= expires_ms {
        return Err(Rejected::Expired);
    }
    match claims.get("nbf") {
        None => {}
        Some(Json::Num(n)) if now_ms.saturating_add(leeway_ms) >= unix_ms(*n) => {}
        Some(Json::Num(_)) => return Err(Rejected::NotYetValid),
        Some(_) => return Err(Rejected::Claim),
    }
    if let Some(want) = &cfg.issuer {
        if claims.get("iss") != Some(&Json::Str(want.clone())) {
            return Err(Rejected::Issuer);
        }
    }
    if let Some(want) = &cfg.audience {
        let is = |v: &Json| matches!(v, Json::Str(a) if a == want);
        let named = match claims.get("aud") {
            Some(Json::Arr(list)) => list.iter().any(is),
            Some(v) => is(v),
            None => false,
        };
        if !named {
            return Err(Rejected::Audience);
        }
    }
    let sub = match claims.get("sub") {
        None => None,
        Some(Json::Str(s)) => Some(s.clone()),
        Some(_) => return Err(Rejected::Claim),
    };
    let perms = Permissions {
        subscribe: filters(&claims, "edgepush_subscribe")?,
        publish: filters(&claims, "edgepush_publish")?,
    };
    Ok(Claims { sub, expires_ms, perms })
}

/// A NumericDate (seconds, possibly fractional) as Unix ms; negative is 0.
fn unix_ms(secs: f64) -> u64 {
    // `as` saturates: a date past u64 is the end of time.
    (secs * 1000.0) as u64
}

/// A scope claim: absent is none; otherwise a list of valid MQTT filters.
fn filters(claims: &Json, key: &str) -> Result<Vec<String>, Rejected> {
    match claims.get(key) {
        None => Ok(Vec::new()),
        Some(Json::Arr(items)) => items
            .iter()
            .map(|f| match f {
                Json::Str(f) if topic::validate_filter(f).is_ok() => Ok(f.clone()),
                _ => Err(Rejected::Claim),
            })
            .collect(),
        Some(_) => Err(Rejected::Claim),
    }
}

/// Unpadded base64url (RFC 7515 §2); padding, other characters and
/// non-zero leftover bits are refused, so each value has one encoding.
pub fn b64url(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 2);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (acc == 0).then_some(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::jwt::{Alg, KeyFile};
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    const NOW: u64 = 1_800_000_000_000;
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// base64url without padding (the server only decodes; `auth.rs`'s tests sign with it too).
    pub(in crate::listener) fn enc(b: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    fn cfg(alg: Alg) -> Jwt {
        Jwt { key: KeyFile::default(), algorithm: Some(alg), issuer: None, audience: None, leeway_s: 30 }
    }

    /// A token signed by `sign` with the header and claims given.
    fn token(header: &str, claims: &str, sign: &dyn Fn(&[u8]) -> Vec<u8>) -> String {
        let input = format!("{}.{}", enc(header.as_bytes()), enc(claims.as_bytes()));
        format!("{input}.{}", enc(&sign(input.as_bytes())))
    }

    fn hs(claims: &str) -> String {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
        token(r#"{"alg":"HS256","typ":"JWT"}"#, claims, &|m| ring::hmac::sign(&k, m).as_ref().to_vec())
    }

    fn hs_key() -> Material {
        Material::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET))
    }

    fn check(c: &Jwt, t: &str) -> Result<Claims, Rejected> {
        verify(c, &hs_key(), t.as_bytes(), NOW)
    }

    const EXP: &str = "1800000060";

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64url(b"").unwrap(), b"");
        assert_eq!(b64url(b"YQ").unwrap(), b"a");
        assert_eq!(b64url(b"YWI").unwrap(), b"ab");
        assert_eq!(b64url(b"YWJj").unwrap(), b"abc");
        assert_eq!(b64url(b"-_8").unwrap(), vec![0xfb, 0xff]);
        for bad in [&b"YQ=="[..], b"YR", b"Y", b"YW+j", b"YW/j", b"YW j"] {
            assert_eq!(b64url(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        for v in [&b""[..], b"\0", b"\xff\xfe", b"hello world", b"\x00\x01\x02\x03\x04"] {
            assert_eq!(b64url(enc(v).as_bytes()).unwrap(), v);
        }
    }

    #[test]
    fn a_good_token_gives_its_name_scopes_and_expiry() {
        let t = hs(&format!(
            r#"{{"sub":"wall","exp":{EXP},"nbf":1799999990,"edgepush_subscribe":["sensors/#"],"edgepush_publish":["cmd/+/set"]}}"#
        ));
        assert!(looks_like_jwt(t.as_bytes()));
        let c = check(&cfg(Alg::Hs256), &t).unwrap();
        assert_eq!(c.sub.as_deref(), Some("wall"));
        assert_eq!(c.expires_ms, 1_800_000_090_000, "exp plus the 30 s leeway");
        assert_eq!(c.perms.subscribe, vec!["sensors/#".to_string()]);
        assert_eq!(c.perms.publish, vec!["cmd/+/set".to_string()]);
        // No scopes: nothing may be subscribed or published.
        let c = check(&cfg(Alg::Hs256), &hs(&format!(r#"{{"exp":{EXP}}}"#))).unwrap();
        assert!(c.sub.is_none() && c.perms.subscribe.is_empty() && c.perms.publish.is_empty());
    }

    #[test]
    fn a_tampered_token_or_another_alg_is_refused() {
        let c = cfg(Alg::Hs256);
        let t = hs(&format!(r#"{{"sub":"wall","exp":{EXP},"edgepush_subscribe":["a/#"]}}"#));
        // The claims changed after signing: wider scopes.
        let (head, rest) = t.split_once('.').unwrap();
        let sig = rest.split_once('.').unwrap().1;
        let forged = format!(
            "{head}.{}.{sig}",
            enc(format!(r##"{{"sub":"wall","exp":{EXP},"edgepush_subscribe":["#"]}}"##).as_bytes())
        );
        assert_eq!(check(&c, &forged), Err(Rejected::Signature));
        // One signature bit flipped.
        let mut bytes = b64url(sig.as_bytes()).unwrap();
        bytes[0] ^= 1;
        let flipped = format!("{}.{}", &t[..t.rfind('.').unwrap()], enc(&bytes));
        assert_eq!(check(&c, &flipped), Err(Rejected::Signature));
        // Another key.
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another secret of thirty-two bytes!");
        let t2 = token(r#"{"alg":"HS256"}"#, &format!(r#"{{"exp":{EXP}}}"#), &|m| {
            ring::hmac::sign(&other, m).as_ref().to_vec()
        });
        assert_eq!(check(&c, &t2), Err(Rejected::Signature));
        // alg none, with or without a signature, and other algs, and no alg.
        let claims = format!(r#"{{"exp":{EXP}}}"#);
        for header in
            [r#"{"alg":"none"}"#, r#"{"alg":"HS512"}"#, r#"{"alg":"EdDSA"}"#, r#"{"alg":"hs256"}"#, r#"{"typ":"JWT"}"#]
        {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
            let signed = token(header, &claims, &|m| ring::hmac::sign(&k, m).as_ref().to_vec());
            assert_eq!(check(&c, &signed), Err(Rejected::Algorithm), "{header}");
            let unsigned = token(header, &claims, &|_| Vec::new());
            assert_eq!(check(&c, &unsigned), Err(Rejected::Algorithm), "{header}");
        }
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
        let crit =
            token(r#"{"alg":"HS256","crit":["x"],"x":1}"#, &claims, &|m| ring::hmac::sign(&k, m).as_ref().to_vec());
        assert_eq!(check(&c, &crit), Err(Rejected::Algorithm));
    }

    #[test]
    fn time_claims_with_the_leeway() {
        let c = cfg(Alg::Hs256);
        let at = |exp: &str, nbf: &str| check(&c, &hs(&format!(r#"{{"exp":{exp}{nbf}}}"#))).map(|_| ());
        assert_eq!(at("1799999900", ""), Err(Rejected::Expired), "past exp and the leeway");
        assert_eq!(at("1799999980", ""), Ok(()), "past exp, within the leeway");
        assert_eq!(at("1799999970", ""), Err(Rejected::Expired), "exp + leeway is now: expired");
        assert_eq!(at(EXP, r#","nbf":1800000100"#), Err(Rejected::NotYetValid));
        assert_eq!(at(EXP, r#","nbf":1800000020"#), Ok(()), "nbf within the leeway");
        assert_eq!(at(EXP, r#","nbf":"soon""#), Err(Rejected::Claim));
        assert_eq!(check(&c, &hs(r#"{"sub":"x"}"#)).err(), Some(Rejected::NoExpiry));
        assert_eq!(at("\"1800000060\"", ""), Err(Rejected::Claim), "exp must be a number");
        assert_eq!(at("1800000060.5", ""), Ok(()), "a NumericDate may have a fraction");
        assert_eq!(at("1e300", ""), Ok(()), "far future: no overflow");
        let strict = Jwt { leeway_s: 0, ..cfg(Alg::Hs256) };
        assert_eq!(check(&strict, &hs(r#"{"exp":1799999980}"#)).err(), Some(Rejected::Expired));
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let c = Jwt { issuer: Some("portal".into()), audience: Some("edgepush".into()), ..cfg(Alg::Hs256) };
        let t = |extra: &str| check(&c, &hs(&format!(r#"{{"exp":{EXP}{extra}}}"#))).map(|_| ());
        assert_eq!(t(r#","iss":"portal","aud":"edgepush""#), Ok(()));
        assert_eq!(t(r#","iss":"portal","aud":["other","edgepush"]"#), Ok(()));
        assert_eq!(t(r#","iss":"portal","aud":["other"]"#), Err(Rejected::Audience));
        assert_eq!(t(r#","iss":"portal","aud":"other""#), Err(Rejected::Audience));
        assert_eq!(t(r#","iss":"portal""#), Err(Rejected::Audience));
        assert_eq!(t(r#","iss":"evil","aud":"edgepush""#), Err(Rejected::Issuer));
        assert_eq!(t(r#","aud":"edgepush""#), Err(Rejected::Issuer));
        // Not configured: not checked.
        assert_eq!(
            check(&cfg(Alg::Hs256), &hs(&format!(r#"{{"exp":{EXP},"iss":"x","aud":"y"}}"#))).map(|_| ()),
            Ok(())
        );
    }

    #[test]
    fn malformed_tokens_and_claims() {
        let c = cfg(Alg::Hs256);
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
        let sign = |m: &[u8]| ring::hmac::sign(&k, m).as_ref().to_vec();
        assert_eq!(check(&c, "a.b"), Err(Rejected::Malformed));
        assert_eq!(check(&c, "!!.b.c"), Err(Rejected::Malformed), "bad base64");
        let good = hs(&format!(r#"{{"exp":{EXP}}}"#));
        assert_eq!(check(&c, &format!("{good}=")), Err(Rejected::Malformed), "padding in the signature");
        assert_eq!(check(&c, &token("not json", "{}", &sign)), Err(Rejected::Malformed), "bad JSON header");
        assert_eq!(check(&c, &token(r#"["HS256"]"#, "{}", &sign)), Err(Rejected::Malformed));
        let h = r#"{"alg":"HS256"}"#;
        assert_eq!(check(&c, &token(h, "{\"exp\":", &sign)), Err(Rejected::Malformed), "bad JSON claims");
        assert_eq!(check(&c, &token(h, "[1]", &sign)), Err(Rejected::Malformed));
        let dup = format!(r#"{{"exp":{EXP},"exp":9999999999}}"#);
        assert_eq!(check(&c, &token(h, &dup, &sign)), Err(Rejected::Malformed), "a duplicated claim");
        for bad in [
            r#""edgepush_subscribe":"a/#""#,
            r#""edgepush_subscribe":["a/#/b"]"#,
            r#""edgepush_publish":[1]"#,
            r#""sub":7"#,
        ] {
            let t = token(h, &format!(r#"{{"exp":{EXP},{bad}}}"#), &sign);
            assert_eq!(check(&c, &t), Err(Rejected::Claim), "{bad}");
        }
        assert!(!looks_like_jwt(b"plain-static-token"));
        assert!(!looks_like_jwt(b"a.b.c.d"));
        assert!(!looks_like_jwt(b"a.b c.d"));
        assert!(looks_like_jwt(b"a.b."));
    }

    #[test]
    fn ed25519_and_p256_signatures() {
        let rng = SystemRandom::new();
        let claims = format!(r#"{{"sub":"ed","exp":{EXP}}}"#);
        let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
        let ed_key = Material::Ed25519(ed.public_key().as_ref().to_vec());
        let t = token(r#"{"alg":"EdDSA"}"#, &claims, &|m| ed.sign(m).as_ref().to_vec());
        assert_eq!(verify(&cfg(Alg::EdDsa), &ed_key, t.as_bytes(), NOW).unwrap().sub.as_deref(), Some("ed"));
        let a = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let ec = EcdsaKeyPair::from_pkcs8(a, EcdsaKeyPair::generate_pkcs8(a, &rng).unwrap().as_ref(), &rng).unwrap();
        let ec_key = Material::P256(ec.public_key().as_ref().to_vec());
        let t = token(r#"{"alg":"ES256"}"#, &claims, &|m| ec.sign(&rng, m).unwrap().as_ref().to_vec());
        assert!(verify(&cfg(Alg::Es256), &ec_key, t.as_bytes(), NOW).is_ok());
        // The P-256 token against the Ed25519 key (and config), and the other way round.
        assert_eq!(verify(&cfg(Alg::EdDsa), &ed_key, t.as_bytes(), NOW).err(), Some(Rejected::Algorithm));
        let forged = token(r#"{"alg":"EdDSA"}"#, &claims, &|m| ec.sign(&rng, m).unwrap().as_ref().to_vec());
        assert_eq!(verify(&cfg(Alg::EdDsa), &ed_key, forged.as_bytes(), NOW).err(), Some(Rejected::Signature));
        // An HMAC made with the public key as the secret (the classic confusion): refused by alg.
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ec.public_key().as_ref());
        let confused = token(r#"{"alg":"HS256"}"#, &claims, &|m| ring::hmac::sign(&k, m).as_ref().to_vec());
        assert_eq!(verify(&cfg(Alg::Es256), &ec_key, confused.as_bytes(), NOW).err(), Some(Rejected::Algorithm));
    }
}
