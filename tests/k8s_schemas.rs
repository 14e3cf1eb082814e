//! What the API server would accept: every overlay (found under
//! `deploy/k8s/overlays`), the kits beside them (`deploy/k8s/kueue`,
//! `deploy/k8s/monitoring`) and the runbook's helper manifests
//! (`deploy/k8s/helpers`), rendered with `kubectl kustomize`. Built-in
//! objects, and the Jobs a JobSet will create, validate against the
//! Kubernetes 1.32 schemas (`kubernetes-validate --strict`); JobSet, Kueue
//! and Prometheus Operator objects against those projects' CRDs vendored
//! in `deploy/k8s/schemas` (`validate.py`: unknown fields refused), which
//! are the files the README there names (release, commit, SHA-256).
//!
//! Needs kubectl and the project's Python (`source deploy/env.sh &&
//! ddpm_setup`: kubernetes-validate, PyYAML and jsonschema).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::k8s::{binary_of, helpers, k8s_dir, overlays, python, render_dir, report, Render, BINARIES};
use serde_json::Value;

/// The Kubernetes version the manifests must be valid for (the runbook's minimum).
const KUBERNETES_VERSION: &str = "1.32.0";

/// The API groups whose objects are checked against the CRDs vendored in
/// deploy/k8s/schemas instead of Kubernetes' own schemas.
const CRD_GROUPS: [&str; 3] = ["jobset.x-k8s.io", "kueue.x-k8s.io", "monitoring.coreos.com"];

fn is_custom(doc: &Value) -> bool {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    CRD_GROUPS.iter().any(|g| api.starts_with(&format!("{g}/")))
}

/// The kustomizations applied beside the overlays: Kueue's queues and the alerts.
fn kits() -> &'static [Render] {
    static KITS: OnceLock<Vec<Render>> = OnceLock::new();
    KITS.get_or_init(|| ["kueue", "monitoring"].iter().map(|k| render_dir(&k8s_dir().join(k), k)).collect())
}

/// kubernetes-validate --strict of `docs` for Kubernetes 1.32; the problems.
fn validate_builtin(what: &str, docs: &[Value], dir: &Path) -> Option<String> {
    if docs.is_empty() {
        return None;
    }
    let file = dir.join(format!("{}.json-stream.yaml", what.replace('/', "_")));
    let yaml: Vec<String> = docs.iter().map(|d| serde_json::to_string(d).unwrap()).collect();
    std::fs::write(&file, yaml.join("\n---\n")).unwrap();
    let out = Command::new(python())
        .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", KUBERNETES_VERSION, "--quiet"])
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    (!out.status.success()).then(|| {
        format!(
            "{what}: kubernetes-validate --strict --kubernetes-version {KUBERNETES_VERSION} refused it (exit {:?}):\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// deploy/k8s/schemas/validate.py of `docs` against the vendored CRDs; the problems.
fn validate_custom(what: &str, docs: &[Value]) -> Option<String> {
    use std::io::Write;
    if docs.is_empty() {
        return None;
    }
    let schemas = k8s_dir().join("schemas");
    let mut child = Command::new(python())
        .arg(schemas.join("validate.py"))
        .arg(&schemas)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run validate.py");
    child.stdin.take().unwrap().write_all(&serde_json::to_vec(docs).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    (!out.status.success()).then(|| {
        format!(
            "{what}: refused by the vendored CRDs (validate.py):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn every_overlay_kit_and_helper_is_valid_for_kubernetes_1_32_and_its_crds() {
    let dir = common::tempdir();
    let mut problems = Vec::new();
    let helpers = helpers();
    for r in overlays().iter().chain(kits()).chain(&helpers) {
        let (custom, builtin): (Vec<Value>, Vec<Value>) = r.docs.iter().cloned().partition(is_custom);
        // A JobSet's Jobs are Jobs: Kubernetes' schema checks their specs
        // (the JobSet CRD's copy of the Job schema may lag behind).
        let mut builtin = builtin;
        for job in r.jobs.iter().filter(|j| j.get("jobset").is_some()) {
            let mut j = job.clone();
            j.as_object_mut().unwrap().remove("jobset");
            builtin.push(j);
        }
        problems.extend(validate_builtin(&r.name, &builtin, dir.path()));
        problems.extend(validate_custom(&r.name, &custom));
    }
    for r in overlays() {
        for binary in BINARIES {
            let n = r.ddpm_containers().iter().filter(|(_, c)| binary_of(c) == Some(binary)).count();
            if n != 1 {
                problems.push(format!("{}: {n} Jobs run {binary} (want one)", r.name));
            }
        }
    }
    report("manifests that Kubernetes 1.32 or their CRDs would refuse", problems);
}

/// `| `file` | project | release | commit | path | `sha256` |` rows of the schemas' README.
#[test]
fn the_vendored_crds_are_the_ones_their_readme_names() {
    use sha2::{Digest, Sha256};
    let dir = k8s_dir().join("schemas");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mut listed = BTreeMap::new();
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(|c| c.trim().trim_matches('`')).collect();
        listed.insert(cells[1].to_string(), cells[6].to_string());
    }
    let mut problems = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let have = format!("{:x}", Sha256::digest(std::fs::read(&path).unwrap()));
        match listed.remove(&file) {
            None => problems.push(format!("{file} is not in deploy/k8s/schemas/README.md (sha256 {have})")),
            Some(want) if want != have => problems.push(format!("{file}: sha256 {have}, the README says {want}: not the release's file")),
            Some(_) => {}
        }
    }
    problems.extend(listed.keys().map(|f| format!("deploy/k8s/schemas/README.md lists {f}, which is not there")));
    report("vendored CRDs", problems);
}
