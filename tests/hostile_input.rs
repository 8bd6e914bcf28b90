//! Valid but hostile input against real processes: vectors whose scores would overflow,
//! histories far longer than any user's, paths that do not parse, broken Raft frames, and
//! requests sent halfway. Every answer is the JSON error, and the cluster keeps serving.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::raft::free_port;
use support::*;

fn assert_error(status: u16, body: &Value, want: u16, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

fn unit(i: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; 64];
    v[i % 64] = 0.6;
    v[(i * 7 + 1) % 64] += 0.8;
    v
}

/// Writes `n` items `h0..` with small unit-length vectors.
fn ingest_vectors(cluster: &Cluster, n: usize) {
    for start in (0..n).step_by(500) {
        let items: Vec<Value> = (start..(start + 500).min(n))
            .map(|i| json!({"id": format!("h{i}"), "vector": unit(i)}))
            .collect();
        let (s, b) = post(
            &cluster.url("/v1/items/vectors"),
            &json!({ "items": items }),
        );
        assert_eq!(s, 200, "{b}");
    }
}

#[test]
fn scores_stay_finite_and_long_histories_are_bounded() {
    let cluster = Cluster::start(3, &["--user-cache", "0"]);
    ingest_vectors(&cluster, 3_000);

    // Every component finite, but a score would overflow: refused wherever it enters.
    let huge = vec![3e38f32; 64];
    let (s, b) = post(
        &cluster.url("/v1/items/vectors"),
        &json!({"items": [{"id": "huge", "vector": huge}]}),
    );
    assert_error(s, &b, 400, "invalid_vector");
    let (s, b) = post(
        &cluster.url("/v1/search"),
        &json!({"vectors": [huge], "k": 5}),
    );
    assert_error(s, &b, 400, "invalid_vectors");
    let (s, b) = post(
        &format!("{}/v1/points/upsert", cluster.shards[0].addr),
        &json!({"points": [{"id": "huge", "vector": huge}]}),
    );
    assert_error(s, &b, 400, "invalid_request");
    let (s, b) = post(
        &format!("{}/v1/search", cluster.shards[0].addr),
        &json!({"queries": [huge], "k": 5}),
    );
    assert_error(s, &b, 400, "invalid_request");

    // A search answers from every group, with finite scores.
    let (s, b) = post(
        &cluster.url("/v1/search"),
        &json!({"vectors": [unit(3)], "k": 5}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["coverage"]["answered"], 3, "{b}");
    assert!(b["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["score"].is_f64()));

    // A history longer than any user's is the caller's mistake, said at once.
    let event = |i: usize| json!({"item_id": format!("h{}", i % 3_000), "scenario": "search"});
    let endless: Vec<Value> = (0..100_000).map(event).collect();
    let started = Instant::now();
    let (s, b) = post(
        &cluster.url("/v1/recommend"),
        &json!({"history": endless, "scenario": "homefeed", "k": 10, "exclude_seen": true}),
    );
    assert_error(s, &b, 400, "history_too_long");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A long one within the bound: every group answers, and no seen item comes back.
    let seen: Vec<Value> = (0..2_500).map(event).collect();
    let (s, b) = post(
        &cluster.url("/v1/recommend"),
        &json!({"history": seen, "scenario": "homefeed", "k": 50, "exclude_seen": true}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["coverage"]["answered"], 3, "{b}");
    let items = b["items"].as_array().unwrap();
    assert_eq!(items.len(), 50, "{b}");
    for it in items {
        let n: usize = it["id"].as_str().unwrap()[1..].parse().unwrap();
        assert!(n >= 2_500, "{} was seen", it["id"]);
    }
}

#[test]
fn paths_and_frames_that_do_not_parse_get_the_json_error() {
    let cluster = Cluster::start(1, &[]);
    let (s, b) = get(&cluster.url("/v1/items/%FF%FE"));
    assert_error(s, &b, 400, "invalid_path");

    // A one-node Raft group: its internal API and its Raft transport.
    let port = free_port();
    let data = cluster.dir.path().join("node-1");
    let node = Proc::spawn(
        "node-1",
        &[
            "shard",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
            data.to_str().unwrap(),
            "--node-id",
            "1",
        ],
        cluster.dir.path(),
    );
    let (s, b) = get(&format!("{}/v1/groups/zero/stats", node.addr));
    assert_error(s, &b, 400, "invalid_path");
    let (s, b) = post_raw(
        &format!("{}/raft/v1/messages", node.addr),
        vec![1u8, 2, 3],
        Some("application/octet-stream"),
    );
    assert_error(s, &b, 400, "invalid_raft_frame");
}

/// Sends `head` and waits for the server to answer or close; returns what it sent back.
fn send_and_wait(addr: &str, head: &str, limit: Duration) -> (String, Duration) {
    let host = addr.trim_start_matches("http://");
    let mut conn = TcpStream::connect(host).unwrap();
    conn.set_read_timeout(Some(limit)).unwrap();
    conn.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn half_sent_requests_are_cut_off_within_the_timeouts() {
    let cluster = Cluster::start(
        1,
        &["--header-timeout-ms", "500", "--body-timeout-ms", "500"],
    );
    let limit = Duration::from_secs(20);

    // Headers never finished: the connection is closed.
    let (answer, took) = send_and_wait(
        &cluster.router.addr,
        "POST /v1/recommend HTTP/1.1\r\nhost: x\r\n",
        limit,
    );
    // Waited for the rest until the timeout, then closed.
    assert!(
        took >= Duration::from_millis(400),
        "closed after {took:?}: {answer}"
    );
    assert!(took < Duration::from_secs(5), "open for {took:?}: {answer}");

    // A body declared and never sent: refused with the JSON error.
    let (answer, took) = send_and_wait(
        &cluster.router.addr,
        "POST /v1/recommend HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: 1000\r\n\r\n{\"history\": [",
        limit,
    );
    assert!(
        took >= Duration::from_millis(400),
        "answered after {took:?}: {answer}"
    );
    assert!(took < Duration::from_secs(5), "open for {took:?}: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");

    // The router still serves.
    let (s, b) = get(&cluster.url("/healthz"));
    assert_eq!(s, 200, "{b}");
}

#[test]
fn requests_past_the_concurrency_bound_are_shed_not_queued() {
    let cluster = Cluster::start(
        1,
        &[
            "--max-concurrent-requests",
            "1",
            "--deadline-ms",
            "3000",
            "--read-attempt-ms",
            "3000",
        ],
    );
    // A stopped shard holds a search until the deadline (its one attempt may take all of
    // it): the router's one slot is taken.
    cluster.shards[0].signal(nix::sys::signal::Signal::SIGSTOP);
    let url = cluster.url("/v1/search");
    let slow = std::thread::spawn(move || post(&url, &json!({"vectors": [unit(1)], "k": 5})));
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let resp = http()
        .post(cluster.url("/v1/search"))
        .json(&json!({"vectors": [unit(2)], "k": 5}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "queued, not shed"
    );
    // The probes are never shed.
    assert_eq!(get(&cluster.url("/healthz")).0, 200);
    // The held request is served once the shard resumes, and the slot is free again.
    cluster.shards[0].signal(nix::sys::signal::Signal::SIGCONT);
    let (s, b) = slow.join().unwrap();
    assert_eq!(s, 200, "{b}");
    let (s, b) = post(
        &cluster.url("/v1/search"),
        &json!({"vectors": [unit(3)], "k": 5}),
    );
    assert_eq!(s, 200, "{b}");
}
