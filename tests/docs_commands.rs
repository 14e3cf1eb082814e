//! The docs check: what README.md and docs/*.md show must still work.
//!
//! - Every command line they show (```sh/```bash/```console/```shell
//!   blocks, and inline code spans in prose) that runs `ddpm`,
//!   `ddpm-coord` or `ddpm-worker` uses subcommands and flags that the
//!   built binaries' `--help` still lists; scripts of the repository are
//!   given only flags they parse (`deploy/local-run.sh` hands its flags to
//!   `ddpm-coord`, so they are checked as `ddpm-coord`'s). Commands that
//!   would train for hours are not run: their `--help` is the contract.
//! - Every relative link of those pages points at a file that exists, and
//!   an anchor into a markdown page at one of its headings.
//! - No file of the repository names the spec's old place outside it, and
//!   every `docs/ddpm.md section N` citation names a section it has.
//!
//! A failure names the page, the line and what no longer exists. The
//! binaries come from `cargo build --workspace --bins` (tests/run.sh).

mod common;
mod docs_check;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use docs_check::citations::{check_text, spec_sections, text_files};
use docs_check::help::{BinaryHelps, Help, Helps};
use docs_check::{check_commands, check_page_links, pages, Problem};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

fn binaries() -> BinaryHelps {
    let ddpm = common::binary("ddpm");
    BinaryHelps::new(ddpm.parent().expect("target/<profile>").to_path_buf())
}

fn report(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
}

#[test]
fn every_documented_command_uses_subcommands_and_flags_that_exist() {
    let mut helps = binaries();
    let (mut problems, mut checked) = (Vec::new(), 0);
    for page in pages(&root()) {
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        let (found, n) = check_commands(&root(), &relative(&page), &text, &mut helps);
        problems.extend(found);
        checked += n;
    }
    assert!(problems.is_empty(), "the docs show commands the binaries no longer accept:\n{}", report(&problems));
    // A guard against an extractor that silently finds nothing.
    assert!(checked >= 40, "only {checked} command lines found in README.md and docs/");
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut problems = Vec::new();
    for page in pages(&root()) {
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        problems.extend(check_page_links(&root(), &page, &relative(&page), &text));
    }
    assert!(problems.is_empty(), "broken links:\n{}", report(&problems));
}

#[test]
fn the_spec_is_cited_in_the_repository_only() {
    let spec = std::fs::read_to_string(root().join("docs/ddpm.md")).expect("docs/ddpm.md");
    let sections = spec_sections(&spec);
    assert_eq!(sections, (1..=9).collect::<Vec<u32>>(), "docs/ddpm.md's numbered sections (the code cites them)");
    let mut problems = Vec::new();
    for file in text_files(&root()) {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        problems.extend(check_text(&text, &sections).into_iter().map(|(line, what)| Problem { file: relative(&file), line, what }));
    }
    assert!(problems.is_empty(), "spec citations:\n{}", report(&problems));
}

/// Made-up help texts, so that the checker itself is tested without binaries.
struct FakeHelps(HashMap<String, &'static str>);

impl Helps for FakeHelps {
    fn help(&mut self, program: &str, path: &[String]) -> Result<Help, String> {
        let key = std::iter::once(program.to_string()).chain(path.iter().cloned()).collect::<Vec<_>>().join(" ");
        self.0.get(&key).map(|t| Help::parse(t)).ok_or_else(|| format!("no help for {key}"))
    }
}

const MADE_UP_DOC: &str = "# A page

Start with `ddpm-coord --workers 2 --bogus-flag` or:

```sh
ddpm-coord --workers 2 --seed 1 \\
    --fresh --no-such-flag
ddpm jobs --coord h:1 submit-sample --count 3 --watch
ddpm jobs --coord h:1 submit-sampel --count 3
target/debug/ddpm jobs submit-sample --count 3 --cout 3
```
";

#[test]
fn the_checker_names_page_line_and_bogus_flag() {
    let mut helps = FakeHelps(HashMap::from([
        ("ddpm-coord".to_string(), "Options:\n      --workers <WORKERS>\n      --seed <SEED>\n      --fresh\n  -h, --help\n"),
        ("ddpm".to_string(), "Commands:\n  jobs  Jobs\n  help  Help\n\nOptions:\n  -h, --help\n"),
        ("ddpm jobs".to_string(), "Commands:\n  submit-sample  Draw\n\nOptions:\n      --coord <COORD>\n      --json\n"),
        ("ddpm jobs submit-sample".to_string(), "Options:\n      --count <COUNT>\n      --watch\n      --json\n"),
    ]));
    let (problems, checked) = check_commands(&root(), "made-up.md", MADE_UP_DOC, &mut helps);
    assert_eq!(checked, 5);
    let found: Vec<(usize, bool)> = problems
        .iter()
        .map(|p| {
            (
                p.line,
                p.what.contains("--bogus-flag")
                    || p.what.contains("--no-such-flag")
                    || p.what.contains("submit-sampel")
                    || p.what.contains("--cout"),
            )
        })
        .collect();
    assert_eq!(found, vec![(3, true), (6, true), (9, true), (10, true)], "{}", report(&problems));
    assert!(problems[0]
        .to_string()
        .starts_with("made-up.md:3: `ddpm-coord --workers 2 --bogus-flag`: --bogus-flag is not an option of `ddpm-coord`"));
}

#[test]
fn the_check_fails_on_a_bogus_flag_with_the_real_binaries() {
    let doc = "```sh\nddpm-coord --preset tiny --no-such-flag 1 --fresh\nddpm checkpoints lsit --run runs/x\nddpm status --coord h:1 --json\ndeploy/local-run.sh --steps 10 --run runs/x\n```\n";
    let (problems, checked) = check_commands(&root(), "made-up.md", doc, &mut binaries());
    assert_eq!(checked, 4);
    let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![2, 3, 5], "{}", report(&problems));
    assert!(problems[0].what.contains("--no-such-flag is not an option of `ddpm-coord`"), "{}", problems[0]);
    assert!(problems[1].what.contains("`lsit` is not a subcommand of `ddpm checkpoints`"), "{}", problems[1]);
    assert!(problems[2].what.contains("already passes --run to ddpm-coord"), "{}", problems[2]);
}

#[test]
fn a_broken_link_or_anchor_is_reported() {
    let dir = common::tempdir();
    std::fs::write(dir.path().join("other.md"), "# Other\n\n## A section\n").unwrap();
    let page = dir.path().join("page.md");
    let text = "See [other](other.md#a-section), [gone](gone.md) and [bad anchor](other.md#nope).\n\n```sh\n[not](a-link.md)\n```\n";
    let problems = check_page_links(dir.path(), &page, "page.md", text);
    let what: Vec<&str> = problems.iter().map(|p| p.what.as_str()).collect();
    assert_eq!(problems.len(), 2, "{what:?}");
    assert!(what[0].contains("gone.md") && what[0].contains("does not exist"));
    assert!(what[1].contains("no heading #nope"));
}
