//! The shape of the code, kept true: no import circle between the crate's modules (one module per
//! file), and no product module importing a tool. Read from `src/` as text: every `crate::a::b` path
//! outside comments and `#[cfg(test)]` modules is an edge to the longest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`fetch::batch`) → its source text, for every file under `src/` but the crate roots.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).unwrap().with_extension("");
                let name: Vec<String> = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if name != ["lib"] && name != ["main"] {
                    out.insert(name.join("::"), std::fs::read_to_string(&path).unwrap());
                }
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The modules `text` names through `crate::` paths (grouped imports expanded one level).
fn dependencies(text: &str, modules: &BTreeMap<String, String>) -> BTreeSet<String> {
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap()
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let resolve = |path: &str| -> Option<String> {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|candidate| modules.contains_key(candidate))
    };
    let is_path_char = |c: char| c.is_ascii_lowercase() || c == '_' || c == ':';
    let mut deps = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let path: String = rest.chars().take_while(|c| is_path_char(*c)).collect();
        let path = path.trim_end_matches(':');
        let after = &rest[path.len()..];
        if let Some(group) = after.strip_prefix("::{") {
            for item in group.split('}').next().unwrap().split(',') {
                let item = item.split(" as ").next().unwrap().trim();
                let child = (item.starts_with(|c: char| c.is_ascii_lowercase()) && item != "self")
                    .then(|| format!("{path}::{item}"));
                deps.extend(child.and_then(|c| resolve(&c)).or_else(|| resolve(path)));
            }
        } else {
            deps.extend(resolve(path));
        }
    }
    deps
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    modules
        .iter()
        .map(|(name, text)| {
            let mut deps = dependencies(text, &modules);
            deps.remove(name);
            (name.clone(), deps)
        })
        .collect()
}

#[test]
fn no_module_imports_another_that_imports_it_back_however_far_round() {
    let graph = graph();
    assert!(graph.len() > 30, "read the tree: {:?}", graph.keys());
    // Depth-first search with colours: a grey node met again closes a circle.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(true) => return None,
            Some(false) => {
                let start = path.iter().position(|n| *n == node).unwrap();
                let mut circle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
                circle.push(node.to_owned());
                return Some(circle);
            }
            None => {}
        }
        state.insert(node, false);
        path.push(node);
        for dep in &graph[node] {
            if let Some(circle) = visit(dep, graph, state, path) {
                return Some(circle);
            }
        }
        path.pop();
        state.insert(node, true);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if let Some(circle) = visit(node, &graph, &mut state, &mut Vec::new()) {
            panic!("import circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn no_product_module_imports_a_tool() {
    for (module, deps) in graph() {
        if module == "tools" || module.starts_with("tools::") {
            continue;
        }
        let tools: Vec<_> = deps.iter().filter(|d| d.starts_with("tools")).collect();
        assert!(tools.is_empty(), "{module} imports {tools:?}");
    }
}
