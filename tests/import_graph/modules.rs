//! The module trees of a set of crates, read from their sources: which
//! file each module lives in, which module contains which, and every path
//! each module writes (`use` declarations and `crate::`/`super::`/`self::`
//! or `child::` paths in code), not yet resolved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::lexer::{tokens, Tok};

/// One module: a file, or an inline `mod name { … }` inside one.
#[derive(Debug)]
pub struct Module {
    pub file: PathBuf,
    pub parent: Option<usize>,
    pub children: BTreeMap<String, usize>,
    /// Where `mod x;` inside this module finds `x.rs` or `x/mod.rs`.
    dir: PathBuf,
    /// The crate root's module.
    pub root: usize,
}

/// A path written in a module, as written (`crate`, `super`, `self` and
/// `$crate` kept as segments).
#[derive(Debug)]
pub struct Written {
    pub module: usize,
    pub segments: Vec<String>,
    pub line: u32,
    pub kind: Kind,
}

#[derive(Debug, PartialEq)]
pub enum Kind {
    /// A leaf of a `use` tree that binds `name` (`None`: `as _`).
    Use { name: Option<String> },
    /// `use path::*`.
    Glob,
    /// A path in code or in a type.
    Code,
}

/// Every module of the crates, and every path they write.
#[derive(Debug, Default)]
pub struct Tree {
    pub modules: Vec<Module>,
    pub written: Vec<Written>,
    /// Files left out because they are only compiled for tests.
    pub test_files: BTreeSet<PathBuf>,
}

impl Tree {
    /// Reads the crates whose root files are `roots` (lib.rs, main.rs);
    /// `sources` maps each file that exists to its text.
    pub fn read(roots: &[PathBuf], sources: &BTreeMap<PathBuf, String>) -> Result<Tree, String> {
        let mut tree = Tree::default();
        for root in roots {
            let dir = root.parent().unwrap_or(Path::new("")).to_path_buf();
            let m = tree.add(root.clone(), None, dir);
            tree.read_file(m, sources)?;
        }
        Ok(tree)
    }

    /// The files of all modules.
    pub fn files(&self) -> BTreeSet<PathBuf> {
        self.modules.iter().map(|m| m.file.clone()).collect()
    }

    fn add(&mut self, file: PathBuf, parent: Option<usize>, dir: PathBuf) -> usize {
        let id = self.modules.len();
        let root = parent.map_or(id, |p| self.modules[p].root);
        self.modules.push(Module { file, parent, children: BTreeMap::new(), dir, root });
        id
    }

    fn child(&mut self, parent: usize, name: &str, file: PathBuf, dir: PathBuf) -> usize {
        let id = self.add(file, Some(parent), dir);
        self.modules[parent].children.insert(name.to_string(), id);
        id
    }

    /// Walks the file of module `m`: its `mod` declarations (files read in
    /// turn), inline modules, `use` trees and paths in code.
    fn read_file(&mut self, m: usize, sources: &BTreeMap<PathBuf, String>) -> Result<(), String> {
        let file = self.modules[m].file.clone();
        let src = sources.get(&file).ok_or_else(|| format!("{}: no such file", file.display()))?;
        let toks = tokens(src);
        // The open inline modules, each with the brace depth outside it.
        let mut open: Vec<(usize, usize)> = vec![(m, 0)];
        let mut depth = 0;
        let mut attrs: Vec<String> = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            let here = open.last().map_or(m, |o| o.0);
            let t = &toks[i];
            let test_only = attrs.iter().any(|a| a == "cfg(test)");
            match t.text.as_str() {
                "#" => {
                    let (attr, inner, end) = attribute(&toks, i);
                    if inner && attr == "cfg(test)" && open.len() == 1 {
                        // The whole file is only for tests.
                        self.test_files.insert(file.clone());
                        return Ok(());
                    }
                    if !inner {
                        attrs.push(attr);
                    }
                    i = end;
                    continue;
                }
                "{" => depth += 1,
                "}" => {
                    depth -= 1;
                    if open.len() > 1 && open.last().is_some_and(|o| o.1 == depth) {
                        open.pop();
                    }
                }
                "mod" if toks.get(i + 1).is_some_and(Tok::is_ident) => {
                    let name = toks[i + 1].text.clone();
                    let inline = toks.get(i + 2).is_some_and(|t| t.is("{"));
                    if test_only {
                        if !inline {
                            // The module's file and the modules it declares.
                            let path = self.module_file(here, &name, &attrs, sources)?;
                            let below = child_dir(&path);
                            self.test_files.extend(sources.keys().filter(|f| f.starts_with(&below)).cloned());
                            self.test_files.insert(path);
                        }
                        i = skip_item(&toks, i);
                        attrs.clear();
                        continue;
                    }
                    if inline {
                        let dir = self.modules[here].dir.join(&name);
                        let inner = self.child(here, &name, file.clone(), dir);
                        open.push((inner, depth));
                        depth += 1;
                        i += 3;
                    } else {
                        let path = self.module_file(here, &name, &attrs, sources)?;
                        let dir = child_dir(&path);
                        let child = self.child(here, &name, path, dir);
                        self.read_file(child, sources)?;
                        i += 2;
                    }
                    attrs.clear();
                    continue;
                }
                "use" => {
                    if test_only {
                        i = skip_item(&toks, i);
                    } else {
                        let mut leaves = Vec::new();
                        let end = use_tree(&toks, i + 1, &[], true, &mut leaves);
                        for (segments, kind) in leaves {
                            self.written.push(Written { module: here, segments, line: t.line, kind });
                        }
                        i = end;
                    }
                    attrs.clear();
                    continue;
                }
                "fn" | "impl" | "const" | "static" | "struct" | "enum" | "trait" | "type" | "macro_rules" if test_only => {
                    i = skip_item(&toks, i);
                    attrs.clear();
                    continue;
                }
                _ if starts_path(&toks, i) => {
                    let (segments, end) = code_path(&toks, i);
                    self.written.push(Written { module: here, segments, line: t.line, kind: Kind::Code });
                    i = end;
                    attrs.clear();
                    continue;
                }
                _ => {}
            }
            if matches!(t.text.as_str(), ";" | "{" | "}") {
                attrs.clear();
            }
            i += 1;
        }
        Ok(())
    }

    /// The file of `mod name;` declared in module `m`: the `#[path]` given,
    /// else `name.rs` or `name/mod.rs` in the module's directory.
    fn module_file(&self, m: usize, name: &str, attrs: &[String], sources: &BTreeMap<PathBuf, String>) -> Result<PathBuf, String> {
        let declaring = &self.modules[m];
        if let Some(path) = attrs.iter().find_map(|a| a.strip_prefix("path=")) {
            let base = declaring.file.parent().unwrap_or(Path::new(""));
            return Ok(base.join(path.trim_matches('"')));
        }
        let flat = declaring.dir.join(format!("{name}.rs"));
        let nested = declaring.dir.join(name).join("mod.rs");
        [flat, nested]
            .into_iter()
            .find(|p| sources.contains_key(p))
            .ok_or_else(|| format!("{}: `mod {name};` has no file ({name}.rs or {name}/mod.rs)", declaring.file.display()))
    }
}

/// Where the modules a file declares live: beside `mod.rs`, `lib.rs` and
/// `main.rs`; in a directory of its own name for any other file.
fn child_dir(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new(""));
    match file.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs" | "lib.rs" | "main.rs") => dir.to_path_buf(),
        _ => dir.join(file.file_stem().unwrap_or_default()),
    }
}

/// The attribute starting at `#` (index `i`): its text without spaces
/// (`cfg(test)`, `path="x.rs"`), whether it is inner (`#!`), and the
/// index after it.
fn attribute(toks: &[Tok], i: usize) -> (String, bool, usize) {
    let inner = toks.get(i + 1).is_some_and(|t| t.is("!"));
    let open = if inner { i + 2 } else { i + 1 };
    if !toks.get(open).is_some_and(|t| t.is("[")) {
        return (String::new(), inner, i + 1);
    }
    let mut depth = 0;
    let mut j = open;
    let mut text = String::new();
    while j < toks.len() {
        match toks[j].text.as_str() {
            "[" => depth += 1,
            "]" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {}
        }
        if j > open {
            text.push_str(&toks[j].text);
        }
        j += 1;
    }
    (text, inner, j + 1)
}

/// Past the item starting at `i` (its keyword): to its `;`, or to the end
/// of its first top-level block.
fn skip_item(toks: &[Tok], i: usize) -> usize {
    let mut depth = 0i32;
    let mut j = i;
    while j < toks.len() {
        match toks[j].text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" => depth -= 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            ";" if depth == 0 => return j + 1,
            _ => {}
        }
        j += 1;
    }
    j
}

/// A path in code starts at an identifier followed by `::` that does not
/// itself follow `::` (the middle of a path) or `.` (a method's turbofish).
fn starts_path(toks: &[Tok], i: usize) -> bool {
    let prev = i.checked_sub(1).map(|p| toks[p].text.as_str());
    toks[i].is_ident() && toks.get(i + 1).is_some_and(|t| t.is("::")) && !matches!(prev, Some("::" | "."))
}

/// The segments of the path starting at `i` (`$crate` kept whole), and the
/// index after it.
fn code_path(toks: &[Tok], i: usize) -> (Vec<String>, usize) {
    let first = &toks[i].text;
    let dollar = i > 0 && toks[i - 1].is("$") && first == "crate";
    let mut segments = vec![if dollar { "$crate".to_string() } else { first.clone() }];
    let mut j = i + 1;
    while j + 1 < toks.len() && toks[j].is("::") && toks[j + 1].is_ident() {
        segments.push(toks[j + 1].text.clone());
        j += 2;
    }
    (segments, j)
}

/// Reads the `use` tree starting at `i` (after `use`, or after a `{` or
/// `,` inside one) under `prefix`, pushing one leaf per name it binds;
/// returns the index after it (after the `;` when `top`).
fn use_tree(toks: &[Tok], mut i: usize, prefix: &[String], top: bool, leaves: &mut Vec<(Vec<String>, Kind)>) -> usize {
    let mut segments = prefix.to_vec();
    if toks.get(i).is_some_and(|t| t.is("::")) {
        // `use ::name`: another crate.
        segments.push(String::new());
        i += 1;
    }
    while let Some(t) = toks.get(i) {
        if t.is("$") {
            i += 1;
        } else if t.is_ident() {
            let dollar = i > 0 && toks[i - 1].is("$");
            segments.push(if dollar { format!("${}", t.text) } else { t.text.clone() });
            i += 1;
            if toks.get(i).is_some_and(|t| t.is("::")) {
                i += 1;
                continue;
            }
            // `name as alias` (`as _` binds nothing); `path::{self}` binds the path's last name.
            let alias = toks.get(i).is_some_and(|t| t.is("as")).then(|| toks.get(i + 1).map(|t| t.text.clone()));
            if alias.is_some() {
                i += 2;
            }
            if segments.last().is_some_and(|s| s == "self") {
                segments.pop();
            }
            let name = match alias {
                Some(alias) => alias.filter(|a| a != "_"),
                None => segments.last().cloned(),
            };
            leaves.push((segments.clone(), Kind::Use { name }));
            break;
        } else if t.is("*") {
            leaves.push((segments.clone(), Kind::Glob));
            i += 1;
            break;
        } else if t.is("{") {
            i += 1;
            while toks.get(i).is_some_and(|t| !t.is("}")) {
                i = use_tree(toks, i, &segments, false, leaves);
                if toks.get(i).is_some_and(|t| t.is(",")) {
                    i += 1;
                }
            }
            i += 1;
            break;
        } else {
            break;
        }
    }
    if top {
        while toks.get(i).is_some_and(|t| !t.is(";")) {
            i += 1;
        }
        i += 1;
    }
    i
}
