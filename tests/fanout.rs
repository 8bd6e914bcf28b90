//! Fan-out on real processes: a replica slowed by fault injection no longer sets a
//! recommend's latency once reads are hedged (and the hedge metrics say so), while a
//! router without hedging waits for it; a group whose every replica is slower than the
//! attempt timeout still answers within the deadline; payloads fetched after the merge are the ones
//! that come with the hits; nodes on the same CPUs are read as one; and nodes say how long
//! their searches wait for a turn.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

fn vector(i: usize) -> Vec<f32> {
    let mut v = support::raft::vector_of(&format!("item-{i}"));
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// A counter's value (summed over its labels) on `/metrics` at `addr`.
fn counter(addr: &str, name: &str) -> f64 {
    metric_sum(&metrics_text(addr), name)
}

fn timed(url: &str, body: &Value) -> ((u16, Value), Duration) {
    let started = Instant::now();
    let out = post(url, body);
    (out, started.elapsed())
}

/// Shard nodes with fault injection on, each hosting a replica of every group, whose
/// meta group routers follow.
struct Fleet {
    dir: tempfile::TempDir,
    addrs: Vec<String>,
    _nodes: Vec<Proc>,
}

impl Fleet {
    fn start(nodes: usize, groups: usize) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let procs = layout(dir.path())
            .shard_nodes(nodes, groups, &["--fault-injection"])
            .unwrap_or_else(|e| panic!("{e:#}"));
        Fleet {
            addrs: procs.iter().map(|n| n.addr.clone()).collect(),
            _nodes: procs,
            dir,
        }
    }

    /// A router following the nodes' map, `extra` flags added.
    fn router(&self, name: &str, extra: &[&str]) -> Proc {
        let meta = self.addrs.join(",");
        let mut args = vec![
            "router",
            "--listen",
            "127.0.0.1:0",
            "--meta",
            &meta,
            "--sessions",
            "1",
            "--user-cache",
            "0",
        ];
        args.extend_from_slice(extra);
        Proc::spawn(name, &args, self.dir.path())
    }

    /// Waits until every node holds all `points` over its `groups` replicas.
    fn wait_replicated(&self, groups: u64, points: u64) {
        support::raft::eventually(
            Duration::from_secs(30),
            "every replica has every item",
            || {
                self.addrs.iter().all(|a| {
                    (0..groups)
                        .map(|g| get(&format!("{a}/v1/groups/{g}/stats")).1["points"].as_u64())
                        .sum::<Option<u64>>()
                        == Some(points)
                })
            },
        );
    }
}

#[test]
fn a_slowed_replica_no_longer_sets_a_recommends_latency_once_reads_are_hedged() {
    let fleet = Fleet::start(2, 2);
    let addrs = &fleet.addrs;
    // Attempts and deadlines long enough that only hedging can cut a slow read short.
    let router = |name: &str, hedge: &str| {
        let slow = ["--read-attempt-ms", "8000", "--deadline-ms", "10000"];
        fleet.router(name, &[&["--hedge", hedge][..], &slow[..]].concat())
    };
    let hedged = router("router-hedged", "50");
    let plain = router("router-plain", "off");

    let items: Vec<Value> = (0..300)
        .map(|i| json!({"id": format!("item-{i}"), "vector": vector(i), "payload": {"n": i}}))
        .collect();
    let (s, b) = post(
        &format!("{}/v1/items/vectors", hedged.addr),
        &json!({ "items": items }),
    );
    assert_eq!(s, 200, "{b}");
    fleet.wait_replicated(2, 300);

    // Payloads fetched after the merge (many lists: ids and scores first) are those that
    // come with the hits (one list).
    let search = |vectors: usize| {
        let body = json!({"vectors": vec![vector(7); vectors], "k": 10});
        let (s, b) = post(&format!("{}/v1/search", plain.addr), &body);
        assert_eq!(s, 200, "{b}");
        b
    };
    let (one, many) = (search(1), search(9));
    assert_eq!(one["items"], many["items"], "{one}\n{many}");
    assert_eq!(one["items"][0]["payload"]["n"], 7, "{one}");

    // The replica group 0's reads go to first, slowed: every read of it waits 3 s.
    let (_, map) = get(&format!("{}/v1/meta/map", addrs[0]));
    let first = map["groups"]["0"]["replicas"][0].to_string();
    let slow = map["nodes"][&first]["addr"].as_str().unwrap().to_string();
    let faults = format!("{slow}/admin/v1/faults");
    let (s, b) = post(&faults, &json!({"delay_share": 2.0, "delay_ms": 10}));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_fault_plan"))
    );
    let (s, b) = post(
        &faults,
        &json!({"delay_share": 1.0, "delay_ms": 3000, "groups": [0]}),
    );
    assert_eq!(s, 200, "{b}");

    let history: Vec<Value> = [3, 11, 42, 77, 150]
        .iter()
        .map(|i| json!({"item_id": format!("item-{i}"), "scenario": "homefeed"}))
        .collect();
    let req = json!({"history": history, "scenario": "homefeed", "k": 10});
    let ((s, fast), took_hedged) = timed(&format!("{}/v1/recommend", hedged.addr), &req);
    assert_eq!(s, 200, "{fast}");
    assert_eq!(fast["coverage"]["answered"], 2, "{fast}");
    let ((s, slow_answer), took_plain) = timed(&format!("{}/v1/recommend", plain.addr), &req);
    assert_eq!(s, 200, "{slow_answer}");
    // Without hedging the slowed replica sets the latency; with it, it does not.
    assert!(took_plain >= Duration::from_millis(3000), "{took_plain:?}");
    assert!(
        took_hedged < Duration::from_millis(2500),
        "hedged {took_hedged:?}, plain {took_plain:?}"
    );
    assert_eq!(ids_of(&fast), ids_of(&slow_answer));
    assert!(counter(&hedged.addr, "redrec_hedged_reads_total") >= 1.0);
    assert!(counter(&hedged.addr, "redrec_hedged_reads_won_total") >= 1.0);
    assert_eq!(counter(&plain.addr, "redrec_hedged_reads_total"), 0.0);

    // Both replicas of group 0 slowed past a short attempt timeout: the first attempt is
    // cut and the read fails over; the last replica left has the rest of the deadline,
    // so the group still answers (late) instead of dropping out of the coverage.
    for addr in addrs {
        let plan = json!({"delay_share": 1.0, "delay_ms": 1000, "groups": [0]});
        let (s, b) = post(&format!("{addr}/admin/v1/faults"), &plan);
        assert_eq!(s, 200, "{b}");
    }
    let short_attempts = ["--read-attempt-ms", "200", "--deadline-ms", "10000"];
    let short = fleet.router(
        "router-short",
        &[&["--hedge", "off"][..], &short_attempts].concat(),
    );
    let ((s, late), took) = timed(&format!("{}/v1/recommend", short.addr), &req);
    assert_eq!(s, 200, "{late}");
    assert_eq!(late["coverage"]["answered"], 2, "{late}");
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert_eq!(ids_of(&late), ids_of(&slow_answer));
}

/// Requests a node answered on `path` (its `/metrics`, all statuses).
fn requests_on(addr: &str, path: &str) -> f64 {
    metrics_text(addr)
        .lines()
        .filter(|l| {
            l.starts_with("redrec_http_requests_total{") && l.contains(&format!("path=\"{path}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn groups_sharing_nodes_are_searched_in_one_call_with_the_same_answers() {
    let fleet = Fleet::start(3, 3);
    let addrs = &fleet.addrs;
    let router =
        |name: &str, batch: &str| fleet.router(name, &["--batch-groups", batch, "--hedge", "50"]);
    let batched = router("router-batched", "on");
    let per_group = router("router-per-group", "off");
    let (s, b) = post(
        &format!("{}/v1/items/vectors", per_group.addr),
        &vector_items(0, 600),
    );
    assert_eq!(s, 200, "{b}");
    fleet.wait_replicated(3, 600);

    // The same answers (below the indexing threshold every replica searches exactly),
    // with filters, exclusions and several query vectors.
    let before: f64 = addrs
        .iter()
        .map(|a| requests_on(a, "/v1/search/groups"))
        .sum();
    for i in 0..20 {
        let body = json!({
            "vectors": [vector(i), vector(i + 100)], "k": 10,
            "exclude": [format!("item-{i}"), "item-5"],
            "filter": if i % 2 == 0 { json!({"must_not": [{"key": "n", "range": {"lt": 50}}]}) } else { Value::Null },
        });
        let (s, one_call) = post(&format!("{}/v1/search", batched.addr), &body);
        assert_eq!(s, 200, "{one_call}");
        let (s, per_group_answer) = post(&format!("{}/v1/search", per_group.addr), &body);
        assert_eq!(s, 200, "{per_group_answer}");
        assert_eq!(one_call["coverage"]["answered"], 3, "{one_call}");
        assert_eq!(one_call["items"], per_group_answer["items"]);
        assert!(!ids_of(&one_call).contains(&format!("item-{i}")));
    }
    let after: f64 = addrs
        .iter()
        .map(|a| requests_on(a, "/v1/search/groups"))
        .sum();
    assert_eq!(after - before, 20.0, "one call per search");
    // A node's search answers say how long its latest search waited for a turn.
    let search = json!({"groups": [0, 1, 2], "exclude": [[], [], []],
        "search": {"queries": [vector(3)], "k": 5}});
    let resp = http()
        .post(format!("{}/v1/search/groups", addrs[0]))
        .json(&search)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let waited = resp.headers().get("x-redrec-search-wait-us");
    let waited: Option<u64> = waited.and_then(|v| v.to_str().ok()?.parse().ok());
    assert!(waited.is_some_and(|us| us < 10_000_000), "{waited:?}");
    // A bad filter is still the caller's mistake.
    let (s, b) = post(
        &format!("{}/v1/search", batched.addr),
        &json!({"vectors": [vector(1)], "filter": {"must": [{"key": "n", "match": {"nope": 1}}]}}),
    );
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{b}"
    );

    // One node slowed for every group: the batched read goes elsewhere (hedged), and the
    // answer is whole and the same.
    let (s, b) = post(
        &format!("{}/admin/v1/faults", addrs[0]),
        &json!({"delay_share": 1.0, "delay_ms": 3000}),
    );
    assert_eq!(s, 200, "{b}");
    let body = json!({"vectors": [vector(9)], "k": 10});
    for _ in 0..6 {
        let ((s, b), took) = timed(&format!("{}/v1/search", batched.addr), &body);
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["coverage"]["answered"], 3, "{b}");
        assert!(took < Duration::from_millis(2500), "{took:?}");
    }
}

#[test]
fn nodes_on_the_same_cpus_are_read_as_one_unless_told_to_spread() {
    let fleet = Fleet::start(2, 2);
    let addrs = &fleet.addrs;
    // Both nodes run on this machine's CPUs, and say so in the map.
    support::raft::eventually(Duration::from_secs(30), "the nodes said their CPUs", || {
        let (_, map) = get(&format!("{}/v1/meta/map", addrs[0]));
        let said: Vec<&str> = ["1", "2"]
            .iter()
            .filter_map(|n| map["nodes"][n]["cpus"].as_str())
            .collect();
        said.len() == 2 && said[0] == said[1]
    });
    let router = |name: &str, spread: &str| {
        let flags = [
            "--batch-groups",
            "on",
            "--hedge",
            "off",
            "--read-spread",
            spread,
        ];
        fleet.router(name, &flags)
    };
    let (by_cpus, by_replicas) = (
        router("router-cpus", "cpus"),
        router("router-replicas", "replicas"),
    );
    let (s, b) = post(
        &format!("{}/v1/items/vectors", by_cpus.addr),
        &vector_items(0, 300),
    );
    assert_eq!(s, 200, "{b}");
    fleet.wait_replicated(2, 300);

    // Four clients at once, 30 searches each: each node's share of the calls.
    let calls = |router: &str| -> Vec<f64> {
        let before: Vec<f64> = addrs
            .iter()
            .map(|a| requests_on(a, "/v1/search/groups"))
            .collect();
        std::thread::scope(|scope| {
            for c in 0..4 {
                scope.spawn(move || {
                    for i in 0..30 {
                        let body = json!({"vectors": [vector(c * 30 + i)], "k": 10});
                        let (s, b) = post(&format!("{router}/v1/search"), &body);
                        assert_eq!(s, 200, "{b}");
                        assert_eq!(b["coverage"]["answered"], 2, "{b}");
                    }
                });
            }
        });
        addrs
            .iter()
            .zip(before)
            .map(|(a, b)| requests_on(a, "/v1/search/groups") - b)
            .collect()
    };
    // On the same CPUs: every call to the set's own node, however many are in flight.
    let mut one = calls(&by_cpus.addr);
    one.sort_by(f64::total_cmp);
    assert_eq!(one, [0.0, 120.0], "calls per node");
    // Spread over the replicas: the other node takes calls while the first is busy.
    let spread = calls(&by_replicas.addr);
    assert_eq!(spread.iter().sum::<f64>(), 120.0, "{spread:?}");
    assert!(
        spread.iter().all(|&n| n > 0.0),
        "calls per node: {spread:?}"
    );
}

#[test]
fn the_fanout_bench_slows_the_replica_only_in_its_rounds() {
    let out = redrec_cli(&[
        "bench",
        "fanout",
        "--groups",
        "4",
        "--n",
        "2000",
        "--queries",
        "30",
        "--seconds",
        "2",
        "--rounds",
        "2",
        "--slow-share",
        "0.5",
        "--slow-ms",
        "500",
    ]);
    assert!(out.contains("interleaved over 2 rounds"), "{out}");
    // The slowest requests: a read of the slowed replica waits out its delay, or the
    // attempt timeout before the other replica is tried.
    let p999 = |label: &str| -> f64 { bench_row(&out, label)[4].parse().unwrap() };
    let slowed = "one replica slowed (50% +500 ms)";
    // The fault is set for the slowed rounds and lifted for the others, round after round.
    assert!(p999(&format!("{slowed}, hedging off")) >= 300.0, "{out}");
    assert!(p999("no fault, hedging off") < 300.0, "{out}");
    assert!(p999("no fault, hedging on") < 300.0, "{out}");
    // Hedges are counted on the hedging router's rows only.
    assert_eq!(bench_row(&out, "no fault, hedging off")[5], "-", "{out}");
    let extra = bench_row(&out, &format!("{slowed}, hedging on"))[5];
    assert!(extra.ends_with('%'), "{out}");
    assert!(!out.contains("searches failed"), "{out}");
}
