//! The alerts of `deploy/k8s/monitoring/prometheusrule.yaml` through
//! Prometheus' own tool (Debian's `prometheus` package has `promtool`;
//! `source deploy/env.sh && ddpm_setup_prometheus` installs it): the
//! PrometheusRule's groups written out as a rules file pass `promtool
//! check rules`, and the unit tests of `rules.test.yaml` (series that fire
//! each alert, and series that do not) pass `promtool test rules`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use common::k8s::{k8s_dir, on_path, yaml_docs};
use serde_json::Value;

/// promtool: DDPM_PROMTOOL, else the one on PATH.
fn promtool() -> PathBuf {
    std::env::var_os("DDPM_PROMTOOL").map(PathBuf::from).or_else(|| on_path("promtool")).unwrap_or_else(|| {
        panic!(
            "promtool is missing: the alert rules are checked with Prometheus' own tool. Install Debian's prometheus \
             package (`source deploy/env.sh && ddpm_setup_prometheus`), or point DDPM_PROMTOOL at a promtool"
        )
    })
}

/// The PrometheusRule's `spec` (its `groups`), which is a Prometheus rules file.
fn rule_groups() -> Value {
    let path = k8s_dir().join("monitoring/prometheusrule.yaml");
    let docs = yaml_docs(&std::fs::read_to_string(&path).unwrap(), "prometheusrule.yaml");
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").expect("a PrometheusRule");
    rule["spec"].clone()
}

fn alert_names(groups: &Value) -> BTreeSet<String> {
    groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let promtool = promtool();
    let dir = common::tempdir();
    let groups = rule_groups();
    // JSON is YAML: the groups as the operator hands them to Prometheus.
    std::fs::write(dir.path().join("rules.yaml"), serde_json::to_string_pretty(&groups).unwrap()).unwrap();
    std::fs::copy(k8s_dir().join("monitoring/rules.test.yaml"), dir.path().join("rules.test.yaml")).unwrap();

    let (ok, out) = run(Command::new(&promtool).current_dir(dir.path()).args(["check", "rules", "rules.yaml"]));
    assert!(ok, "promtool check rules:\n{out}");
    let alerts = alert_names(&groups);
    assert!(out.contains(&format!("SUCCESS: {} rules found", alerts.len())), "{out}");

    let (ok, out) = run(Command::new(&promtool).current_dir(dir.path()).args(["test", "rules", "rules.test.yaml"]));
    assert!(ok, "promtool test rules:\n{out}");

    // Every alert has a case where it fires and one where it does not.
    let tests = yaml_docs(&std::fs::read_to_string(dir.path().join("rules.test.yaml")).unwrap(), "rules.test.yaml");
    let cases: Vec<&Value> = tests[0]["tests"].as_array().unwrap().iter().flat_map(|t| t["alert_rule_test"].as_array().unwrap()).collect();
    let mut problems = Vec::new();
    for alert in &alerts {
        let mine: Vec<&&Value> = cases.iter().filter(|c| c["alertname"] == alert.as_str()).collect();
        let fires = mine.iter().any(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()));
        let quiet = mine.iter().any(|c| c["exp_alerts"].as_array().is_some_and(Vec::is_empty));
        if !(fires && quiet) {
            problems.push(format!("{alert}: rules.test.yaml needs a case where it fires ({fires}) and one where it does not ({quiet})"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn promtool_refuses_a_broken_rule() {
    // The check is real: a rule Prometheus cannot parse fails it.
    let dir = common::tempdir();
    let mut groups = rule_groups();
    groups["groups"][0]["rules"][0]["expr"] = "ddpm_checkpoint_failing ==".into();
    std::fs::write(dir.path().join("rules.yaml"), serde_json::to_string(&groups).unwrap()).unwrap();
    let (ok, out) = run(Command::new(promtool()).current_dir(dir.path()).args(["check", "rules", "rules.yaml"]));
    assert!(!ok, "promtool accepted a broken expression:\n{out}");
}
