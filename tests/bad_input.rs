//! Every client mistake gets a 4xx with `{"error": {"code", "message"}}`, never a panic or 5xx.

mod support;

use serde_json::{json, Value};
use support::*;

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{body}"
    );
}

#[test]
fn bad_requests_get_json_4xx_answers() {
    bad_requests(Backend::Embedded);
}

#[test]
fn bad_requests_get_json_4xx_answers_on_qdrant() {
    bad_requests(Backend::Qdrant);
}

fn bad_requests(backend: Backend) {
    let args = ["--max-body-bytes", "200000", "--max-k", "500"];
    let Some(cluster) = Cluster::on(backend, 2, &args) else {
        return;
    };
    let data = synth(cluster.dir.path(), 800, 3, 5);
    ingest(&cluster, &data.items);
    let rec = cluster.url("/v1/recommend");
    let history = recent_history(&data.users[0], 10);
    let ok = |extra: Value| {
        let mut r = json!({"history": history, "scenario": "homefeed", "k": 10});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };

    // Malformed JSON, a missing field, a wrong type, an unknown field.
    let (s, b) = post_raw(&rec, "{\"history\": [", Some("application/json"));
    assert_error(s, &b, 400, "malformed_json");
    let (s, b) = post(&rec, &json!({"history": history}));
    assert_error(s, &b, 400, "invalid_body");
    let (s, b) = post(&rec, &ok(json!({"k": "ten"})));
    assert_error(s, &b, 400, "invalid_body");
    let (s, b) = post(&rec, &ok(json!({"kk": 3})));
    assert_error(s, &b, 400, "invalid_body");
    let (s, b) = post_raw(&rec, ok(json!({})).to_string(), None);
    assert_error(s, &b, 415, "unsupported_media_type");

    // Unknown scenarios, k out of range, empty history, bad filter.
    let (s, b) = post(&rec, &ok(json!({"scenario": "shopping"})));
    assert_error(s, &b, 400, "unknown_scenario");
    let mut h = history.clone();
    h[0]["scenario"] = json!("shopping");
    let (s, b) = post(&rec, &json!({"history": h, "scenario": "homefeed"}));
    assert_error(s, &b, 400, "unknown_scenario");
    let (s, b) = post(&rec, &ok(json!({"k": 0})));
    assert_error(s, &b, 400, "invalid_k");
    let (s, b) = post(&rec, &ok(json!({"k": 501})));
    assert_error(s, &b, 400, "invalid_k");
    let (s, b) = post(&rec, &json!({"history": [], "scenario": "homefeed"}));
    assert_error(s, &b, 400, "empty_history");
    let (s, b) = post(
        &rec,
        &ok(json!({"filter": {"must": [{"key": "category", "match": {"nope": 1}}]}})),
    );
    assert_error(s, &b, 400, "invalid_request");
    let (s, b) = post(&rec, &ok(json!({"merge": "sum"})));
    assert_error(s, &b, 400, "invalid_body");
    let (s, b) = post(&rec, &ok(json!({"consistency": "eventual"})));
    assert_error(s, &b, 400, "invalid_body");
    let (s, b) = post(&rec, &ok(json!({"merge": "mmr", "mmr_lambda": 1.5})));
    assert_error(s, &b, 400, "invalid_mmr_lambda");
    let (s, b) = post(&rec, &ok(json!({"merge": "max", "mmr_lambda": 0.5})));
    assert_error(s, &b, 400, "invalid_mmr_lambda");
    // The diversifying merges answer k distinct items.
    for merge in ["quota", "mmr"] {
        let (s, b) = post(&rec, &ok(json!({"merge": merge, "k": 12})));
        assert_eq!(s, 200, "{b}");
        let ids: std::collections::HashSet<&str> = b["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 12, "{b}");
    }

    // Search by vector: the caller's vectors are checked like any other input.
    let search = cluster.url("/v1/search");
    let (s, b) = post(&search, &json!({"vectors": [vec![0.1; 63]]}));
    assert_error(s, &b, 400, "invalid_vectors");
    let (s, b) = post(&search, &json!({"vectors": []}));
    assert_error(s, &b, 400, "invalid_vectors");
    let (s, b) = post(&search, &json!({"vectors": [vec![0.1; 64]], "k": 0}));
    assert_error(s, &b, 400, "invalid_k");
    let (s, b) = post(&search, &json!({"vectors": [vec![0.1; 64]], "k": 3}));
    assert_eq!(s, 200, "{b}");
    // The HNSW beam a request may ask for is bounded.
    for ef in [0, 4097, 1_000_000] {
        let (s, b) = post(&search, &json!({"vectors": [vec![0.1; 64]], "ef": ef}));
        assert_error(s, &b, 400, "invalid_ef");
        let (s, b) = post(&rec, &ok(json!({"ef": ef})));
        assert_error(s, &b, 400, "invalid_ef");
    }
    let (s, b) = post(
        &search,
        &json!({"vectors": [vec![0.1; 64]], "k": 3, "ef": 4096}),
    );
    assert_eq!(s, 200, "{b}");

    // Unknown history items are skipped and counted; all unknown is a client error.
    let mut h = history.clone();
    h.push(json!({"item_id": "no-such-item", "scenario": "search"}));
    h.push(json!({"item_id": "nor-this", "scenario": "ads"}));
    let (s, b) = post(&rec, &json!({"history": h, "scenario": "homefeed"}));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["history"]["unknown"], 2);
    assert_eq!(b["history"]["used"], 10);
    let (s, b) = post(
        &rec,
        &json!({"history": [{"item_id": "ghost", "scenario": "ads"}], "scenario": "homefeed"}),
    );
    assert_error(s, &b, 400, "no_known_history");

    // A history longer than the tower reads keeps the newest events and says so.
    let (_, cluster_info) = get(&cluster.url("/v1/cluster"));
    let max_history = cluster_info["max_history"].as_u64().unwrap() as usize;
    assert!(
        cluster.serves_from(backend, &cluster_info),
        "{cluster_info}"
    );
    let long: Vec<Value> = data
        .items
        .iter()
        .take(max_history + 20)
        .enumerate()
        .map(
            |(i, it)| json!({"item_id": it["id"], "scenario": "homefeed", "ts": 1_700_000_000 + i}),
        )
        .collect();
    let (s, b) = post(
        &rec,
        &json!({"history": long, "scenario": "homefeed", "k": 5}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["history"]["truncated"], 20);
    assert_eq!(b["history"]["used"], max_history);

    // Body over the configured limit.
    let big = json!({"history": history, "scenario": "homefeed", "padding": "x".repeat(300_000)});
    let (s, b) = post(&rec, &big);
    assert_error(s, &b, 413, "body_too_large");

    // Vectors: wrong length, non-finite values (JSON has no NaN: 1e999 is the closest),
    // empty ids, duplicates, reserved payload keys, empty batches.
    let vecs = cluster.url("/v1/items/vectors");
    let (s, b) = post(
        &vecs,
        &json!({"items": [{"id": "v1", "vector": vec![0.1; 63]}]}),
    );
    assert_error(s, &b, 400, "invalid_vector");
    let (s, b) = post_raw(
        &vecs,
        format!(
            "{{\"items\":[{{\"id\":\"v1\",\"vector\":[1e999{}]}}]}}",
            ",0.1".repeat(63)
        ),
        Some("application/json"),
    );
    assert!(s == 400, "{b}");
    let (s, b) = post_raw(
        &vecs,
        format!(
            "{{\"items\":[{{\"id\":\"v1\",\"vector\":[NaN{}]}}]}}",
            ",0.1".repeat(63)
        ),
        Some("application/json"),
    );
    assert_error(s, &b, 400, "malformed_json");
    let (s, b) = post(
        &vecs,
        &json!({"items": [{"id": "", "vector": vec![0.1; 64]}]}),
    );
    assert_error(s, &b, 400, "invalid_id");
    let (s, b) = post(
        &vecs,
        &json!({"items": [{"id": "a", "vector": vec![0.1; 64]}, {"id": "a", "vector": vec![0.1; 64]}]}),
    );
    assert_error(s, &b, 400, "duplicate_id");
    let (s, b) = post(
        &vecs,
        &json!({"items": [{"id": "a", "vector": vec![0.1; 64], "payload": {"_redrec_id": 1}}]}),
    );
    assert_error(s, &b, 400, "reserved_payload_key");
    let (s, b) = post(&vecs, &json!({"items": []}));
    assert_error(s, &b, 400, "empty_batch");
    let (s, b) = post(
        &cluster.url("/v1/items"),
        &json!({"items": [{"id": "t", "text": "  "}]}),
    );
    assert_error(s, &b, 400, "empty_text");
    // Nothing of the rejected batches was written.
    assert_eq!(get(&cluster.url("/v1/items/a")).0, 404);

    // The encoder's packed histories: not base64, not whole vectors, both forms at once.
    let enc = format!("{}/v1/encode/users", cluster.encoder.addr);
    for user in [
        json!({"history_b64": "*not base64*", "scenarios": ["search"]}),
        json!({"history_b64": "AAAAAA==", "scenarios": ["search"]}),
        json!({"history_b64": "AAAAAA==", "history": [vec![0.1; 64]], "scenarios": ["search"]}),
    ] {
        let (s, b) = post(&enc, &json!({ "users": [user] }));
        assert_error(s, &b, 400, "invalid_input");
    }

    // Unknown paths, methods and items.
    let (s, b) = get(&cluster.url("/v1/nope"));
    assert_error(s, &b, 404, "not_found");
    let (s, b) = get(&cluster.url("/v1/recommend"));
    assert_error(s, &b, 405, "method_not_allowed");
    let (s, b) = get(&cluster.url("/v1/items/ghost"));
    assert_error(s, &b, 404, "not_found");

    // And a valid vector write still works after all that.
    let (s, b) = post(
        &vecs,
        &json!({"items": [{"id": "v-ok", "vector": vec![0.125; 64], "payload": {"title": "t"}}]}),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        get(&cluster.url("/v1/items/v-ok")).1["payload"]["title"],
        "t"
    );
    let (s, metrics) = {
        let r = http().get(cluster.url("/metrics")).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(s, 200);
    assert!(metrics.contains("redrec_http_requests_total"), "{metrics}");
    // Valid exposition text, latencies as histograms (per route and per group).
    let types = check_exposition(&metrics);
    for family in [
        "redrec_http_request_duration_seconds",
        "redrec_group_read_duration_seconds",
        "redrec_recommend_coverage_ratio",
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some("histogram"),
            "{family}"
        );
    }
}
