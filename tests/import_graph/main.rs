//! The workspace's structure stays acyclic (CONVENTIONS.md 18): no two
//! files import each other, directly or around a circle, and no file
//! imports a module that contains it. This check reads the sources of the
//! library (`src/`), the coordinator (`coordinator/src/`) and the worker
//! (`worker/src/`) and fails, naming the files, on either.
//!
//! What counts, precisely:
//!
//! - **Files.** The module tree of each crate root (`lib.rs`, `main.rs`),
//!   followed through `mod name;` to `name.rs` or `name/mod.rs` (or the
//!   `#[path]` given). Inline `mod name { … }` blocks are modules too
//!   (`src/lib.rs::proto`), but paths between modules of one file are not
//!   imports: a file's inner layout is its own business.
//!   Every `.rs` file under the three source directories must be in a
//!   tree, be left out as test-only, or be listed in [`NOT_MODULES`].
//! - **Imports.** A path a file writes: each leaf of a `use` tree, and any
//!   path in code or types that starts with `crate::`, `super::`,
//!   `self::`, a child module's name or a name a `use` bound to a module
//!   (glob imports included). The path is followed through the module
//!   tree as far as it names modules; the file of the last one is what the
//!   path imports. So an item a parent re-exports (`pub use`) is charged
//!   to the parent's file: import it from the file that defines it.
//! - **Not imports.** `mod child;` (declaring a module is not using it);
//!   paths into other crates (Cargo keeps crates acyclic); paths within a
//!   file; comments and string literals; items under `#[cfg(test)]`
//!   (tests beside the code import what they test, their parent
//!   included).
//! - **A circle**: modules that reach each other through imports (a
//!   strongly connected component of more than one), shown as one cycle.
//! - **An upward import**: a module importing a module that contains it
//!   (its parent, its grandparent, … the crate root), e.g.
//!   `worker/src/session.rs` -> `worker/src/lib.rs`.
//!
//! The unit tests at the bottom run the same reader on small made-up
//! crates, with and without each fault.

mod graph;
mod lexer;
mod made_up;
mod modules;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use modules::Tree;

/// Source directories, each holding the crate roots it has.
const SOURCE_DIRS: [&str; 3] = ["src", "coordinator/src", "worker/src"];

/// `.rs` files under the source directories that are not modules, and why.
const NOT_MODULES: [(&str, &str); 2] = [
    ("src/build/libtorch_link.rs", "included by the three build scripts (`include!`)"),
    ("src/build/torch_cuda.rs", "included by the root build script (`include!`)"),
];

/// Every `.rs` file under `dir` (relative to `base`), with its text.
fn read_sources(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let entries = std::fs::read_dir(base.join(dir)).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let name = entry.expect("a directory entry").file_name();
        let path = dir.join(&name);
        if base.join(&path).is_dir() {
            read_sources(base, &path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(base.join(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.insert(path, text);
        }
    }
}

/// The workspace's faults, one line each (none: an empty list).
fn faults(roots: &[PathBuf], sources: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let tree = match Tree::read(roots, sources) {
        Ok(tree) => tree,
        Err(e) => return vec![e],
    };
    let edges = graph::edges(&tree);
    let mut faults: Vec<String> = graph::circles(&edges)
        .iter()
        .map(|cycle| {
            let files: Vec<&str> = cycle.iter().map(|e| e.from.as_str()).collect();
            let how: Vec<String> = cycle.iter().map(|e| format!("    {e}")).collect();
            format!("circle: {} -> back\n{}", files.join(" -> "), how.join("\n"))
        })
        .collect();
    faults.extend(graph::upward(&tree, &edges).iter().map(|e| format!("upward import: {e}")));
    faults
}

#[test]
fn the_workspace_has_no_circle_and_no_upward_import() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = BTreeMap::new();
    for dir in SOURCE_DIRS {
        read_sources(base, Path::new(dir), &mut sources);
    }
    let roots: Vec<PathBuf> =
        SOURCE_DIRS.iter().flat_map(|d| ["lib.rs", "main.rs"].map(|r| Path::new(d).join(r))).filter(|r| sources.contains_key(r)).collect();
    assert_eq!(roots.len(), 6, "a library and a binary in each package: {roots:?}");

    let tree = Tree::read(&roots, &sources).unwrap_or_else(|e| panic!("{e}"));
    // Test-only files are not read, so they do not count as modules.
    let (files, tests) = (tree.files(), &tree.test_files);
    let stray: Vec<&PathBuf> = sources
        .keys()
        .filter(|f| !files.contains(*f) && !tests.contains(*f) && !NOT_MODULES.iter().any(|(n, _)| Path::new(n) == *f))
        .collect();
    assert!(stray.is_empty(), "files in no module tree (declare them, or list them in NOT_MODULES with why): {stray:?}");
    assert!(files.len() > 100, "the reader found only {} module files", files.len());

    let faults = faults(&roots, &sources);
    assert!(faults.is_empty(), "{} faults in the import graph:\n{}", faults.len(), faults.join("\n"));
}
