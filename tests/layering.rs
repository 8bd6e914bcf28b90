//! The code's shape, checked: no module imports one that (directly or through others)
//! imports it back, in any crate; the router links no storage engine or Raft; the binary
//! only dispatches; no source file outside `tests/` grows past 600 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The workspace's crates, by the folder holding their `src/`.
const CRATES: [&str; 6] = [".", "encoder", "router", "shard", "shard-api", "wire"];

type Module = Vec<String>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file is: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `lib.rs` and
/// `main.rs` are the crate root.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Module = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// Every path a module names (in `use` trees, expressions and types), with the module it
/// is named from (inline modules are modules of their own).
struct Names {
    at: Module,
    found: Vec<(Module, Vec<String>)>,
    inline: Vec<Module>,
}

impl Names {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.name(prefix, n.ident.to_string()),
            syn::UseTree::Rename(r) => self.name(prefix, r.ident.to_string()),
            syn::UseTree::Glob(_) => self.found.push((self.at.clone(), prefix.clone())),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    fn name(&mut self, prefix: &[String], last: String) {
        let mut path = prefix.to_vec();
        path.push(last);
        self.found.push((self.at.clone(), path));
    }
}

impl<'ast> Visit<'ast> for Names {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let path: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.found.push((self.at.clone(), path));
        syn::visit::visit_path(self, p);
    }

    /// `pub(crate)`, `pub(super)`: who may see an item, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.at.push(m.ident.to_string());
            self.inline.push(self.at.clone());
            syn::visit::visit_item_mod(self, m);
            self.at.pop();
        }
    }
}

/// The module `path`, named from `from`, refers to (the longest prefix that is a module),
/// if it is one of this crate's.
fn resolve(modules: &BTreeSet<Module>, from: &Module, path: &[String]) -> Option<Module> {
    let (mut at, rest): (Module, &[String]) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (from.clone(), &path[1..]),
        Some("super") => {
            let mut at = from.clone();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                at.pop();
                rest = &rest[1..];
            }
            (at, rest)
        }
        Some(first) => {
            let mut child = from.clone();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            (from.clone(), path)
        }
        None => return None,
    };
    for segment in rest {
        at.push(segment.clone());
        if !modules.contains(&at) {
            at.pop();
            break;
        }
    }
    Some(at)
}

/// The modules of one crate and which each one names.
fn module_graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules: BTreeSet<Module> = BTreeSet::new();
    let mut names = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut v = Names {
            at: module_of(src, file),
            found: Vec::new(),
            inline: Vec::new(),
        };
        modules.insert(v.at.clone());
        v.visit_file(&ast);
        modules.extend(v.inline);
        names.extend(v.found);
    }
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for (from, path) in names {
        if let Some(to) = resolve(&modules, &from, &path) {
            if to != from {
                graph.entry(from).or_default().insert(to);
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn dfs(
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        node: &Module,
        stack: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(i) = stack.iter().position(|m| m == node) {
            return Some(stack[i..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = dfs(graph, next, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| dfs(graph, m, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    for krate in CRATES {
        let graph = module_graph(&root().join(krate).join("src"));
        assert!(!graph.is_empty(), "{krate}: no modules found");
        if let Some(cycle) = find_cycle(&graph) {
            let names: Vec<String> = cycle
                .iter()
                .map(|m| format!("{krate}::{}", m.join("::")))
                .collect();
            panic!("modules import each other: {}", names.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let m = |s: &str| -> Module { s.split("::").map(String::from).collect() };
    let graph = BTreeMap::from([
        (m("a"), BTreeSet::from([m("b")])),
        (m("b"), BTreeSet::from([m("c")])),
        (m("c"), BTreeSet::from([m("a")])),
    ]);
    assert_eq!(find_cycle(&graph).map(|c| c.len()), Some(3));
    let modules = BTreeSet::from([vec![], m("a"), m("a::x"), m("b")]);
    let to = |from: &str, path: &str| resolve(&modules, &m(from), &m(path));
    assert_eq!(to("b", "super::a::x::Thing"), Some(m("a::x")));
    assert_eq!(to("a", "x::Thing"), Some(m("a::x")));
    assert_eq!(to("a::x", "crate::b"), Some(m("b")));
    assert_eq!(to("a", "std::sync::Arc"), None);
}

/// Every package `package` depends on, through Cargo.lock (normal, build and dev
/// dependencies alike: a superset of what it links).
fn lock_closure(package: &str) -> BTreeSet<String> {
    let lock: toml::Table = std::fs::read_to_string(root().join("Cargo.lock"))
        .unwrap()
        .parse()
        .unwrap();
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in lock["package"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap().to_string();
        let list = p.get("dependencies").and_then(|d| d.as_array());
        let names = list.into_iter().flatten().map(|d| {
            // "name", or "name version" where several versions are locked.
            d.as_str().unwrap().split(' ').next().unwrap().to_string()
        });
        deps.entry(name).or_default().extend(names);
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![package.to_string()];
    while let Some(p) = todo.pop() {
        if seen.insert(p.clone()) {
            todo.extend(deps.get(&p).cloned().unwrap_or_default());
        }
    }
    seen
}

#[test]
fn the_router_links_no_storage_engine_and_no_raft() {
    let router = lock_closure("redrec-router");
    assert!(router.contains("redrec-shard-api") && router.contains("tokio"));
    for engine in ["redrec-shard", "qdrant-edge", "raft", "raft-engine"] {
        assert!(
            !router.contains(engine),
            "redrec-router depends on {engine}"
        );
    }
    // The check sees what the shard links.
    assert!(lock_closure("redrec-shard").contains("qdrant-edge"));
}

#[test]
fn the_binary_dispatches_and_files_stay_small() {
    let main = std::fs::read_to_string(root().join("src/main.rs")).unwrap();
    assert!(main.lines().count() <= 150, "src/main.rs is over 150 lines");
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&root().join(krate).join("src"), &mut files);
        for f in files {
            let lines = std::fs::read_to_string(&f).unwrap().lines().count();
            assert!(lines <= 600, "{} has {lines} lines", f.display());
        }
    }
}
