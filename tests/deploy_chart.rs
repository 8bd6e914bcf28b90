//! The Helm chart: `helm lint`, every object `helm template` renders (default and GPU
//! values) valid against the Kubernetes schemas, and the commands and environment it
//! renders for each role, run as local processes on loopback, forming a cluster that
//! answers `/v1/recommend`. The tools come from `scripts/setup.sh --deploy`.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;
use support::raft::free_port;
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RELEASE: &str = "t";
const NAMESPACE: &str = "default";

fn tool(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join(default));
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh --deploy",
        path.display()
    );
    path
}

fn helm(args: &[&str]) -> String {
    let out = Command::new(tool("REDREC_HELM", ".redrec/tools/helm/helm"))
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("helm");
    assert!(
        out.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn render(values: &[&str]) -> String {
    let mut args = vec!["template", RELEASE, "helm/redrec", "--namespace", NAMESPACE];
    for v in values {
        args.extend(["-f", v]);
    }
    helm(&args)
}

#[test]
fn chart_lints_and_renders_valid_objects() {
    let dir = tempfile::tempdir().unwrap();
    for values in [
        &[][..],
        &["helm/redrec/ci/gpu-values.yaml"][..],
        &["helm/redrec/ci/tls-values.yaml"][..],
        &["helm/redrec/ci/large-catalogue-values.yaml"][..],
        &["helm/redrec/ci/qdrant-values.yaml"][..],
    ] {
        let mut lint = vec!["lint", "helm/redrec", "--strict"];
        for v in values {
            lint.extend(["-f", v]);
        }
        helm(&lint);
        let rendered = render(values);
        let file = dir.path().join("rendered.yaml");
        std::fs::write(&file, &rendered).unwrap();
        let out = Command::new(tool(
            "REDREC_KUBERNETES_VALIDATE",
            ".redrec/deploy-venv/bin/kubernetes-validate",
        ))
        .args(["--strict", "--quiet", "-k", "1.30.0"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate");
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{values:?}: {report}");
        // The only objects without a Kubernetes schema are the optional ServiceMonitor and
        // PrometheusRule (the Prometheus Operator's CRDs).
        for line in report
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
        {
            assert!(
                line.contains("ServiceMonitor") || line.contains("PrometheusRule"),
                "{line}"
            );
        }
        let kinds: Vec<&str> = rendered
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        let on_qdrant = values.contains(&"helm/redrec/ci/qdrant-values.yaml");
        assert_eq!(kinds.contains(&"StatefulSet"), !on_qdrant, "{kinds:?}");
        for kind in [
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "ConfigMap",
            "NetworkPolicy",
            "Secret",
        ] {
            assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
        }
    }
    // The GPU values ask for a GPU and run the encoder on CUDA.
    let gpu = render(&["helm/redrec/ci/gpu-values.yaml"]);
    assert!(gpu.contains("nvidia.com/gpu: 1"), "{gpu}");
    assert!(gpu.contains("REDREC_DEVICE: \"cuda\""));
    // TLS values: every role serves and calls https, probes included.
    let tls = render(&["helm/redrec/ci/tls-values.yaml"]);
    assert!(tls.contains("REDREC_ENCODER: \"https://"), "{tls}");
    assert!(!tls.contains("http://"), "plain http left in: {tls}");
    assert_eq!(tls.matches("REDREC_TLS_CERT").count(), 3);
    assert!(tls.contains("scheme: HTTPS"));
    assert!(tls.contains("REDREC_OTLP_ENDPOINT: \"https://otel-collector.monitoring:4318\""));
    assert!(tls.contains("REDREC_TRACE_SAMPLE: \"0.1\""));
    monitoring_uses_exported_metrics(&tls);
    // Collection settings and the memory budget reach the shard nodes, read settings the
    // routers.
    let large = render(&["helm/redrec/ci/large-catalogue-values.yaml"]);
    for setting in [
        "REDREC_QUANTIZATION: \"int8\"",
        "REDREC_VECTORS_ON_DISK: \"true\"",
        "REDREC_MEMORY_BUDGET: \"48GiB\"",
        "REDREC_HEDGE: \"20\"",
        "REDREC_GROUP_K_LOSS: \"0.001\"",
        "REDREC_BATCH_GROUPS: \"on\"",
    ] {
        assert!(large.contains(setting), "{setting} missing: {large}");
    }
}

/// The Grafana dashboard (a ConfigMap for Grafana's sidecar, valid JSON with panels) and
/// the alert rules are rendered, and every redrec metric they query is one the code
/// exports (a renamed metric would leave a panel or an alert silently empty).
fn monitoring_uses_exported_metrics(rendered: &str) {
    let docs: Vec<Yaml> = serde_yaml::Deserializer::from_str(rendered)
        .map(|d| Yaml::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect();
    let dashboard = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard ConfigMap");
    let json: Value = serde_json::from_str(dashboard["data"]["redrec.json"].as_str().unwrap())
        .expect("the dashboard is JSON");
    let panels = json["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{json}");
    let rules = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("the PrometheusRule");
    let alerts: Vec<&str> = rules["spec"]["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for want in [
        "RedrecGroupWithoutLeader",
        "RedrecReplicaLagging",
        "RedrecCoverageBelowOne",
        "RedrecEncoderOverloaded",
        "RedrecMemoryNearBudget",
    ] {
        assert!(alerts.contains(&want), "{want} missing from {alerts:?}");
    }
    // Every metric name in the queries, and the sources they must appear in.
    let queries = serde_yaml::to_string(rules).unwrap()
        + &panels
            .iter()
            .flat_map(|p| p["targets"].as_array().unwrap())
            .map(|t| t["expr"].as_str().unwrap().to_string() + "\n")
            .collect::<String>();
    let mut sources = String::new();
    for dir in [
        "router/src",
        "shard-api/src",
        "shard/src",
        "encoder/src",
        "wire/src",
    ] {
        let mut stack = vec![Path::new(ROOT).join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    sources += &std::fs::read_to_string(&p).unwrap();
                }
            }
        }
    }
    let names: std::collections::BTreeSet<&str> = queries
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("redrec_"))
        .map(|w| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
        })
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(
            sources.contains(&format!("\"{name}\"")),
            "{name} is queried but no code exports it"
        );
    }
}

/// `storage.backend: qdrant`: no shard nodes; the router the chart renders, run with its
/// rendered environment against a real Qdrant server, creates the collection with the
/// chart's settings and serves recommends; its Qdrant key comes from the named Secret.
#[test]
fn qdrant_values_render_a_router_on_qdrant() {
    let rendered = render(&["helm/redrec/ci/qdrant-values.yaml"]);
    let docs: Vec<Yaml> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| Yaml::deserialize(d).unwrap())
        .filter(|d: &Yaml| !d.is_null())
        .collect();
    assert!(!docs.iter().any(|d| d["kind"] == "StatefulSet"));
    let full = format!("{RELEASE}-redrec");
    let router = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == format!("{full}-router"))
        .unwrap();
    let env = &router["spec"]["template"]["spec"]["containers"][0]["env"];
    let key = env
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "REDREC_QDRANT_API_KEY")
        .expect("the Qdrant key's variable");
    assert_eq!(key["valueFrom"]["secretKeyRef"]["name"], "qdrant-api-key");
    let Some(bin) = qdrant_binary("running the chart's router on Qdrant") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let qdrant = QdrantServer::start(&bin, &dir.path().join("qdrant")).unwrap();
    // The chart's configuration, with in-cluster names pointed at this machine, keys off.
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == format!("{full}-config"))
        .unwrap();
    let encoder_port = free_port();
    let router_port = free_port();
    let mut env: Vec<(String, String)> = config["data"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().unwrap();
            let v = match k.as_str().unwrap() {
                "REDREC_QDRANT_URL" => {
                    assert_eq!(v, "http://qdrant.qdrant.svc:6334");
                    qdrant.grpc.clone()
                }
                "REDREC_ENCODER" => format!("http://127.0.0.1:{encoder_port}"),
                _ => v.to_string(),
            };
            (k.as_str().unwrap().to_string(), v)
        })
        .collect();
    assert!(!env.iter().any(|(k, _)| k == "REDREC_META"), "{env:?}");
    let encoder_listen = format!("127.0.0.1:{encoder_port}");
    let encoder = Proc::spawn_with_env(
        "encoder",
        &["encoder", "--listen", &encoder_listen],
        &env,
        dir.path(),
    );
    env.push(("REDREC_LISTEN".into(), format!("127.0.0.1:{router_port}")));
    let router = Proc::spawn_with_env("router", &["router"], &env, dir.path());
    let base = router.addr.clone();
    let data = synth(dir.path(), 300, 3, 5);
    let body = json!({"items": data.items.iter().map(|it| json!({
        "id": it["id"], "text": it["text"], "payload": {"category": it["category"]},
    })).collect::<Vec<_>>()});
    let (status, resp) = post(&format!("{base}/v1/items"), &body);
    assert_eq!(status, 200, "{resp}");
    let req =
        json!({"history": recent_history(&data.users[0], 10), "scenario": "homefeed", "k": 5});
    let (status, answer) = post(&format!("{base}/v1/recommend"), &req);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["coverage"], json!({"shards": 3, "answered": 3}));
    // The collection has the chart's settings: 3 shards, 2 replicas, int8.
    let (_, info) = get(&format!("{}/collections/redrec", qdrant.http));
    let config = &info["result"]["config"];
    assert_eq!(config["params"]["shard_number"], 3, "{info}");
    assert_eq!(config["params"]["replication_factor"], 2, "{info}");
    assert!(
        config["quantization_config"]["scalar"].is_object()
            || config["params"]["vectors"]["quantization_config"]["scalar"].is_object(),
        "{info}"
    );
    drop((router, encoder));
}

/// A role's container as rendered: its args and its environment, with config maps and the
/// downward API resolved as Kubernetes would for `pod`.
struct Role {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn role(docs: &[Yaml], kind: &str, name: &str, pod: &str, ordinal: usize) -> Role {
    let config: HashMap<String, String> = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-config"))
        })
        .and_then(|d| d["data"].as_mapping())
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
                .collect()
        })
        .unwrap_or_default();
    let workload = docs
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"));
    let container = &workload["spec"]["template"]["spec"]["containers"][0];
    let args = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut env: Vec<(String, String)> = Vec::new();
    for from in container["envFrom"].as_sequence().into_iter().flatten() {
        assert!(from["configMapRef"].is_mapping(), "{from:?}");
        env.extend(config.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    for e in container["env"].as_sequence().into_iter().flatten() {
        let key = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            // $(VAR) refers to a variable defined before it.
            let mut v = v.to_string();
            for (k, val) in &env {
                v = v.replace(&format!("$({k})"), val);
            }
            v
        } else if let Some(secret) = e["valueFrom"]["secretKeyRef"].as_mapping() {
            secret_value(
                docs,
                secret["name"].as_str().unwrap(),
                secret["key"].as_str().unwrap(),
            )
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.to_string(),
                Some("metadata.namespace") => NAMESPACE.to_string(),
                Some("metadata.labels['apps.kubernetes.io/pod-index']") => ordinal.to_string(),
                other => panic!("{key}: unexpected source {other:?}"),
            }
        };
        env.push((key, value));
    }
    Role { args, env }
}

/// A key of a rendered Secret.
fn secret_value(docs: &[Yaml], name: &str, key: &str) -> String {
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no Secret {name}"));
    secret["stringData"][key]
        .as_str()
        .unwrap_or_else(|| panic!("Secret {name} has no {key}"))
        .to_string()
}

#[test]
fn rendered_role_commands_form_a_working_cluster() {
    let rendered = render(&[]);
    let docs: Vec<Yaml> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| Yaml::deserialize(d).unwrap())
        .filter(|d: &Yaml| !d.is_null())
        .collect();
    let full = format!("{RELEASE}-redrec");
    let nodes = 3;
    // Where each in-cluster name lives on this machine.
    let shard_ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
    let encoder_port = free_port();
    let router_port = free_port();
    let mut hosts: Vec<(String, String)> = (0..nodes)
        .map(|i| {
            (
                format!(
                    "{full}-shard-{i}.{full}-shard-headless.{NAMESPACE}.svc.cluster.local:7001"
                ),
                format!("127.0.0.1:{}", shard_ports[i]),
            )
        })
        .collect();
    hosts.push((
        format!("{full}-encoder:7100"),
        format!("127.0.0.1:{encoder_port}"),
    ));
    let dir = tempfile::tempdir().unwrap();
    let local =
        |role: Role, listen: u16, data: Option<PathBuf>| -> (Vec<String>, Vec<(String, String)>) {
            let env = role
                .env
                .into_iter()
                .map(|(k, mut v)| {
                    for (from, to) in &hosts {
                        v = v.replace(from.as_str(), to);
                    }
                    match k.as_str() {
                        "REDREC_LISTEN" => {
                            assert!(v.starts_with("0.0.0.0:"), "{v}");
                            v = format!("127.0.0.1:{listen}");
                        }
                        "REDREC_DATA" => v = data.clone().unwrap().to_string_lossy().into_owned(),
                        _ => {}
                    }
                    (k, v)
                })
                .collect();
            (role.args, env)
        };

    let mut procs = Vec::new();
    for (i, &port) in shard_ports.iter().enumerate() {
        let pod = format!("{full}-shard-{i}");
        let r = role(&docs, "StatefulSet", &format!("{full}-shard"), &pod, i);
        let (args, env) = local(r, port, Some(dir.path().join(&pod)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        procs.push(Proc::spawn_with_env(&pod, &args, &env, dir.path()));
    }
    for (name, port) in [("encoder", encoder_port), ("router", router_port)] {
        let r = role(&docs, "Deployment", &format!("{full}-{name}"), name, 0);
        let (args, env) = local(r, port, None);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        procs.push(Proc::spawn_with_env(name, &args, &env, dir.path()));
    }
    let base = format!("http://127.0.0.1:{router_port}");
    support::raft::eventually(Duration::from_secs(60), "shard nodes ready", || {
        shard_ports.iter().all(|p| {
            http()
                .get(format!("http://127.0.0.1:{p}/readyz"))
                .send()
                .is_ok_and(|r| r.status().is_success())
        })
    });
    // Auth is on by default: the chart generated an admin key, and a cluster credential
    // every internal call carries.
    let key = secret_value(&docs, &format!("{full}-auth"), "admin-key");
    let (status, refused) = post(&format!("{base}/v1/recommend"), &json!({}));
    assert_eq!(status, 401, "{refused}");
    let keyed = |path: &str, body: Option<&Value>| -> (u16, Value) {
        let url = format!("{base}{path}");
        let req = match body {
            Some(b) => http().post(url).json(b),
            None => http().get(url),
        };
        let resp = req.header("x-api-key", &key).send().expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    };
    let data = synth(dir.path(), 300, 3, 5);
    for chunk in data.items.chunks(100) {
        let body = json!({"items": chunk.iter().map(|it| json!({
            "id": it["id"], "text": it["text"], "payload": {"category": it["category"]},
        })).collect::<Vec<_>>()});
        let (status, resp) = keyed("/v1/items", Some(&body));
        assert_eq!(status, 200, "{resp}");
    }
    let req =
        json!({"history": recent_history(&data.users[0], 10), "scenario": "homefeed", "k": 5});
    let (status, answer) = keyed("/v1/recommend", Some(&req));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["items"].as_array().unwrap().len(), 5, "{answer}");
    assert_eq!(answer["coverage"], json!({"shards": 3, "answered": 3}));
    let (_, cluster) = keyed("/v1/cluster", None);
    let replicas = cluster["shards"][0]["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{cluster}");
    assert_eq!(
        replicas.iter().filter(|r| r["leader"] == true).count(),
        1,
        "{cluster}"
    );
}
