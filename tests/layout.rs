//! The source tree keeps its shape: the server's top-level modules import
//! one another in one direction only (no module imports one that imports it
//! back, directly or round a longer loop), and the protocol crate does no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The text of a file without its unit-test module (tests may reach anywhere).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests").map_or(text, |i| &text[..i])
}

/// Top-level module → the top-level modules it names as `crate::name`.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in files {
        let rel = path.strip_prefix(src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let entry = deps.entry(top.clone()).or_default();
        for (i, _) in without_tests(&text).match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if !name.is_empty() && name != top {
                entry.insert(name);
            }
        }
    }
    deps
}

/// A loop in `deps`, if there is one.
fn find_loop(deps: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut l = path[i..].to_vec();
            l.push(n.to_owned());
            return Some(l);
        }
        if !done.insert(n.to_owned()) {
            return None;
        }
        path.push(n.to_owned());
        for m in deps.get(n).into_iter().flatten() {
            if let Some(l) = visit(m, deps, path, done) {
                return Some(l);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    deps.keys().find_map(|n| visit(n, deps, &mut Vec::new(), &mut done))
}

#[test]
fn the_servers_modules_import_in_one_direction() {
    let deps = imports(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(deps.len() >= 8, "{deps:?}");
    assert!(deps["daemon"].contains("listener") && deps["listener"].contains("session"), "{deps:?}");
    if let Some(l) = find_loop(&deps) {
        panic!("an import loop: {}\nall imports: {deps:#?}", l.join(" -> "));
    }
}

#[test]
fn a_loop_is_found() {
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        deps.entry(a.into()).or_default().insert(b.into());
    }
    assert_eq!(find_loop(&deps).map(|l| l.len()), Some(4));
    deps.get_mut("c").unwrap().clear();
    assert_eq!(find_loop(&deps), None);
}

#[test]
fn the_protocol_crate_does_no_io() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/protocol/src"), &mut files);
    assert!(files.len() >= 5);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for io in ["std::net", "std::fs", "std::io", "std::thread", "std::process::Command"] {
            assert!(!text.contains(io), "{} uses {io}: the protocol crate does no I/O", path.display());
        }
    }
}
