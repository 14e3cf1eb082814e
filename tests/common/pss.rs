//! The restricted Pod Security Standard (Kubernetes' "restricted" profile,
//! policy version v1.32, which includes the baseline profile), as the Pod
//! Security Admission controller applies it to a pod spec: every control
//! of https://kubernetes.io/docs/concepts/security/pod-security-standards/
//! over the pod and all its containers (init and ephemeral included). A
//! namespace labelled `pod-security.kubernetes.io/enforce: restricted`
//! refuses a pod (or a Job whose template) breaks any of them.

use serde_json::Value;

/// Baseline: capabilities a container may add (restricted allows only
/// NET_BIND_SERVICE of them).
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Baseline: the safe sysctls (as of v1.32).
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Restricted: the volume types a pod may use.
const RESTRICTED_VOLUMES: [&str; 8] =
    ["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

/// The controls `pod` (a pod spec, e.g. a Job's `spec.template.spec`) with
/// `annotations` (its metadata's) breaks; empty when it passes.
pub fn restricted_violations(pod: &Value, annotations: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let psc = &pod["securityContext"];
    let containers: Vec<&Value> =
        ["initContainers", "containers", "ephemeralContainers"].iter().flat_map(|k| pod[*k].as_array().into_iter().flatten()).collect();
    let name = |c: &Value| c["name"].as_str().unwrap_or("?").to_string();

    // Baseline.
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod[field] == true {
            v.push(format!("host namespaces: {field} is true"));
        }
    }
    if psc["windowsOptions"]["hostProcess"] == true {
        v.push("HostProcess: the pod sets windowsOptions.hostProcess".into());
    }
    for vol in pod["volumes"].as_array().into_iter().flatten() {
        if vol.get("hostPath").is_some() {
            v.push(format!("HostPath volumes: volume {}", vol["name"]));
        }
        let kind = vol.as_object().into_iter().flatten().map(|(k, _)| k.as_str()).find(|k| *k != "name").unwrap_or("?");
        if !RESTRICTED_VOLUMES.contains(&kind) {
            v.push(format!("volume types: volume {} is of type {kind}", vol["name"]));
        }
    }
    for s in psc["sysctls"].as_array().into_iter().flatten() {
        let n = s["name"].as_str().unwrap_or("?");
        if !SAFE_SYSCTLS.contains(&n) {
            v.push(format!("sysctls: {n} is not a safe sysctl"));
        }
    }
    for (k, val) in annotations.as_object().into_iter().flatten() {
        if k.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && !(val == "runtime/default" || val.as_str().is_some_and(|s| s.starts_with("localhost/")))
        {
            v.push(format!("AppArmor: annotation {k}={val}"));
        }
    }
    let apparmor_ok = |sc: &Value| !matches!(sc["appArmorProfile"]["type"].as_str(), Some(t) if t != "RuntimeDefault" && t != "Localhost");
    let selinux_ok = |sc: &Value| {
        let o = &sc["seLinuxOptions"];
        o["user"].is_null()
            && o["role"].is_null()
            && o["type"]
                .as_str()
                .is_none_or(|t| ["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"].contains(&t))
    };
    if !apparmor_ok(psc) {
        v.push(format!("AppArmor: pod appArmorProfile {}", psc["appArmorProfile"]));
    }
    if !selinux_ok(psc) {
        v.push(format!("SELinux: pod seLinuxOptions {}", psc["seLinuxOptions"]));
    }

    // Restricted, pod level: a container passes if it or the pod says so.
    let pod_non_root = psc["runAsNonRoot"] == true;
    let pod_seccomp = psc["seccompProfile"]["type"].as_str();
    if psc["runAsUser"] == 0 {
        v.push("running as non-root user: the pod's runAsUser is 0".into());
    }
    if matches!(pod_seccomp, Some(t) if t != "RuntimeDefault" && t != "Localhost") {
        v.push(format!("seccomp: the pod's seccompProfile is {}", pod_seccomp.unwrap_or("?")));
    }
    for c in containers {
        let sc = &c["securityContext"];
        let n = name(c);
        if sc["privileged"] == true {
            v.push(format!("privileged containers: {n}"));
        }
        if sc["windowsOptions"]["hostProcess"] == true {
            v.push(format!("HostProcess: {n}"));
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            if p["hostPort"].as_u64().is_some_and(|h| h != 0) {
                v.push(format!("host ports: {n} port {}", p["hostPort"]));
            }
        }
        if sc["procMount"].as_str().is_some_and(|m| m != "Default") {
            v.push(format!("/proc mount type: {n} has {}", sc["procMount"]));
        }
        if !apparmor_ok(sc) {
            v.push(format!("AppArmor: {n} appArmorProfile {}", sc["appArmorProfile"]));
        }
        if !selinux_ok(sc) {
            v.push(format!("SELinux: {n} seLinuxOptions {}", sc["seLinuxOptions"]));
        }
        if sc["allowPrivilegeEscalation"] != false {
            v.push(format!("privilege escalation: {n} does not set allowPrivilegeEscalation: false"));
        }
        let non_root = match sc.get("runAsNonRoot") {
            Some(Value::Bool(b)) => *b,
            _ => pod_non_root,
        };
        if !non_root {
            v.push(format!("running as non-root: neither the pod nor {n} sets runAsNonRoot: true"));
        }
        if sc["runAsUser"] == 0 {
            v.push(format!("running as non-root user: {n} has runAsUser 0"));
        }
        let seccomp = sc["seccompProfile"]["type"].as_str().or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            v.push(format!("seccomp: neither the pod nor {n} sets seccompProfile RuntimeDefault or Localhost"));
        }
        let drops = sc["capabilities"]["drop"].as_array().is_some_and(|d| d.iter().any(|x| x == "ALL"));
        if !drops {
            v.push(format!("capabilities: {n} does not drop ALL"));
        }
        for add in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            let cap = add.as_str().unwrap_or("?");
            if cap != "NET_BIND_SERVICE" {
                let why = if BASELINE_CAPABILITIES.contains(&cap) {
                    "restricted allows only NET_BIND_SERVICE"
                } else {
                    "not even baseline allows it"
                };
                v.push(format!("capabilities: {n} adds {cap} ({why})"));
            }
        }
    }
    v
}
