//! The tree's promise, checked: the modules of this crate and of the Rust
//! client import each other without cycles, and the server's layers
//! (`lib.rs`) import only downwards.
//!
//! The graph is read from the sources: every `crate::…` path outside a
//! comment is an edge to the longest module it names (names the crate root
//! re-exports resolve to their module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The server's layers, top first: each may import itself and what follows.
const SERVER_LAYERS: &[&str] = &[
    "node",
    "transport",
    "api",
    "server",
    "session",
    "channel",
    "store",
    "access",
    "webhooks",
    "metrics",
    "settings",
];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `a/b.rs` and `a/b/mod.rs` → `a::b`; `lib.rs` and `main.rs` → the root ("").
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts.join("::")
}

/// Paths after `crate::`, with `crate::{a, b::c}` groups split.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `roster_crate::…`, not ours
        }
        let path_end = |s: &str| {
            s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(s.len())
        };
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let item = item.trim();
                out.push(item[..path_end(item)].trim_end_matches(':').to_owned());
            }
        } else {
            out.push(rest[..path_end(rest)].trim_end_matches(':').to_owned());
        }
    }
    out
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let sources: BTreeMap<String, String> = files
        .iter()
        .map(|f| {
            let code: String = std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .map(|l| format!("{l}\n"))
                .collect();
            (module_of(src, f), code)
        })
        .collect();
    // `pub use a::b::{X, Y};` and `pub use a::X;` in the root.
    let mut reexports = BTreeMap::new();
    for line in sources[""]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub use "))
    {
        let line = line.trim_end_matches(';');
        let (module, names) = match line.split_once("::{") {
            Some((m, names)) => (m, names.trim_end_matches('}').to_owned()),
            None => match line.rsplit_once("::") {
                Some((m, name)) => (m, name.to_owned()),
                None => continue,
            },
        };
        for name in names.split(',') {
            let name = name.split(" as ").last().unwrap().trim();
            reexports.insert(name.to_owned(), module.to_owned());
        }
    }
    let resolve = |path: &str| -> Option<String> {
        let mut parts: Vec<&str> = path.split("::").collect();
        let first = parts.first().copied().unwrap_or_default();
        let aliased;
        if let Some(module) = reexports.get(first) {
            aliased = module.clone();
            parts = aliased.split("::").collect();
        }
        (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|m| sources.contains_key(m))
    };
    sources
        .iter()
        .map(|(module, code)| {
            let deps = crate_paths(code)
                .iter()
                .filter_map(|p| resolve(p))
                .filter(|d| d != module && !d.is_empty())
                .collect();
            (module.clone(), deps)
        })
        .collect()
}

/// A cycle of the graph, if it has one (depth-first search).
fn a_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        graph: &'a Graph,
        done: &mut BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| *p == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

fn crate_src(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

#[test]
fn neither_the_server_nor_the_client_has_an_import_cycle() {
    for krate in ["server", "client"] {
        let graph = graph(&crate_src(krate));
        assert!(graph.len() > 5, "{krate}: read {} modules", graph.len());
        assert_eq!(a_cycle(&graph), None, "{krate} imports in a cycle");
    }
}

#[test]
fn the_server_layers_import_only_downwards() {
    let rank = |module: &str| {
        let top = module.split("::").next().unwrap();
        SERVER_LAYERS
            .iter()
            .position(|l| *l == top)
            .unwrap_or_else(|| panic!("module `{module}` is in no layer of SERVER_LAYERS"))
    };
    let mut upward = Vec::new();
    for (module, deps) in graph(&crate_src("server")) {
        if module.is_empty() {
            continue;
        }
        for dep in deps {
            if rank(&dep) < rank(&module) {
                upward.push(format!("{module} → {dep}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports against the layers: {upward:#?}");
}

/// A single node is a cluster of one: which backend a node has is the
/// store's business alone (`store::connect`), so no module outside `store`
/// names one.
#[test]
fn only_the_store_knows_which_backend_a_node_has() {
    let mut outside = Vec::new();
    for (module, deps) in graph(&crate_src("server")) {
        if module == "store" || module.starts_with("store::") {
            continue;
        }
        for dep in deps {
            if ["store::local", "store::redis"]
                .iter()
                .any(|b| dep == *b || dep.starts_with(&format!("{b}::")))
            {
                outside.push(format!("{module} → {dep}"));
            }
        }
    }
    assert!(
        outside.is_empty(),
        "backends named outside store/: {outside:#?}"
    );
}

/// Where HTTP framework types may appear: the layers that speak HTTP.
/// Below them the domain has Roster's own frames and queues.
const HTTP_LAYERS: &[&str] = &["transport", "api"];

#[test]
fn axum_stays_in_the_http_layers() {
    let src = crate_src("server");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut outside = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        let top = module.split("::").next().unwrap();
        // The root (`lib.rs`, `main.rs`) names no axum types, only a log
        // target; this file names the pattern.
        if module.is_empty() || module == "import_graph" || HTTP_LAYERS.contains(&top) {
            continue;
        }
        let code = std::fs::read_to_string(file).unwrap();
        let uses = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .any(|l| l.contains("axum::") || l.contains("use axum"));
        if uses {
            outside.push(module);
        }
    }
    assert!(files.len() > 5, "read {} files", files.len());
    assert!(
        outside.is_empty(),
        "axum outside {HTTP_LAYERS:?}: {outside:?}"
    );
}

#[test]
fn the_checker_sees_cycles_and_grouped_imports() {
    let paths = crate_paths("use crate::{a::B, c};\nlet x = crate::d::e(); roster_crate::f;");
    assert_eq!(paths, ["a::B", "c", "d::e"]);
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(m, d)| (m.to_owned(), BTreeSet::from([d.to_owned()])))
        .collect();
    assert_eq!(a_cycle(&graph).map(|c| c.len()), Some(4));
}
