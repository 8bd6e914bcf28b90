//! Raft-replicated shard nodes as real processes on loopback: fixed free ports (peers must
//! know them before start), an optional TCP proxy on every node-to-node link so a test can
//! cut a node off, a writer that records which writes were acknowledged, and checks that
//! every replica holds every acknowledged write and the same data.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use redrec::launch::free_port;

use super::{http, Proc, Spawn};

/// Forwards TCP from its own port to `target` while up; when down, cuts every open
/// connection and refuses new ones.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut list = conns2.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { port, up, conns }
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for c in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// `n` shard nodes hosting group 0, and a router over them.
pub struct RaftCluster {
    pub dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    pub nodes: Vec<Option<Proc>>,
    /// `links[i][j]`: the proxy node i uses to reach node j (when proxied).
    pub links: Vec<Vec<Option<Proxy>>>,
    pub router: Option<Proc>,
    extra: Vec<String>,
}

pub const TICK_MS: u64 = 50;
pub const ELECTION_TICKS: u64 = 10;

impl RaftCluster {
    /// Starts `n` nodes (ids 1..=n) and a router. With `proxied`, every node-to-node link
    /// goes through its own [`Proxy`].
    pub fn start(n: usize, proxied: bool, extra: &[&str]) -> RaftCluster {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let links = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| (proxied && i != j).then(|| Proxy::start(ports[j])))
                    .collect()
            })
            .collect();
        let mut c = RaftCluster {
            dir: tempfile::tempdir().expect("temp dir"),
            ports,
            nodes: (0..n).map(|_| None).collect(),
            links,
            router: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..n {
            c.start_node(i);
        }
        let group = c.addrs().join(",");
        c.router = Some(Proc::spawn(
            "router",
            &[
                "router",
                "--listen",
                "127.0.0.1:0",
                "--group",
                &group,
                "--sessions",
                "1",
                "--user-cache",
                "0",
            ],
            c.dir.path(),
        ));
        c
    }

    pub fn addr(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    pub fn addrs(&self) -> Vec<String> {
        (0..self.ports.len()).map(|i| self.addr(i)).collect()
    }

    pub fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{}", i + 1))
    }

    fn peers(&self, i: usize) -> String {
        (0..self.ports.len())
            .filter(|&j| j != i)
            .map(|j| {
                let port = match &self.links[i][j] {
                    Some(p) => p.port,
                    None => self.ports[j],
                };
                format!("{}=http://127.0.0.1:{port}", j + 1)
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn start_node(&mut self, i: usize) {
        let (listen, data, peers, id) = (
            format!("127.0.0.1:{}", self.ports[i]),
            self.data(i),
            self.peers(i),
            (i + 1).to_string(),
        );
        let (tick, election) = (TICK_MS.to_string(), ELECTION_TICKS.to_string());
        let mut args = vec![
            "shard",
            "--listen",
            &listen,
            "--data",
            data.to_str().unwrap(),
            "--node-id",
            &id,
            "--peers",
            &peers,
            "--raft-tick-ms",
            &tick,
            "--raft-election-ticks",
            &election,
        ];
        let extra = self.extra.clone();
        args.extend(extra.iter().map(String::as_str));
        self.nodes[i] = Some(Proc::spawn(
            &format!("node-{}", i + 1),
            &args,
            self.dir.path(),
        ));
    }

    /// `kill -9`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.kill();
        }
    }

    pub fn router_url(&self, path: &str) -> String {
        format!("{}{}", self.router.as_ref().unwrap().addr, path)
    }

    /// Group 0's status on node `i`, if it answers.
    pub fn status(&self, i: usize) -> Option<Value> {
        self.nodes[i].as_ref()?;
        let r = http()
            .get(format!("{}/v1/groups/0/status", self.addr(i)))
            .timeout(Duration::from_secs(1))
            .send()
            .ok()?;
        r.status().is_success().then(|| r.json().ok()).flatten()
    }

    /// The node leading group 0 (as it says itself), once there is one.
    pub fn wait_leader(&self, limit: Duration) -> usize {
        let until = Instant::now() + limit;
        loop {
            let leader = (0..self.ports.len())
                .find(|&i| self.status(i).is_some_and(|s| s["is_leader"] == true));
            if let Some(i) = leader {
                return i;
            }
            assert!(Instant::now() < until, "no leader within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn digest(&self, i: usize) -> Option<Value> {
        let r = http()
            .get(format!("{}/v1/groups/0/digest", self.addr(i)))
            .timeout(Duration::from_secs(10))
            .send()
            .ok()?;
        r.status().is_success().then(|| r.json().ok()).flatten()
    }

    /// Waits until every running node is ready and all hold the same points (count and
    /// checksum), then checks each holds every id in `acked`. Returns the digest.
    pub fn assert_converged(&self, acked: &[String], limit: Duration) -> Value {
        let until = Instant::now() + limit;
        let running: Vec<usize> = (0..self.ports.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect();
        let digests = loop {
            let ready = running.iter().all(|&i| {
                http()
                    .get(format!("{}/readyz", self.addr(i)))
                    .send()
                    .is_ok_and(|r| r.status().is_success())
            });
            let digests: Vec<Option<Value>> = running.iter().map(|&i| self.digest(i)).collect();
            let same = digests.iter().all(|d| {
                d.as_ref().map(|d| (&d["points"], &d["checksum"]))
                    == digests[0].as_ref().map(|d| (&d["points"], &d["checksum"]))
            });
            if ready && same && digests[0].is_some() {
                break digests;
            }
            assert!(
                Instant::now() < until,
                "replicas did not converge within {limit:?}: {digests:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        for &i in &running {
            let mut found = 0;
            for chunk in acked.chunks(500) {
                let r: Value = http()
                    .post(format!("{}/v1/groups/0/points/get", self.addr(i)))
                    .json(&json!({"ids": chunk}))
                    .send()
                    .expect("get points")
                    .json()
                    .expect("json");
                found += r["points"].as_array().map_or(0, Vec::len);
            }
            assert_eq!(
                found,
                acked.len(),
                "node {} lost acknowledged writes ({} of {} present)",
                i + 1,
                found,
                acked.len()
            );
        }
        digests[0].clone().unwrap()
    }
}

/// The vector written for an id: a function of the id, so any replica can be checked.
pub fn vector_of(id: &str) -> Vec<f32> {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    (0..64)
        .map(|k| {
            let x = h.rotate_left(k as u32 % 64) ^ (k as u64).wrapping_mul(0x9e3779b97f4a7c15);
            ((x % 2001) as f32 - 1000.0) / 1000.0
        })
        .collect()
}

/// Writes batches of new items through the router until stopped, remembering which were
/// acknowledged (200) and counting what was refused.
pub struct Writer {
    stop: Arc<AtomicBool>,
    pub acked: Arc<Mutex<Vec<String>>>,
    pub refused: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn start(url: String, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let refused = Arc::new(AtomicUsize::new(0));
        let (s, a, r, prefix) = (
            stop.clone(),
            acked.clone(),
            refused.clone(),
            prefix.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let client = http();
            let mut n = 0usize;
            while !s.load(Ordering::SeqCst) {
                let ids: Vec<String> = (n..n + 10).map(|k| format!("{prefix}{k}")).collect();
                n += 10;
                let items: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"id": id, "vector": vector_of(id)}))
                    .collect();
                let ok = client
                    .post(&url)
                    .json(&json!({"items": items}))
                    .send()
                    .is_ok_and(|resp| resp.status().is_success());
                if ok {
                    a.lock().unwrap().extend(ids);
                } else {
                    r.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Writer {
            stop,
            acked,
            refused,
            thread: Some(thread),
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops writing and returns the acknowledged ids.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.acked.lock().unwrap().clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Waits until `f` holds, or fails after `limit`.
pub fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < until, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
