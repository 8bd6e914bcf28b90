//! Shards that die or hang: recommend answers from the shards that did, within the
//! deadline, and says so in `coverage`; writes to a dead shard are never acknowledged.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use support::*;

#[test]
fn partial_answers_within_the_deadline_and_no_false_acks() {
    // No user cache: every call must look its history up on the shards.
    let mut cluster = Cluster::start(3, &["--deadline-ms", "600", "--user-cache", "0"]);
    let data = synth(cluster.dir.path(), 1_200, 5, 9);
    ingest(&cluster, &data.items);
    let rec = cluster.url("/v1/recommend");
    let req =
        json!({"history": recent_history(&data.users[0], 30), "scenario": "homefeed", "k": 10});
    let (s, all) = post(&rec, &req);
    assert_eq!(s, 200, "{all}");
    assert_eq!(all["coverage"], json!({"shards": 3, "answered": 3}));

    // A hung shard (stopped, so connections open but nothing answers).
    cluster.shards[2].signal(Signal::SIGSTOP);
    let ((s, b), _) = within(Duration::from_secs(5), || post(&rec, &req));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["coverage"]["answered"], 2, "{b}");
    assert_eq!(b["items"].as_array().unwrap().len(), 10);
    assert!(b["history"]["unavailable"].as_u64().unwrap() > 0, "{b}");
    cluster.shards[2].signal(Signal::SIGCONT);

    // A dead shard.
    cluster.shards[1].kill();
    let ((s, b), _) = within(Duration::from_secs(5), || post(&rec, &req));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["coverage"]["shards"], 3);
    assert_eq!(b["coverage"]["answered"], 2);
    assert_eq!(b["coverage"]["failed"].as_array().unwrap().len(), 1, "{b}");

    // Writes touching the dead shard are refused, not acknowledged.
    let items: Vec<_> = (0..50)
        .map(|i| json!({"id": format!("w{i}"), "vector": vec![0.125; 64]}))
        .collect();
    let (s, b) = post(&cluster.url("/v1/items/vectors"), &json!({"items": items}));
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "shard_unavailable");

    // With no shard left, a clear 503 rather than a hang or an empty success.
    cluster.shards[0].kill();
    cluster.shards[2].kill();
    let ((s, b), _) = within(Duration::from_secs(5), || post(&rec, &req));
    assert_eq!(s, 503, "{b}");
}
