//! How the objects of each rendered overlay (`deploy/k8s/overlays`) refer to
//! one another, as the controllers that read them will: the Service the
//! workers dial selects the coordinator, the budgets, network policies and
//! PodMonitor select the run's own pods, every ConfigMap, claim and
//! ServiceAccount a pod names is in the render; two runs rendered into one
//! namespace share no object and no selector; a JobSet completes with its
//! coordinator, starts it first and fails at once on exit 2 (as the Job
//! controller words it); Kueue is asked for what the run needs and can
//! ever give it; web identity needs no static keys.
//!
//! Needs kubectl and the project's Python, as tests/k8s_manifests.rs.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::k8s::{
    binary_of, expand, failjob_message, jobset_action, k8s_dir, overlays, quantity, render, render_dir, report, selects, Render,
};
use serde_json::Value;

/// Objects a run's pods name that the user creates (deploy/README.md): not
/// in any render, shared by the runs of a namespace.
const EXTERNAL: [(&str, &str); 5] = [
    ("Secret", "ddpm-tokens"),
    ("Secret", "ddpm-tls"),
    ("Secret", "ddpm-s3"),
    ("Secret", "ddpm-registry"),
    ("PersistentVolumeClaim", "ddpm-data"),
];

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("?")
}

/// A pod template of the run: (Job name, binary, template).
struct Template<'a> {
    job: &'a Value,
    binary: &'static str,
    template: &'a Value,
}

fn templates(r: &Render) -> Vec<Template<'_>> {
    r.ddpm_containers()
        .into_iter()
        .map(|(job, c)| Template { job, binary: binary_of(c).unwrap(), template: &job["spec"]["template"] })
        .collect()
}

fn labels<'a>(t: &Template<'a>) -> &'a Value {
    &t.template["metadata"]["labels"]
}

/// The label selectors of `doc` and what each is for: (field, selector).
fn selectors(doc: &Value) -> Vec<(String, Value)> {
    let spec = &doc["spec"];
    match doc["kind"].as_str() {
        Some("Service") => vec![("spec.selector".into(), spec["selector"].clone())],
        Some("PodDisruptionBudget") | Some("PodMonitor") => vec![("spec.selector".into(), spec["selector"].clone())],
        Some("NetworkPolicy") => {
            let mut out = vec![("spec.podSelector".to_string(), spec["podSelector"].clone())];
            for (i, rule) in spec["ingress"].as_array().into_iter().flatten().enumerate() {
                for (j, from) in rule["from"].as_array().into_iter().flatten().enumerate() {
                    if let Some(ps) = from.get("podSelector") {
                        out.push((format!("spec.ingress[{i}].from[{j}].podSelector"), ps.clone()));
                    }
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// What `container` of `pod` names: (kind, name).
fn references(pod: &Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut push = |kind: &'static str, v: &Value| {
        if let Some(n) = v.as_str() {
            out.push((kind, n.to_string()));
        }
    };
    for v in pod["volumes"].as_array().into_iter().flatten() {
        push("ConfigMap", &v["configMap"]["name"]);
        push("Secret", &v["secret"]["secretName"]);
        push("PersistentVolumeClaim", &v["persistentVolumeClaim"]["claimName"]);
    }
    for c in pod["containers"].as_array().into_iter().flatten() {
        for e in c["env"].as_array().into_iter().flatten() {
            push("ConfigMap", &e["valueFrom"]["configMapKeyRef"]["name"]);
            push("Secret", &e["valueFrom"]["secretKeyRef"]["name"]);
        }
    }
    for s in pod["imagePullSecrets"].as_array().into_iter().flatten() {
        push("Secret", &s["name"]);
    }
    push("ServiceAccount", &pod["serviceAccountName"]);
    out
}

/// The worker container's `--coord` as HOST:PORT, after `$(VAR)` expansion
/// of its literal env values.
fn worker_coord(t: &Template) -> Option<(String, u16)> {
    let c = &t.template["spec"]["containers"][0];
    let env: Vec<(String, String)> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect();
    let arg = c["args"].as_array()?.iter().filter_map(Value::as_str).find_map(|a| a.strip_prefix("--coord="))?;
    let (host, port) = expand(arg, &env).rsplit_once(':').map(|(h, p)| (h.to_string(), p.parse().ok()))?;
    Some((host, port?))
}

/// The problems of one render's wiring.
fn wiring_problems(r: &Render) -> Vec<String> {
    let mut p = Vec::new();
    let n = &r.name;
    let ts = templates(r);
    let coord: Vec<&Template> = ts.iter().filter(|t| t.binary == "ddpm-coord").collect();
    let workers: Vec<&Template> = ts.iter().filter(|t| t.binary == "ddpm-worker").collect();
    let (Some(coord), Some(worker)) = (coord.first(), workers.first()) else {
        return vec![format!("{n}: no coordinator or no worker pod template")];
    };
    // The Service the workers dial selects the coordinator, on 50051 -> grpc.
    match worker_coord(worker) {
        None => p.push(format!("{n}: the worker has no --coord=HOST:PORT")),
        Some((host, port)) => match r.find("Service", &host) {
            None => p.push(format!("{n}: the workers dial {host}:{port}, and no Service is called {host}")),
            Some(svc) => {
                if !selects(&svc["spec"]["selector"], labels(coord)) || selects(&svc["spec"]["selector"], labels(worker)) {
                    p.push(format!("{n}: Service {host} must select the coordinator's pod and not the workers'"));
                }
                let grpc = svc["spec"]["ports"].as_array().into_iter().flatten().any(|sp| sp["port"] == port && sp["targetPort"] == "grpc");
                if !grpc {
                    p.push(format!("{n}: Service {host} has no port {port} to the coordinator's grpc port"));
                }
            }
        },
    }
    // Every selector selects at least one of the run's pods, and budgets
    // and pod-level policies one kind only.
    for doc in r.docs.iter() {
        for (field, sel) in selectors(doc) {
            let hits: Vec<&str> = ts.iter().filter(|t| selects(&sel, labels(t))).map(|t| t.binary).collect();
            let uses_label = sel.get("matchLabels").is_some() || doc["kind"] == "Service";
            if uses_label && hits.is_empty() {
                p.push(format!("{n}: {}/{} {field} selects none of the run's pods: {sel}", doc["kind"].as_str().unwrap_or("?"), name(doc)));
            }
            if doc["kind"] == "PodDisruptionBudget" && hits.len() != 1 {
                p.push(format!("{n}: PodDisruptionBudget/{} selects {hits:?} (want one kind of pod)", name(doc)));
            }
            if doc["kind"] == "PodMonitor" && hits.len() != 2 {
                p.push(format!("{n}: PodMonitor/{} selects {hits:?} (want the coordinator and the workers)", name(doc)));
            }
        }
    }
    // A PodMonitor's port is a named port of every pod it selects.
    for pm in r.all("PodMonitor") {
        for ep in pm["spec"]["podMetricsEndpoints"].as_array().into_iter().flatten() {
            for t in ts.iter().filter(|t| selects(&pm["spec"]["selector"], labels(t))) {
                let has = t.template["spec"]["containers"][0]["ports"].as_array().into_iter().flatten().any(|cp| cp["name"] == ep["port"]);
                if !has {
                    p.push(format!("{n}: PodMonitor/{} scrapes port {} which {} does not name", name(pm), ep["port"], t.binary));
                }
            }
        }
    }
    // What the pods name is in the render or made by the user.
    for t in &ts {
        for (kind, target) in references(&t.template["spec"]) {
            if r.find(kind, &target).is_none() && !EXTERNAL.contains(&(kind, target.as_str())) {
                p.push(format!("{n}: {} names {kind}/{target}, which is neither in the render nor one the runbook creates", name(t.job)));
            }
        }
    }
    p
}

#[test]
fn every_run_is_wired_to_itself() {
    let mut problems = Vec::new();
    for r in overlays() {
        problems.extend(wiring_problems(r));
    }
    report("overlays whose objects do not find each other", problems);
}

/// Two runs in one namespace: (kind, name) of every object, and the Jobs
/// the JobSet controller will create.
fn names(r: &Render) -> BTreeSet<(String, String)> {
    let mut out: BTreeSet<(String, String)> =
        r.docs.iter().map(|d| (d["kind"].as_str().unwrap_or("?").to_string(), name(d).to_string())).collect();
    out.extend(r.jobs.iter().map(|j| ("Job".to_string(), name(j).to_string())));
    out
}

#[test]
fn two_runs_share_nothing_in_one_namespace() {
    let (a, b) = (render("two-runs-a"), render("two-runs-b"));
    let mut problems = wiring_problems(&a);
    problems.extend(wiring_problems(&b));
    for (x, y) in [(&a, &b), (&b, &a)] {
        let shared: Vec<_> = names(x).intersection(&names(y)).cloned().collect();
        if x.name < y.name && !shared.is_empty() {
            problems.push(format!("{} and {} both create {shared:?}", x.name, y.name));
        }
        // No selector of one run selects a pod of the other.
        for doc in &x.docs {
            for (field, sel) in selectors(doc) {
                for t in templates(y).iter().filter(|t| selects(&sel, labels(t))) {
                    problems.push(format!(
                        "{}: {}/{} {field} selects {}'s {} pods",
                        x.name,
                        doc["kind"].as_str().unwrap_or("?"),
                        name(doc),
                        y.name,
                        t.binary
                    ));
                }
            }
        }
        // What a run's pods name is its own (or made by the user for all).
        let theirs = names(y);
        for t in templates(x) {
            for (kind, target) in references(&t.template["spec"]) {
                if theirs.contains(&(kind.to_string(), target.clone())) && !EXTERNAL.contains(&(kind, target.as_str())) {
                    problems.push(format!("{}: {} names {kind}/{target}, which is {}'s", x.name, name(t.job), y.name));
                }
            }
            if let Some((host, _)) = worker_coord(&t).filter(|_| t.binary == "ddpm-worker") {
                if y.find("Service", &host).is_some() || x.find("Service", &host).is_none() {
                    problems.push(format!("{}: the workers dial {host}, which is not this run's Service", x.name));
                }
            }
        }
    }
    report("two runs in one namespace that collide", problems);
}

// ---------------------------------------------------------------------------
// JobSet.

/// A DNS-1035 label: what the JobSet webhook requires of its Job and pod names.
fn dns1035(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn jobset_problems(r: &Render, js: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let what = format!("{}: JobSet/{}", r.name, name(js));
    let rjs: Vec<&Value> = js["spec"]["replicatedJobs"].as_array().into_iter().flatten().collect();
    let runs = |rj: &Value, b: &str| {
        rj["template"]["spec"]["template"]["spec"]["containers"].as_array().into_iter().flatten().any(|c| binary_of(c) == Some(b))
    };
    let (Some(coord), Some(worker)) = (rjs.iter().find(|rj| runs(rj, "ddpm-coord")), rjs.iter().find(|rj| runs(rj, "ddpm-worker"))) else {
        return vec![format!("{what}: no replicated Job for the coordinator or the workers")];
    };
    let coord_name = coord["name"].as_str().unwrap_or("?");
    // The coordinator's completion completes the set.
    let sp = &js["spec"]["successPolicy"];
    if sp["operator"] != "All" || sp["targetReplicatedJobs"] != serde_json::json!([coord_name]) {
        p.push(format!("{what}: successPolicy must be All of [{coord_name}]: {sp}"));
    }
    // Coordinator first: the workers wait for it to be ready.
    let order = js["spec"]["startupPolicy"]["startupPolicyOrder"] == "InOrder" && rjs.first().is_some_and(|f| f["name"] == coord_name);
    let depends = worker["dependsOn"] == serde_json::json!([{"name": coord_name, "status": "Ready"}]);
    if !(order || depends) {
        p.push(format!("{what}: the workers must start after the coordinator is ready (dependsOn or startupPolicy InOrder)"));
    }
    // Bounded restarts, old pods gone first; exit 2 fails the set at once,
    // anything else restarts it.
    let fp = &js["spec"]["failurePolicy"];
    if !fp["maxRestarts"].as_u64().is_some_and(|m| (1..=10).contains(&m)) || fp["restartStrategy"] != "BlockingRecreate" {
        p.push(format!("{what}: failurePolicy must restart the set 1 to 10 times, BlockingRecreate: {fp}"));
    }
    for rj in [coord, worker] {
        let rj_name = rj["name"].as_str().unwrap_or("?");
        match failjob_message(rj, 2) {
            None => p.push(format!("{what}: {rj_name}'s podFailurePolicy does not FailJob on exit 2")),
            Some(msg) => {
                let action = jobset_action(js, rj_name, "PodFailurePolicy", &msg);
                if action != "FailJobSet" {
                    p.push(format!("{what}: exit 2 of {rj_name} ({msg:?}) leads to {action}, want FailJobSet"));
                }
            }
        }
        for (reason, msg) in [
            ("BackoffLimitExceeded", "Job has reached the specified backoff limit".to_string()),
            ("PodFailurePolicy", failjob_message(rj, 4).unwrap_or_default()),
        ] {
            if msg.is_empty() {
                continue;
            }
            let action = jobset_action(js, rj_name, reason, &msg);
            if action != "RestartJobSet" {
                p.push(format!("{what}: {reason} of {rj_name} ({msg:?}) leads to {action}, want RestartJobSet"));
            }
        }
    }
    // The JobSet webhook's checks the CRD's schema does not make.
    let names: Vec<&str> = rjs.iter().filter_map(|rj| rj["name"].as_str()).collect();
    for (i, rj) in rjs.iter().enumerate() {
        let rj_name = rj["name"].as_str().unwrap_or("?");
        let last_job = rj["replicas"].as_u64().unwrap_or(1).saturating_sub(1);
        let job_name = format!("{}-{rj_name}-{last_job}", name(js));
        let last_pod = rj["template"]["spec"]["completions"].as_u64().unwrap_or(1).saturating_sub(1);
        let pod_name = format!("{job_name}-{last_pod}-abcde");
        for n in [&job_name, &pod_name] {
            if !dns1035(n) {
                p.push(format!("{what}: {n} is no DNS-1035 label of at most 63 characters (the JobSet webhook refuses it)"));
            }
        }
        for d in rj["dependsOn"].as_array().into_iter().flatten() {
            if !names[..i].contains(&d["name"].as_str().unwrap_or("?")) {
                p.push(format!("{what}: {rj_name} depends on {}, which is not an earlier replicated Job", d["name"]));
            }
        }
    }
    for t in sp["targetReplicatedJobs"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(fp["rules"].as_array().into_iter().flatten().flat_map(|r| r["targetReplicatedJobs"].as_array().into_iter().flatten()))
    {
        if !names.contains(&t.as_str().unwrap_or("?")) {
            p.push(format!("{what}: a policy names replicated Job {t}, which does not exist"));
        }
    }
    p
}

#[test]
fn a_jobset_completes_with_its_coordinator_starts_it_first_and_fails_at_once_on_exit_2() {
    let mut problems = Vec::new();
    let mut seen = 0;
    for r in overlays() {
        for js in r.all("JobSet") {
            seen += 1;
            problems.extend(jobset_problems(r, js));
        }
    }
    assert!(seen >= 2, "only {seen} JobSets rendered");
    report("JobSets that do not hold the run together", problems);
}

// ---------------------------------------------------------------------------
// Kueue.

/// The ConfigMap value `key` the coordinator reads through `env_name`.
fn coordinator_env(r: &Render, env_name: &str) -> Option<String> {
    let c = &r.job_running("ddpm-coord")["spec"]["template"]["spec"]["containers"][0];
    let e = c["env"].as_array()?.iter().find(|e| e["name"] == env_name)?;
    let cm = &e["valueFrom"]["configMapKeyRef"];
    r.find("ConfigMap", cm["name"].as_str()?)?["data"][cm["key"].as_str()?].as_str().map(str::to_string)
}

/// The requests of a run's pods, summed: resource -> amount (CPU in cores).
fn run_requests(r: &Render) -> BTreeMap<String, f64> {
    let mut total = BTreeMap::new();
    for (job, c) in r.ddpm_containers() {
        let pods = job["spec"]["parallelism"].as_u64().unwrap_or(1) as f64;
        for (k, v) in c["resources"]["requests"].as_object().into_iter().flatten() {
            let amount = quantity(v, k == "cpu").unwrap_or(0.0) / if k == "cpu" { 1000.0 } else { 1.0 };
            *total.entry(k.clone()).or_insert(0.0) += amount * pods;
        }
    }
    total
}

#[test]
fn kueue_is_asked_for_what_the_run_needs_and_can_give_it() {
    let kit = render_dir(&k8s_dir().join("kueue"), "kueue");
    let mut problems = Vec::new();
    let local: Vec<&str> = kit.all("LocalQueue").map(name).collect();
    let cq_name = |lq: &Value| lq["spec"]["clusterQueue"].as_str().unwrap_or("?").to_string();
    for lq in kit.all("LocalQueue") {
        if kit.find("ClusterQueue", &cq_name(lq)).is_none() {
            problems.push(format!("LocalQueue/{} points at ClusterQueue {}, which is not in deploy/k8s/kueue", name(lq), cq_name(lq)));
        }
    }
    // Kueue's CEL rule: a flavor lists as many resources as its group covers.
    let mut quota: BTreeMap<String, f64> = BTreeMap::new();
    for cq in kit.all("ClusterQueue") {
        for g in cq["spec"]["resourceGroups"].as_array().into_iter().flatten() {
            let covered = g["coveredResources"].as_array().map_or(0, Vec::len);
            for f in g["flavors"].as_array().into_iter().flatten() {
                if f["resources"].as_array().map_or(0, Vec::len) != covered {
                    problems.push(format!("ClusterQueue/{}: flavor {} lists other resources than its group covers", name(cq), f["name"]));
                }
                if kit.find("ResourceFlavor", f["name"].as_str().unwrap_or("?")).is_none() {
                    problems.push(format!("ClusterQueue/{}: flavor {} is no ResourceFlavor of the kit", name(cq), f["name"]));
                }
                for res in f["resources"].as_array().into_iter().flatten() {
                    let k = res["name"].as_str().unwrap_or("?").to_string();
                    let q = quantity(&res["nominalQuota"], k == "cpu").unwrap_or(0.0) / if k == "cpu" { 1000.0 } else { 1.0 };
                    *quota.entry(k).or_insert(0.0) += q;
                }
            }
        }
    }
    let mut queued = 0;
    for r in overlays() {
        let queue_of = |d: &Value| d["metadata"]["labels"]["kueue.x-k8s.io/queue-name"].as_str().map(str::to_string);
        let queued_docs: Vec<&Value> = r.docs.iter().filter(|d| queue_of(d).is_some()).collect();
        if queued_docs.is_empty() {
            continue;
        }
        queued += 1;
        for d in &queued_docs {
            let q = queue_of(d).unwrap();
            if !local.contains(&q.as_str()) {
                problems.push(format!(
                    "{}: {}/{} is queued in {q}, which is no LocalQueue of deploy/k8s/kueue",
                    r.name,
                    d["kind"].as_str().unwrap_or("?"),
                    name(d)
                ));
            }
        }
        let jobs: Vec<&Value> = r.all("Job").collect();
        if !jobs.is_empty() && queued_docs.len() != jobs.len() {
            problems.push(format!(
                "{}: {} of {} Jobs are queued: all are, or Kueue admits a run by halves",
                r.name,
                queued_docs.len(),
                jobs.len()
            ));
        }
        // Plain Jobs: the workers are admitted with min-workers or more.
        if let Some(w) = jobs.iter().find(|j| binary_of(&j["spec"]["template"]["spec"]["containers"][0]) == Some("ddpm-worker")) {
            let ann = &w["metadata"]["annotations"];
            let min = coordinator_env(r, "DDPM_MIN_WORKERS");
            if ann["kueue.x-k8s.io/job-min-parallelism"].as_str().map(str::to_string) != min {
                problems.push(format!(
                    "{}: the worker Job's kueue.x-k8s.io/job-min-parallelism is {}, DDPM_MIN_WORKERS {min:?}",
                    r.name, ann["kueue.x-k8s.io/job-min-parallelism"]
                ));
            }
            if ann["kueue.x-k8s.io/job-completions-equal-parallelism"] != "true" {
                problems.push(format!("{}: the worker Job lacks kueue.x-k8s.io/job-completions-equal-parallelism: \"true\" (admitted with fewer workers, it would wait for the missing completions)", r.name));
            }
        }
        // A JobSet is one workload: its Jobs are not queued on their own.
        for js in r.all("JobSet") {
            for rj in js["spec"]["replicatedJobs"].as_array().into_iter().flatten() {
                if !rj["template"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"].is_null() {
                    problems.push(format!("{}: JobSet/{}'s {} Jobs carry a queue name of their own", r.name, name(js), rj["name"]));
                }
            }
        }
        // The quota can ever admit this run whole.
        for (res, need) in run_requests(r) {
            let have = quota.get(&res).copied().unwrap_or(0.0);
            if need > have {
                problems.push(format!(
                    "{}: the run requests {need} {res}, the ClusterQueue's quota is {have}: it would never be admitted",
                    r.name
                ));
            }
        }
    }
    assert!(queued >= 2, "only {queued} overlays use Kueue");
    report("Kueue queues and labels", problems);
}

// ---------------------------------------------------------------------------
// Identity.

#[test]
fn web_identity_needs_no_static_keys() {
    let mut problems = Vec::new();
    let mut seen = 0;
    for r in overlays() {
        for (job, c) in r.ddpm_containers() {
            let pod = &job["spec"]["template"]["spec"];
            let what = format!("{}: {}", r.name, name(job));
            let env = |k: &str| c["env"].as_array().into_iter().flatten().find(|e| e["name"] == k).cloned();
            // No key in a manifest, ever.
            for k in ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"] {
                if env(k).is_some_and(|e| e.get("value").is_some()) {
                    problems.push(format!("{what}: {k} is written in the manifest"));
                }
            }
            let Some(sa_name) = pod["serviceAccountName"].as_str() else { continue };
            seen += 1;
            let Some(sa) = r.find("ServiceAccount", sa_name) else {
                problems.push(format!("{what}: ServiceAccount {sa_name} is not in the render"));
                continue;
            };
            for k in ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"] {
                if env(k).is_some() {
                    problems.push(format!("{what}: runs as {sa_name} yet still takes {k}"));
                }
            }
            let role = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].as_str();
            if role.is_none() || env("AWS_ROLE_ARN").and_then(|e| e["value"].as_str().map(str::to_string)).as_deref() != role {
                problems.push(format!("{what}: AWS_ROLE_ARN must be the ServiceAccount's role annotation {role:?}"));
            }
            // The token file is a projected token of this account, for STS.
            let file = env("AWS_WEB_IDENTITY_TOKEN_FILE").and_then(|e| e["value"].as_str().map(str::to_string)).unwrap_or_default();
            let projected = c["volumeMounts"].as_array().into_iter().flatten().any(|m| {
                let dir = m["mountPath"].as_str().unwrap_or("?");
                let vol = pod["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == m["name"]);
                vol.is_some_and(|v| {
                    v["projected"]["sources"].as_array().into_iter().flatten().any(|s| {
                        let t = &s["serviceAccountToken"];
                        t["audience"] == "sts.amazonaws.com" && format!("{dir}/{}", t["path"].as_str().unwrap_or("?")) == file
                    })
                })
            });
            if !projected {
                problems.push(format!(
                    "{what}: AWS_WEB_IDENTITY_TOKEN_FILE {file:?} is no projected service account token for sts.amazonaws.com"
                ));
            }
            if sa["automountServiceAccountToken"] != false || pod["automountServiceAccountToken"] != false {
                problems.push(format!("{what}: the pod gets a Kubernetes API token it does not need"));
            }
        }
    }
    assert!(seen >= 1, "no overlay runs the coordinator with a ServiceAccount");
    report("cloud identity", problems);
}
