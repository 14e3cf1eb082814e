//! The Kubernetes manifests (`deploy/k8s`) as CI sees them. For every
//! overlay directory under `deploy/k8s/overlays` (found, not listed), the
//! kits beside them (`deploy/k8s/kueue`, `deploy/k8s/monitoring`) and the
//! runbook's helper manifests (`deploy/k8s/helpers`):
//!
//! - it renders with `kubectl kustomize`; its built-in objects (and the
//!   Jobs inside a JobSet) validate against the Kubernetes 1.32 schemas
//!   (`kubernetes-validate --strict`), its JobSet, Kueue and Prometheus
//!   Operator objects against those projects' CRDs vendored in
//!   `deploy/k8s/schemas` (`validate.py`), which are the files their README
//!   names;
//! - the committed render `deploy/k8s/rendered/<overlay>.yaml` is what it
//!   renders to now (`deploy/k8s/render.sh` writes them);
//! - the real `ddpm-coord` and `ddpm-worker` accept each container's
//!   command line (`--check-config`), run with the container's environment
//!   and with its ConfigMaps and Secrets written to a temporary directory;
//! - the world size is set once (the worker Job's parallelism is its
//!   completions and the coordinator's DDPM_WORKERS), `--threads` is each
//!   container's CPU limit, the Jobs keep to the failure and deadline
//!   rules, and every pod (the runs' and the helpers') passes the
//!   restricted Pod Security Standard;
//! - `deploy/README.md` lists the objects each overlay creates and applies
//!   only checked manifests.
//!
//! Needs kubectl (with kustomize built in; DDPM_KUBECTL picks one) and the
//! project's Python environment (`source deploy/env.sh && ddpm_setup`,
//! which installs kubernetes-validate and PyYAML from
//! deploy/requirements-dev.txt). How the objects refer to each other is
//! tests/k8s_wiring.rs.
//!
//! One concept (what CI knows about each manifest without a cluster) in
//! one file over 450 lines: the checks share one render of every overlay.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::k8s::{binary_of, expand, k8s_dir, python, quantity, render, render_dir, resource_field, root, Render, BINARIES};
use common::pss;
use serde_json::Value;

/// The Kubernetes version the manifests must be valid for (the runbook's minimum).
const KUBERNETES_VERSION: &str = "1.32.0";

/// The overlay directories, sorted.
fn overlay_names() -> Vec<String> {
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

/// Every overlay rendered once per test process.
fn renders() -> &'static [Render] {
    static RENDERS: OnceLock<Vec<Render>> = OnceLock::new();
    RENDERS.get_or_init(|| overlay_names().into_iter().map(|n| render(&n)).collect())
}

/// The workspace version (Cargo.toml), the image's tag.
fn workspace_version() -> String {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    doc["workspace"]["package"]["version"].as_str().expect("workspace.package.version").to_string()
}

/// Panics with every problem at once, or returns.
fn report(what: &str, problems: Vec<String>) {
    assert!(problems.is_empty(), "{what}:\n\n{}", problems.join("\n\n"));
}

// ---------------------------------------------------------------------------
// Rendering, schemas, committed renders.

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

/// The runbook's helper objects (deploy/k8s/helpers/*.yaml), as one render per file.
fn helpers() -> Vec<Render> {
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
    for r in renders().iter().chain(kits()).chain(&helpers) {
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
    for r in renders() {
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

/// What deploy/k8s/render.sh writes for an overlay.
fn committed_form(r: &Render) -> String {
    format!(
        "# Generated by deploy/k8s/render.sh from deploy/k8s/overlays/{}: do not edit.\n\
         # tests/k8s_manifests.rs fails when this differs from a fresh render.\n{}",
        r.name, r.yaml
    )
}

#[test]
fn committed_renders_match_a_fresh_render() {
    let dir = k8s_dir().join("rendered");
    let mut problems = Vec::new();
    for r in renders() {
        let path = dir.join(format!("{}.yaml", r.name));
        let want = committed_form(r);
        match std::fs::read_to_string(&path) {
            Err(_) => problems.push(format!(
                "overlay {}: deploy/k8s/rendered/{}.yaml is missing: run deploy/k8s/render.sh and commit the result",
                r.name, r.name
            )),
            Ok(have) if have != want => {
                let line =
                    have.lines().zip(want.lines()).position(|(a, b)| a != b).unwrap_or(have.lines().count().min(want.lines().count()));
                problems.push(format!(
                    "overlay {}: deploy/k8s/rendered/{}.yaml differs from a fresh `kubectl kustomize deploy/k8s/overlays/{}` \
                     (first at line {}: committed {:?}, now {:?}): run deploy/k8s/render.sh and commit the result",
                    r.name,
                    r.name,
                    r.name,
                    line + 1,
                    have.lines().nth(line).unwrap_or("<end>"),
                    want.lines().nth(line).unwrap_or("<end>")
                ));
            }
            Ok(_) => {}
        }
    }
    let known: BTreeSet<String> = renders().iter().map(|r| format!("{}.yaml", r.name)).collect();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if file.ends_with(".yaml") && !known.contains(&file) {
            problems.push(format!("deploy/k8s/rendered/{file} has no overlay: run deploy/k8s/render.sh (it removes it)"));
        }
    }
    report("renders out of date", problems);
}

// ---------------------------------------------------------------------------
// A container's command line as the kubelet would run it.

/// The environment a container gets, with dummy values where the cluster
/// supplies them (Secrets, the pod's name).
fn container_env(r: &Render, c: &Value) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let configmap = |name: &str| r.find("ConfigMap", name);
    for from in c["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = from["configMapRef"]["name"].as_str() {
            let cm = configmap(name).ok_or_else(|| format!("envFrom names ConfigMap {name}, which the overlay does not render"))?;
            let prefix = from["prefix"].as_str().unwrap_or("");
            for (k, v) in cm["data"].as_object().into_iter().flatten() {
                env.push((format!("{prefix}{k}"), v.as_str().unwrap_or_default().to_string()));
            }
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().ok_or("an env entry without a name")?.to_string();
        let value = if let Some(v) = e.get("value") {
            expand(v.as_str().unwrap_or_default(), &env)
        } else if let Some(f) = e["valueFrom"].as_object() {
            if let Some(field) = f.get("fieldRef") {
                match field["fieldPath"].as_str() {
                    Some("metadata.name") => "ddpm-worker-0-check".to_string(),
                    Some("metadata.namespace") => "default".to_string(),
                    Some("status.podIP") => "10.0.0.7".to_string(),
                    _ => "dummy".to_string(),
                }
            } else if let Some(s) = f.get("secretKeyRef") {
                if s["optional"] == true {
                    // An optional key the Secret may well not have.
                    continue;
                }
                format!("k8s-check-dummy-{}-0123456789abcdef", s["key"].as_str().unwrap_or("secret").to_lowercase())
            } else if let Some(m) = f.get("configMapKeyRef") {
                let (cm_name, key) = (m["name"].as_str().unwrap_or_default(), m["key"].as_str().unwrap_or_default());
                match configmap(cm_name).and_then(|cm| cm["data"][key].as_str()) {
                    Some(v) => v.to_string(),
                    None if m["optional"] == true => continue,
                    None => return Err(format!("{name}: ConfigMap {cm_name} key {key} is not in the render")),
                }
            } else if let Some(res) = f.get("resourceFieldRef") {
                resource_field(c, res)?
            } else {
                return Err(format!("{name}: unsupported valueFrom {f:?}"));
            }
        } else {
            String::new()
        };
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
    }
    Ok(env)
}

/// The container's arguments after `$(VAR)` expansion.
fn container_args(c: &Value, env: &[(String, String)]) -> Vec<String> {
    c["args"].as_array().into_iter().flatten().map(|a| expand(a.as_str().unwrap_or_default(), env)).collect()
}

/// The value of `--flag=V` or `--flag V` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let eq = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&eq) {
            Some(v)
        } else if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            None
        }
    })
}

/// A test PKI for mounted TLS Secrets: the CA, and a certificate for ddpm-coord.
fn test_pki() -> &'static (String, String, String) {
    static PKI: OnceLock<(String, String, String)> = OnceLock::new();
    PKI.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["ddpm-coord".to_string()]).unwrap().signed_by(&key, &issuer).unwrap().pem();
        (ca_pem, cert, key.serialize_pem())
    })
}

/// A stand-in for a Secret's key: a PEM where one is expected, else a token.
fn dummy_secret_file(key: &str) -> String {
    let (ca, cert, tls_key) = test_pki();
    match key {
        "ca.crt" => ca.clone(),
        "tls.crt" => cert.clone(),
        "tls.key" => tls_key.clone(),
        _ => "k8s-check-dummy-token-0123456789abcdef\n".to_string(),
    }
}

/// Writes the container's ConfigMap volumes (their real data) and Secret
/// volumes (stand-ins) below `dir`; returns (mountPath, local dir) pairs.
fn materialize_mounts(r: &Render, pod: &Value, c: &Value, dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let volumes: BTreeMap<&str, &Value> =
        pod["volumes"].as_array().into_iter().flatten().filter_map(|v| Some((v["name"].as_str()?, v))).collect();
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let (vname, path) = (m["name"].as_str().unwrap_or_default(), m["mountPath"].as_str().unwrap_or_default());
        let vol = volumes.get(vname).ok_or_else(|| format!("volumeMount {vname} has no volume"))?;
        let files: Vec<(String, String)> = if let Some(cm) = vol.get("configMap") {
            let name = cm["name"].as_str().unwrap_or_default();
            let cm_doc = r.find("ConfigMap", name).ok_or_else(|| format!("volume {vname}: ConfigMap {name} is not in the render"))?;
            let data = cm_doc["data"].as_object().cloned().unwrap_or_default();
            match cm["items"].as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        let key = i["key"].as_str().unwrap_or_default();
                        let text = data
                            .get(key)
                            .and_then(Value::as_str)
                            .ok_or_else(|| format!("volume {vname}: ConfigMap {name} has no key {key}"))?;
                        Ok((i["path"].as_str().unwrap_or(key).to_string(), text.to_string()))
                    })
                    .collect::<Result<_, String>>()?,
                None => data.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect(),
            }
        } else if let Some(secret) = vol.get("secret") {
            match secret["items"].as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        let key = i["key"].as_str().unwrap_or_default();
                        (i["path"].as_str().unwrap_or(key).to_string(), dummy_secret_file(key))
                    })
                    .collect(),
                // All of a Secret we cannot see: the usual names.
                None => ["worker", "user"].iter().map(|k| (k.to_string(), dummy_secret_file(k))).collect(),
            }
        } else {
            // Claims and emptyDirs: --check-config touches neither.
            continue;
        };
        let local = dir.join(vname);
        for (rel, text) in files {
            let p = local.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
        }
        mounts.push((path.trim_end_matches('/').to_string(), local));
    }
    Ok(mounts)
}

/// Runs `bin args` with `env` (and nothing of this process's DDPM_*/AWS_*
/// variables); (exit code, stdout + stderr).
fn run_check(bin: &str, args: &[String], env: &[(String, String)]) -> (Option<i32>, String) {
    let dir = common::tempdir();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut cmd = Command::new(common::binary(bin));
    cmd.args(args).stdin(Stdio::null());
    cmd.stdout(std::fs::File::create(&out_path).unwrap()).stderr(std::fs::File::create(&err_path).unwrap());
    for (k, _) in std::env::vars() {
        if k.starts_with("DDPM_") || k.starts_with("AWS_") {
            cmd.env_remove(&k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    // --check-config answers at once; anything that waits (a binary
    // without it that starts for real) is cut short.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text =
        format!("{}{}", std::fs::read_to_string(&out_path).unwrap_or_default(), std::fs::read_to_string(&err_path).unwrap_or_default());
    (status, text)
}

#[test]
fn the_binaries_accept_every_containers_command_line() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for r in renders() {
        for (job, c) in r.ddpm_containers() {
            let bin = binary_of(c).unwrap();
            let what = format!("{}: {} ({})", r.name, job["metadata"]["name"].as_str().unwrap_or("?"), bin);
            let dir = common::tempdir();
            let prepared = container_env(r, c).and_then(|env| {
                let mounts = materialize_mounts(r, &job["spec"]["template"]["spec"], c, dir.path())?;
                Ok((env, mounts))
            });
            let (env, mounts) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("{what}: {e}"));
                    continue;
                }
            };
            let mut args: Vec<String> = container_args(c, &env)
                .into_iter()
                .map(|a| mounts.iter().fold(a, |a, (mount, local)| a.replace(&format!("{mount}/"), &format!("{}/", local.display()))))
                .collect();
            args.push("--check-config".to_string());
            let (code, output) = run_check(bin, &args, &env);
            checked += 1;
            if code != Some(0) {
                let env_text: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                problems.push(format!(
                    "{what}: exit {code:?} (want 0)\n  command: {bin} {}\n  env: {}\n  output:\n{}",
                    args.join(" "),
                    env_text.join(" "),
                    output.trim_end()
                ));
            }
        }
    }
    assert!(checked > 0, "no container runs {BINARIES:?}");
    report("containers whose command line the binaries refuse (--check-config)", problems);
}

// ---------------------------------------------------------------------------
// The world size, threads, resources, security.

#[test]
fn the_world_size_is_set_once_and_threads_follow_the_cpu_limit() {
    let mut problems = Vec::new();
    for r in renders() {
        let n = &r.name;
        let workers = r.job_running("ddpm-worker");
        let spec = &workers["spec"];
        let parallelism = spec["parallelism"].as_u64();
        if spec["completionMode"] != "Indexed" {
            problems.push(format!("{n}: the worker Job is not an Indexed Job"));
        }
        if parallelism.is_none() || spec["completions"].as_u64() != parallelism {
            problems.push(format!(
                "{n}: worker Job parallelism {} != completions {} (one completion per worker)",
                spec["parallelism"], spec["completions"]
            ));
        }
        let coord = r.job_running("ddpm-coord");
        let cc = &coord["spec"]["template"]["spec"]["containers"][0];
        match container_env(r, cc) {
            Err(e) => problems.push(format!("{n}: coordinator env: {e}")),
            Ok(env) => {
                let get = |k: &str| env.iter().rev().find(|(name, _)| name == k).map(|(_, v)| v.clone());
                let world = get("DDPM_WORKERS").and_then(|v| v.parse::<u64>().ok());
                if world.is_none() || world != parallelism {
                    problems.push(format!(
                        "{n}: the coordinator's DDPM_WORKERS is {:?}, the worker Job's parallelism {parallelism:?}: they must be one \
                         number (the overlay's replacements copy parallelism)",
                        get("DDPM_WORKERS")
                    ));
                }
                let args = container_args(cc, &env);
                if flag(&args, "--workers").is_some() {
                    problems.push(format!("{n}: the coordinator has --workers in its args: the world size comes from DDPM_WORKERS only"));
                }
                let min = get("DDPM_MIN_WORKERS").and_then(|v| v.parse::<u64>().ok());
                match (min, world) {
                    (Some(m), Some(w)) if m >= 1 && m <= w => {
                        let pdb = r
                            .all("PodDisruptionBudget")
                            .find(|p| p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "worker");
                        if let Some(pdb) = pdb {
                            if pdb["spec"]["minAvailable"].as_u64() != Some(m) {
                                problems.push(format!(
                                    "{n}: the worker PodDisruptionBudget's minAvailable {} is not DDPM_MIN_WORKERS {m}",
                                    pdb["spec"]["minAvailable"]
                                ));
                            }
                        }
                    }
                    _ => problems.push(format!("{n}: DDPM_MIN_WORKERS {min:?} must be between 1 and DDPM_WORKERS {world:?}")),
                }
            }
        }
        for (job, c) in r.ddpm_containers() {
            let what = format!("{n}: {}", job["metadata"]["name"].as_str().unwrap_or("?"));
            let res = &c["resources"];
            for section in ["requests", "limits"] {
                for k in ["cpu", "memory"] {
                    if res[section][k].is_null() {
                        problems.push(format!("{what}: no resources.{section}.{k}"));
                    }
                }
            }
            let Ok(env) = container_env(r, c) else { continue };
            let args = container_args(c, &env);
            let limit = quantity(&res["limits"]["cpu"], true).map(|m| (m / 1000.0).ceil() as u64);
            let threads = flag(&args, "--threads").map(str::to_string);
            if threads.as_deref().and_then(|t| t.parse::<u64>().ok()) != limit || limit.is_none() {
                problems.push(format!("{what}: --threads is {threads:?}, the CPU limit {:?} cores: they must agree", res["limits"]["cpu"]));
            }
            if flag(&args, "--log-format") != Some("json") {
                problems.push(format!("{what}: no --log-format=json"));
            }
            let gpu = flag(&args, "--gpu").is_some();
            let gpus = &res["limits"]["nvidia.com/gpu"];
            if gpu && (quantity(gpus, false) != Some(1.0) || res["requests"]["nvidia.com/gpu"] != *gpus) {
                problems.push(format!("{what}: --gpu without nvidia.com/gpu: 1 in its requests and limits"));
            }
            if !gpu && !gpus.is_null() {
                problems.push(format!("{what}: asks for a GPU but runs without --gpu"));
            }
        }
    }
    report("world size, threads and resources", problems);
}

/// Whether the podFailurePolicy `rules` hold a rule `action` for exit `code`.
fn exit_rule(rules: &Value, action: &str, code: u64) -> bool {
    rules.as_array().into_iter().flatten().any(|r| {
        r["action"] == action
            && r["onExitCodes"]["operator"] == "In"
            && r["onExitCodes"]["values"].as_array().is_some_and(|v| v.contains(&code.into()))
    })
}

/// The Job-level settings each binary's Job needs: (problems).
fn job_policy_problems(what: &str, binary: &str, spec: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let rules = &spec["podFailurePolicy"]["rules"];
    let disruption = rules.as_array().into_iter().flatten().any(|r| {
        r["action"] == "Ignore" && r["onPodConditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "DisruptionTarget"))
    });
    if !(disruption && exit_rule(rules, "Ignore", 75) && exit_rule(rules, "FailJob", 2)) {
        problems.push(format!("{what}: the podFailurePolicy must Ignore DisruptionTarget and exit 75, and FailJob on exit 2"));
    }
    if spec["activeDeadlineSeconds"].as_u64().is_none_or(|d| d == 0) {
        problems.push(format!("{what}: no activeDeadlineSeconds: a stuck run would hold its nodes for ever"));
    }
    if binary == "ddpm-worker" {
        // 4: the coordinator stayed away for --connect-timeout (ddpm::exit::NO_COORDINATOR).
        if !exit_rule(rules, "FailJob", 4) {
            problems.push(format!(
                "{what}: the podFailurePolicy must FailJob on exit 4 (no coordinator): workers would retry for a coordinator that is gone"
            ));
        }
        if spec["backoffLimitPerIndex"].as_u64().is_none() || spec["completionMode"] != "Indexed" {
            problems.push(format!("{what}: an Indexed Job with backoffLimitPerIndex: one bad node must not use up every worker's retries"));
        }
    }
    problems
}

#[test]
fn pods_run_locked_down_with_the_versioned_image_and_probes() {
    let version = workspace_version();
    let mut problems = Vec::new();
    for r in renders() {
        for (job, c) in r.ddpm_containers() {
            let what = format!("{}: {}", r.name, job["metadata"]["name"].as_str().unwrap_or("?"));
            let pod = &job["spec"]["template"]["spec"];
            let want: Vec<(&str, &Value, Value)> = vec![
                ("restartPolicy", &pod["restartPolicy"], "Never".into()),
                ("automountServiceAccountToken", &pod["automountServiceAccountToken"], false.into()),
                ("securityContext.runAsNonRoot", &pod["securityContext"]["runAsNonRoot"], true.into()),
                ("securityContext.runAsUser", &pod["securityContext"]["runAsUser"], 10001.into()),
                ("securityContext.runAsGroup", &pod["securityContext"]["runAsGroup"], 10001.into()),
                ("securityContext.fsGroup", &pod["securityContext"]["fsGroup"], 10001.into()),
                ("securityContext.seccompProfile.type", &pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault".into()),
                ("container allowPrivilegeEscalation", &c["securityContext"]["allowPrivilegeEscalation"], false.into()),
                ("container readOnlyRootFilesystem", &c["securityContext"]["readOnlyRootFilesystem"], true.into()),
                ("container capabilities.drop", &c["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"])),
                ("imagePullPolicy", &c["imagePullPolicy"], "IfNotPresent".into()),
            ];
            for (field, have, expect) in want {
                if *have != expect {
                    problems.push(format!("{what}: {field} is {have}, want {expect}"));
                }
            }
            // ddpm:VERSION, or REGISTRY/PATH/ddpm:VERSION (an overlay's `images:`).
            let image = c["image"].as_str().unwrap_or_default();
            let repo_ok = image.rsplit_once(':').is_some_and(|(repo, tag)| tag == version && (repo == "ddpm" || repo.ends_with("/ddpm")));
            if !repo_ok {
                problems.push(format!("{what}: image {image:?}, want ddpm:{version} (or a registry's .../ddpm:{version})"));
            }
            let binary = binary_of(c).unwrap();
            problems.extend(job_policy_problems(&what, binary, &job["spec"]));
            let env = container_env(r, c).unwrap_or_default();
            for (k, v) in [("HOME", "/tmp"), ("TMPDIR", "/tmp")] {
                if !env.iter().any(|(ek, ev)| ek == k && ev == v) {
                    problems.push(format!("{what}: no {k}={v} (the root filesystem is read-only)"));
                }
            }
            if binary == "ddpm-coord" && !env.iter().any(|(k, v)| k == "NVIDIA_VISIBLE_DEVICES" && v == "void") {
                problems.push(format!(
                    "{what}: no NVIDIA_VISIBLE_DEVICES=void: a node whose default runtime is NVIDIA's would hand the coordinator every GPU"
                ));
            }
            let tmp_is_empty_dir = c["volumeMounts"].as_array().into_iter().flatten().any(|m| {
                m["mountPath"] == "/tmp"
                    && pod["volumes"].as_array().into_iter().flatten().any(|v| v["name"] == m["name"] && v.get("emptyDir").is_some())
            });
            if !tmp_is_empty_dir {
                problems.push(format!("{what}: /tmp is no emptyDir"));
            }
            for probe in ["readinessProbe", "livenessProbe"] {
                if c[probe].is_null() {
                    problems.push(format!("{what}: no {probe}"));
                }
            }
        }
    }
    report("pods that break the deployment rules", problems);
}

/// Every pod the manifests and the runbook create (the Jobs', the JobSets'
/// and the helper pods), against the restricted Pod Security Standard.
#[test]
fn every_pod_passes_the_restricted_pod_security_standard() {
    let mut problems = Vec::new();
    let mut checked = 0;
    let helpers = helpers();
    for r in renders().iter().chain(&helpers) {
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
    assert!(checked > renders().len() * 2, "only {checked} pods checked");
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

// ---------------------------------------------------------------------------
// The runbook.

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
    for r in renders() {
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
        if !renders().iter().any(|r| &r.name == name) {
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

#[test]
fn env_expansion_follows_kubernetes() {
    let env = vec![("A".to_string(), "1".to_string()), ("B".to_string(), "x".to_string())];
    assert_eq!(expand("--threads=$(A)", &env), "--threads=1");
    assert_eq!(expand("$(B)$(A)-$(C)", &env), "x1-$(C)");
    assert_eq!(expand("$$(A) $ $x", &env), "$(A) $ $x");
    assert_eq!(quantity(&Value::String("500m".into()), true), Some(500.0));
    assert_eq!(quantity(&Value::String("8".into()), true), Some(8000.0));
    assert_eq!(quantity(&Value::String("16Gi".into()), false), Some(16.0 * 1024f64.powi(3)));
    let c = serde_json::json!({"resources": {"limits": {"cpu": "500m"}}});
    assert_eq!(resource_field(&c, &serde_json::json!({"resource": "limits.cpu", "divisor": "1"})).unwrap(), "1");
    assert_eq!(resource_field(&c, &serde_json::json!({"resource": "limits.cpu", "divisor": "1m"})).unwrap(), "500");
}
