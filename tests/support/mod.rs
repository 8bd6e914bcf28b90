//! Real `redrec` processes on loopback for cluster scenarios: each picks a free port
//! (port 0, announced on stdout), logs to the scenario's temp dir, and is killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_redrec");

pub struct Proc {
    pub name: String,
    pub addr: String,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], dir: &Path) -> Proc {
        Self::spawn_with_env(name, args, &[], dir)
    }

    /// Like [`Proc::spawn`], with extra environment variables.
    pub fn spawn_with_env(name: &str, args: &[&str], env: &[(String, String)], dir: &Path) -> Proc {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
        let mut child = Command::new(BIN)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.contains("listening on") => l,
            other => {
                let _ = child.kill();
                let log =
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
                panic!("{name} did not start ({other:?}); log:\n{log}");
            }
        };
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        Proc {
            name: name.into(),
            addr,
            child,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGCONT,
        );
        self.kill();
    }
}

/// Shards, an encoder and a router, all separate processes.
pub struct Cluster {
    pub router: Proc,
    pub encoder: Proc,
    pub shards: Vec<Proc>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(shards: usize, router_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let shards: Vec<Proc> = (0..shards)
            .map(|i| {
                let data = dir.path().join(format!("shard-{i}"));
                Proc::spawn(
                    &format!("shard-{i}"),
                    &[
                        "shard",
                        "--listen",
                        "127.0.0.1:0",
                        "--data",
                        data.to_str().unwrap(),
                    ],
                    dir.path(),
                )
            })
            .collect();
        let encoder = Proc::spawn(
            "encoder",
            &["encoder", "--listen", "127.0.0.1:0", "--sessions", "1"],
            dir.path(),
        );
        let list = shards
            .iter()
            .map(|s| s.addr.clone())
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "router",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            &list,
            "--encoder",
            &encoder.addr,
        ];
        args.extend_from_slice(router_args);
        let router = Proc::spawn("router", &args, dir.path());
        Cluster {
            router,
            encoder,
            shards,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.router.addr, path)
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
