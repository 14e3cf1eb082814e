//! What a (sub)command accepts, read from its clap `--help` text: its
//! flags (and whether each takes a value), its subcommands and how many
//! positional arguments it takes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

/// The interface of one command, as its help text describes it.
#[derive(Debug, Default, Clone)]
pub struct Help {
    /// Long flags without the dashes, and whether each takes a value.
    pub flags: HashMap<String, bool>,
    /// Short flags (the letter), and whether each takes a value.
    pub shorts: HashMap<char, bool>,
    pub subcommands: Vec<String>,
    /// Positional arguments; `None` when the last one repeats.
    pub positionals: Option<usize>,
}

impl Help {
    /// Parses clap's help output (short or long form).
    pub fn parse(text: &str) -> Help {
        let mut help = Help { positionals: Some(0), ..Help::default() };
        let mut section = "";
        for line in text.lines() {
            if !line.starts_with(' ') && line.ends_with(':') {
                section = line;
                continue;
            }
            let item = line.trim_start();
            let indent = line.len() - item.len();
            // clap puts flags at 2 (with a short form) or 6 columns;
            // their descriptions start further right.
            if item.starts_with('-') && indent <= 6 {
                help.add_flag(item);
            } else if section == "Commands:" && indent == 2 {
                if let Some(name) = item.split_whitespace().next() {
                    help.subcommands.push(name.to_string());
                }
            } else if section == "Arguments:" && indent == 2 && item.starts_with(['<', '[']) {
                let name = item.split_whitespace().next().unwrap_or("");
                help.positionals = match (help.positionals, name.ends_with("...")) {
                    (Some(n), false) => Some(n + 1),
                    _ => None,
                };
            }
        }
        help
    }

    /// `-s, --long <VALUE>`, `--long`, `-s`, `--long [<VALUE>]`.
    fn add_flag(&mut self, item: &str) {
        let mut rest = item;
        let mut short = None;
        if let Some(after) = rest.strip_prefix('-').filter(|r| !r.starts_with('-')) {
            short = after.chars().next().filter(char::is_ascii_alphanumeric);
            rest = after.get(1..).unwrap_or("").trim_start_matches(',').trim_start();
        }
        let mut long = None;
        if let Some(after) = rest.strip_prefix("--") {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).unwrap_or(after.len());
            long = Some(after[..end].to_string());
            rest = &after[end..];
        }
        let takes_value = rest.starts_with(" <") || rest.starts_with("=<") || rest.starts_with(" [<");
        if let Some(s) = short {
            self.shorts.insert(s, takes_value);
        }
        if let Some(l) = long.filter(|l| !l.is_empty()) {
            self.flags.insert(l, takes_value);
        }
    }
}

/// Where help texts come from: the real binaries, or made-up ones in tests.
pub trait Helps {
    /// The help of `program` (`ddpm`, `ddpm-coord`, `ddpm-worker`) with the
    /// subcommand path `path`, or why there is none.
    fn help(&mut self, program: &str, path: &[String]) -> Result<Help, String>;
}

/// Runs `BINARY [PATH...] --help` of the built binaries, once per command.
pub struct BinaryHelps {
    dir: PathBuf,
    cache: HashMap<(String, Vec<String>), Result<Help, String>>,
}

impl BinaryHelps {
    /// The binaries in `dir` (target/<profile>).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, cache: HashMap::new() }
    }
}

impl Helps for BinaryHelps {
    fn help(&mut self, program: &str, path: &[String]) -> Result<Help, String> {
        let key = (program.to_string(), path.to_vec());
        if let Some(found) = self.cache.get(&key) {
            return found.clone();
        }
        let bin = self.dir.join(program);
        let out = Command::new(&bin)
            .args(path)
            .arg("--help")
            // The help shows each flag's environment default; keep it quiet.
            .env("RUST_LOG", "error")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()));
        let result = out.and_then(|o| {
            if o.status.success() {
                Ok(Help::parse(&String::from_utf8_lossy(&o.stdout)))
            } else {
                Err(format!(
                    "`{program} {} --help` failed: {}",
                    path.join(" "),
                    String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or("")
                ))
            }
        });
        self.cache.insert(key, result.clone());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::Help;

    #[test]
    fn reads_flags_subcommands_and_arguments() {
        let help = Help::parse(
            "Submit jobs\n\nUsage: ddpm jobs [OPTIONS] <COMMAND>\n\nCommands:\n  submit-sample  Draw images\n  get            One job\n  help           Print this message\n\nArguments:\n  <ID>\n          The job's id\n\nOptions:\n      --coord <COORD>\n          The coordinator\n      --json\n          As JSON\n  -h, --help\n          Print help\n",
        );
        assert_eq!(help.subcommands, vec!["submit-sample", "get", "help"]);
        assert_eq!(help.flags.get("coord"), Some(&true));
        assert_eq!(help.flags.get("json"), Some(&false));
        assert_eq!(help.flags.get("help"), Some(&false));
        assert_eq!(help.shorts.get(&'h'), Some(&false));
        assert_eq!(help.positionals, Some(1));
    }
}
