//! Shell lines as the docs show them, cut into simple commands: enough of
//! the shell's grammar for what a reader would paste (quotes, `\` line
//! continuations, comments, `&&`, `||`, `;`, `|`, `VAR=value` prefixes),
//! not a shell. Substitutions like `$(openssl rand -hex 32)` stay one word.

/// One simple command: its words, quotes removed.
pub type Words = Vec<String>;

/// The simple commands of one shell line (continuations already joined).
/// `pipes`: whether `|` separates commands (in a code block) or is part
/// of a word (in prose, where `f32|bf16` means "one of").
pub fn commands(line: &str, pipes: bool) -> Vec<Words> {
    let mut out = Vec::new();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    let mut parens = 0usize;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else {
                word.push(c);
            }
            continue;
        }
        match c {
            '\'' | '"' if parens == 0 => {
                quote = Some(c);
                in_word = true;
            }
            '(' if word.ends_with('$') || parens > 0 => {
                parens += 1;
                word.push(c);
            }
            ')' if parens > 0 => {
                parens -= 1;
                word.push(c);
            }
            _ if parens > 0 => word.push(c),
            '#' if !in_word => break,
            ' ' | '\t' => end_word(&mut words, &mut word, &mut in_word),
            ';' | '&' => {
                end_word(&mut words, &mut word, &mut in_word);
                if c == '&' && chars.peek() == Some(&'&') {
                    chars.next();
                }
                end_command(&mut out, &mut words);
            }
            '|' if pipes => {
                end_word(&mut words, &mut word, &mut in_word);
                if chars.peek() == Some(&'|') {
                    chars.next();
                }
                end_command(&mut out, &mut words);
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    end_word(&mut words, &mut word, &mut in_word);
    end_command(&mut out, &mut words);
    out
}

fn end_word(words: &mut Words, word: &mut String, in_word: &mut bool) {
    if *in_word {
        words.push(std::mem::take(word));
    }
    *in_word = false;
}

/// Ends a command, dropping its leading `VAR=value` assignments and an
/// `export` (whose words are all assignments).
fn end_command(out: &mut Vec<Words>, words: &mut Words) {
    let mut cmd: Words = std::mem::take(words);
    if cmd.first().map(String::as_str) == Some("export") {
        return;
    }
    let assignments = cmd.iter().take_while(|w| is_assignment(w)).count();
    cmd.drain(..assignments);
    if !cmd.is_empty() {
        out.push(cmd);
    }
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::commands;

    fn check(line: &str, pipes: bool, want: &[&[&str]]) {
        let want: Vec<Vec<String>> = want.iter().map(|c| c.iter().map(|w| w.to_string()).collect()).collect();
        assert_eq!(commands(line, pipes), want, "{line}");
    }

    #[test]
    fn splits_operators_and_drops_comments_and_assignments() {
        check(
            "source deploy/env.sh && ddpm_setup && A=1 ddpm model --preset tiny   # a comment",
            true,
            &[&["source", "deploy/env.sh"], &["ddpm_setup"], &["ddpm", "model", "--preset", "tiny"]],
        );
        check(
            "ddpm checkpoints list --json | python3 -c 'x | y'",
            true,
            &[&["ddpm", "checkpoints", "list", "--json"], &["python3", "-c", "x | y"]],
        );
        check("ddpm-coord --grad-dtype f32|bf16", false, &[&["ddpm-coord", "--grad-dtype", "f32|bf16"]]);
    }

    #[test]
    fn keeps_substitutions_whole_and_skips_exports() {
        check("export T=$(openssl rand -hex 32) U=$(openssl rand -hex 32)", true, &[]);
        check("ddpm-coord --run \"runs/a b\" --seed $(echo 1)", true, &[&["ddpm-coord", "--run", "runs/a b", "--seed", "$(echo 1)"]]);
    }
}
