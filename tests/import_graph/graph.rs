//! The import graph: each path a module writes resolved to the last module
//! it names, and the two faults the check looks for in it: circles and
//! upward imports. A node is a module: a file, or an inline module inside
//! one (`src/lib.rs::proto`, generated code that imports nothing, is not
//! its file's crate root). Paths between modules of one file are not
//! edges: a file's inner layout is its own business.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::modules::{Kind, Tree};

/// Module `from` imports module `to`: `written` at `line` of `from`'s file
/// names it. The labels are the modules' files (with `::name` after an
/// inline module's).
#[derive(Debug, Clone)]
pub struct Edge {
    pub from: String,
    pub to: String,
    from_module: usize,
    to_module: usize,
    pub line: u32,
    pub written: String,
}

impl std::fmt::Display for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self.from.split("::").next().unwrap_or_default();
        write!(f, "{file}:{} `{}` -> {}", self.line, self.written, self.to)
    }
}

/// A module's label: its file, and the names of the inline modules it is
/// inside that file.
fn label(tree: &Tree, m: usize) -> String {
    let modules = &tree.modules;
    let mut inline = Vec::new();
    let mut at = m;
    while let Some(parent) = modules[at].parent.filter(|&p| modules[p].file == modules[at].file) {
        inline.push(modules[parent].children.iter().find(|(_, &c)| c == at).map_or("?", |(n, _)| n.as_str()));
        at = parent;
    }
    inline.reverse();
    std::iter::once(modules[m].file.display().to_string()).chain(inline.into_iter().map(String::from)).collect::<Vec<_>>().join("::")
}

/// The names a `use` bound to modules, and the modules glob-imported, in
/// each module: a later `name::item` goes through them.
struct Scope<'t> {
    tree: &'t Tree,
    bound: Vec<BTreeMap<String, usize>>,
    globs: Vec<BTreeSet<usize>>,
}

impl<'t> Scope<'t> {
    fn new(tree: &'t Tree) -> Self {
        let n = tree.modules.len();
        let mut scope = Scope { tree, bound: vec![BTreeMap::new(); n], globs: vec![BTreeSet::new(); n] };
        // A `use` may start from a name another `use` bound: repeat until
        // nothing new is bound.
        loop {
            let mut grew = false;
            for w in &tree.written {
                let Some((target, rest)) = scope.resolve(w.module, &w.segments) else { continue };
                if rest != w.segments.len() {
                    continue;
                }
                grew |= match &w.kind {
                    Kind::Use { name: Some(name) } => scope.bound[w.module].insert(name.clone(), target) != Some(target),
                    Kind::Glob => scope.globs[w.module].insert(target),
                    _ => false,
                };
            }
            if !grew {
                return scope;
            }
        }
    }

    /// The module `name` means in module `m`: a child, a name a `use`
    /// bound, or either of those in a glob-imported module.
    fn lookup(&self, m: usize, name: &str) -> Option<usize> {
        let direct = |m: usize| self.tree.modules[m].children.get(name).or_else(|| self.bound[m].get(name)).copied();
        direct(m).or_else(|| self.globs[m].iter().find_map(|&g| direct(g)))
    }

    /// The last module `segments` names from module `m`, and how many
    /// segments that took (the rest name an item); `None` when the path
    /// starts outside the crate (another crate, a type, a local).
    fn resolve(&self, m: usize, segments: &[String]) -> Option<(usize, usize)> {
        let modules = &self.tree.modules;
        let (mut at, mut used) = match segments.first()?.as_str() {
            "crate" | "$crate" => (modules[m].root, 1),
            "self" => (m, 1),
            "super" => (m, 0),
            name => (self.lookup(m, name)?, 1),
        };
        while segments.get(used).is_some_and(|s| s == "super") {
            at = modules[at].parent?;
            used += 1;
        }
        while let Some(&child) = segments.get(used).and_then(|s| modules[at].children.get(s)) {
            at = child;
            used += 1;
        }
        Some((at, used))
    }
}

/// Every import between modules of two different files.
pub fn edges(tree: &Tree) -> Vec<Edge> {
    let scope = Scope::new(tree);
    let mut out = Vec::new();
    for w in &tree.written {
        let Some((target, _)) = scope.resolve(w.module, &w.segments) else { continue };
        if tree.modules[w.module].file != tree.modules[target].file {
            out.push(Edge {
                from: label(tree, w.module),
                to: label(tree, target),
                from_module: w.module,
                to_module: target,
                line: w.line,
                written: w.segments.join("::"),
            });
        }
    }
    out
}

/// The edges that go up: to a module that contains the importing one (its
/// parent, the parent's parent, … the crate root).
pub fn upward(tree: &Tree, edges: &[Edge]) -> Vec<Edge> {
    let contains = |outer: usize, mut m: usize| {
        while let Some(p) = tree.modules[m].parent {
            if p == outer {
                return true;
            }
            m = p;
        }
        false
    };
    edges.iter().filter(|e| contains(e.to_module, e.from_module)).cloned().collect()
}

/// The circles: each group of files that reach each other through
/// imports (a strongly connected component of more than one file), as one
/// cycle through its first file, edge by edge.
pub fn circles(edges: &[Edge]) -> Vec<Vec<Edge>> {
    let mut next: BTreeMap<&String, BTreeMap<&String, &Edge>> = BTreeMap::new();
    for e in edges {
        next.entry(&e.from).or_default().entry(&e.to).or_insert(e);
    }
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([from.clone()]);
        while let Some(f) = queue.pop_front() {
            for to in next.get(&f).into_iter().flat_map(|n| n.keys()) {
                if seen.insert((*to).clone()) {
                    queue.push_back((*to).clone());
                }
            }
        }
        seen
    };
    let files: BTreeSet<&String> = edges.iter().flat_map(|e| [&e.from, &e.to]).collect();
    let reaches: BTreeMap<&String, BTreeSet<String>> = files.iter().map(|f| (*f, reach(f))).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for &f in &files {
        if done.contains(f) || !reaches[f].contains(f) {
            continue;
        }
        let group: BTreeSet<String> = reaches[f].iter().filter(|g| reaches[*g].contains(f)).cloned().collect();
        done.extend(group.iter().cloned());
        out.push(shortest_cycle(f, &group, &next));
    }
    out
}

/// The shortest cycle from `start` back to it inside `group`.
fn shortest_cycle(start: &String, group: &BTreeSet<String>, next: &BTreeMap<&String, BTreeMap<&String, &Edge>>) -> Vec<Edge> {
    let mut came: BTreeMap<String, &Edge> = BTreeMap::new();
    let mut queue = VecDeque::from([start.clone()]);
    while let Some(f) = queue.pop_front() {
        for (to, e) in next.get(&f).into_iter().flatten() {
            if !group.contains(*to) || came.contains_key(*to) {
                continue;
            }
            came.insert((*to).clone(), e);
            if *to == start {
                let mut cycle = vec![(*e).clone()];
                while cycle[0].from != *start {
                    cycle.insert(0, came[&cycle[0].from].clone());
                }
                return cycle;
            }
            queue.push_back((*to).clone());
        }
    }
    unreachable!("{start} is in a circle")
}
