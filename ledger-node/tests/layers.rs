//! The dependency rule of `ledger-node/src` (docs/ARCHITECTURE.md), checked on the source
//! itself: no module imports another in a cycle; `core` imports nothing of the shell and
//! touches no I/O or clock; `books` reads only `core`; `store` knows nothing of the node's
//! wiring; `edge` and `region` never import each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type ModulePath = Vec<String>;

/// Every module of the library (not the binaries) with its source, comments removed.
fn modules() -> BTreeMap<ModulePath, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("entry").path();
            let relative = path.strip_prefix(&root).expect("under src").to_path_buf();
            if path.is_dir() {
                if relative != Path::new("bin") {
                    dirs.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || relative == Path::new("main.rs") {
                continue;
            }
            let mut module: ModulePath = relative.iter().map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
            if module.last().is_some_and(|m| m == "mod" || m == "lib") {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).expect("source is readable");
            out.insert(module, strip_comments(&text));
        }
    }
    assert!(out.len() > 20, "found only {} modules under {}", out.len(), root.display());
    out
}

/// The source without comments and without its unit tests (`#[cfg(test)]` to the end of
/// the file, where this crate keeps them): what the module itself imports.
fn strip_comments(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a source names after `crate::` or `super::`, each as absolute module
/// segments, groups `{a, b}` expanded. A parent naming its children (`mod`, `pub use`) is
/// the module tree, not an import, and is not counted.
fn referenced_paths(module: &ModulePath, text: &str) -> Vec<ModulePath> {
    let mut out = Vec::new();
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != ':';
        let rest: String = bytes[i..bytes.len().min(i + 7)].iter().collect();
        let base = if starts_word && rest.starts_with("crate::") {
            i += 7;
            Some(Vec::new())
        } else if starts_word && rest.starts_with("super::") {
            let mut base = module.clone();
            while bytes[i..].iter().collect::<String>().starts_with("super::") {
                base.pop();
                i += 7;
            }
            Some(base)
        } else {
            None
        };
        match base {
            Some(base) => {
                let (paths, end) = parse_path(&bytes, i, base);
                out.extend(paths);
                i = end.max(i + 1);
            }
            None => i += 1,
        }
    }
    out
}

/// Reads `a::b::{c, d::e}` from `at`: the full paths it names, and where it ends.
fn parse_path(chars: &[char], mut at: usize, mut prefix: ModulePath) -> (Vec<ModulePath>, usize) {
    loop {
        let word: String = chars[at..].iter().take_while(|c| is_ident(**c)).collect();
        if word.is_empty() {
            break;
        }
        at += word.len();
        prefix.push(word);
        if chars[at..].iter().take(2).collect::<String>() != "::" {
            return (vec![prefix], at);
        }
        at += 2;
    }
    if chars.get(at) != Some(&'{') {
        return (vec![prefix], at);
    }
    let mut paths = Vec::new();
    at += 1;
    loop {
        while chars.get(at).is_some_and(|c| c.is_whitespace() || *c == ',') {
            at += 1;
        }
        if chars.get(at).is_none_or(|c| *c == '}') {
            return (paths, at + 1);
        }
        let (inner, end) = parse_path(chars, at, prefix.clone());
        paths.extend(inner);
        at = end.max(at + 1);
    }
}

/// Each module's imports of other modules of the crate (the longest known prefix).
fn graph() -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
    let modules = modules();
    let mut graph = BTreeMap::new();
    for (module, text) in &modules {
        let mut targets = BTreeSet::new();
        for path in referenced_paths(module, text) {
            let target = (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains_key(p));
            if let Some(target) = target.filter(|t| t != module && !t.is_empty()) {
                targets.insert(target);
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

fn name(module: &ModulePath) -> String {
    module.join("::")
}

#[test]
fn no_module_imports_in_a_cycle() {
    let graph = graph();
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit(
        at: &ModulePath,
        graph: &BTreeMap<ModulePath, BTreeSet<ModulePath>>,
        path: &mut Vec<ModulePath>,
        done: &mut BTreeSet<ModulePath>,
    ) -> Result<(), String> {
        if let Some(start) = path.iter().position(|m| m == at) {
            let cycle: Vec<String> = path[start..].iter().chain([at]).map(name).collect();
            return Err(cycle.join(" -> "));
        }
        if done.contains(at) {
            return Ok(());
        }
        path.push(at.clone());
        for next in graph.get(at).into_iter().flatten() {
            visit(next, graph, path, done)?;
        }
        path.pop();
        done.insert(at.clone());
        Ok(())
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Err(cycle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {cycle}");
        }
    }
}

/// Top-level folders each module may import, besides its own.
const ALLOWED: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("books", &["core"]),
    ("clock", &[]),
    ("setup", &["core"]),
    ("store", &["core", "books"]),
    ("error", &["core", "store"]),
    ("metrics", &["core", "clock", "error"]),
    ("edge", &["core", "books", "store", "metrics", "setup", "clock", "error"]),
    ("region", &["core", "books", "store", "metrics", "setup", "clock", "error"]),
    ("stop", &["error"]),
    ("node", &["store", "error", "edge", "region", "stop"]),
];

#[test]
fn each_folder_imports_only_what_lies_beneath_it() {
    for (module, targets) in graph() {
        let Some(top) = module.first() else { continue };
        let allowed = ALLOWED.iter().find(|(m, _)| m == top).unwrap_or_else(|| panic!("{top} is not in the dependency rule")).1;
        for target in targets {
            let target_top = &target[0];
            assert!(
                target_top == top || allowed.contains(&target_top.as_str()),
                "{} imports {}: {top} may import only {allowed:?}",
                name(&module),
                name(&target)
            );
        }
    }
}

#[test]
fn core_and_books_touch_no_io() {
    const SHELL: &[&str] = &[
        "tokio::",
        "redb::",
        "bridge::",
        "broker::",
        "rumqttd::",
        "zenoh::",
        "config::",
        "SystemTime",
        "Instant::now",
        "std::fs",
        "std::net",
        "std::thread",
        "std::process",
    ];
    for (module, text) in modules() {
        if !matches!(module.first().map(String::as_str), Some("core" | "books")) {
            continue;
        }
        for word in SHELL {
            assert!(!text.contains(word), "{} names {word}: the core and its read models do no I/O", name(&module));
        }
    }
}

#[test]
fn the_checker_sees_imports() {
    let graph = graph();
    let of = |m: &str| graph.get(&m.split("::").map(str::to_string).collect::<Vec<_>>()).cloned().unwrap_or_default();
    let names = |set: BTreeSet<ModulePath>| set.iter().map(name).collect::<BTreeSet<_>>();
    assert!(names(of("core::ledger")).contains("core::accounts"), "{:?}", names(of("core::ledger")));
    assert!(names(of("edge::intake")).contains("edge::committer"), "{:?}", names(of("edge::intake")));
    assert!(names(of("books::queries")).contains("core"), "{:?}", names(of("books::queries")));
    assert!(names(of("store::history")).contains("books::queries"), "{:?}", names(of("store::history")));
}
