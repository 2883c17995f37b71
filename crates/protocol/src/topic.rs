//! MQTT topic and filter syntax, matching, and permission coverage ("within").
//!
//! ```
//! use edgepush_protocol::topic::{covers, matches, validate_filter};
//!
//! assert!(validate_filter("sensors/+/t").is_ok() && validate_filter("a/#/b").is_err());
//! assert!(matches("sensors/+/t", "sensors/kitchen/t"));
//! assert!(!matches("#", "$SYS/uptime"), "wildcards at the start skip $ topics");
//! assert!(covers("sensors/#", "sensors/+/t") && !covers("sensors/#", "#"));
//! ```

/// The longest topic or filter, in bytes.
pub const MAX_LEN: usize = 1024;

/// Why a topic or filter is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxError {
    /// Zero bytes.
    Empty,
    /// Longer than [`MAX_LEN`] bytes.
    TooLong,
    /// Contains the NUL character.
    Nul,
    /// `+` or `#` shares a level with other characters.
    WildcardInLevel,
    /// `#` is not the last level.
    HashNotLast,
    /// A topic (not a filter) contains `+` or `#`.
    WildcardInTopic,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyntaxError::Empty => "empty",
            SyntaxError::TooLong => "longer than 1024 bytes",
            SyntaxError::Nul => "contains NUL",
            SyntaxError::WildcardInLevel => "a wildcard must be a whole level",
            SyntaxError::HashNotLast => "'#' must be the last level",
            SyntaxError::WildcardInTopic => "a topic cannot contain '+' or '#'",
        })
    }
}

fn check_common(s: &str) -> Result<(), SyntaxError> {
    if s.is_empty() {
        return Err(SyntaxError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(SyntaxError::TooLong);
    }
    if s.contains('\0') {
        return Err(SyntaxError::Nul);
    }
    Ok(())
}

/// Checks a subscription filter.
pub fn validate_filter(f: &str) -> Result<(), SyntaxError> {
    check_common(f)?;
    let mut levels = f.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "+" => {}
            "#" if levels.peek().is_none() => {}
            "#" => return Err(SyntaxError::HashNotLast),
            l if l.contains(['+', '#']) => return Err(SyntaxError::WildcardInLevel),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a topic name (no wildcards).
pub fn validate_topic(t: &str) -> Result<(), SyntaxError> {
    check_common(t)?;
    if t.contains(['+', '#']) {
        return Err(SyntaxError::WildcardInTopic);
    }
    Ok(())
}

fn starts_with_wildcard(filter: &str) -> bool {
    filter.starts_with('+') || filter.starts_with('#')
}

/// Whether `filter` (valid) matches `topic` (valid), with the `$` rule.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && starts_with_wildcard(filter) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic `filter` can match is matched by `permission`.
///
/// `sensors/+/t` is within `sensors/#`; `#` is not within `sensors/#`.
pub fn covers(permission: &str, filter: &str) -> bool {
    if filter.starts_with('$') && starts_with_wildcard(permission) {
        return false;
    }
    let mut p = permission.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some topic is matched by both filters (valid), with the `$` rule.
///
/// `sensors/+/t` and `sensors/kitchen/#` overlap (`sensors/kitchen/t`);
/// `a/+` and `b/#` do not; `#` and `$SYS/#` do not.
pub fn overlaps(a: &str, b: &str) -> bool {
    let literal_dollar = |f: &str| f.starts_with('$');
    if (literal_dollar(a) && starts_with_wildcard(b)) || (literal_dollar(b) && starts_with_wildcard(a)) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(l), Some(r)) if l == r => {}
            _ => return false,
        }
    }
}

/// The filters a connection may subscribe and publish within: a token's
/// scopes. Fixed when the connection is admitted.
///
/// ```
/// use edgepush_protocol::topic::Permissions;
///
/// let p = Permissions { subscribe: vec!["sensors/#".into()], publish: vec!["cmd/+".into()] };
/// assert!(p.may_subscribe("sensors/+/t") && !p.may_subscribe("#"));
/// assert!(p.may_publish("cmd/fan") && !p.may_publish("cmd/fan/speed"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// A Subscribe filter must be within one of these ([`covers`]).
    pub subscribe: Vec<String>,
    /// A Publish topic must match one of these ([`matches()`]).
    pub publish: Vec<String>,
}

impl Permissions {
    /// Whether `filter` is within a subscribe permission.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.subscribe.iter().any(|p| covers(p, filter))
    }

    /// Whether `topic` matches a publish permission.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| matches(p, topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_syntax() {
        for ok in ["#", "+", "a/+/b", "a/#", "/", "a//b", "+/+", "$SYS/#", "é/ü"] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_filter(""), Err(SyntaxError::Empty));
        assert_eq!(validate_filter("a/#/b"), Err(SyntaxError::HashNotLast));
        assert_eq!(validate_filter("a#"), Err(SyntaxError::WildcardInLevel));
        assert_eq!(validate_filter("a/b+"), Err(SyntaxError::WildcardInLevel));
        assert_eq!(validate_filter("a\0"), Err(SyntaxError::Nul));
        assert_eq!(validate_filter(&"a".repeat(1024)), Ok(()));
        assert_eq!(validate_filter(&"a".repeat(1025)), Err(SyntaxError::TooLong));
        assert_eq!(validate_topic("a/+"), Err(SyntaxError::WildcardInTopic));
        assert_eq!(validate_topic("a/b"), Ok(()));
    }

    #[test]
    fn matching() {
        let cases = [
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("a/#", "a", true),
            ("a/#", "a/b", true),
            ("a/#", "ab", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("+/+", "/x", true),
            ("+", "", true),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} ~ {t}");
        }
    }

    #[test]
    fn coverage() {
        let cases = [
            ("sensors/#", "sensors/+/t", true),
            ("sensors/#", "sensors", true),
            ("sensors/#", "sensors/#", true),
            ("sensors/#", "#", false),
            ("#", "#", true),
            ("#", "$SYS/#", false),
            ("+/t", "a/t", true),
            ("+/t", "+/t", true),
            ("+/t", "#", false),
            ("a/+", "a/#", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("a", "a/b", false),
        ];
        for (p, f, want) in cases {
            assert_eq!(covers(p, f), want, "{p} covers {f}");
        }
    }

    #[test]
    fn overlap() {
        let cases = [
            ("sensors/+/t", "sensors/kitchen/#", true),
            ("sensors/#", "sensors", true),
            ("a/+", "b/#", false),
            ("a/+", "a/b/c", false),
            ("a/+/c", "a/b/+", true),
            ("#", "$SYS/#", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a", "a/b", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(overlaps(a, b), want, "{a} overlaps {b}");
            assert_eq!(overlaps(b, a), want, "{b} overlaps {a}");
        }
    }
}
