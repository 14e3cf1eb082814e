//! Rust source as the tokens the import graph needs: identifiers, `::`,
//! string literals (whole, quotes included: `#[path = "…"]` needs them)
//! and single punctuation, each with its line. Comments, other literals
//! and numbers are dropped, so that a path written in a comment or a
//! message is never taken for an import.

/// One token and the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct Tok {
    pub text: String,
    pub line: u32,
}

impl Tok {
    pub fn is(&self, s: &str) -> bool {
        self.text == s
    }

    /// An identifier or keyword (`crate`, `super`, `self` included).
    pub fn is_ident(&self) -> bool {
        self.text.starts_with(|c: char| c.is_alphabetic() || c == '_')
    }
}

/// The tokens of `src`. Raw identifiers (`r#type`) come out without `r#`.
pub fn tokens(src: &str) -> Vec<Tok> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut line = 1u32;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i = skip_block_comment(&chars, i, &mut line);
        } else if let Some(end) = raw_string_end(&chars, i, &mut line) {
            i = end;
        } else if c == '"' {
            // Kept as one token (quotes included): `#[path = "…"]` needs it.
            let (start_line, end) = (line, skip_string(&chars, i + 1, &mut line));
            out.push(Tok { text: chars[i..end.min(chars.len())].iter().collect(), line: start_line });
            i = end;
        } else if c == 'b' && next == Some('"') {
            i = skip_string(&chars, i + 2, &mut line);
        } else if c == 'b' && next == Some('\'') {
            i = skip_char(&chars, i + 1);
        } else if c == '\'' {
            i = skip_char_or_lifetime(&chars, i);
        } else if c == 'r' && next == Some('#') && chars.get(i + 2).is_some_and(|c| is_ident_start(*c)) {
            let (text, end) = ident(&chars, i + 2);
            out.push(Tok { text, line });
            i = end;
        } else if is_ident_start(c) {
            let (text, end) = ident(&chars, i);
            out.push(Tok { text, line });
            i = end;
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c == ':' && next == Some(':') {
            out.push(Tok { text: "::".into(), line });
            i += 2;
        } else {
            out.push(Tok { text: c.to_string(), line });
            i += 1;
        }
    }
    out
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn ident(chars: &[char], start: usize) -> (String, usize) {
    let mut end = start;
    while end < chars.len() && (chars[end].is_alphanumeric() || chars[end] == '_') {
        end += 1;
    }
    (chars[start..end].iter().collect(), end)
}

/// Block comments nest in Rust.
fn skip_block_comment(chars: &[char], start: usize, line: &mut u32) -> usize {
    let (mut i, mut depth) = (start + 2, 1);
    while i < chars.len() && depth > 0 {
        if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
        } else {
            if chars[i] == '\n' {
                *line += 1;
            }
            i += 1;
        }
    }
    i
}

/// The end of a raw string (`r"…"`, `r#"…"#`, `br#"…"#`) starting at
/// `start`, if one starts there.
fn raw_string_end(chars: &[char], start: usize, line: &mut u32) -> Option<usize> {
    let mut i = start;
    if chars.get(i) == Some(&'b') {
        i += 1;
    }
    if chars.get(i) != Some(&'r') || (start > 0 && is_ident_start(chars[start - 1])) {
        return None;
    }
    i += 1;
    let mut hashes = 0;
    while chars.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    if chars.get(i) != Some(&'"') {
        return None;
    }
    i += 1;
    while i < chars.len() {
        if chars[i] == '"' && (0..hashes).all(|h| chars.get(i + 1 + h) == Some(&'#')) {
            return Some(i + 1 + hashes);
        }
        if chars[i] == '\n' {
            *line += 1;
        }
        i += 1;
    }
    Some(i)
}

/// From just inside the opening quote to just past the closing one.
fn skip_string(chars: &[char], mut i: usize, line: &mut u32) -> usize {
    while i < chars.len() && chars[i] != '"' {
        if chars[i] == '\\' {
            i += 1;
        }
        if chars.get(i) == Some(&'\n') {
            *line += 1;
        }
        i += 1;
    }
    i + 1
}

/// A character literal at `start` (its opening quote): past its end.
fn skip_char(chars: &[char], start: usize) -> usize {
    let mut i = start + 1;
    if chars.get(i) == Some(&'\\') {
        i += 1;
    }
    i += 1;
    while i < chars.len() && chars[i] != '\'' {
        i += 1;
    }
    i + 1
}

/// `'a'` and `'\n'` are characters; `'a` (a lifetime or a label) is
/// dropped up to the end of its name.
fn skip_char_or_lifetime(chars: &[char], start: usize) -> usize {
    let escaped = chars.get(start + 1) == Some(&'\\');
    let closed = chars.get(start + 2) == Some(&'\'');
    if escaped || closed {
        return skip_char(chars, start);
    }
    let mut i = start + 1;
    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
        i += 1;
    }
    i
}
