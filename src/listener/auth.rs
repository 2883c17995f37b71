//! Credentials at the handshake: which token a `/ws` request presents, and
//! what it may subscribe and publish. Only SHA-256 digests of tokens are kept;
//! a presented token is hashed and compared against every entry in constant
//! time, so neither the match nor its position shows in the timing.
//! With `[auth.jwt]`, a credential shaped like a JWT is checked as one
//! instead ([`super::jwt`]).

use std::sync::Arc;

use crate::config::jwt::Loaded;
use crate::config::{Auth, AuthMode, Jwt};
use crate::listener::jwt::{self, Rejected};
use edgepush_protocol::Permissions;

/// Why a request was refused with 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token in the header, the query or the cookie.
    Missing,
    /// A token that matches no entry.
    Unknown,
    /// A JWT that does not pass.
    Jwt(Rejected),
}

/// The tokens of a config, ready for the handshake.
pub struct Authenticator {
    mode: AuthMode,
    anonymous: Arc<Permissions>,
    tokens: Vec<Entry>,
    /// `[auth.jwt]` and its key, when configured and read.
    jwt: Option<(Jwt, Loaded)>,
}

struct Entry {
    name: Arc<str>,
    sha256: [u8; 32],
    perms: Arc<Permissions>,
    max_connections: Option<usize>,
}

/// Who a connection is: the token's name (None with `mode = "none"`; a
/// JWT's `sub`), its permissions, its own connection cap, and when its
/// credential expires (a JWT's `exp` plus the leeway, Unix ms).
pub struct Identity {
    pub name: Option<Arc<str>>,
    pub perms: Arc<Permissions>,
    pub max_connections: Option<usize>,
    pub expires_ms: Option<u64>,
}

/// SHA-256 of a token.
pub fn sha256(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal without an early exit.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Authenticator {
    pub fn new(auth: &Auth) -> Authenticator {
        let perms = |s: &[String], p: &[String]| Arc::new(Permissions { subscribe: s.to_vec(), publish: p.to_vec() });
        Authenticator {
            mode: auth.mode,
            anonymous: perms(&auth.subscribe, &auth.publish),
            tokens: auth
                .tokens
                .iter()
                .map(|t| Entry {
                    name: t.name.as_str().into(),
                    sha256: t.sha256,
                    perms: perms(&t.subscribe, &t.publish),
                    max_connections: t.max_connections,
                })
                .collect(),
            jwt: auth.jwt.as_ref().and_then(|j| Some((j.clone(), j.key.loaded.clone()?))),
        }
    }

    /// The identity of a request presenting `token`, now.
    ///
    /// # Errors
    /// With `mode = "tokens"`: no token, one that matches no entry, or a JWT that fails.
    pub fn check(&self, token: Option<&[u8]>) -> Result<Identity, Denied> {
        self.check_at(token, crate::clock::now_ms())
    }

    /// [`Authenticator::check`] at `now_ms` (Unix ms).
    ///
    /// # Errors
    /// As [`Authenticator::check`].
    pub fn check_at(&self, token: Option<&[u8]>, now_ms: u64) -> Result<Identity, Denied> {
        if self.mode == AuthMode::None {
            return Ok(Identity { name: None, perms: self.anonymous.clone(), max_connections: None, expires_ms: None });
        }
        let token = token.ok_or(Denied::Missing)?;
        if let Some((cfg, key)) = self.jwt.as_ref().filter(|_| jwt::looks_like_jwt(token)) {
            let claims = jwt::verify(cfg, &key.0, token, now_ms).map_err(Denied::Jwt)?;
            return Ok(Identity {
                name: Some(claims.sub.as_deref().unwrap_or("(JWT without sub)").into()),
                perms: Arc::new(claims.perms),
                max_connections: None,
                expires_ms: Some(claims.expires_ms),
            });
        }
        let digest = sha256(token);
        let mut found = None;
        for e in &self.tokens {
            if ct_eq(&e.sha256, &digest) && found.is_none() {
                found = Some(e);
            }
        }
        found
            .map(|e| Identity {
                name: Some(e.name.clone()),
                perms: e.perms.clone(),
                max_connections: e.max_connections,
                expires_ms: None,
            })
            .ok_or(Denied::Unknown)
    }
}

/// The token a request presents: `Authorization: Bearer`, else `?token=`
/// (percent-decoded), else the `edgepush_token` cookie.
pub fn presented(authorization: Option<&[u8]>, query: Option<&str>, cookies: &[&[u8]]) -> Option<Vec<u8>> {
    if let Some(v) = authorization {
        let v = v.trim_ascii();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(v[7..].trim_ascii().to_vec());
        }
    }
    if let Some(q) = query {
        if let Some(v) = q.split('&').find_map(|kv| kv.strip_prefix("token=")) {
            return Some(percent_decode(v.as_bytes()));
        }
    }
    cookies.iter().flat_map(|c| c.split(|b| *b == b';')).find_map(|c| {
        let c = c.trim_ascii();
        c.strip_prefix(b"edgepush_token=").map(|v| v.to_vec())
    })
}

/// A query value decoded as an HTML form value (`%XX`, `+` as a space).
pub(crate) fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (s[i], s.get(i + 1).copied().and_then(hex), s.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Token;
    use crate::hex::encode as hex;

    fn auth(mode: AuthMode) -> Auth {
        let token = |name: &str, secret: &str, sub: &str| Token {
            name: name.into(),
            sha256: sha256(secret.as_bytes()),
            subscribe: vec![sub.into()],
            publish: vec![],
            max_connections: None,
        };
        Auth {
            mode,
            subscribe: vec!["#".into()],
            publish: vec![],
            tokens: vec![token("wall", "s3cret", "sensors/#"), token("ops", "other", "#")],
            allowed_origins: None,
            jwt: None,
        }
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn tokens_map_to_their_scopes() {
        let a = Authenticator::new(&auth(AuthMode::Tokens));
        let id = a.check(Some(b"s3cret")).ok().unwrap();
        assert_eq!(id.name.as_deref(), Some("wall"));
        assert_eq!(id.perms.subscribe, vec!["sensors/#".to_string()]);
        assert_eq!(a.check(Some(b"other")).ok().unwrap().name.as_deref(), Some("ops"));
        assert_eq!(a.check(Some(b"s3cre")).err(), Some(Denied::Unknown));
        assert_eq!(a.check(Some(b"")).err(), Some(Denied::Unknown));
        assert_eq!(a.check(None).err(), Some(Denied::Missing));
        let none = Authenticator::new(&auth(AuthMode::None));
        let id = none.check(None).ok().unwrap();
        assert!(id.name.is_none() && id.perms.subscribe == vec!["#".to_string()]);
    }

    #[test]
    fn a_jwt_shaped_credential_is_checked_as_a_jwt_only_where_configured() {
        use crate::config::jwt::{Alg, KeyFile, Material};
        let mut a = auth(AuthMode::Tokens);
        a.tokens[0].sha256 = sha256(b"a.b.c");
        // Without [auth.jwt]: a static token like any other, whatever its shape.
        let plain = Authenticator::new(&a);
        assert_eq!(plain.check(Some(b"a.b.c")).ok().unwrap().name.as_deref(), Some("wall"));
        let secret = b"0123456789abcdef0123456789abcdef";
        let key = Loaded(Arc::new(Material::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))));
        a.jwt = Some(Jwt {
            key: KeyFile { path: "k".into(), loaded: Some(key) },
            algorithm: Some(Alg::Hs256),
            issuer: None,
            audience: None,
            leeway_s: 0,
        });
        let with_jwt = Authenticator::new(&a);
        assert_eq!(with_jwt.check(Some(b"a.b.c")).err(), Some(Denied::Jwt(Rejected::Malformed)));
        assert_eq!(with_jwt.check(Some(b"other")).ok().unwrap().name.as_deref(), Some("ops"));
        // header {"alg":"HS256"}, claims {"sub":"s","exp":2000000000}, signed with the secret.
        let input = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzIiwiZXhwIjoyMDAwMDAwMDAwfQ";
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let token =
            format!("{input}.{}", crate::listener::jwt::tests::enc(ring::hmac::sign(&k, input.as_bytes()).as_ref()));
        let id = with_jwt.check_at(Some(token.as_bytes()), 1_999_999_999_000).ok().unwrap();
        assert_eq!((id.name.as_deref(), id.expires_ms, id.max_connections), (Some("s"), Some(2_000_000_000_000), None));
        assert_eq!(
            with_jwt.check_at(Some(token.as_bytes()), 2_000_000_000_000).err(),
            Some(Denied::Jwt(Rejected::Expired))
        );
    }

    #[test]
    fn a_token_is_found_in_header_then_query_then_cookie() {
        let c: &[&[u8]] = &[b"theme=dark; edgepush_token=fromcookie"];
        assert_eq!(presented(Some(b"Bearer  abc "), Some("token=q"), c).unwrap(), b"abc");
        assert_eq!(presented(Some(b"Basic xyz"), Some("a=1&token=q%2Bx+y"), c).unwrap(), b"q+x y");
        assert_eq!(presented(None, Some("a=1"), c).unwrap(), b"fromcookie");
        assert_eq!(presented(None, None, &[b"a=b", b"edgepush_token=2nd"]).unwrap(), b"2nd");
        assert_eq!(presented(None, None, &[b"edgepush_tokenx=1"]), None);
        assert_eq!(presented(None, Some("token=%zz%4"), &[]).unwrap(), b"%zz%4");
    }
}
