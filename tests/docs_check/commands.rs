//! Whether a command line the docs show would still be accepted: for
//! `ddpm`, `ddpm-coord` and `ddpm-worker`, every subcommand and flag
//! against the (sub)command's `--help`; for the repository's scripts,
//! their flags against what the script parses (or, for a script that
//! hands `"$@"` to `ddpm-coord`, against `ddpm-coord` itself).

use std::collections::BTreeSet;
use std::path::Path;

use super::help::{Help, Helps};

/// The programs whose command lines are checked against their help.
pub const BINARIES: &[&str] = &["ddpm", "ddpm-coord", "ddpm-worker"];

/// What a command's first word runs.
#[derive(Debug, PartialEq)]
pub enum Target {
    /// One of [`BINARIES`], with the arguments after it.
    Binary(&'static str, Vec<String>),
    /// A script of the repository (path relative to its root), with its arguments.
    Script(String, Vec<String>),
}

/// Recognises a command of ours: a binary by name or by a path ending in
/// it (`target/release/ddpm`), `cargo run --bin NAME -- ARGS`, or a
/// repository path ending in `.sh` or `.py`. Other commands are not ours.
pub fn target(words: &[String]) -> Option<Target> {
    let first = words.first()?;
    let args = || clean(&words[1..]);
    let name = first.rsplit('/').next().unwrap_or(first);
    if let Some(bin) = BINARIES.iter().find(|b| **b == name) {
        return Some(Target::Binary(bin, args()));
    }
    if first == "cargo" && words.get(1).map(String::as_str) == Some("run") {
        let bin = words.windows(2).find(|w| w[0] == "--bin").map(|w| w[1].as_str())?;
        let bin = BINARIES.iter().find(|b| **b == bin)?;
        let after = words.iter().position(|w| w == "--").map_or(words.len(), |i| i + 1);
        return Some(Target::Binary(bin, clean(&words[after..])));
    }
    let path = first.trim_start_matches("./");
    if (path.ends_with(".sh") || path.ends_with(".py")) && path.contains('/') && !path.starts_with(['/', '$', '~']) {
        return Some(Target::Script(path.to_string(), args()));
    }
    None
}

/// Drops the usage notation prose uses (`[--json]`, `...`).
fn clean(words: &[String]) -> Vec<String> {
    words
        .iter()
        .map(|w| w.trim_start_matches('[').trim_end_matches(']').to_string())
        .filter(|w| !w.is_empty() && w != "..." && w != "…")
        .collect()
}

/// The problems of `program args`, each a sentence naming what no longer exists.
pub fn check_binary(program: &str, args: &[String], helps: &mut dyn Helps) -> Vec<String> {
    let mut problems = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut help = match helps.help(program, &path) {
        Ok(h) => h,
        Err(e) => return vec![e],
    };
    let mut positionals = 0usize;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let command = || format!("{program} {}", path.join(" ")).trim_end().to_string();
        if arg == "--" {
            break;
        } else if let Some(flag) = arg.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((n, _)) => (n, true),
                None => (flag, false),
            };
            // `--max-*` names a family of flags.
            let family = name.strip_suffix('*').is_some_and(|prefix| help.flags.keys().any(|f| f.starts_with(prefix)));
            match help.flags.get(name) {
                _ if family => {}
                Some(&takes_value) => i += usize::from(takes_value && !inline),
                None => {
                    problems.push(format!("--{name} is not an option of `{}` (see its --help)", command()));
                    // Its value, if it had one, is not a stray argument.
                    i += usize::from(!inline && args.get(i + 1).is_some_and(|v| !v.starts_with('-')));
                }
            }
        } else if is_short(arg) {
            i += short_flags(arg, &help, &command(), &mut problems);
        } else if !help.subcommands.is_empty() && positionals == 0 {
            if !help.subcommands.contains(arg) {
                problems.push(format!("`{arg}` is not a subcommand of `{}` (it has: {})", command(), help.subcommands.join(", ")));
                break;
            }
            path.push(arg.clone());
            help = match helps.help(program, &path) {
                Ok(h) => h,
                Err(e) => return vec![e],
            };
        } else {
            positionals += 1;
            if help.positionals.is_some_and(|max| positionals > max) {
                problems.push(format!("`{arg}`: `{}` takes no more arguments", command()));
            }
        }
        i += 1;
    }
    problems
}

/// `-x`, not a negative number.
fn is_short(arg: &str) -> bool {
    arg.len() >= 2 && arg.starts_with('-') && !arg[1..].starts_with(|c: char| c.is_ascii_digit() || c == '.')
}

/// Checks `-abc` / `-xVALUE`; returns 1 when the next word is its value.
fn short_flags(arg: &str, help: &Help, command: &str, problems: &mut Vec<String>) -> usize {
    let letters: Vec<char> = arg[1..].chars().collect();
    for (k, c) in letters.iter().enumerate() {
        match help.shorts.get(c) {
            Some(true) => return usize::from(k + 1 == letters.len()),
            Some(false) => {}
            None => {
                problems.push(format!("-{c} is not an option of `{command}` (see its --help)"));
                return 0;
            }
        }
    }
    0
}

/// The problems of `script args` (`script` relative to `root`).
pub fn check_script(root: &Path, script: &str, args: &[String], helps: &mut dyn Helps) -> Vec<String> {
    let text = match std::fs::read_to_string(root.join(script)) {
        Ok(t) => t,
        Err(e) => return vec![format!("{script}: no such script in the repository ({e})")],
    };
    if let Some((bin, own)) = forwards(&text) {
        let mut problems = check_binary(bin, args, helps);
        for arg in args.iter().filter_map(|a| a.strip_prefix("--")) {
            let name = arg.split('=').next().unwrap_or(arg);
            if own.contains(name) {
                problems.push(format!("{script} already passes --{name} to {bin} (a second one is refused)"));
            }
        }
        return problems;
    }
    let accepted = script_flags(&text);
    args.iter()
        .filter(|a| a.starts_with('-') && a.len() > 1)
        .map(|a| a.split('=').next().unwrap_or(a))
        .filter(|a| !accepted.contains(*a))
        .map(|a| format!("{script} does not accept {a} (it parses: {})", accepted.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect()
}

/// A script that hands its own arguments (`"$@"`) to one of our binaries:
/// that binary and the flags the script already passes it.
fn forwards(text: &str) -> Option<(&'static str, BTreeSet<String>)> {
    let joined = text.replace("\\\n", " ");
    for line in joined.lines().filter(|l| l.contains("\"$@\"")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (k, w) in words.iter().enumerate() {
            let name = w.trim_matches('"').rsplit('/').next().unwrap_or("");
            if let Some(bin) = BINARIES.iter().find(|b| **b == name) {
                let own = words[k + 1..].iter().filter_map(|w| w.strip_prefix("--")).map(str::to_string).collect();
                return Some((bin, own));
            }
        }
    }
    None
}

/// The flags a script parses: shell `case` patterns (`--steps)`,
/// `-h|--help)`) and Python `add_argument("--steps", ...)`.
fn script_flags(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if let Some((pattern, _)) = line.split_once(')') {
            if pattern.starts_with('-') && pattern.split('|').all(|p| p.starts_with('-') && !p.contains(' ')) {
                flags.extend(pattern.split('|').map(str::to_string));
            }
        }
        if line.contains("add_argument(") {
            for quoted in line.split(['"', '\'']).filter(|q| q.starts_with('-') && !q.contains(' ')) {
                flags.insert(quoted.to_string());
            }
        }
    }
    flags
}
