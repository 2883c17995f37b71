//! The Origin check against cross-site WebSocket hijacking: a web page on any
//! site can open a WebSocket to the gateway, and the browser sends the user's
//! cookies with it. Browsers always send `Origin` on a WebSocket request;
//! other clients (CLI, sensors) usually do not, and are let through.
//!
//! ```
//! use edgepush_protocol::origin::{normalize, permitted};
//!
//! assert_eq!(normalize("HTTPS://Dash.lan").as_deref(), Some("https://dash.lan:443"));
//! // By default only the request's own host and port may connect.
//! assert!(permitted(Some(b"http://gw.lan:8080"), Some(b"gw.lan:8080"), None, false));
//! assert!(!permitted(Some(b"http://evil.example"), Some(b"gw.lan:8080"), None, false));
//! ```

/// `scheme://host:port` with scheme http or https, lowercase, the port always
/// written out (the scheme's default when absent). None for anything else,
/// including `null` (sandboxed pages, `file:` URLs).
pub fn normalize(origin: &str) -> Option<String> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (host, port) = host_port(rest, default)?;
    Some(format!("{scheme}://{host}:{port}"))
}

/// Splits `host[:port]` (IPv6 in brackets), lowercasing the host.
fn host_port(s: &str, default: u16) -> Option<(String, u16)> {
    if s.is_empty() || s.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (host, port) = crate::authority::split_host_port(s);
    let port = match port {
        None => default,
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
    };
    let ipv6 = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    let ok = ipv6 || (!host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)));
    ok.then(|| (host.to_ascii_lowercase(), port))
}

/// Whether a request with this Origin (None: not sent) may upgrade.
/// `allowed` None: only an Origin naming the request's own Host (host and
/// port, the port being the listener's scheme default when Host has none).
pub fn permitted(origin: Option<&[u8]>, host: Option<&[u8]>, allowed: Option<&[String]>, tls: bool) -> bool {
    let Some(origin) = origin else { return true };
    if allowed.is_some_and(|a| a.iter().any(|o| o == "*")) {
        return true;
    }
    let Some(origin) = std::str::from_utf8(origin).ok().and_then(|o| normalize(o.trim())) else { return false };
    match allowed {
        Some(list) => list.contains(&origin),
        None => {
            let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()) else { return false };
            let Some(own) = host_port(host.trim(), if tls { 443 } else { 80 }) else { return false };
            origin.split_once("://").is_some_and(|(_, hp)| hp == format!("{}:{}", own.0, own.1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_normalize_with_their_default_port() {
        assert_eq!(normalize("HTTPS://Dash.LAN").as_deref(), Some("https://dash.lan:443"));
        assert_eq!(normalize("http://10.0.0.5:8080").as_deref(), Some("http://10.0.0.5:8080"));
        assert_eq!(normalize("http://[fe80::1]:81").as_deref(), Some("http://[fe80::1]:81"));
        for bad in ["null", "file://", "ftp://x", "http://", "http://a/b", "http://a:0", "http://a:99999", "http://u@a"]
        {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }

    #[test]
    fn by_default_only_the_own_host_and_port() {
        let host = Some(&b"gw.lan:8080"[..]);
        assert!(permitted(None, host, None, false), "no Origin: not a browser");
        assert!(permitted(Some(b"http://gw.lan:8080"), host, None, false));
        assert!(permitted(Some(b"http://GW.lan:8080"), host, None, false));
        assert!(!permitted(Some(b"http://evil.example"), host, None, false));
        assert!(!permitted(Some(b"http://gw.lan:8081"), host, None, false));
        assert!(!permitted(Some(b"http://gw.lan"), host, None, false));
        assert!(!permitted(Some(b"null"), host, None, false));
        assert!(!permitted(Some(b"http://gw.lan:8080"), None, None, false), "no Host to compare with");
        // Host without a port: the listener's scheme default.
        assert!(permitted(Some(b"https://gw.lan"), Some(b"gw.lan"), None, true));
        assert!(!permitted(Some(b"http://gw.lan"), Some(b"gw.lan"), None, true));
    }

    #[test]
    fn an_allow_list_replaces_the_default() {
        let list = vec![normalize("https://dash.lan:8443").unwrap()];
        let host = Some(&b"gw.lan:8080"[..]);
        assert!(permitted(Some(b"https://dash.lan:8443"), host, Some(&list), false));
        assert!(!permitted(Some(b"http://gw.lan:8080"), host, Some(&list), false));
        let any = vec!["*".to_string()];
        assert!(permitted(Some(b"http://evil.example"), host, Some(&any), false));
        assert!(permitted(Some(b"null"), host, Some(&any), false));
    }
}
