//! The router on a real Qdrant server (`--qdrant-url`): users' histories, Qdrant going away
//! (a 503 with a code, quickly, never a hang) and coming back, a collection whose settings
//! differ refused at start-up; and a 3-peer Qdrant cluster (replication factor 2) losing a
//! peer under recommend traffic. Skipped, with a line saying so, without the Qdrant binary.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::raft::eventually;
use support::*;

#[test]
fn users_outages_and_settings_on_a_qdrant_server() {
    let Some(mut c) = Cluster::on(Backend::Qdrant, 2, &[]) else {
        return;
    };
    let (s, b) = post(&c.url("/v1/items/vectors"), &vector_items(0, 300));
    assert_eq!(s, 200, "{b}");

    // Events: stored once per (user, item, time), read back oldest first.
    let history = store_alice_and_bob(&c.router.addr);

    // By user id alone, as if the history were sent.
    let (s, by_id) = post(
        &c.url("/v1/recommend"),
        &json!({"user_id": "alice", "scenario": "homefeed", "k": 10}),
    );
    assert_eq!(s, 200, "{by_id}");
    let (s, sent_history) = post(
        &c.url("/v1/recommend"),
        &json!({"history": history, "scenario": "homefeed", "k": 10}),
    );
    assert_eq!(s, 200, "{sent_history}");
    assert_eq!(ids_of(&by_id), ids_of(&sent_history));
    assert_eq!(by_id["history"]["used"], sent_history["history"]["used"]);

    // A user forgotten is gone; the other is kept.
    assert_eq!(http_delete(&c.url("/v1/users/alice")).0, 200);
    assert_eq!(get(&c.url("/v1/users/alice/history")).0, 404);
    assert_eq!(http_delete(&c.url("/v1/users/alice")).0, 404);
    assert_eq!(get(&c.url("/v1/users/bob/history")).0, 200);

    // A second router whose collection settings differ does not start.
    let mut qdrant = c.qdrant.take().unwrap();
    let mut differs = std::process::Command::new(BIN)
        .args([
            "router",
            "--listen",
            "127.0.0.1:0",
            "--encoder",
            &c.encoder.addr,
        ])
        .args(["--qdrant-url", &qdrant.grpc, "--qdrant-shards", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while differs.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            differs.kill().unwrap();
            panic!("a router on a collection with other settings kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = differs.wait_with_output().unwrap();
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        why.contains("shard_number is 2, redrec is set for 3"),
        "{why}"
    );

    // Qdrant gone: a 503 with a code, within the recommend's deadline, not a hang.
    qdrant.kill();
    let rec = json!({"history": history, "scenario": "homefeed", "k": 10});
    let started = Instant::now();
    let (s, b) = post(&c.url("/v1/recommend"), &rec);
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "shard_unavailable", "{b}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (s, b) = post(&c.url("/v1/items/vectors"), &vector_items(300, 10));
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "shard_unavailable", "{b}");
    let (s, b) = get(&c.url("/v1/items/item-1"));
    assert_eq!(s, 503, "{b}");

    // Back: everything acknowledged before is there, and writes go through again.
    qdrant.run().expect("qdrant restarts");
    eventually(
        Duration::from_secs(30),
        "the router reaches qdrant again",
        || get(&c.url("/v1/items/item-1")).0 == 200,
    );
    let (s, b) = post(&c.url("/v1/recommend"), &rec);
    assert_eq!(s, 200, "{b}");
    assert_eq!(ids_of(&b), ids_of(&sent_history));
    let (s, b) = post(&c.url("/v1/items/vectors"), &vector_items(300, 10));
    assert_eq!(s, 200, "{b}");
    assert_eq!(get(&c.url("/v1/cluster")).1["points"], 310);
}

#[test]
fn a_qdrant_cluster_losing_a_peer_keeps_answering_and_takes_writes_when_it_returns() {
    let Some(bin) = qdrant_binary("the 3-peer Qdrant cluster test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut peers =
        qdrant_server::start_cluster(&bin, dir.path(), 3).unwrap_or_else(|e| panic!("{e:#}"));
    let args = [
        "--qdrant-shards",
        "3",
        "--qdrant-replication",
        "2",
        "--deadline-ms",
        "2000",
    ];
    let local = layout(dir.path())
        .on_qdrant(&peers[0].grpc, &["--sessions", "1"], "127.0.0.1:0", &args)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = |p: &str| format!("{}{p}", local.router.addr);
    for from in (0..600).step_by(200) {
        let (s, b) = post(&url("/v1/items/vectors"), &vector_items(from, 200));
        assert_eq!(s, 200, "{b}");
    }
    let (_, info) = get(&url("/v1/cluster"));
    let shards = info["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3, "{info}");
    assert!(
        shards
            .iter()
            .all(|s| s["replicas"].as_array().unwrap().len() == 2),
        "{info}"
    );
    let history: Vec<Value> = (0..20)
        .map(|i| json!({"item_id": format!("item-{}", i * 7), "scenario": "search"}))
        .collect();
    let rec = json!({"history": history, "scenario": "homefeed", "k": 10});
    let (s, before) = post(&url("/v1/recommend"), &rec);
    assert_eq!(s, 200, "{before}");
    assert_eq!(before["coverage"]["answered"], 3, "{before}");

    // Recommend traffic while the third peer is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (endpoint, rec) = (url("/v1/recommend"), rec.clone());
        std::thread::spawn(move || {
            let mut coverages = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (s, b) = post(&endpoint, &rec);
                if s == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                    coverages.push(b["coverage"].clone());
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("recommend during the outage: {s} {b}");
                }
            }
            coverages
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    peers[2].kill();
    std::thread::sleep(Duration::from_secs(5));
    // Writes while the peer is away are answered (taken or refused with a code), not hung.
    let started = Instant::now();
    let (s, b) = post(&url("/v1/items/vectors"), &vector_items(600, 50));
    assert!(s == 200 || s == 503, "{s} {b}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let coverages = traffic.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("recommends with a peer down: {ok} answered, {failed} failed; write: {s}");
    assert!(ok >= 10, "{ok} answered, {failed} failed");
    assert!(failed * 20 <= ok + failed, "{ok} answered, {failed} failed");
    assert!(coverages.iter().all(|c| c["shards"] == 3), "{coverages:?}");

    // The peer returns: writes go through, and the data written before is all there.
    peers[2].run().expect("the peer restarts");
    eventually(Duration::from_secs(60), "writes resume", || {
        post(&url("/v1/items/vectors"), &vector_items(650, 50)).0 == 200
    });
    let (s, after) = post(&url("/v1/recommend"), &rec);
    assert_eq!(s, 200, "{after}");
    assert_eq!(after["coverage"]["answered"], 3, "{after}");
    for i in (0..700).step_by(7) {
        let (s, b) = get(&url(&format!("/v1/items/item-{i}")));
        assert_eq!(s, 200, "item-{i}: {b}");
    }
    local.stop();
}
