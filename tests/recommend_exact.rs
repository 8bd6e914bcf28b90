//! Three shard processes (or a Qdrant server with a 3-shard collection), an encoder and a
//! router: recommendations must equal an exact brute-force max-over-queries top-k over the
//! same stored item vectors, on both storage backends.

mod support;

use std::collections::{HashMap, HashSet};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};
use support::*;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn recommend_top10_equals_brute_force_over_three_shards() {
    top10_equals_brute_force(Backend::Embedded);
}

#[test]
fn recommend_top10_equals_brute_force_on_qdrant() {
    top10_equals_brute_force(Backend::Qdrant);
}

#[test]
fn per_query_merge_and_filters_hold_across_shards() {
    per_query_merge_and_filters(Backend::Embedded);
}

#[test]
fn per_query_merge_and_filters_hold_on_qdrant() {
    per_query_merge_and_filters(Backend::Qdrant);
}

fn top10_equals_brute_force(backend: Backend) {
    let Some(cluster) = Cluster::on(backend, 3, &[]) else {
        return;
    };
    let data = synth(cluster.dir.path(), 3_000, 30, 11);
    ingest(&cluster, &data.items);

    // Every item stored once, on the shard its slot names; the vectors the shards hold.
    let (status, info) = get(&cluster.url("/v1/cluster"));
    assert_eq!(status, 200);
    assert!(cluster.serves_from(backend, &info), "{info}");
    let points: u64 = info["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["points"].as_u64().unwrap())
        .sum();
    assert_eq!(points, 3_000, "{info}");
    assert!(info["shards"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["points"].as_u64().unwrap() > 800));
    let mut vectors: HashMap<String, Vec<f32>> = HashMap::new();
    for it in &data.items {
        let id = it["id"].as_str().unwrap();
        let (status, item) = get(&cluster.url(&format!("/v1/items/{id}")));
        assert_eq!(status, 200, "{item}");
        assert_eq!(item["payload"]["title"], it["title"]);
        vectors.insert(id.to_string(), floats(&item["vector"]));
    }

    let (mut positions, mut matched) = (0, 0);
    for user in data.users.iter().take(20) {
        let history = recent_history(user, 30);
        let req =
            json!({"history": history, "scenario": "homefeed", "k": 10, "exclude_seen": true});
        let (status, answer) = post(&cluster.url("/v1/recommend"), &req);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["coverage"]["answered"], 3);
        assert_eq!(answer["history"]["used"], 30);

        // The same user tower, asked directly, gives the query vectors to score with.
        let hv: Vec<Vec<f32>> = history
            .iter()
            .map(|e| vectors[e["item_id"].as_str().unwrap()].clone())
            .collect();
        let scen: Vec<&str> = history
            .iter()
            .map(|e| e["scenario"].as_str().unwrap())
            .collect();
        let (status, enc) = post(
            &format!("{}/v1/encode/users", cluster.encoder.addr),
            &json!({"users": [{"history": hv, "scenarios": scen}]}),
        );
        assert_eq!(status, 200, "{enc}");
        let queries: Vec<Vec<f32>> = enc["queries"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        assert_eq!(queries.len(), 3);
        // The packed form of the same history gives the same queries, bit for bit.
        let packed: Vec<u8> = hv.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
        let (status, enc_packed) = post(
            &format!("{}/v1/encode/users", cluster.encoder.addr),
            &json!({"users": [{"history_b64": BASE64.encode(packed), "scenarios": scen}], "packed": true}),
        );
        assert_eq!(status, 200, "{enc_packed}");
        let packed_queries: Vec<f32> = BASE64
            .decode(enc_packed["queries_b64"][0].as_str().unwrap())
            .unwrap()
            .chunks_exact(4)
            .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
            .collect();
        assert_eq!(packed_queries, queries.concat());
        let seen: HashSet<&str> = history
            .iter()
            .map(|e| e["item_id"].as_str().unwrap())
            .collect();
        let mut brute: Vec<(f32, &str)> = vectors
            .iter()
            .filter(|(id, _)| !seen.contains(id.as_str()))
            .map(|(id, v)| {
                (
                    queries.iter().map(|q| dot(q, v)).fold(f32::MIN, f32::max),
                    id.as_str(),
                )
            })
            .collect();
        brute.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));

        let got = answer["items"].as_array().unwrap();
        assert_eq!(got.len(), 10);
        for (i, item) in got.iter().enumerate() {
            positions += 1;
            let id = item["id"].as_str().unwrap();
            assert!(!seen.contains(id), "a seen item came back");
            if id == brute[i].1 {
                matched += 1;
                assert!((item["score"].as_f64().unwrap() as f32 - brute[i].0).abs() < 1e-3);
            }
        }
    }
    let share = matched as f64 / positions as f64;
    println!("top-10 positions equal to brute force: {matched}/{positions}");
    assert!(
        share >= 0.95,
        "{matched}/{positions} positions match brute force"
    );
}

fn per_query_merge_and_filters(backend: Backend) {
    let Some(cluster) = Cluster::on(backend, 3, &[]) else {
        return;
    };
    let data = synth(cluster.dir.path(), 1_500, 5, 12);
    ingest(&cluster, &data.items);
    let history = recent_history(&data.users[0], 20);

    let (status, answer) = post(
        &cluster.url("/v1/recommend"),
        &json!({"history": history, "scenario": "search", "k": 5, "merge": "per_query"}),
    );
    assert_eq!(status, 200, "{answer}");
    let lists = answer["per_query"].as_array().unwrap();
    assert_eq!(lists.len(), 3);
    for l in lists {
        let scores: Vec<f64> = l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["score"].as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), 5);
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    }
    assert!(answer.get("items").is_none());

    let filter = json!({"must": [{"key": "category", "match": {"value": "coffee"}}]});
    let (status, answer) = post(
        &cluster.url("/v1/recommend"),
        &json!({"history": history, "scenario": "homefeed", "k": 20, "filter": filter}),
    );
    assert_eq!(status, 200, "{answer}");
    let items = answer["items"].as_array().unwrap();
    assert_eq!(items.len(), 20);
    assert!(
        items.iter().all(|i| i["payload"]["category"] == "coffee"),
        "{answer}"
    );

    // Without exclusion, the history's own items may come back; with it, never.
    let (_, with_seen) = post(
        &cluster.url("/v1/recommend"),
        &json!({"history": history, "scenario": "homefeed", "k": 50, "exclude_seen": false}),
    );
    let seen: HashSet<&str> = history
        .iter()
        .map(|e| e["item_id"].as_str().unwrap())
        .collect();
    assert!(with_seen["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| seen.contains(i["id"].as_str().unwrap())));

    // A repeated call for the same user and history reuses the query vectors.
    let again = json!({"user_id": "u-cache", "history": history, "scenario": "homefeed", "k": 10});
    let (_, first) = post(&cluster.url("/v1/recommend"), &again);
    let (_, second) = post(&cluster.url("/v1/recommend"), &again);
    assert_eq!(first["history"]["cached"], false, "{first}");
    assert_eq!(second["history"]["cached"], true, "{second}");
    assert_eq!(first["items"], second["items"]);
    assert_eq!(first["history"]["used"], second["history"]["used"]);

    // Delete and read back.
    let id = data.items[0]["id"].as_str().unwrap();
    let resp = http()
        .delete(cluster.url(&format!("/v1/items/{id}")))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(get(&cluster.url(&format!("/v1/items/{id}"))).0, 404);
    assert_eq!(
        http()
            .delete(cluster.url(&format!("/v1/items/{id}")))
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );
}
