//! What a markdown page shows: the shell lines of its ```sh / ```bash /
//! ```console / ```shell blocks and of its one-line inline code spans,
//! its links, and its headings' anchors (as GitHub makes them).

/// A shell line the page shows, with the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub line: usize,
    pub text: String,
    /// In a code block `|` is a pipe; in prose, `a|b` means "a or b".
    pub pipes: bool,
}

/// A link's target as written, with its line.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub line: usize,
    pub target: String,
}

const SHELL_FENCES: &[&str] = &["sh", "bash", "shell", "console"];

/// Every shell line of the page: code-block lines (a `\\` at the end joins
/// the next; in a console block only `$ ` lines, the rest is output) and
/// inline spans of prose that start with a word of `programs`.
pub fn shell_lines(text: &str, programs: &[&str]) -> Vec<Shown> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    let mut pending: Option<Shown> = None;
    let mut paragraph: Vec<(usize, &str)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim_start();
        if fence.is_none() && !trimmed.starts_with("```") {
            if trimmed.is_empty() {
                out.extend(inline_commands(&std::mem::take(&mut paragraph), programs));
            } else {
                paragraph.push((line, raw));
            }
            continue;
        }
        if let Some(lang) = trimmed.strip_prefix("```") {
            out.extend(inline_commands(&std::mem::take(&mut paragraph), programs));
            fence = match fence {
                Some(_) => None,
                None => Some(lang.trim().to_string()),
            };
            continue;
        }
        let lang = fence.as_deref().unwrap_or("");
        if !SHELL_FENCES.contains(&lang) {
            continue;
        }
        let content = if lang == "console" {
            match (trimmed.strip_prefix("$ "), &pending) {
                (Some(cmd), _) => cmd,
                (None, Some(_)) => trimmed,
                (None, None) => continue,
            }
        } else {
            trimmed
        };
        let (body, continues) = match content.trim_end().strip_suffix('\\') {
            Some(body) => (body, true),
            None => (content, false),
        };
        let shown = pending.get_or_insert(Shown { line, text: String::new(), pipes: true });
        shown.text.push_str(body);
        shown.text.push(' ');
        if !continues {
            out.extend(pending.take());
        }
    }
    out.extend(inline_commands(&paragraph, programs));
    out.extend(pending);
    out
}

/// The inline code spans of a prose paragraph that start with one of
/// `programs`, each with the line it opens on (a span may wrap).
fn inline_commands(paragraph: &[(usize, &str)], programs: &[&str]) -> Vec<Shown> {
    spans(paragraph)
        .into_iter()
        .filter(|(_, span)| {
            let first = span.split_whitespace().next().unwrap_or("");
            programs.iter().any(|p| first == *p || first.ends_with(&format!("/{p}")))
        })
        // Tables escape `|` inside spans.
        .map(|(line, span)| Shown { line, text: span.replace("\\|", "|"), pipes: false })
        .collect()
}

/// The contents of the single-backtick code spans of a paragraph, line
/// breaks inside a span read as spaces.
fn spans(paragraph: &[(usize, &str)]) -> Vec<(usize, String)> {
    let mut text = String::new();
    let mut starts = Vec::new();
    for (line, raw) in paragraph {
        starts.push((text.len(), *line));
        text.push_str(raw);
        text.push('\n');
    }
    let line_at = |offset: usize| starts.iter().rev().find(|(s, _)| *s <= offset).map_or(0, |(_, l)| *l);
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(found) = text[pos..].find('`') {
        let start = pos + found;
        let ticks = text[start..].chars().take_while(|&c| c == '`').count();
        let inner = start + ticks;
        let close = "`".repeat(ticks);
        let Some(end) = text[inner..].find(&close) else {
            break;
        };
        if ticks == 1 {
            out.push((line_at(start), text[inner..inner + end].replace('\n', " ")));
        }
        pos = inner + end + ticks;
    }
    out
}

/// Every `[text](target)` and `![alt](target)` outside code blocks and spans.
pub fn links(text: &str) -> Vec<Link> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for (i, raw) in text.lines().enumerate() {
        if raw.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let prose = without_spans(raw);
        let mut rest = prose.as_str();
        while let Some(pos) = rest.find("](") {
            let after = &rest[pos + 2..];
            match after.find(')') {
                Some(end) => {
                    let target = after[..end].split_whitespace().next().unwrap_or("").to_string();
                    out.push(Link { line: i + 1, target });
                    rest = &after[end..];
                }
                None => break,
            }
        }
    }
    out
}

/// A line with its inline code spans blanked out.
fn without_spans(raw: &str) -> String {
    let mut out = String::new();
    for (i, part) in raw.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        } else {
            out.push(' ');
        }
    }
    out
}

/// The anchors of a page's headings, as GitHub makes them: lower case,
/// punctuation dropped, spaces to `-`, `-1`, `-2` ... for repeats.
pub fn anchors(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut in_fence = false;
    for raw in text.lines() {
        if raw.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !raw.starts_with('#') {
            continue;
        }
        let title = raw.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let repeats = seen.entry(slug.clone()).or_insert(0);
        out.push(if *repeats == 0 { slug } else { format!("{slug}-{repeats}") });
        *repeats += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# Title

Run `ddpm status --coord HOST:1 --json` or `cargo build`; see [the guide](docs/g.md#a-b) and
`[not a link](x.md)`.

```sh
# a comment line
ddpm-coord --workers 2 \\
    --seed 1
```

```console
$ ddpm model --preset tiny
params: 774531
```

```toml
[train]
```

## A, b!
## A, b!
";

    #[test]
    fn finds_block_lines_spans_links_and_anchors() {
        let shown = shell_lines(PAGE, &["ddpm", "ddpm-coord"]);
        let texts: Vec<(usize, &str)> = shown.iter().map(|s| (s.line, s.text.trim())).collect();
        assert_eq!(
            texts,
            vec![
                (3, "ddpm status --coord HOST:1 --json"),
                (7, "# a comment line"),
                (8, "ddpm-coord --workers 2  --seed 1"),
                (13, "ddpm model --preset tiny"),
            ]
        );
        assert_eq!(links(PAGE), vec![Link { line: 3, target: "docs/g.md#a-b".into() }]);
        assert_eq!(anchors(PAGE), vec!["title", "a-b", "a-b-1"]);
    }
}
