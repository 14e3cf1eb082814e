//! What the runbook (`deploy/README.md`) promises about the manifests: it
//! lists what each overlay creates, applies no manifest the tests do not
//! check (its helper pods are files under `deploy/k8s/helpers`), and every
//! pod it has created (the runs' Jobs, the JobSets' Jobs, the helpers)
//! passes the restricted Pod Security Standard, so a namespace that
//! enforces it runs them.
//!
//! Needs kubectl and the project's Python, as tests/k8s_manifests.rs.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::k8s::{helpers, overlays, report, root};
use common::pss;
use serde_json::Value;

/// Every pod the manifests and the runbook create (the Jobs', the JobSets'
/// and the helper pods), against the restricted Pod Security Standard.
#[test]
fn every_pod_passes_the_restricted_pod_security_standard() {
    let mut problems = Vec::new();
    let mut checked = 0;
    let helpers = helpers();
    for r in overlays().iter().chain(&helpers) {
        let pods = r
            .all("Pod")
            .map(|p| (format!("Pod/{}", p["metadata"]["name"].as_str().unwrap_or("?")), &p["spec"], &p["metadata"]["annotations"]));
        let templates = r.jobs.iter().map(|j| {
            let t = &j["spec"]["template"];
            (format!("Job/{}", j["metadata"]["name"].as_str().unwrap_or("?")), &t["spec"], &t["metadata"]["annotations"])
        });
        for (what, spec, annotations) in pods.chain(templates) {
            checked += 1;
            for v in pss::restricted_violations(spec, annotations) {
                problems.push(format!("{}: {what}: {v}", r.name));
            }
        }
    }
    assert!(checked > overlays().len() * 2, "only {checked} pods checked");
    report("pods a namespace enforcing the restricted Pod Security Standard would refuse", problems);
}

#[test]
fn the_restricted_check_refuses_what_the_standard_refuses() {
    let ok = serde_json::json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
        "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "x"}}]
    });
    assert_eq!(pss::restricted_violations(&ok, &Value::Null), Vec::<String>::new());
    // The runbook's helper pods as they were: a pod security context of
    // user and group, no container security context.
    let old = serde_json::json!({
        "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
        "containers": [{"name": "loader", "image": "busybox:1.36"}]
    });
    let v = pss::restricted_violations(&old, &Value::Null);
    for control in ["privilege escalation", "running as non-root:", "seccomp", "capabilities"] {
        assert!(v.iter().any(|p| p.starts_with(control)), "{control} not reported: {v:?}");
    }
    assert_eq!(v.len(), 4, "{v:?}");
    let mut bad = ok.clone();
    bad["hostNetwork"] = true.into();
    bad["volumes"] = serde_json::json!([{"name": "h", "hostPath": {"path": "/"}}]);
    bad["containers"][0]["securityContext"]["capabilities"]["add"] = serde_json::json!(["SYS_ADMIN"]);
    bad["containers"][0]["ports"] = serde_json::json!([{"containerPort": 80, "hostPort": 80}]);
    let v = pss::restricted_violations(&bad, &Value::Null);
    for control in ["host namespaces", "HostPath volumes", "volume types", "capabilities: c adds SYS_ADMIN", "host ports"] {
        assert!(v.iter().any(|p| p.starts_with(control)), "{control} not reported: {v:?}");
    }
}

/// `Kind/name`, with a generated ConfigMap's or Secret's hash suffix as `<hash>`.
fn resource_id(doc: &Value) -> String {
    let kind = doc["kind"].as_str().unwrap_or("?");
    let mut name = doc["metadata"]["name"].as_str().unwrap_or("?").to_string();
    if kind == "ConfigMap" || kind == "Secret" {
        if let Some((stem, suffix)) = name.rsplit_once('-') {
            if suffix.len() == 10
                && suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && suffix.bytes().any(|b| b.is_ascii_digit())
            {
                name = format!("{stem}-<hash>");
            }
        }
    }
    format!("{kind}/{name}")
}

/// The lists in deploy/README.md: `<!-- resources: OVERLAY -->`, then
/// every `Kind/name` in backquotes up to `<!-- /resources -->`.
fn runbook_lists() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("deploy/README.md")).expect("deploy/README.md");
    let mut lists = BTreeMap::new();
    let mut current: Option<(String, BTreeSet<String>)> = None;
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("<!-- resources:") {
            current = Some((rest.trim_end_matches("-->").trim().to_string(), BTreeSet::new()));
        } else if l.starts_with("<!-- /resources") {
            if let Some((name, set)) = current.take() {
                lists.insert(name, set);
            }
        } else if let Some((_, set)) = current.as_mut() {
            set.extend(l.split('`').skip(1).step_by(2).filter(|item| item.contains('/')).map(str::to_string));
        }
    }
    lists
}

#[test]
fn the_runbook_lists_what_each_overlay_creates() {
    let lists = runbook_lists();
    let mut problems = Vec::new();
    for r in overlays() {
        let have: BTreeSet<String> = r.docs.iter().map(resource_id).collect();
        match lists.get(&r.name) {
            None => problems.push(format!(
                "deploy/README.md has no list for overlay {} (`<!-- resources: {} -->`, lines \"- `Kind/name`\", `<!-- /resources -->`); \
                 it renders: {}",
                r.name,
                r.name,
                have.iter().cloned().collect::<Vec<_>>().join(", ")
            )),
            Some(listed) if *listed != have => problems.push(format!(
                "deploy/README.md's list for overlay {} is out of date: listed but not rendered: {:?}; rendered but not listed: {:?}",
                r.name,
                listed.difference(&have).collect::<Vec<_>>(),
                have.difference(listed).collect::<Vec<_>>()
            )),
            Some(_) => {}
        }
    }
    for name in lists.keys() {
        if !overlays().iter().any(|r| &r.name == name) {
            problems.push(format!("deploy/README.md lists resources for {name}, which is no overlay"));
        }
    }
    report("the runbook's resource lists", problems);
}

/// The runbook creates pods only from the checked helper files: no
/// manifest of a pod (or a Job) written out in its text, and every helper
/// file it applies exists.
#[test]
fn the_runbook_applies_only_checked_manifests() {
    let text = std::fs::read_to_string(root().join("deploy/README.md")).expect("deploy/README.md");
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if ["kind: Pod", "kind: Job", "kind: Deployment", "kind: StatefulSet"].iter().any(|k| l.starts_with(k)) {
            problems.push(format!(
                "deploy/README.md:{}: a manifest in the text ({l}): put it in deploy/k8s/helpers, where the tests check it",
                i + 1
            ));
        }
        for word in l.split(|c: char| c.is_whitespace() || c == '`').filter(|w| w.starts_with("deploy/k8s/helpers/")) {
            if !root().join(word).is_file() {
                problems.push(format!("deploy/README.md:{}: {word} does not exist", i + 1));
            }
        }
    }
    for h in helpers() {
        let path = format!("deploy/k8s/{}", h.name);
        if !text.contains(&path) {
            problems.push(format!("{path} is not used in deploy/README.md"));
        }
    }
    report("the runbook's manifests", problems);
}
