//! The subscription index the hub matches every event against: a trie of
//! filters, so matching a topic costs its depth, not the number of subscriptions.

use std::collections::HashMap;

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
    use edgepush_protocol::topic::matches;

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
