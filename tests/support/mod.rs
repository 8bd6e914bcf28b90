//! Real `redrec` processes on loopback for cluster scenarios, started by the launcher the
//! demo and the benches use: each picks a free port (port 0, announced on stdout) or is
//! given one, logs to the scenario's temp dir, and is killed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_redrec");

use redrec::launch::Layout;
pub use redrec::launch::Proc;

/// [`Proc::start`] of this build's binary, logging into `dir`; a process that does not
/// start fails the test.
pub trait Spawn {
    fn spawn(name: &str, args: &[&str], dir: &Path) -> Proc {
        Self::spawn_with_env(name, args, &[], dir)
    }

    /// Like [`Spawn::spawn`], with extra environment variables.
    fn spawn_with_env(name: &str, args: &[&str], env: &[(String, String)], dir: &Path) -> Proc;
}

impl Spawn for Proc {
    fn spawn_with_env(name: &str, args: &[&str], env: &[(String, String)], dir: &Path) -> Proc {
        Proc::start(Path::new(BIN), name, args, env, dir).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// The launcher's layout for a test: data and logs in `dir`.
pub fn layout(dir: &Path) -> Layout {
    Layout {
        exe: BIN.into(),
        dir: dir.to_path_buf(),
        logs: dir.to_path_buf(),
    }
}

/// Shards (or a Qdrant server), an encoder and a router, all separate processes.
pub struct Cluster {
    pub router: Proc,
    pub encoder: Proc,
    pub shards: Vec<Proc>,
    /// The Qdrant server holding the items, for a router on the Qdrant backend.
    pub qdrant: Option<QdrantServer>,
    pub dir: tempfile::TempDir,
}

pub use redrec::qdrant_server::{self, QdrantServer};

/// Which storage a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// redrec's own shards (embedded Qdrant engine).
    Embedded,
    /// A Qdrant server, through `--qdrant-url`.
    Qdrant,
}

/// The Qdrant binary, or `None` with a line saying the test is skipped (a machine
/// without `../shared/qdrant`).
pub fn qdrant_binary(test: &str) -> Option<std::path::PathBuf> {
    let bin = qdrant_server::binary();
    if bin.is_none() {
        eprintln!(
            "SKIPPED {test}: no Qdrant server binary (../shared/qdrant/qdrant or $REDREC_QDRANT_BIN)"
        );
    }
    bin
}

impl Cluster {
    pub fn start(shards: usize, router_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let local = layout(dir.path())
            .cluster(shards, 1, &["--sessions", "1"], "127.0.0.1:0", router_args)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Cluster {
            router: local.router,
            encoder: local.encoder,
            shards: local.shards,
            qdrant: None,
            dir,
        }
    }

    /// `shards` lone shards, or on [`Backend::Qdrant`] a Qdrant server with a
    /// `shards`-shard collection; `None` (skipped, said on stderr) where the Qdrant binary
    /// is absent.
    pub fn on(backend: Backend, shards: usize, router_args: &[&str]) -> Option<Cluster> {
        if backend == Backend::Embedded {
            return Some(Self::start(shards, router_args));
        }
        let bin = qdrant_binary("the Qdrant backend's run")?;
        let dir = tempfile::tempdir().expect("temp dir");
        let qdrant = QdrantServer::start(&bin, &dir.path().join("qdrant"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let n = shards.to_string();
        let mut args = vec!["--qdrant-shards", n.as_str()];
        args.extend_from_slice(router_args);
        let local = layout(dir.path())
            .on_qdrant(&qdrant.grpc, &["--sessions", "1"], "127.0.0.1:0", &args)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Some(Cluster {
            router: local.router,
            encoder: local.encoder,
            shards: local.shards,
            qdrant: Some(qdrant),
            dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.router.addr, path)
    }

    /// Whether `/v1/cluster`'s answer `info` names `backend` (and, on Qdrant, this
    /// cluster's server).
    pub fn serves_from(&self, backend: Backend, info: &Value) -> bool {
        let said = info["backend"].as_str().unwrap_or_default();
        match (backend, &self.qdrant) {
            (Backend::Embedded, _) => said == "embedded",
            (Backend::Qdrant, Some(q)) => said.starts_with(&format!("qdrant {} ", q.grpc)),
            (Backend::Qdrant, None) => false,
        }
    }
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// POSTs JSON; returns the status and the body parsed as JSON (Null if it is not JSON).
pub fn post(url: &str, body: &Value) -> (u16, Value) {
    let resp = http().post(url).json(body).send().expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

pub fn post_raw(
    url: &str,
    body: impl Into<reqwest::blocking::Body>,
    content_type: Option<&str>,
) -> (u16, Value) {
    let mut req = http().post(url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

pub fn http_delete(url: &str) -> (u16, Value) {
    let r = http().delete(url).send().expect("delete");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

pub fn get(url: &str) -> (u16, Value) {
    let resp = http().get(url).send().expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

/// A synthetic dataset written by `redrec dataset synth`.
pub struct Dataset {
    pub items: Vec<Value>,
    pub users: Vec<Value>,
    pub dir: PathBuf,
}

pub fn synth(dir: &Path, items: usize, users: usize, seed: u64) -> Dataset {
    let out = dir.join("dataset");
    let status = Command::new(BIN)
        .args(["dataset", "synth", "--out", out.to_str().unwrap()])
        .args([
            "--items",
            &items.to_string(),
            "--users",
            &users.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .expect("dataset synth");
    assert!(status.success());
    let read = |f: &str| -> Vec<Value> {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    Dataset {
        items: read("items.jsonl"),
        users: read("users.jsonl"),
        dir: out,
    }
}

/// Ingests items through the item tower (`POST /v1/items`), in batches.
pub fn ingest(cluster: &Cluster, items: &[Value]) {
    for chunk in items.chunks(500) {
        let body = serde_json::json!({"items": chunk.iter().map(|it| serde_json::json!({
            "id": it["id"], "text": it["text"], "payload": {"title": it["title"], "category": it["category"]},
        })).collect::<Vec<_>>()});
        let (status, resp) = post(&cluster.url("/v1/items"), &body);
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["upserted"], chunk.len());
    }
}

/// The newest `n` events of a user's history, as a recommend request's `history`.
pub fn recent_history(user: &Value, n: usize) -> Vec<Value> {
    let h = user["history"].as_array().unwrap();
    h[h.len().saturating_sub(n)..].to_vec()
}

pub fn within<T>(limit: Duration, f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    assert!(took <= limit, "took {took:?}, limit {limit:?}");
    (out, took)
}
pub mod raft;

/// The `/metrics` text of the server at `addr`.
pub fn metrics_text(addr: &str) -> String {
    http()
        .get(format!("{addr}/metrics"))
        .send()
        .expect("metrics")
        .text()
        .expect("metrics text")
}

/// The samples of metric `name` in exposition `text`, added up over their labels.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Checks Prometheus' text exposition format strictly (what `promtool check metrics`
/// checks of the format): every sample line is `name{labels} value`, a family's `# TYPE`
/// comes before its samples and once, and every histogram has increasing `le` buckets
/// ending in `+Inf` whose counts never fall and equal its `_count`. Returns the families
/// by type.
pub fn check_exposition(text: &str) -> std::collections::BTreeMap<String, String> {
    use std::collections::BTreeMap;
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    // histogram family + labels other than le -> (le, count) in order, and its _count
    let mut buckets: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<(String, String), f64> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(valid_name(name), "bad metric name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type in {line:?}"
            );
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "two TYPE lines for {name}"
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                let l = l
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed {line:?}"));
                (n, l)
            }
            None => (series, ""),
        };
        assert!(valid_name(name), "bad metric name in {line:?}");
        let mut le = None;
        let mut others = Vec::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label in {line:?}"));
            assert!(valid_name(k), "bad label name in {line:?}");
            let v = v.trim_end_matches('"');
            if k == "le" {
                le = Some(v.to_string());
            } else {
                others.push(format!("{k}={v}"));
            }
        }
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("{name}: sample before its # TYPE"));
        if kind == "histogram" {
            let key = (family.to_string(), others.join(","));
            if name.ends_with("_bucket") {
                let le = le.unwrap_or_else(|| panic!("bucket without le: {line:?}"));
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                buckets.entry(key).or_default().push((le, value));
            } else if name.ends_with("_count") {
                counts.insert(key, value);
            }
        }
    }
    for (key, b) in &buckets {
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{key:?}: {b:?}"
        );
        let last = b.last().unwrap();
        assert!(last.0.is_infinite(), "{key:?} has no +Inf bucket");
        assert_eq!(
            Some(&last.1),
            counts.get(key),
            "{key:?}: +Inf bucket != _count"
        );
    }
    types
}

/// Items `item-{from}` … as `POST /v1/items/vectors` takes them: each a unit vector drawn
/// from its id, its number in the payload.
pub fn vector_items(from: usize, n: usize) -> Value {
    let items: Vec<Value> = (from..from + n)
        .map(|i| {
            let mut v = raft::vector_of(&format!("item-{i}"));
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            serde_json::json!({"id": format!("item-{i}"), "vector": v, "payload": {"n": i}})
        })
        .collect();
    serde_json::json!({ "items": items })
}

/// A user's event on `item-{item}` at `ts`, in a scenario that depends on the item.
pub fn user_event(user: &str, item: usize, ts: i64) -> Value {
    let scenario = ["homefeed", "search", "ads"][item % 3];
    serde_json::json!({"user_id": user, "item_id": format!("item-{item}"), "scenario": scenario, "ts": ts})
}

/// The ids of a recommend's or search's `items`, in order.
pub fn ids_of(answer: &Value) -> Vec<String> {
    answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// Sends 30 events for alice (5 of them twice) and 4 for bob to the router at `base`,
/// checks each is stored once and alice's history reads back oldest first, and returns
/// that history as a recommend request's `history`.
pub fn store_alice_and_bob(base: &str) -> Vec<Value> {
    let mut sent: Vec<Value> = (0..30)
        .map(|i| user_event("alice", i * 3, 1_000 + i as i64))
        .collect();
    sent.extend((0..5).map(|i| user_event("alice", i * 3, 1_000 + i as i64)));
    sent.extend((0..4).map(|i| user_event("bob", 100 + i, 500 + i as i64)));
    let (s, b) = post(
        &format!("{base}/v1/events"),
        &serde_json::json!({ "events": sent }),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["received"].as_u64(), b["stored"].as_u64()),
        (Some(39), Some(34)),
        "{b}"
    );
    let (s, h) = get(&format!("{base}/v1/users/alice/history"));
    assert_eq!(s, 200, "{h}");
    let stored = h["events"].as_array().unwrap();
    assert_eq!(stored.len(), 30, "{h}");
    assert!(stored
        .windows(2)
        .all(|w| w[0]["ts"].as_i64() < w[1]["ts"].as_i64()));
    stored
        .iter()
        .map(|e| serde_json::json!({"item_id": e["item_id"], "scenario": e["scenario"], "ts": e["ts"]}))
        .collect()
}

/// Runs this build's `redrec` with `args`, which must succeed; returns its stdout.
/// The columns of a bench table's row whose first column is `label`.
pub fn bench_row<'a>(table: &'a str, label: &str) -> Vec<&'a str> {
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("| {label} |")))
        .unwrap_or_else(|| panic!("no row {label:?} in\n{table}"));
    row.trim_matches('|').split('|').map(str::trim).collect()
}

pub fn redrec_cli(args: &[&str]) -> String {
    redrec_cli_with(args, &[])
}

/// [`redrec_cli`] with `env` set for it and the processes it starts.
pub fn redrec_cli_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("redrec");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}
