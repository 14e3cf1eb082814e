//! The docs check's parts: reading markdown pages, cutting shell lines
//! into commands, reading `--help`, judging commands, links and the
//! spec's citations. `tests/docs_commands.rs` runs them on README.md and
//! docs/*.md.

pub mod citations;
pub mod commands;
pub mod help;
pub mod links;
pub mod markdown;
pub mod shell;

use std::fmt;
use std::path::{Path, PathBuf};

use commands::{check_binary, check_script, target, Target, BINARIES};
use help::Helps;

/// One thing in one page that no longer holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.what)
    }
}

/// The pages the check reads: README.md and every docs/*.md.
pub fn pages(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "md")).collect())
        .unwrap_or_default();
    docs.sort();
    out.extend(docs);
    out
}

/// Every command of ours that `text` shows, checked; returns the problems
/// and how many command lines were checked.
pub fn check_commands(root: &Path, file: &str, text: &str, helps: &mut dyn Helps) -> (Vec<Problem>, usize) {
    let mut problems = Vec::new();
    let mut checked = 0;
    for shown in markdown::shell_lines(text, BINARIES) {
        for words in shell::commands(&shown.text, shown.pipes) {
            let found = match target(&words) {
                Some(Target::Binary(bin, args)) => check_binary(bin, &args, helps),
                Some(Target::Script(script, args)) => check_script(root, &script, &args, helps),
                None => continue,
            };
            checked += 1;
            let command = words.join(" ");
            problems.extend(found.into_iter().map(|what| Problem {
                file: file.to_string(),
                line: shown.line,
                what: format!("`{command}`: {what}"),
            }));
        }
    }
    (problems, checked)
}

/// The page's relative links, checked.
pub fn check_page_links(root: &Path, page: &Path, file: &str, text: &str) -> Vec<Problem> {
    links::check_links(root, page, text).into_iter().map(|(line, what)| Problem { file: file.to_string(), line, what }).collect()
}
