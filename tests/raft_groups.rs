//! Raft-replicated shard groups under failure, with real processes on loopback: a group of
//! three `redrec shard` nodes behind a router, a writer that records every acknowledged
//! write, and at the end every replica holding every acknowledged write and the same data.

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::json;
use support::raft::*;
use support::*;

/// One cluster at a time: elections time out in half a second, and two cores shared by
/// several clusters would make the timing, not the code, the thing under test.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const ELECTION: Duration = Duration::from_millis(TICK_MS * ELECTION_TICKS);

#[test]
fn leader_kill_9_under_writes_loses_no_acknowledged_write() {
    let _serial = serial();
    let mut c = RaftCluster::start(3, false, &[]);
    let leader = c.wait_leader(Duration::from_secs(20));
    let writer = Writer::start(c.router_url("/v1/items/vectors"), "a");
    eventually(Duration::from_secs(30), "writes before the kill", || {
        writer.acked() >= 300
    });

    c.kill(leader);
    let killed = Instant::now();
    let new_leader = c.wait_leader(Duration::from_secs(10));
    let took = killed.elapsed();
    assert_ne!(new_leader, leader);
    // Election timeouts are randomised in [1, 2) x the base; allow a few of them.
    assert!(took < ELECTION * 6, "new leader after {took:?}");
    let before = writer.acked();
    eventually(Duration::from_secs(20), "writes after the kill", || {
        writer.acked() >= before + 300
    });

    c.start_node(leader);
    let acked = writer.finish();
    let digest = c.assert_converged(&acked, Duration::from_secs(60));
    assert_eq!(digest["points"], acked.len());
    eprintln!(
        "new leader after {took:?}; {} writes acknowledged, all on 3 replicas",
        acked.len()
    );
}

#[test]
fn twenty_kill_restart_cycles_lose_nothing_and_replicas_agree() {
    let _serial = serial();
    let mut c = RaftCluster::start(3, false, &["--raft-compact-after", "500"]);
    c.wait_leader(Duration::from_secs(20));
    let writer = Writer::start(c.router_url("/v1/items/vectors"), "b");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for cycle in 0..20 {
        let victim = rng.random_range(0..3);
        c.kill(victim);
        std::thread::sleep(Duration::from_millis(rng.random_range(100..700)));
        c.start_node(victim);
        // The next victim may be any node: let this one rejoin first, so that two are
        // never down at once (that would stop the group, which is Raft working, not failing).
        eventually(Duration::from_secs(30), "restarted node ready", || {
            http()
                .get(format!("{}/readyz", c.addr(victim)))
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        eprintln!(
            "cycle {cycle}: node {} restarted; {} acked",
            victim + 1,
            writer.acked()
        );
    }
    let refused = writer.refused.load(std::sync::atomic::Ordering::SeqCst);
    let acked = writer.finish();
    assert!(acked.len() >= 1000, "too few writes: {}", acked.len());
    let digest = c.assert_converged(&acked, Duration::from_secs(60));
    assert_eq!(digest["points"], acked.len());
    eprintln!(
        "20 cycles: {} writes acknowledged ({refused} batches refused and retried), digest {}",
        acked.len(),
        digest["checksum"]
    );
}

#[test]
fn wiped_replica_rejoins_through_a_snapshot_and_members_come_and_go() {
    let _serial = serial();
    let mut c = RaftCluster::start(3, false, &["--raft-compact-after", "50"]);
    let leader = c.wait_leader(Duration::from_secs(20));
    let writer = Writer::start(c.router_url("/v1/items/vectors"), "c");
    eventually(Duration::from_secs(30), "writes", || writer.acked() >= 500);

    let victim = (leader + 1) % 3;
    c.kill(victim);
    std::fs::remove_dir_all(c.data(victim)).unwrap();
    let before = writer.acked();
    eventually(Duration::from_secs(30), "writes while it is gone", || {
        writer.acked() >= before + 500
    });
    // Its log is long compacted on the others: only a snapshot can catch it up.
    let first = c.status(c.wait_leader(Duration::from_secs(10))).unwrap()["first_index"]
        .as_u64()
        .unwrap();
    assert!(
        first > 50,
        "leader's log was not compacted (first index {first})"
    );
    c.start_node(victim);
    eventually(Duration::from_secs(60), "wiped node back", || {
        c.status(victim).is_some_and(|s| s["caught_up"] == true)
    });
    let log =
        std::fs::read_to_string(c.dir.path().join(format!("node-{}.log", victim + 1))).unwrap();
    assert!(log.contains("snapshot restored"), "no snapshot in:\n{log}");
    let acked = writer.finish();
    c.assert_converged(&acked, Duration::from_secs(60));

    // A fourth node, not among the voters, joins only when added, and leaves when removed.
    let port = free_port();
    let addr4 = format!("http://127.0.0.1:{port}");
    let data4 = c.dir.path().join("node-4");
    let peers = (0..3)
        .map(|i| format!("{}={}", i + 1, c.addr(i)))
        .collect::<Vec<_>>()
        .join(",");
    let _node4 = Proc::spawn(
        "node-4",
        &[
            "shard",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
            data4.to_str().unwrap(),
            "--node-id",
            "4",
            "--peers",
            &peers,
            "--voters",
            "1,2,3",
        ],
        c.dir.path(),
    );
    let digest_of = |addr: &str| get(&format!("{addr}/v1/groups/0/digest")).1;
    assert_eq!(digest_of(&addr4)["points"], 0);
    let cli = |args: &[&str]| redrec_cli(&[&["cluster"][..], args].concat());
    let via = c.addr(0);
    let out = cli(&[
        "add-replica",
        "--via",
        &via,
        "--group",
        "0",
        "--node",
        "4",
        "--addr",
        &addr4,
    ]);
    assert!(out.contains("[1,2,3,4]"), "{out}");
    let want = digest_of(&c.addr(0));
    eventually(Duration::from_secs(60), "added node caught up", || {
        let d = digest_of(&addr4);
        d["checksum"] == want["checksum"] && d["points"] == want["points"]
    });
    let out = cli(&[
        "remove-replica",
        "--via",
        &via,
        "--group",
        "0",
        "--node",
        "4",
    ]);
    assert!(out.contains("[1,2,3]"), "{out}");
    let status = cli(&["status", "--nodes", &c.addrs().join(",")]);
    // The map at a glance, then one row per replica: group 0 has exactly one leader.
    assert!(status.starts_with("cluster map v"), "{status}");
    let leaders = status
        .lines()
        .filter(|l| l.starts_with("0 ") && l.contains(" leader "))
        .count();
    assert_eq!(leaders, 1, "{status}");
}

#[test]
fn a_partitioned_replica_cannot_progress_alone_and_converges_after_healing() {
    let _serial = serial();
    let c = RaftCluster::start(3, true, &[]);
    let writer = Writer::start(c.router_url("/v1/items/vectors"), "d");
    eventually(Duration::from_secs(30), "writes", || writer.acked() >= 200);

    // Cut the leader off from both others, both ways.
    let cut = c.wait_leader(Duration::from_secs(10));
    for j in 0..3 {
        if j != cut {
            c.links[cut][j].as_ref().unwrap().set_up(false);
            c.links[j][cut].as_ref().unwrap().set_up(false);
        }
    }
    // The majority elects a leader of its own and keeps taking writes through the router.
    eventually(
        Duration::from_secs(10),
        "a leader on the majority side",
        || {
            (0..3)
                .filter(|&i| i != cut)
                .any(|i| c.status(i).is_some_and(|s| s["is_leader"] == true))
        },
    );
    let before = writer.acked();
    eventually(Duration::from_secs(30), "majority keeps writing", || {
        writer.acked() >= before + 300
    });
    // Alone, the cut-off node takes no write (it steps down for want of a quorum).
    let point = json!({"points": [{"id": "lonely", "vector": vector_of("lonely")}]});
    let (status, body) = post(
        &format!("{}/v1/groups/0/points/upsert", c.addr(cut)),
        &point,
    );
    assert_ne!(status, 200, "{body}");
    assert!(
        c.status(cut).is_some_and(|s| s["is_leader"] == false),
        "the cut-off node still thinks it leads"
    );
    // Nor does it hand out a slot move's pages, which must hold every acknowledged write;
    // its replica's own pages (a snapshot source's) it still serves.
    let scroll = format!("{}/v1/groups/0/scroll", c.addr(cut));
    let (status, body) = post(&scroll, &json!({"limit": 10, "slots": [0, 1, 2]}));
    assert_ne!(status, 200, "{body}");
    let (status, body) = post(&scroll, &json!({"limit": 10}));
    assert_eq!(status, 200, "{body}");

    for j in 0..3 {
        if j != cut {
            c.links[cut][j].as_ref().unwrap().set_up(true);
            c.links[j][cut].as_ref().unwrap().set_up(true);
        }
    }
    let acked = writer.finish();
    let digest = c.assert_converged(&acked, Duration::from_secs(60));
    assert_eq!(
        digest["points"],
        acked.len(),
        "the refused write must not appear"
    );
}
