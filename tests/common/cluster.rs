//! A rendered overlay's pods run as local processes exactly as its
//! manifests describe them: each container's command, args (with
//! Kubernetes' `$(VAR)` expansion) and environment (literal values,
//! ConfigMap and Secret keys, the pod's name, its CPU limit), its
//! ConfigMaps and Secrets written as files at its mount paths (under a
//! per-pod root: the paths in args and env are rewritten to it), emptyDirs
//! fresh per pod and a claim shared by the pods that mount it, each
//! Service's name resolved to loopback and each container port mapped to
//! a free one. The tests play the controllers (Job, JobSet) and the
//! kubelet's gRPC probes with it; what a controller does with a pod that
//! ended is [`job_action`], read from the rendered podFailurePolicy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::k8s::{binary_of, expand, render, resource_field, Render};
use super::{tempdir, Proc};

/// What the Job controller does with a pod that ended with `code` (None:
/// killed by a signal), by the Job's podFailurePolicy.
#[derive(Debug, PartialEq, Eq)]
pub enum JobAction {
    /// The pod succeeded.
    Complete,
    /// Replaced without counting against backoffLimit.
    Ignore,
    /// Replaced, counted against backoffLimit (or the index's backoffLimitPerIndex).
    Count,
    /// The pod's index is failed: not retried.
    FailIndex,
    /// The whole Job fails.
    FailJob,
}

pub fn job_action(job: &Value, container: &str, code: Option<i32>) -> JobAction {
    let Some(code) = code else { return JobAction::Count };
    if code == 0 {
        return JobAction::Complete;
    }
    for rule in job["spec"]["podFailurePolicy"]["rules"].as_array().into_iter().flatten() {
        let Some(on) = rule.get("onExitCodes") else { continue };
        if on.get("containerName").and_then(Value::as_str).is_some_and(|c| c != container) {
            continue;
        }
        let values: Vec<i64> = on["values"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let hit = match on["operator"].as_str().unwrap() {
            "In" => values.contains(&i64::from(code)),
            "NotIn" => !values.contains(&i64::from(code)),
            other => panic!("unknown operator {other}"),
        };
        if hit {
            return match rule["action"].as_str().unwrap() {
                "Ignore" => JobAction::Ignore,
                "Count" => JobAction::Count,
                "FailIndex" => JobAction::FailIndex,
                "FailJob" => JobAction::FailJob,
                other => panic!("unknown action {other}"),
            };
        }
    }
    JobAction::Count
}

/// The cluster a test stands in for: the render, the Secrets the user
/// creates (`deploy/README.md`), the claims, and the loopback ports that
/// stand for each Service.
pub struct Cluster {
    pub render: Render,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    pub root: tempfile::TempDir,
    /// (Service name, port) -> the local port it reaches.
    services: BTreeMap<(String, u16), u16>,
    pods_started: usize,
}

/// One container of one pod, ready to start.
pub struct PodSpec {
    pub name: String,
    pub binary: &'static str,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// containerPort -> local port.
    pub ports: BTreeMap<u16, u16>,
    pub container: Value,
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let s = std::collections::hash_map::RandomState::new();
    let mut h = s.build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (u128::from(h.finish()) << 64) | u128::from(s.build_hasher().finish())
}

impl Cluster {
    /// The overlay `deploy/k8s/overlays/NAME`, with the Secret ddpm-tokens.
    pub fn new(overlay: &str) -> Self {
        let render = render(overlay);
        // The Secrets the runbook tells the user to create.
        let token = || format!("{:032x}{:032x}", rand_u128(), rand_u128());
        let mut secrets = BTreeMap::new();
        secrets.insert("ddpm-tokens".to_string(), BTreeMap::from([("worker".to_string(), token()), ("user".to_string(), token())]));
        let mut services = BTreeMap::new();
        for svc in render.all("Service") {
            for p in svc["spec"]["ports"].as_array().unwrap() {
                services.insert(
                    (svc["metadata"]["name"].as_str().unwrap().to_string(), p["port"].as_u64().unwrap() as u16),
                    super::free_port(),
                );
            }
        }
        Cluster { render, secrets, root: tempdir(), services, pods_started: 0 }
    }

    /// The Job (rendered, or created by a JobSet) whose pods run `binary`.
    pub fn job(&self, binary: &str) -> &Value {
        self.render.job_running(binary)
    }

    fn config_map(&self, name: &str) -> &Value {
        self.render.find("ConfigMap", name).unwrap_or_else(|| panic!("{} has no ConfigMap {name}", self.render.name))
    }

    /// The directory of claim `name`, shared by the pods that mount it.
    pub fn claim(&self, name: &str) -> PathBuf {
        self.root.path().join("claims").join(name)
    }

    /// The local port a container port of a pod of `job` is reached at: the
    /// Service's, when a Service selects it on that target port.
    fn local_port(&self, job: &Value, container: &Value, container_port: u16) -> u16 {
        let labels = &job["spec"]["template"]["metadata"]["labels"];
        let port_name =
            container["ports"].as_array().into_iter().flatten().find(|p| p["containerPort"] == container_port).map(|p| p["name"].clone());
        for svc in self.render.all("Service") {
            let selects = svc["spec"]["selector"].as_object().unwrap().iter().all(|(k, v)| &labels[k] == v);
            if !selects {
                continue;
            }
            for p in svc["spec"]["ports"].as_array().unwrap() {
                let target = &p["targetPort"];
                if target.as_u64() == Some(u64::from(container_port)) || port_name.as_ref() == Some(target) {
                    return self.services[&(svc["metadata"]["name"].as_str().unwrap().to_string(), p["port"].as_u64().unwrap() as u16)];
                }
            }
        }
        super::free_port()
    }

    /// A new pod of the Job running `binary` (index: an Indexed Job's), as
    /// the Job controller makes one.
    pub fn pod(&mut self, binary: &str, index: Option<usize>) -> PodSpec {
        self.pods_started += 1;
        let job = self.job(binary).clone();
        let job_name = job["metadata"]["name"].as_str().unwrap().to_string();
        let spec = &job["spec"]["template"]["spec"];
        let containers = spec["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{job_name}: one container per pod");
        let c = &containers[0];
        let binary = binary_of(c).unwrap_or_else(|| panic!("{job_name} does not run a ddpm binary"));
        let hostname = match index {
            Some(i) => format!("{job_name}-{i}"),
            None => job_name.clone(),
        };
        let pod_name = format!("{hostname}-p{}", self.pods_started);
        let pod_root = self.root.path().join("pods").join(&pod_name);

        // Volumes: where each lives on this machine.
        let mut volume_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let vname = v["name"].as_str().unwrap().to_string();
            let dir = if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                assert!(self.render.find("PersistentVolumeClaim", claim).is_some(), "{job_name}: claim {claim} is not in the overlay");
                self.claim(claim)
            } else {
                pod_root.join("volumes").join(&vname)
            };
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(cm) = v["configMap"]["name"].as_str() {
                let data = self.config_map(cm)["data"].clone();
                write_keys(
                    &dir,
                    data.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())),
                    &v["configMap"]["items"],
                );
            } else if let Some(secret) = v["secret"]["secretName"].as_str() {
                let data = self
                    .secrets
                    .get(secret)
                    .unwrap_or_else(|| panic!("{job_name} mounts Secret {secret}, which the runbook does not create"));
                write_keys(&dir, data.clone(), &v["secret"]["items"]);
            } else {
                assert!(
                    v.get("emptyDir").is_some() || v.get("persistentVolumeClaim").is_some(),
                    "{job_name}: volume {vname} of an unknown kind"
                );
            }
            volume_dirs.insert(vname, dir);
        }
        // Mount path -> directory, longest first (a mount inside another wins).
        let mut mounts: Vec<(String, PathBuf)> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| (m["mountPath"].as_str().unwrap().to_string(), volume_dirs[m["name"].as_str().unwrap()].clone()))
            .collect();
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let relocate = |s: &str| -> String {
            // A path under a mount, alone or as a flag's value.
            let (prefix, path) = match s.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (format!("{flag}="), value),
                _ => (String::new(), s),
            };
            for (mount, dir) in &mounts {
                if path == mount || path.starts_with(&format!("{mount}/")) {
                    return format!("{prefix}{}{}", dir.display(), &path[mount.len()..]);
                }
            }
            s.to_string()
        };

        // Ports: every container port to a local one; Services' names to loopback.
        let mut ports = BTreeMap::new();
        for p in c["ports"].as_array().into_iter().flatten() {
            let cp = p["containerPort"].as_u64().unwrap() as u16;
            ports.insert(cp, self.local_port(&job, c, cp));
        }
        let reach = |s: &str| -> String {
            let mut s = s.to_string();
            for ((svc, port), local) in &self.services {
                s = s.replace(&format!("{svc}:{port}"), &format!("127.0.0.1:{local}"));
            }
            for (cp, local) in &ports {
                for host in ["0.0.0.0", "127.0.0.1", "[::]"] {
                    s = s.replace(&format!("{host}:{cp}"), &format!("{host}:{local}"));
                }
            }
            s
        };

        let env = self.pod_env(&job_name, c, &pod_name, index);
        let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k, reach(&relocate(&v)))).collect();
        let args = c["args"].as_array().into_iter().flatten().map(|a| reach(&relocate(&expand(a.as_str().unwrap(), &env)))).collect();
        PodSpec { name: pod_name, binary, args, env, ports, container: c.clone() }
    }

    /// The container's environment, in order ($(VAR) may name an earlier one).
    fn pod_env(&self, job_name: &str, c: &Value, pod_name: &str, index: Option<usize>) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        if let Some(i) = index {
            env.push(("JOB_COMPLETION_INDEX".into(), i.to_string()));
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap().to_string();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &env)
            } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_object() {
                self.config_map(r["name"].as_str().unwrap())["data"][r["key"].as_str().unwrap()].as_str().unwrap().to_string()
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                self.secrets[r["name"].as_str().unwrap()][r["key"].as_str().unwrap()].clone()
            } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match path {
                    "metadata.name" => pod_name.to_string(),
                    "metadata.namespace" => "default".into(),
                    // Every pod is on loopback here.
                    "status.podIP" => "127.0.0.1".into(),
                    "metadata.annotations['batch.kubernetes.io/job-completion-index']" => index.unwrap().to_string(),
                    other => panic!("{job_name}: fieldRef {other} is not emulated"),
                }
            } else if let Some(r) = e["valueFrom"].get("resourceFieldRef") {
                resource_field(c, r).unwrap_or_else(|err| panic!("{job_name}: {err}"))
            } else {
                panic!("{job_name}: env {name} of an unknown form: {e}")
            };
            env.push((name, value));
        }
        env
    }

    /// Starts a pod's container.
    pub fn start(&self, pod: &PodSpec) -> Proc {
        let mut cmd = std::process::Command::new(super::binary(pod.binary));
        // A pod's environment is what its spec says, and nothing of ours.
        cmd.env_clear().env("PATH", "/usr/bin:/bin").args(&pod.args).envs(pod.env.iter().map(|(k, v)| (k, v)));
        Proc::spawn(&pod.name, cmd)
    }
}

/// A ConfigMap's or Secret's keys as files (`items`: only those, at their paths).
fn write_keys(dir: &Path, data: impl IntoIterator<Item = (String, String)>, items: &Value) {
    let data: BTreeMap<String, String> = data.into_iter().collect();
    match items.as_array() {
        Some(items) => {
            for it in items {
                let key = it["key"].as_str().unwrap();
                std::fs::write(dir.join(it["path"].as_str().unwrap()), &data[key]).unwrap();
            }
        }
        None => {
            for (k, v) in &data {
                std::fs::write(dir.join(k), v).unwrap();
            }
        }
    }
}

/// A container's gRPC probe, as kubelet sends it (no credentials).
pub async fn probe(port: u16, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let reply = HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }).await.ok()?;
    Some(reply.into_inner().status())
}

/// Runs `pod`'s readiness probe until it passes (`timeout` at most).
pub async fn until_ready(pod: &PodSpec, timeout: Duration) {
    let p = &pod.container["readinessProbe"]["grpc"];
    let port = pod.ports[&(p["port"].as_u64().unwrap() as u16)];
    let service = p["service"].as_str().unwrap_or("");
    let deadline = Instant::now() + timeout;
    while probe(port, service).await != Some(ServingStatus::Serving) {
        assert!(Instant::now() < deadline, "{}: readiness probe ({service:?} on {port}) did not pass within {timeout:?}", pod.name);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Sends `signal` (e.g. "-KILL") to the pod's process.
pub fn kill(p: &Proc, signal: &str) {
    assert!(std::process::Command::new("kill").args([signal, &p.child.id().to_string()]).status().unwrap().success());
}
