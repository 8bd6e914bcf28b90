//! Users' histories kept by the cluster, on real processes (three nodes, one Raft group,
//! a router): events stored through the group's log, a recommend by user id alone equal
//! to one that sends the same history, acknowledged events surviving the leader's death,
//! and a deleted user gone from every replica.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::raft::{eventually, RaftCluster};
use support::*;

fn ids_and_scores(answer: &Value) -> Vec<(String, f64)> {
    answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().into(),
                i["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn users_histories_are_stored_recommended_from_kept_through_a_leader_death_and_deleted() {
    let mut c = RaftCluster::start(3, false, &[]);
    c.wait_leader(Duration::from_secs(30));
    eventually(Duration::from_secs(30), "the router ingests", || {
        post(&c.router_url("/v1/items/vectors"), &vector_items(0, 200)).0 == 200
    });

    // Every replica holds the items (reads may go to any of them).
    let ids: Vec<String> = (0..200).map(|i| format!("item-{i}")).collect();
    c.assert_converged(&ids, Duration::from_secs(30));
    // 30 events for alice, 5 of them sent twice; a few for bob.
    let history = store_alice_and_bob(&c.router_url(""));

    // By user id alone, as if the history were sent.
    let by_id = json!({"user_id": "alice", "scenario": "homefeed", "k": 10});
    let (s, a) = post(&c.router_url("/v1/recommend"), &by_id);
    assert_eq!(s, 200, "{a}");
    let sent_history = json!({"history": history, "scenario": "homefeed", "k": 10});
    let (s, b) = post(&c.router_url("/v1/recommend"), &sent_history);
    assert_eq!(s, 200, "{b}");
    assert_eq!(a["history"]["used"], 30, "{a}");
    let (x, y) = (ids_and_scores(&a), ids_and_scores(&b));
    assert_eq!(x.len(), 10);
    for ((ia, sa), (ib, sb)) in x.iter().zip(&y) {
        assert_eq!(ia, ib, "{a}\n{b}");
        assert!((sa - sb).abs() < 1e-5, "{a}\n{b}");
    }
    // A history sent with the user id is added to the stored one.
    let mut more = by_id.clone();
    more["history"] = json!([{"item_id": "item-199", "scenario": "ads"}]);
    let (s, m) = post(&c.router_url("/v1/recommend"), &more);
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["history"]["received"], 31, "{m}");

    // Events acknowledged before the leader dies are all there afterwards.
    let leader = c.wait_leader(Duration::from_secs(10));
    let late: Vec<Value> = (0..10)
        .map(|i| user_event("alice", 150 + i, 2_000 + i as i64))
        .collect();
    let (s, b) = post(&c.router_url("/v1/events"), &json!({ "events": late }));
    assert_eq!(s, 200, "{b}");
    c.kill(leader);
    let (mut after, mut status) = (Value::Null, 0);
    eventually(
        Duration::from_secs(30),
        "a new leader serves the history",
        || {
            (status, after) = get(&c.router_url("/v1/users/alice/history"));
            status == 200
        },
    );
    let items: Vec<&str> = after["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(items.len(), 40, "{after}");
    assert!(
        (150..160).all(|i| items.contains(&format!("item-{i}").as_str())),
        "{after}"
    );
    c.start_node(leader);

    // Deleting a user removes it from every replica, and nobody else.
    let (s, b) = http_delete(&c.router_url("/v1/users/alice"));
    assert_eq!(s, 200, "{b}");
    assert_eq!(get(&c.router_url("/v1/users/alice/history")).0, 404);
    for i in 0..3 {
        let url = format!("{}/v1/groups/0/users/get", c.addr(i));
        eventually(
            Duration::from_secs(30),
            "every replica forgot alice",
            || {
                let (s, b) = post(&url, &json!({"ids": ["alice", "bob"]}));
                s == 200
                    && b["users"].as_array().map(Vec::len) == Some(1)
                    && b["users"][0]["user_id"] == "bob"
            },
        );
    }

    // Client mistakes are JSON 4xx answers.
    let (s, b) = post(&c.router_url("/v1/events"), &json!({"events": []}));
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("empty_batch")));
    let mut bad = user_event("carol", 1, 5);
    bad["scenario"] = json!("nowhere");
    let (s, b) = post(&c.router_url("/v1/events"), &json!({"events": [bad]}));
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("unknown_scenario"))
    );
    let (s, b) = post(
        &c.router_url("/v1/events"),
        &json!({"events": [user_event("", 1, 5)]}),
    );
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_event"))
    );
    assert_eq!(http_delete(&c.router_url("/v1/users/nobody")).0, 404);
    let (s, b) = post(
        &c.router_url("/v1/recommend"),
        &json!({"user_id": "nobody", "scenario": "homefeed"}),
    );
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("empty_history"))
    );
}

#[test]
fn a_replica_restored_from_a_snapshot_gets_the_users_histories() {
    // Logs compacted after a few entries: a follower that missed them needs a snapshot.
    let mut c = RaftCluster::start(3, false, &["--raft-compact-after", "5"]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let behind = (leader + 1) % 3;
    let had = c.status(behind).unwrap()["applied"].as_u64().unwrap();
    c.kill(behind);
    for batch in 0..20 {
        let events: Vec<Value> = (0..5)
            .map(|u| user_event(&format!("user-{u}"), batch, batch as i64))
            .collect();
        let mut acked = false;
        eventually(Duration::from_secs(30), "events stored", || {
            acked = post(&c.router_url("/v1/events"), &json!({ "events": events })).0 == 200;
            acked
        });
    }
    // The leader's log no longer holds what the stopped replica lacks: it needs a snapshot.
    let leader = c.wait_leader(Duration::from_secs(10));
    let first = c.status(leader).unwrap()["first_index"].as_u64().unwrap();
    assert!(
        first > had + 1,
        "leader's log starts at {first}, the replica had {had}"
    );
    c.start_node(behind);
    let url = format!("{}/v1/groups/0/users/get", c.addr(behind));
    let ids: Vec<String> = (0..5).map(|u| format!("user-{u}")).collect();
    eventually(
        Duration::from_secs(60),
        "the restored replica has every history",
        || {
            let (s, b) = post(&url, &json!({ "ids": ids }));
            s == 200
                && b["users"].as_array().is_some_and(|u| {
                    u.len() == 5
                        && u.iter()
                            .all(|h| h["events"].as_array().map(Vec::len) == Some(20))
                })
        },
    );
    // The nodes' own metrics say so: proposals and a snapshot sent by the leader, one
    // restored by the replica that was behind.
    let metric = |i: usize, name: &str| -> f64 {
        let text = metrics_text(&c.addr(i));
        check_exposition(&text);
        metric_sum(&text, name)
    };
    assert!(metric(leader, "redrec_raft_proposals_total") >= 20.0);
    assert!(metric(leader, "redrec_raft_snapshots_sent_total") >= 1.0);
    assert!(metric(behind, "redrec_raft_snapshots_restored_total") >= 1.0);
}
