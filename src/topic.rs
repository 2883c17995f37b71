//! MQTT topic and filter syntax, matching, permission coverage, and the
//! subscription index the hub matches every event against.

use std::collections::HashMap;

/// The longest topic or filter, in bytes.
pub const MAX_LEN: usize = 1024;

/// Why a topic or filter is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntaxError {
    Empty,
    TooLong,
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

/// Who holds a filter in the [`FilterIndex`]: a connection and its subscription.
pub type Holder = (u64, u32);

/// A trie of subscription filters: matching a topic costs its depth, not the
/// number of subscriptions.
#[derive(Default)]
pub struct FilterIndex {
    root: Node,
    len: usize,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Holders of a filter ending in `#` at this node.
    hash: Vec<Holder>,
    /// Holders of a filter ending exactly here.
    exact: Vec<Holder>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.hash.is_empty() && self.exact.is_empty()
    }
}

impl FilterIndex {
    /// How many (filter, holder) entries are held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a valid filter for `holder`.
    pub fn insert(&mut self, filter: &str, holder: Holder) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            match level {
                "#" => {
                    node.hash.push(holder);
                    self.len += 1;
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Default::default),
                l => node = node.children.entry(l.into()).or_default(),
            }
        }
        node.exact.push(holder);
        self.len += 1;
    }

    /// Removes one entry of `filter` for `holder`; prunes emptied nodes.
    pub fn remove(&mut self, filter: &str, holder: Holder) {
        let levels: Vec<&str> = filter.split('/').collect();
        if remove_at(&mut self.root, &levels, holder) {
            self.len -= 1;
        }
    }

    /// Calls `f` for every holder of a filter matching `topic` (a holder with
    /// several matching filters is reported once per filter).
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(Holder)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        visit(&self.root, &levels, !dollar, &mut f);
    }
}

fn remove_at(node: &mut Node, levels: &[&str], holder: Holder) -> bool {
    let take = |v: &mut Vec<Holder>| match v.iter().position(|h| *h == holder) {
        Some(i) => {
            v.swap_remove(i);
            true
        }
        None => false,
    };
    match levels {
        [] => take(&mut node.exact),
        ["#", ..] => take(&mut node.hash),
        ["+", rest @ ..] => {
            let Some(child) = node.plus.as_deref_mut() else { return false };
            let removed = remove_at(child, rest, holder);
            if child.is_empty() {
                node.plus = None;
            }
            removed
        }
        [l, rest @ ..] => {
            let Some(child) = node.children.get_mut(*l) else { return false };
            let removed = remove_at(child, rest, holder);
            if child.is_empty() {
                node.children.remove(*l);
            }
            removed
        }
    }
}

fn visit(node: &Node, levels: &[&str], wildcards: bool, f: &mut impl FnMut(Holder)) {
    if wildcards {
        // `a/#` also matches `a`.
        node.hash.iter().copied().for_each(&mut *f);
    }
    let Some((first, rest)) = levels.split_first() else {
        node.exact.iter().copied().for_each(f);
        return;
    };
    if let Some(child) = node.children.get(*first) {
        visit(child, rest, true, f);
    }
    if wildcards {
        if let Some(plus) = &node.plus {
            visit(plus, rest, true, f);
        }
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

    fn matched(ix: &FilterIndex, topic: &str) -> Vec<Holder> {
        let mut v = Vec::new();
        ix.for_each_match(topic, |h| v.push(h));
        v.sort();
        v
    }

    #[test]
    fn index_agrees_with_matches() {
        let filters = ["#", "a/#", "a/+", "a/b", "+/b", "+", "a/+/c", "$SYS/#", "/", "+/+"];
        let topics = ["a", "a/b", "a/b/c", "x/b", "$SYS/x", "", "/", "a/x/c", "b"];
        let mut ix = FilterIndex::default();
        for (i, f) in filters.iter().enumerate() {
            ix.insert(f, (i as u64, 0));
        }
        for t in topics {
            let want: Vec<Holder> =
                filters.iter().enumerate().filter(|(_, f)| matches(f, t)).map(|(i, _)| (i as u64, 0)).collect();
            assert_eq!(matched(&ix, t), want, "topic {t:?}");
        }
        for (i, f) in filters.iter().enumerate() {
            ix.remove(f, (i as u64, 0));
        }
        assert!(ix.is_empty());
        assert!(ix.root.is_empty());
    }

    #[test]
    fn duplicate_entries_are_removed_one_at_a_time() {
        let mut ix = FilterIndex::default();
        ix.insert("a/+", (1, 1));
        ix.insert("a/+", (1, 1));
        ix.remove("a/+", (1, 1));
        assert_eq!(matched(&ix, "a/b"), vec![(1, 1)]);
        ix.remove("a/+", (1, 1));
        ix.remove("a/+", (1, 1));
        assert_eq!(ix.len(), 0);
    }
}
