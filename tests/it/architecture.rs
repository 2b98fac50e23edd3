//! The shape of `src/`: imports point down, so the data path reads top-down.
//!
//! Every `crate::a::b` path in a file is an edge to the file of the deepest module it names
//! (`src/a/b.rs`, `src/a/b/mod.rs`, else `src/a.rs`, …); `mod` declarations and `super::`
//! paths (a kind using its role's trait) are not imports. Unit tests are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, by module path (`["writer", "s3"]`).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
    let entries = std::fs::read_dir(dir).expect("read src");
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut next = prefix.to_vec();
            next.push(name);
            modules(&path, &next, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut module = prefix.to_vec();
            if !matches!(stem, "mod" | "lib" | "main") {
                module.push(stem.to_owned());
            }
            if stem != "main" {
                out.insert(module, path);
            }
        }
    }
}

/// The `crate::…` paths in `text`, a `{a, b::c}` group expanded; comments and the unit
/// tests at the end left out.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let code: String = code
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let base: Vec<String> = rest[..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if rest[end..].starts_with('{') && rest[..end].ends_with("::") {
            let close = rest[end..].find('}').map_or(rest.len(), |i| end + i);
            for item in rest[end + 1..close].split(',') {
                let mut path = base.clone();
                path.extend(
                    item.trim()
                        .split("::")
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty()),
                );
                out.push(path);
            }
        } else {
            out.push(base);
        }
    }
    out
}

fn import_graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    modules(&src, &[], &mut files);
    let mut graph = BTreeMap::new();
    for file in files.values() {
        let text = std::fs::read_to_string(file).expect("read a source file");
        let mut edges = BTreeSet::new();
        for path in crate_paths(&text) {
            let target = (0..=path.len()).rev().find_map(|n| files.get(&path[..n]));
            if let Some(target) = target
                && target != file
            {
                edges.insert(target.clone());
            }
        }
        graph.insert(file.clone(), edges);
    }
    graph
}

/// A cycle through `from`, if the graph has one (depth-first search).
fn cycle(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Option<Vec<PathBuf>> {
    fn visit(
        node: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut found = stack[at..].to_vec();
            found.push(node.clone());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, stack, done) {
                return Some(found);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_file_of_src_imports_itself_through_others() {
    let graph = import_graph();
    assert!(graph.len() > 30, "read {} files", graph.len());
    if let Some(found) = cycle(&graph) {
        let shown: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
        panic!("import cycle: {}", shown.join(" -> "));
    }
}

#[test]
fn kinds_import_only_the_layers_below_them() {
    let graph = import_graph();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let above = [
        "job.rs",
        "runner/mod.rs",
        "daemon.rs",
        "config/mod.rs",
        "cli.rs",
    ];
    let mut checked = 0;
    for (file, edges) in &graph {
        let rel = file.strip_prefix(&src).expect("under src");
        let role = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy());
        if !matches!(role.as_deref(), Some("source" | "writer" | "notify")) {
            continue;
        }
        checked += 1;
        for edge in edges {
            let target = edge.strip_prefix(&src).expect("under src");
            assert!(
                !above.iter().any(|a| target == Path::new(a)),
                "{} imports {}",
                rel.display(),
                target.display()
            );
        }
    }
    assert!(checked >= 12, "checked {checked} kind files");
}

#[test]
fn the_checker_sees_a_cycle_when_there_is_one() {
    let mut graph = BTreeMap::new();
    let (a, b) = (PathBuf::from("a.rs"), PathBuf::from("b.rs"));
    graph.insert(a.clone(), BTreeSet::from([b.clone()]));
    graph.insert(b.clone(), BTreeSet::from([a.clone()]));
    assert!(cycle(&graph).is_some());
    graph.insert(b, BTreeSet::new());
    assert!(cycle(&graph).is_none());
    let paths = crate_paths(
        "use crate::writer::{Payload, payload::Digest};\nlet x = crate::error::chain_of(e);",
    );
    assert_eq!(paths.len(), 3, "{paths:?}");
}
