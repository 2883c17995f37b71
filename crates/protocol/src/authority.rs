//! `host[:port]`, as written in a `ws://` URL, an `Origin` or a `Host` header.
//!
//! ```
//! use edgepush_protocol::authority::split_host_port;
//!
//! assert_eq!(split_host_port("gw.lan:8080"), ("gw.lan", Some("8080")));
//! assert_eq!(split_host_port("[::1]:443"), ("[::1]", Some("443")));
//! assert_eq!(split_host_port("[::1]"), ("[::1]", None));
//! assert_eq!(split_host_port("gw.lan"), ("gw.lan", None));
//! ```

/// Splits `host[:port]` at the port's colon; an IPv6 host keeps its brackets.
/// Nothing is validated: the port is whatever follows the last colon outside
/// the brackets.
pub fn split_host_port(s: &str) -> (&str, Option<&str>) {
    match s.rfind(':') {
        Some(i) if !s[i..].contains(']') => (&s[..i], Some(&s[i + 1..])),
        _ => (s, None),
    }
}

/// The host of `host[:port]` without IPv6 brackets, as TLS server names and
/// socket addresses want it.
///
/// ```
/// assert_eq!(edgepush_protocol::authority::bare_host("[::1]:8080"), "::1");
/// ```
pub fn bare_host(s: &str) -> &str {
    split_host_port(s).0.trim_start_matches('[').trim_end_matches(']')
}
