//! Spans exported over OTLP/HTTP: a router, an encoder and two shards started with
//! `REDREC_OTLP_ENDPOINT` send their spans to a collector (here a minimal one that keeps
//! every request's body), each as its own service, all in the trace of the recommend.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::*;

/// Accepts OTLP/HTTP exports on a free port; the bodies received.
fn collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    kept.lock().unwrap().push(body);
                    let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(ok.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, bodies)
}

#[test]
fn spans_are_exported_over_otlp_by_every_tier_in_one_trace() {
    let (endpoint, bodies) = collector();
    // Every process this test starts exports its spans there, in batches every 100 ms (the
    // only test in this binary, so nothing else sees the variables).
    std::env::set_var("REDREC_OTLP_ENDPOINT", &endpoint);
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let cluster = Cluster::start(2, &["--user-cache", "0"]);
    let data = synth(cluster.dir.path(), 200, 5, 3);
    ingest(&cluster, &data.items);

    let trace: u128 = rand::random::<u128>() | 1;
    let body = json!({
        "history": recent_history(&data.users[0], 10), "scenario": "homefeed", "k": 10,
    });
    let resp = http()
        .post(cluster.url("/v1/recommend"))
        .header(
            "traceparent",
            format!("00-{trace:032x}-00f067aa0ba902b7-01"),
        )
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // The trace id travels as 16 raw bytes in the exported protobuf; each export names
    // its service.
    let id = trace.to_be_bytes();
    let has = |body: &[u8], what: &[u8]| body.windows(what.len()).any(|w| w == what);
    let services = ["redrec-router", "redrec-encoder", "redrec-shard"];
    let found = || -> Vec<(&str, bool, bool)> {
        let bodies = bodies.lock().unwrap();
        services
            .iter()
            .map(|s| {
                let of = |b: &&Vec<u8>| has(b, s.as_bytes());
                (
                    *s,
                    bodies.iter().any(|b| of(&b)),
                    bodies.iter().filter(of).any(|b| has(b, &id)),
                )
            })
            .collect()
    };
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !found().iter().all(|f| f.2) {
        assert!(
            std::time::Instant::now() < until,
            "(service, exported, in the trace): {:?}; {} exports",
            found(),
            bodies.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The router's spans inside the request are there too.
    let bodies = bodies.lock().unwrap();
    for span in ["group search", "user tower", "history lookup", "merge"] {
        assert!(
            bodies
                .iter()
                .any(|b| has(b, &id) && has(b, span.as_bytes())),
            "{span}"
        );
    }
}
