//! Relative links of a page: the file must exist, and an anchor into a
//! markdown page must be one of its headings.

use std::path::Path;

use super::markdown::{anchors, links};

/// The problems of the links in `text`, the page at `page` (a file under `root`).
pub fn check_links(root: &Path, page: &Path, text: &str) -> Vec<(usize, String)> {
    let dir = page.parent().unwrap_or(root);
    let mut problems = Vec::new();
    for link in links(text) {
        let target = link.target.as_str();
        if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (file, anchor) = match target.split_once('#') {
            Some((f, a)) => (f, Some(a)),
            None => (target, None),
        };
        let resolved = if file.is_empty() { page.to_path_buf() } else { dir.join(file) };
        if !resolved.exists() {
            problems.push((link.line, format!("link to {target}: {} does not exist", resolved.display())));
            continue;
        }
        let Some(anchor) = anchor else { continue };
        if resolved.extension().and_then(|e| e.to_str()) != Some("md") {
            continue;
        }
        let page_text = std::fs::read_to_string(&resolved).unwrap_or_default();
        if !anchors(&page_text).iter().any(|a| a == anchor) {
            problems.push((link.line, format!("link to {target}: {} has no heading #{anchor}", resolved.display())));
        }
    }
    problems
}
