//! The reader and the graph on small made-up crates: each fault caught
//! and named, and what is not an import left alone.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::faults;

/// The faults of a crate rooted at `lib.rs` made of `files` (path, text).
fn faults_of(files: &[(&str, &str)]) -> Vec<String> {
    let sources: BTreeMap<PathBuf, String> = files.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
    faults(&[PathBuf::from("lib.rs")], &sources)
}

#[test]
fn a_two_file_circle_is_named() {
    let faults = faults_of(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "use crate::b::Bee;\npub struct Ay;\n"),
        ("b.rs", "use crate::a::Ay;\npub struct Bee;\n"),
    ]);
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert!(faults[0].starts_with("circle: a.rs -> b.rs -> back"), "{}", faults[0]);
    assert!(faults[0].contains("a.rs:1 `crate::b::Bee` -> b.rs"), "{}", faults[0]);
}

#[test]
fn a_three_file_circle_through_code_paths_and_nested_modules_is_named() {
    let faults = faults_of(&[
        ("lib.rs", "mod jobs;\nmod status;\n"),
        ("jobs/mod.rs", "pub mod runners;\npub mod scheduler;\n"),
        ("jobs/scheduler.rs", "pub fn run() { super::runners::eval::go(); }\n"),
        ("jobs/runners/mod.rs", "pub mod eval;\n"),
        ("jobs/runners/eval.rs", "pub fn go() { let _ = crate::status::Status::new(); }\n"),
        ("status.rs", "use crate::jobs::scheduler;\npub struct Status;\nfn f() { scheduler::run() }\n"),
    ]);
    assert_eq!(faults.len(), 1, "{faults:?}");
    assert!(faults[0].starts_with("circle: jobs/runners/eval.rs -> status.rs -> jobs/scheduler.rs -> back"), "{}", faults[0]);
}

#[test]
fn importing_through_a_re_export_is_a_circle_and_from_the_defining_file_is_not() {
    let training = "mod step;\npub use step::Record;\nuse crate::status::Status;\n";
    let circle = faults_of(&[
        ("lib.rs", "mod status;\nmod training;\n"),
        ("training/mod.rs", training),
        ("training/step.rs", "pub struct Record;\n"),
        ("status.rs", "use crate::training::Record;\npub struct Status;\n"),
    ]);
    assert_eq!(circle.len(), 1, "{circle:?}");
    assert!(circle[0].starts_with("circle: status.rs -> training/mod.rs -> back"), "{}", circle[0]);

    let direct = faults_of(&[
        ("lib.rs", "mod status;\nmod training;\n"),
        ("training/mod.rs", &training.replace("mod step;", "pub mod step;")),
        ("training/step.rs", "pub struct Record;\n"),
        ("status.rs", "use crate::training::step::Record;\npub struct Status;\n"),
    ]);
    assert!(direct.is_empty(), "{direct:?}");
}

#[test]
fn a_child_importing_its_parent_is_upward_but_declaring_it_is_not_an_import() {
    let faults = faults_of(&[("lib.rs", "mod session;\npub struct Options;\n"), ("session.rs", "use crate::Options;\n")]);
    assert_eq!(faults, ["upward import: session.rs:1 `crate::Options` -> lib.rs"]);

    let faults = faults_of(&[
        ("lib.rs", "mod roster;\n"),
        ("roster/mod.rs", "mod members;\npub struct Roster;\n"),
        ("roster/members.rs", "pub fn f(r: &super::Roster) {}\n"),
    ]);
    assert_eq!(faults, ["upward import: roster/members.rs:1 `super::Roster` -> roster/mod.rs"]);
}

#[test]
fn an_acyclic_crate_passes() {
    let faults = faults_of(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\nuse a::Ay;\npub fn run() { b::go(); c::inner::f(); }\n"),
        ("a.rs", "use crate::b::{self, Bee};\npub struct Ay;\nfn f() { b::go() }\n"),
        ("b.rs", "use crate::c::inner;\npub struct Bee;\npub fn go() { inner::f() }\n"),
        ("c.rs", "pub mod inner { pub fn f() { super::g() } }\nfn g() {}\n"),
    ]);
    assert!(faults.is_empty(), "{faults:?}");
}

#[test]
fn comments_strings_tests_and_other_crates_are_not_imports() {
    let faults = faults_of(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        (
            "a.rs",
            concat!(
                "// use crate::b::Bee;\n/* crate::b::go() /* nested */ crate::b::go() */\n",
                "const S: &str = \"crate::b::go\";\nconst R: &str = r#\"crate::b::\"#;\n",
                "fn f<'a>(x: &'a str) -> char { let _ = ddpm::b::go; 'b' }\n",
                "#[cfg(test)]\nmod tests { use crate::b::Bee; use super::*; }\n",
                "#[cfg(test)]\nfn helper() { crate::b::go() }\n",
                "#[cfg(test)]\nmod more;\n",
            ),
        ),
        ("a/more.rs", "mod deeper;\nuse crate::b::Bee;\nuse super::f;\n"),
        ("a/more/deeper.rs", "use crate::b::Bee;\n"),
        ("b.rs", "use crate::a;\npub struct Bee;\npub fn go() {}\n"),
    ]);
    assert!(faults.is_empty(), "{faults:?}");
}

#[test]
fn a_module_without_a_file_is_named() {
    let faults = faults_of(&[("lib.rs", "mod gone;\n")]);
    assert_eq!(faults, ["lib.rs: `mod gone;` has no file (gone.rs or gone/mod.rs)"]);
}
