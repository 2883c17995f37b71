//! Credentials at the handshake: which token a `/ws` request presents, and
//! what it may subscribe and publish. Only SHA-256 digests of tokens are kept;
//! a presented token is hashed and compared against every entry in constant
//! time, so neither the match nor its position shows in the timing.

use std::sync::Arc;

use crate::config::{Auth, AuthMode};
use edgepush_protocol::Permissions;

/// Why a request was refused with 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token in the header, the query or the cookie.
    Missing,
    /// A token that matches no entry.
    Unknown,
}

/// The tokens of a config, ready for the handshake.
pub struct Authenticator {
    mode: AuthMode,
    anonymous: Arc<Permissions>,
    tokens: Vec<Entry>,
}

struct Entry {
    name: Arc<str>,
    sha256: [u8; 32],
    perms: Arc<Permissions>,
    max_connections: Option<usize>,
}

/// Who a connection is: the token's name (None with `mode = "none"`), its
/// permissions and its own connection cap.
pub struct Identity {
    pub name: Option<Arc<str>>,
    pub perms: Arc<Permissions>,
    pub max_connections: Option<usize>,
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
        }
    }

    /// The identity of a request presenting `token`.
    ///
    /// # Errors
    /// With `mode = "tokens"`: no token, or one that matches no entry.
    pub fn check(&self, token: Option<&[u8]>) -> Result<Identity, Denied> {
        if self.mode == AuthMode::None {
            return Ok(Identity { name: None, perms: self.anonymous.clone(), max_connections: None });
        }
        let digest = sha256(token.ok_or(Denied::Missing)?);
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

fn percent_decode(s: &[u8]) -> Vec<u8> {
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
