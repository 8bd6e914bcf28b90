//! Every tier over TLS: certificates from a test CA, servers announcing `https://`,
//! internal calls verifying each other against the CA (lone shards, encoder, router, and a
//! Raft group whose nodes replicate over TLS), plain HTTP and unknown CAs refused.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::raft::{eventually, free_port};
use support::*;

/// A CA, and a certificate for 127.0.0.1 and localhost signed by it; returns the CA's PEM.
fn certificates(dir: &Path) -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    ca.pem()
}

fn client(ca: Option<&str>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30));
    if let Some(pem) = ca {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn post(c: &reqwest::blocking::Client, url: &str, body: &Value) -> (u16, Value) {
    let resp = c.post(url).json(body).send().expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn every_tier_speaks_tls_and_verifies_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = certificates(d);
    // Every process this test starts serves TLS and trusts the CA.
    for (k, f) in [
        ("REDREC_TLS_CERT", "cert.pem"),
        ("REDREC_TLS_KEY", "key.pem"),
        ("REDREC_TLS_CA", "ca.pem"),
    ] {
        std::env::set_var(k, d.join(f));
    }
    let https = client(Some(&ca));

    // Lone shards, encoder and router.
    let local = layout(d)
        .cluster(2, 1, &["--sessions", "1"], "127.0.0.1:0", &[])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let base = local.router.addr.clone();
    assert!(base.starts_with("https://"), "{base}");
    assert!(local.encoder.addr.starts_with("https://"));
    let items: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("t{i}"), "text": format!("espresso grinder {i} | coffee")}))
        .collect();
    let (s, b) = post(
        &https,
        &format!("{base}/v1/items"),
        &json!({ "items": items }),
    );
    assert_eq!(s, 200, "{b}");
    let req = json!({"history": [{"item_id": "t1", "scenario": "search"}], "scenario": "homefeed", "k": 5});
    let (s, b) = post(&https, &format!("{base}/v1/recommend"), &req);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["coverage"]["answered"], 2, "{b}");

    // Plain HTTP, and a client that does not trust the CA, get nowhere.
    let plain = base.replace("https://", "http://");
    assert!(client(None).get(format!("{plain}/healthz")).send().is_err());
    assert!(client(None).get(format!("{base}/healthz")).send().is_err());
    local.stop();

    // A Raft group over TLS: writes are acknowledged only once a majority has them.
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let addr = |i: usize| format!("https://127.0.0.1:{}", ports[i]);
    let nodes: Vec<Proc> = (0..3)
        .map(|i| {
            let peers: Vec<String> = (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("{}={}", j + 1, addr(j)))
                .collect();
            let data = d.join(format!("node-{}", i + 1));
            Proc::spawn(
                &format!("node-{}", i + 1),
                &[
                    "shard",
                    "--listen",
                    &format!("127.0.0.1:{}", ports[i]),
                    "--data",
                    data.to_str().unwrap(),
                    "--node-id",
                    &(i + 1).to_string(),
                    "--peers",
                    &peers.join(","),
                    "--raft-tick-ms",
                    "50",
                ],
                d,
            )
        })
        .collect();
    eventually(Duration::from_secs(60), "nodes ready over TLS", || {
        (0..3).all(|i| {
            https
                .get(format!("{}/readyz", addr(i)))
                .send()
                .is_ok_and(|r| r.status().is_success())
        })
    });
    let meta: Vec<String> = (0..3).map(addr).collect();
    let router = Proc::spawn(
        "router-raft",
        &[
            "router",
            "--listen",
            "127.0.0.1:0",
            "--meta",
            &meta.join(","),
            "--sessions",
            "1",
        ],
        d,
    );
    let vectors: Vec<Value> = (0..20)
        .map(|i| {
            let mut v = vec![0.0f32; 64];
            v[i % 64] = 1.0;
            json!({"id": format!("v{i}"), "vector": v})
        })
        .collect();
    let (s, b) = post(
        &https,
        &format!("{}/v1/items/vectors", router.addr),
        &json!({ "items": vectors }),
    );
    assert_eq!(s, 200, "{b}");
    // Every replica has them.
    for i in 0..3 {
        eventually(Duration::from_secs(30), "replicated over TLS", || {
            https
                .get(format!("{}/v1/groups/0/digest", addr(i)))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|digest| digest["points"] == 20)
        });
    }
    drop(nodes);
}
