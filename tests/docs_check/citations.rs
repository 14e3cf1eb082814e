//! The spec lives in the repository: no file may point outside it for the
//! spec, and every `docs/ddpm.md section N` citation must name a numbered
//! section of docs/ddpm.md.

use std::path::{Path, PathBuf};

use walkdir::WalkDir;

/// The old places of the spec, which no file may name (spelled in two
/// pieces so that this file does not name them either).
const GONE: &[&str] = &[concat!("..", "/shared/"), concat!("DDPM", ".md")];
const CITATION: &str = "docs/ddpm.md section";
const TEXT_EXTENSIONS: &[&str] = &["rs", "py", "sh", "proto", "md", "toml", "yaml", "yml", "html", "js", "css", "txt"];

/// The repository's text files (no build outputs, runs or hidden directories).
pub fn text_files(root: &Path) -> Vec<PathBuf> {
    WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            e.depth() == 0 || !(name.starts_with('.') || name == "target" || name == "runs" || name == "node_modules")
        })
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .filter(|p| p.extension().and_then(|x| x.to_str()).is_some_and(|x| TEXT_EXTENSIONS.contains(&x)))
        .collect()
}

/// The numbers of the `## N. Title` sections of the spec.
pub fn spec_sections(spec: &str) -> Vec<u32> {
    spec.lines().filter_map(|l| l.strip_prefix("## ")).filter_map(|t| t.split_once('.')).filter_map(|(n, _)| n.parse().ok()).collect()
}

/// The problems of one file's text: old spec places, and citations of
/// sections the spec does not have. Each with its 1-based line.
pub fn check_text(text: &str, sections: &[u32]) -> Vec<(usize, String)> {
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        for gone in GONE {
            if line.contains(gone) {
                problems.push((i + 1, format!("names {gone}: the spec is docs/ddpm.md")));
            }
        }
        let mut rest = line;
        while let Some(pos) = rest.find(CITATION) {
            rest = &rest[pos + CITATION.len()..];
            // "section N" with a number; prose about the citations themselves has none.
            for n in cited_sections(rest).into_iter().filter(|n| !sections.contains(n)) {
                problems.push((i + 1, format!("cites docs/ddpm.md section {n}, which does not exist")));
            }
        }
    }
    problems
}

/// `s 1-3 and 9)` -> 1, 2, 3, 9: the numbers after "section(s)".
fn cited_sections(after: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for word in after.trim_start_matches('s').split_whitespace() {
        if word == "and" {
            continue;
        }
        let word = word.trim_end_matches(|c: char| !c.is_ascii_digit());
        let (a, b) = word.split_once('-').unwrap_or((word, word));
        match (a.parse::<u32>(), b.parse::<u32>()) {
            (Ok(a), Ok(b)) if a <= b => out.extend(a..=b),
            _ => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_citations_and_flags_missing_sections() {
        let sections = spec_sections("# Spec\n\n## 1. One\n\n## 2. Two\n\n## 3. Three\n");
        assert_eq!(sections, vec![1, 2, 3]);
        assert!(check_text("// the bound (docs/ddpm.md sections 1-2 and 3), see docs/ddpm.md section 2.", &sections).is_empty());
        let problems = check_text("x\n// docs/ddpm.md section 7: Adam\n", &sections);
        assert_eq!(problems, vec![(2, "cites docs/ddpm.md section 7, which does not exist".to_string())]);
        let old = format!("see {}", GONE[0]);
        assert_eq!(check_text(&old, &sections).len(), 1);
    }
}
