//! The Kubernetes manifests of `deploy/k8s`, rendered: `kubectl kustomize`
//! of an overlay and its documents as JSON (through the project Python's
//! PyYAML), with the Jobs its JobSets create, for the manifest checks and
//! for the tests that run the pods.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The binaries whose containers the tests run.
pub const BINARIES: [&str; 2] = ["ddpm-coord", "ddpm-worker"];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn k8s_dir() -> PathBuf {
    root().join("deploy/k8s")
}

/// An executable named `name` on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// kubectl: DDPM_KUBECTL, else the one on PATH, else /usr/bin/kubectl.
pub fn kubectl() -> PathBuf {
    static KUBECTL: OnceLock<PathBuf> = OnceLock::new();
    KUBECTL
        .get_or_init(|| {
            let found = std::env::var_os("DDPM_KUBECTL")
                .map(PathBuf::from)
                .or_else(|| on_path("kubectl"))
                .or_else(|| Some(PathBuf::from("/usr/bin/kubectl")).filter(|p| p.is_file()));
            let Some(k) = found else {
                panic!(
                    "kubectl is missing: the manifest test renders deploy/k8s with `kubectl kustomize`. Install kubectl \
                     1.32 or newer (kustomize is built in), or point DDPM_KUBECTL at one"
                )
            };
            assert!(k.is_file(), "DDPM_KUBECTL={} is not a file", k.display());
            k
        })
        .clone()
}

/// The project's Python (deploy/env.sh): DDPM_PYTHON, else $DDPM_VENV/bin/python,
/// else the default environment; it must have kubernetes-validate.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = std::env::var_os("DDPM_VENV")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ddpm/torch-2.11.0")));
            let py = std::env::var_os("DDPM_PYTHON")
                .map(PathBuf::from)
                .or_else(|| venv.map(|v| v.join("bin/python")))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| {
                    panic!("the project's Python environment is missing: run `source deploy/env.sh && ddpm_setup` (or set DDPM_PYTHON)")
                });
            let probe = Command::new(&py).args(["-c", "import kubernetes_validate, yaml"]).output().expect("run python");
            assert!(
                probe.status.success(),
                "{} lacks kubernetes-validate or PyYAML ({}): run `source deploy/env.sh && ddpm_setup`, which installs \
                 deploy/requirements-dev.txt",
                py.display(),
                String::from_utf8_lossy(&probe.stderr).trim()
            );
            py
        })
        .clone()
}

/// The overlay directories, sorted.
pub fn overlay_names() -> Vec<String> {
    let dir = k8s_dir().join("overlays");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no overlays under {}", dir.display());
    names
}

/// Every overlay, rendered once per test process.
pub fn overlays() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS.get_or_init(|| overlay_names().into_iter().map(|n| render(&n)).collect())
}

/// The runbook's helper objects (deploy/k8s/helpers/*.yaml), as one render per file.
pub fn helpers() -> Vec<Render> {
    let dir = k8s_dir().join("helpers");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "yaml")).collect();
    files.sort();
    assert!(!files.is_empty(), "no helper manifests in {}", dir.display());
    files
        .iter()
        .map(|f| Render::of(&format!("helpers/{}", f.file_name().unwrap().to_string_lossy()), std::fs::read_to_string(f).unwrap()))
        .collect()
}

/// Panics with every problem at once, or returns.
pub fn report(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n\n{}", problems.join("\n\n"));
}

/// One kustomization, rendered.
pub struct Render {
    pub name: String,
    /// `kubectl kustomize` output.
    pub yaml: String,
    /// Its documents, as JSON.
    pub docs: Vec<Value>,
    /// The Jobs the cluster will run: the rendered Jobs, and those a
    /// JobSet creates (one per replicated Job and replica, named
    /// `<jobset>-<replicatedJob>-<index>` as the JobSet controller names
    /// them, with the replicated Job's template, and a field `jobset`
    /// naming their JobSet and replicated Job).
    pub jobs: Vec<Value>,
}

impl Render {
    /// A render of `yaml`, called `name` in messages.
    pub fn of(name: &str, yaml: String) -> Render {
        let docs = yaml_docs(&yaml, name);
        let mut jobs: Vec<Value> = docs.iter().filter(|d| d["kind"] == "Job").cloned().collect();
        for js in docs.iter().filter(|d| d["kind"] == "JobSet") {
            let js_name = js["metadata"]["name"].as_str().unwrap_or("?");
            for rj in js["spec"]["replicatedJobs"].as_array().into_iter().flatten() {
                let rj_name = rj["name"].as_str().unwrap_or("?");
                for index in 0..rj["replicas"].as_u64().unwrap_or(1) {
                    jobs.push(serde_json::json!({
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "metadata": {
                            "name": format!("{js_name}-{rj_name}-{index}"),
                            "labels": rj["template"]["metadata"]["labels"].clone(),
                        },
                        "spec": rj["template"]["spec"].clone(),
                        "jobset": { "name": js_name, "replicatedJob": rj_name },
                    }));
                }
            }
        }
        Render { name: name.to_string(), yaml, docs, jobs }
    }

    pub fn all(&self, kind: &str) -> impl Iterator<Item = &Value> {
        let kind = kind.to_string();
        self.docs.iter().filter(move |d| d["kind"] == kind.as_str())
    }

    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.all(kind).find(|d| d["metadata"]["name"] == name)
    }

    /// Every Job's containers that run one of the binaries: (job, container).
    pub fn ddpm_containers(&self) -> Vec<(&Value, &Value)> {
        let mut out = Vec::new();
        for job in &self.jobs {
            for c in job["spec"]["template"]["spec"]["containers"].as_array().into_iter().flatten() {
                if binary_of(c).is_some() {
                    out.push((job, c));
                }
            }
        }
        out
    }

    /// The Job whose containers run `binary`.
    pub fn job_running(&self, binary: &str) -> &Value {
        let jobs: Vec<&Value> = self.ddpm_containers().into_iter().filter(|(_, c)| binary_of(c) == Some(binary)).map(|(j, _)| j).collect();
        assert_eq!(jobs.len(), 1, "{}: expected exactly one Job running {binary}, found {}", self.name, jobs.len());
        jobs[0]
    }
}

/// `ddpm-coord` or `ddpm-worker` when the container's command is that binary.
pub fn binary_of(container: &Value) -> Option<&'static str> {
    let cmd = container["command"].get(0)?.as_str()?;
    let base = cmd.rsplit('/').next()?;
    BINARIES.into_iter().find(|b| *b == base)
}

/// The overlay `deploy/k8s/overlays/NAME`, rendered.
pub fn render(name: &str) -> Render {
    render_dir(&k8s_dir().join("overlays").join(name), name)
}

/// The kustomization in `dir`, rendered (`name` in messages).
pub fn render_dir(dir: &Path, name: &str) -> Render {
    let out = Command::new(kubectl()).arg("kustomize").arg(dir).output().expect("run kubectl");
    assert!(out.status.success(), "`kubectl kustomize {}` failed:\n{}", dir.display(), String::from_utf8_lossy(&out.stderr));
    Render::of(name, String::from_utf8(out.stdout).expect("UTF-8 manifests"))
}

/// Whether the Python regular expression `pattern` matches somewhere in
/// `text` (JobSet's message patterns are RE2; for plain text with
/// escapes, as used here, both read the same).
pub fn regex_search(pattern: &str, text: &str) -> bool {
    let out = Command::new(python())
        .args(["-c", "import re, sys\nsys.exit(0 if re.search(sys.argv[1], sys.argv[2]) else 1)", pattern, text])
        .output()
        .expect("run python");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("bad pattern {pattern:?}: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// The message the Job controller puts on a Job that its podFailurePolicy
/// failed (pkg/controller/job: "Container %s for pod %s/%s failed with exit
/// code %d matching FailJob rule at index %d"), for exit `code` of the
/// replicated Job `rj`'s container; None when no FailJob rule matches.
pub fn failjob_message(rj: &Value, code: u64) -> Option<String> {
    let spec = &rj["template"]["spec"];
    let container = spec["template"]["spec"]["containers"][0]["name"].as_str()?;
    let index = spec["podFailurePolicy"]["rules"].as_array()?.iter().position(|r| {
        r["onExitCodes"]["values"].as_array().is_some_and(|v| v.contains(&code.into())) && r["onExitCodes"]["operator"] == "In"
    })?;
    (spec["podFailurePolicy"]["rules"][index]["action"] == "FailJob").then(|| {
        format!(
            "Container {container} for pod ns/{}-0-0-x7k2q failed with exit code {code} matching FailJob rule at index {index}",
            rj["name"].as_str().unwrap_or("?")
        )
    })
}

/// The action the JobSet's failurePolicy takes for a child Job that failed
/// with `reason` and `message`: its first matching rule's, else RestartJobSet.
pub fn jobset_action(js: &Value, rj_name: &str, reason: &str, message: &str) -> String {
    for rule in js["spec"]["failurePolicy"]["rules"].as_array().into_iter().flatten() {
        let targets: Vec<&str> = rule["targetReplicatedJobs"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let reasons: Vec<&str> = rule["onJobFailureReasons"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let patterns: Vec<&str> = rule["onJobFailureMessagePatterns"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if (targets.is_empty() || targets.contains(&rj_name))
            && (reasons.is_empty() || reasons.contains(&reason))
            && (patterns.is_empty() || patterns.iter().any(|p| regex_search(p, message)))
        {
            return rule["action"].as_str().unwrap_or("?").to_string();
        }
    }
    "RestartJobSet".into()
}

/// Whether `selector` (a Service's label map, or a LabelSelector with
/// matchLabels and matchExpressions) selects a pod labelled `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let map = |m: &Value| m.as_object().into_iter().flatten().all(|(k, v)| &labels[k] == v);
    if selector.get("matchLabels").is_none() && selector.get("matchExpressions").is_none() {
        return map(selector);
    }
    let exprs = selector["matchExpressions"].as_array().into_iter().flatten().all(|e| {
        let have = labels.get(e["key"].as_str().unwrap_or_default());
        let values: Vec<&Value> = e["values"].as_array().into_iter().flatten().collect();
        match e["operator"].as_str() {
            Some("In") => have.is_some_and(|h| values.contains(&h)),
            Some("NotIn") => !have.is_some_and(|h| values.contains(&h)),
            Some("Exists") => have.is_some(),
            Some("DoesNotExist") => have.is_none(),
            other => panic!("unknown selector operator {other:?}"),
        }
    });
    map(&selector["matchLabels"]) && exprs
}

/// The YAML documents as JSON values, through PyYAML.
pub fn yaml_docs(yaml: &str, what: &str) -> Vec<Value> {
    use std::io::Write;
    let mut child = Command::new(python())
        .args(["-c", "import json, sys, yaml\njson.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what}: the rendered YAML does not parse:\n{}", String::from_utf8_lossy(&out.stderr));
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(docs) => docs,
        other => panic!("{what}: not a list of documents: {other}"),
    }
}

/// Kubernetes' `$(VAR)` expansion (`$$` for a literal `$`); unknown
/// variables stay as written.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let var = &tail[2..2 + end];
            match env.iter().rev().find(|(k, _)| k == var) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..3 + end]),
            }
            rest = &tail[3 + end..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A quantity as a number: CPU in millicores, anything else in units.
pub fn quantity(v: &Value, cpu: bool) -> Option<f64> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let scale = if cpu { 1000.0 } else { 1.0 };
    for (suffix, mult) in [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ] {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|x| x * mult * scale);
        }
    }
    s.parse::<f64>().ok().map(|x| x * scale)
}

/// What a `resourceFieldRef` gives: the quantity divided by the divisor, rounded up.
pub fn resource_field(c: &Value, res: &Value) -> Result<String, String> {
    let resource = res["resource"].as_str().unwrap_or_default();
    let (section, name) = resource.split_once('.').ok_or_else(|| format!("resourceFieldRef {resource:?}"))?;
    let cpu = name == "cpu";
    let have = quantity(&c["resources"][section][name], cpu)
        .ok_or_else(|| format!("resourceFieldRef {resource}: the container sets no resources.{section}.{name}"))?;
    let divisor = quantity(res.get("divisor").unwrap_or(&Value::String("1".into())), cpu).unwrap_or(1.0);
    Ok(format!("{}", (have / divisor).ceil() as u64))
}
