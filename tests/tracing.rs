//! One trace across the tiers, on real processes (two shards, an encoder, a router, each
//! logging its spans): a recommend sent with a `traceparent` leaves spans in the router
//! (history lookup, user tower, each group's search, merge), in the encoder, and in every
//! shard, all under the trace id it was sent with.

mod support;

use std::time::Duration;

use serde_json::json;
use support::raft::eventually;
use support::*;

#[test]
fn a_recommend_leaves_spans_from_every_tier_under_one_trace_id() {
    // Every process this test starts logs its spans as they close (the only test in
    // this binary, so nothing else sees the variable).
    std::env::set_var("REDREC_LOG_SPANS", "1");
    let cluster = Cluster::start(2, &["--user-cache", "0"]);
    let data = synth(cluster.dir.path(), 300, 5, 3);
    ingest(&cluster, &data.items);

    let trace = format!("{:032x}", rand::random::<u128>() | 1);
    let body = json!({
        "history": recent_history(&data.users[0], 10), "scenario": "homefeed", "k": 10,
    });
    let resp = http()
        .post(cluster.url("/v1/recommend"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    // The answer carries the trace on, as a span of its own.
    let back = resp.headers()["traceparent"].to_str().unwrap().to_string();
    assert!(back.starts_with(&format!("00-{trace}-")), "{back}");
    assert!(!back.contains("00f067aa0ba902b7"), "{back}");

    let log = |name: &str| {
        std::fs::read_to_string(cluster.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    };
    let traced = |name: &str| -> Vec<String> {
        log(name)
            .lines()
            .filter(|l| l.contains(&trace))
            .map(str::to_string)
            .collect()
    };
    // Spans are logged as they close, moments after the answer.
    eventually(Duration::from_secs(10), "spans in every tier's log", || {
        let router = traced("router");
        let has = |what: &str| router.iter().any(|l| l.contains(what));
        has("history lookup")
            && has("user tower")
            && has("group search{group=0}")
            && has("group search{group=1}")
            && has("merge")
            && traced("encoder")
                .iter()
                .any(|l| l.contains("/v1/encode/users"))
            && (0..2).all(|s| {
                traced(&format!("shard-{s}"))
                    .iter()
                    .any(|l| l.contains("/v1/search"))
            })
    });
    // Nothing else in the logs claims that trace: the ids do not leak between requests.
    let (s, _) = post(&cluster.url("/v1/recommend"), &body);
    assert_eq!(s, 200);
    std::thread::sleep(Duration::from_millis(300));
    let searched: usize = (0..2)
        .map(|s| {
            traced(&format!("shard-{s}"))
                .iter()
                .filter(|l| l.contains("/v1/search"))
                .count()
        })
        .sum();
    assert_eq!(searched, 2, "one search per shard carries the trace");

    // Every tier serves its own metrics: the encoder's queue and run times per tower, the
    // shards' request latencies.
    let metrics = |addr: &str| check_exposition(&metrics_text(addr));
    let encoder = metrics(&cluster.encoder.addr);
    for family in ["redrec_encoder_queue_seconds", "redrec_encoder_run_seconds"] {
        assert_eq!(
            encoder.get(family).map(String::as_str),
            Some("histogram"),
            "{family}"
        );
    }
    for shard in &cluster.shards {
        let types = metrics(&shard.addr);
        assert_eq!(
            types
                .get("redrec_http_request_duration_seconds")
                .map(String::as_str),
            Some("histogram")
        );
    }
}
