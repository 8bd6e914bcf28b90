//! Horizontal scaling with real processes on loopback: seed nodes forming a cluster and
//! its meta group, spare nodes joining through the seeds, new groups formed from them,
//! and slots moved online under write and recommend traffic. At the end every
//! acknowledged write is in exactly one group, and the meta members agree on the map.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::raft::{eventually, free_port, vector_of, Writer};
use support::*;

/// One cluster at a time (see `raft_groups.rs`).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const META: &str = "18446744073709551615";

/// Shard nodes 1..=n: the first three are the seeds (hosting the meta group and the
/// first groups), the rest join through them.
struct Scale {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    nodes: Vec<Option<Proc>>,
    first_groups: String,
}

impl Scale {
    fn start(first_groups: &str) -> Scale {
        let mut s = Scale {
            dir: tempfile::tempdir().expect("temp dir"),
            ports: (0..3).map(|_| free_port()).collect(),
            nodes: Vec::new(),
            first_groups: first_groups.into(),
        };
        for i in 0..3 {
            s.nodes.push(None);
            s.start_node(i);
        }
        eventually(Duration::from_secs(30), "a settled first map", || {
            s.settled()
        });
        s
    }

    fn addr(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn seeds(&self) -> String {
        (0..3).map(|i| self.addr(i)).collect::<Vec<_>>().join(",")
    }

    fn start_node(&mut self, i: usize) {
        let listen = format!("127.0.0.1:{}", self.ports[i]);
        let data = self.dir.path().join(format!("node-{}", i + 1));
        let id = (i + 1).to_string();
        let mut args: Vec<String> = [
            "shard",
            "--listen",
            &listen,
            "--data",
            data.to_str().unwrap(),
            "--node-id",
            &id,
            "--raft-tick-ms",
            "50",
        ]
        .map(String::from)
        .to_vec();
        if i < 3 {
            let peers: Vec<String> = (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("{}={}", j + 1, self.addr(j)))
                .collect();
            args.extend(["--peers".into(), peers.join(",")]);
            args.extend(["--groups".into(), self.first_groups.clone()]);
        } else {
            args.extend(["--seeds".into(), self.seeds()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nodes[i] = Some(Proc::spawn(
            &format!("node-{}", i + 1),
            &args,
            self.dir.path(),
        ));
    }

    /// Starts `n` more nodes, joining through the seeds.
    fn add_nodes(&mut self, n: usize) {
        for _ in 0..n {
            self.ports.push(free_port());
            self.nodes.push(None);
            self.start_node(self.ports.len() - 1);
        }
    }

    fn router(&self, name: &str) -> Proc {
        Proc::spawn(
            name,
            &[
                "router",
                "--listen",
                "127.0.0.1:0",
                "--meta",
                &self.seeds(),
                "--sessions",
                "1",
                "--user-cache",
                "0",
                "--deadline-ms",
                "3000",
            ],
            self.dir.path(),
        )
    }

    /// The map meta member `i` holds.
    fn map(&self, i: usize) -> Option<Value> {
        self.nodes[i].as_ref()?;
        let r = http()
            .get(format!("{}/v1/meta/map", self.addr(i)))
            .timeout(Duration::from_secs(2))
            .send()
            .ok()?;
        r.status().is_success().then(|| r.json().ok()).flatten()
    }

    /// The newest map among the running seeds.
    fn newest_map(&self) -> Option<Value> {
        (0..3)
            .filter_map(|i| self.map(i))
            .max_by_key(|m| m["version"].as_u64())
    }

    fn meta_leader(&self) -> Option<usize> {
        (0..3).find(|&i| {
            self.nodes[i].is_some()
                && http()
                    .get(format!("{}/v1/groups/{META}/status", self.addr(i)))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .ok()
                    .and_then(|r| r.json::<Value>().ok())
                    .is_some_and(|s| s["is_leader"] == true)
        })
    }

    /// Initialised, every group managed, no move under way, slots even (±1).
    fn settled(&self) -> bool {
        let Some(m) = self.newest_map() else {
            return false;
        };
        let groups = m["groups"].as_object().cloned().unwrap_or_default();
        if m["version"] == 0 || groups.values().any(|g| g["managed"] != true) {
            return false;
        }
        let counts = slot_counts(&m);
        let (lo, hi) = (counts.values().min(), counts.values().max());
        m["moves"].as_array().is_some_and(Vec::is_empty)
            && m["rebalancing"] == false
            && matches!((lo, hi), (Some(lo), Some(hi)) if hi - lo <= 1)
    }

    /// How many times each id is held, over the leaders of every group in `map`.
    fn holdings(&self, map: &Value) -> HashMap<String, usize> {
        let mut held: HashMap<String, usize> = HashMap::new();
        for (g, info) in map["groups"].as_object().unwrap() {
            let leader = info["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| map["nodes"][n.to_string()]["addr"].as_str().unwrap())
                .find(|addr| {
                    http()
                        .get(format!("{addr}/v1/groups/{g}/status"))
                        .send()
                        .ok()
                        .and_then(|r| r.json::<Value>().ok())
                        .is_some_and(|s| s["is_leader"] == true && s["caught_up"] == true)
                })
                .unwrap_or_else(|| panic!("group {g} has no leader"));
            let mut cursor = Value::Null;
            loop {
                let (s, page) = post(
                    &format!("{leader}/v1/groups/{g}/scroll"),
                    &json!({"cursor": cursor, "limit": 4096}),
                );
                assert_eq!(s, 200, "{page}");
                for p in page["points"].as_array().unwrap() {
                    *held.entry(p["id"].as_str().unwrap().into()).or_default() += 1;
                }
                cursor = page["next"].clone();
                if cursor.is_null() {
                    break;
                }
            }
        }
        held
    }

    /// Every acknowledged id is held exactly once, and nothing is held twice.
    fn assert_exactly_once(&self, acked: &[String]) {
        let map = self.newest_map().expect("a map");
        let held = self.holdings(&map);
        let twice: Vec<_> = held.iter().filter(|(_, &n)| n > 1).take(5).collect();
        assert!(twice.is_empty(), "held by two groups: {twice:?}");
        let missing: Vec<_> = acked
            .iter()
            .filter(|id| !held.contains_key(*id))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "acknowledged writes missing (of {}): {missing:?}",
            acked.len()
        );
    }

    fn cli(&self, args: &[&str]) -> String {
        redrec_cli(&[&["cluster"][..], args].concat())
    }
}

fn slot_counts(map: &Value) -> HashMap<String, usize> {
    let mut counts: HashMap<String, usize> = map["groups"]
        .as_object()
        .unwrap()
        .keys()
        .map(|g| (g.clone(), 0))
        .collect();
    for g in map["slots"].as_array().unwrap() {
        *counts.entry(g.to_string()).or_default() += 1;
    }
    counts
}

/// Writes `n` items (ids `prefix0..`) through the router, 1,000 per request, 4 at once.
fn bulk_ingest(url: &str, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|k| format!("{prefix}{k}")).collect();
    std::thread::scope(|s| {
        for part in ids.chunks(n.div_ceil(4)) {
            s.spawn(move || {
                for chunk in part.chunks(1000) {
                    let items: Vec<Value> = chunk
                        .iter()
                        .map(|id| json!({"id": id, "vector": vector_of(id)}))
                        .collect();
                    let (s, body) = post(url, &json!({"items": items}));
                    assert_eq!(s, 200, "{body}");
                }
            });
        }
    });
    ids
}

/// Recommend requests in a loop over histories of known items, counting failures and
/// partial answers (which must say so in their coverage).
struct Reader {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    fn start(url: String, known: Vec<String>) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let client = http();
            let mut k = 0usize;
            while !s.load(Ordering::SeqCst) {
                let history: Vec<Value> = (0..20)
                    .map(|j| {
                        let id = &known[(k * 131 + j * 977) % known.len()];
                        json!({"item_id": id, "scenario": "homefeed"})
                    })
                    .collect();
                k += 1;
                let req = json!({"history": history, "scenario": "homefeed", "k": 20});
                let resp = client.post(&url).json(&req).send();
                let answer = resp.map_err(|e| e.to_string()).and_then(|r| {
                    let status = r.status().as_u16();
                    let body: Value = r.json().unwrap_or(Value::Null);
                    if status == 200 {
                        Ok(body)
                    } else {
                        Err(format!("{status}: {body}"))
                    }
                });
                match answer {
                    Ok(body) => {
                        let c = &body["coverage"];
                        let partial = c["answered"] != c["shards"];
                        // A partial answer is allowed only if it says which groups failed.
                        if body["items"].as_array().is_none_or(Vec::is_empty)
                            || (partial && c["failed"].as_array().is_none_or(Vec::is_empty))
                        {
                            f.lock().unwrap().push(format!("bad answer: {body}"));
                        } else {
                            o.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(e) => f.lock().unwrap().push(e),
                }
            }
        });
        Reader {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops; returns (answered, failures).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failed)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn adding_two_groups_under_traffic_rebalances_online_and_loses_nothing() {
    let _serial = serial();
    let mut c = Scale::start("0,1");
    let router = c.router("router");
    let ingest = format!("{}/v1/items/vectors", router.addr);
    let started = Instant::now();
    let base = bulk_ingest(&ingest, "base", 50_000);
    eprintln!("ingested 50,000 items in {:?}", started.elapsed());

    // Users' histories live in slots too: they must follow their slots' moves.
    let users: Vec<String> = (0..300).map(|u| format!("user-{u}")).collect();
    let events: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"user_id": u, "item_id": base[i], "scenario": "search", "ts": i}))
        .collect();
    let (s, b) = post(
        &format!("{}/v1/events", router.addr),
        &json!({ "events": events }),
    );
    assert_eq!(s, 200, "{b}");

    let writer = Writer::start(ingest.clone(), "live");
    let reader = Reader::start(format!("{}/v1/recommend", router.addr), base.clone());
    eventually(Duration::from_secs(30), "traffic before scaling", || {
        writer.acked() >= 200
    });
    let before = c.newest_map().unwrap()["version"].as_u64().unwrap();
    let scaled = Instant::now();
    c.add_nodes(6);
    eventually(Duration::from_secs(30), "four groups", || {
        c.newest_map()
            .is_some_and(|m| m["groups"].as_object().is_some_and(|g| g.len() == 4))
    });
    eventually(Duration::from_secs(240), "slots even over 4 groups", || {
        c.settled()
    });
    eprintln!("rebalanced onto 4 groups in {:?}", scaled.elapsed());
    // Traffic goes on a little on the settled map, then stops.
    let acked_at_settle = writer.acked();
    eventually(
        Duration::from_secs(30),
        "writes after the rebalance",
        || writer.acked() >= acked_at_settle + 100,
    );
    let live = writer.finish();
    let (answered, failed) = reader.finish();
    assert!(failed.is_empty(), "recommend failures: {failed:?}");
    assert!(answered > 0);

    let map = c.newest_map().unwrap();
    assert!(map["version"].as_u64().unwrap() > before);
    let counts = slot_counts(&map);
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 1024);
    assert!(
        counts.values().all(|&n| (255..=257).contains(&n)),
        "{counts:?}"
    );
    for (i, u) in users.iter().enumerate() {
        let (s, h) = get(&format!("{}/v1/users/{u}/history", router.addr));
        assert_eq!(s, 200, "{u}: {h}");
        assert_eq!(h["events"][0]["item_id"], base[i].as_str(), "{u}: {h}");
    }
    let mut acked = base;
    acked.extend(live);
    c.assert_exactly_once(&acked);
    eprintln!(
        "{} acknowledged writes, {answered} recommend answers, slots {counts:?}",
        acked.len()
    );
}

#[test]
fn meta_leader_killed_mid_rebalance_the_move_completes_and_maps_agree() {
    let _serial = serial();
    let mut c = Scale::start("0,1");
    let router = c.router("router");
    let ingest = format!("{}/v1/items/vectors", router.addr);
    let mut acked = bulk_ingest(&ingest, "base", 10_000);
    let writer = Writer::start(ingest, "live");
    c.add_nodes(3);
    eventually(Duration::from_secs(60), "a move under way", || {
        c.newest_map()
            .is_some_and(|m| m["moves"].as_array().is_some_and(|m| !m.is_empty()))
    });
    let leader = c.meta_leader().expect("a meta leader");
    c.nodes[leader].as_mut().unwrap().kill();
    c.nodes[leader] = None;
    eventually(
        Duration::from_secs(120),
        "the rebalance done by the new leader",
        || c.settled(),
    );
    assert_ne!(c.meta_leader(), Some(leader));
    c.start_node(leader);
    eventually(
        Duration::from_secs(30),
        "all meta members on one map",
        || {
            let maps: Vec<Option<Value>> = (0..3).map(|i| c.map(i)).collect();
            maps.iter().all(|m| m.is_some() && *m == maps[0])
        },
    );
    acked.extend(writer.finish());
    c.assert_exactly_once(&acked);
    let map = c.newest_map().unwrap();
    assert!(map["moves"].as_array().unwrap().is_empty());
    assert_eq!(slot_counts(&map).len(), 3);
}

#[test]
fn two_routers_follow_a_slot_move_and_status_reads_at_a_glance() {
    let _serial = serial();
    let c = Scale::start("0,1");
    let (r1, r2) = (c.router("router-1"), c.router("router-2"));
    let version = |r: &Proc| get(&format!("{}/v1/cluster", r.addr)).1["map"]["version"].as_u64();
    // The first router records the towers' version in the map: a new version both follow.
    eventually(
        Duration::from_secs(10),
        "both routers on the current map",
        || {
            let v = c.newest_map().unwrap()["version"].as_u64();
            version(&r1) == v && version(&r2) == v
        },
    );
    let before = c.newest_map().unwrap()["version"].as_u64().unwrap();

    // Items over every slot, written through one router; slots 0..=9 are group 0's.
    let acked = bulk_ingest(&format!("{}/v1/items/vectors", r1.addr), "x", 3000);
    let out = c.cli(&[
        "move-slot",
        "--via",
        &c.seeds(),
        "--slot",
        "0,1,2,3,4,5,6,7,8,9",
        "--to",
        "1",
    ]);
    assert!(out.contains("cluster map version"), "{out}");
    eventually(Duration::from_secs(60), "the move done", || {
        c.newest_map()
            .is_some_and(|m| m["moves"].as_array().is_some_and(Vec::is_empty) && m["slots"][0] == 1)
    });
    let after = c.newest_map().unwrap()["version"].as_u64().unwrap();
    assert!(after > before);
    eventually(
        Duration::from_secs(10),
        "both routers on the new map",
        || version(&r1) == Some(after) && version(&r2) == Some(after),
    );
    // Both route the moved items to their new group: reads through either find them.
    let moved: Vec<&String> = acked
        .iter()
        .filter(|id| redrec_shard::slots::slot_of(id) < 10)
        .collect();
    assert!(moved.len() > 10, "{} items in the moved slots", moved.len());
    for r in [&r1, &r2] {
        for id in &moved {
            let (s, item) = get(&format!("{}/v1/items/{id}", r.addr));
            assert_eq!(s, 200, "{id}: {item}");
        }
    }
    c.assert_exactly_once(&acked);

    let status = c.cli(&["status", "--nodes", &c.addr(0)]);
    assert!(
        status.starts_with(&format!("cluster map v{after} · 3 nodes · 2 groups")),
        "{status}"
    );
    let map = c.newest_map().unwrap();
    let counts = slot_counts(&map);
    for g in ["0", "1"] {
        let row = status
            .lines()
            .find(|l| l.split_whitespace().next() == Some(g))
            .unwrap_or_else(|| panic!("no row for group {g}: {status}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], counts[g].to_string(), "{row}");
        // points, indexed share, RAM and RAM per item, read from the group's leader.
        assert!(cols[2].parse::<usize>().unwrap() > 0, "{row}");
        assert!(cols[3].ends_with('%') && cols[4] != "?", "{row}");
        assert!(cols[5].ends_with('B'), "{row}");
        assert!(cols[6].contains('@'), "group {g} shows no leader: {row}");
    }
    assert!(status.contains("moves: none"), "{status}");
    // One replica table row per replica: 2 groups and the meta group on 3 nodes.
    let replica_rows = status
        .lines()
        .filter(|l| l.contains('@') && (l.contains(" follower ") || l.contains(" leader ")))
        .count();
    assert_eq!(replica_rows, 9, "{status}");
}
