//! An encoder pushed past capacity sheds load: it answers 503 with Retry-After at once
//! instead of queueing without bound, its memory stays bounded, and it serves normally
//! once the load drops.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{http, Proc, Spawn};

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `users` histories of 64 events over a few unit vectors: the heaviest user-tower input.
fn heavy_request(users: usize) -> Value {
    let vector: Vec<f32> = (0..64)
        .map(|i| if i % 8 == 0 { 0.5 } else { 0.0 })
        .collect();
    let user = json!({
        "history": vec![vector; 64],
        "scenarios": vec!["homefeed"; 64],
    });
    json!({ "users": vec![user; users] })
}

/// The encoder's `/v1/stats`.
fn stats(client: &reqwest::blocking::Client, encoder: &Proc) -> Value {
    client
        .get(format!("{}/v1/stats", encoder.addr))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// An encoder process with one single-thread session per tower, plus `extra` flags.
fn one_session_encoder(dir: &std::path::Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "encoder",
        "--listen",
        "127.0.0.1:0",
        "--sessions",
        "1",
        "--intra-threads",
        "1",
    ];
    args.extend_from_slice(extra);
    Proc::spawn("encoder", &args, dir)
}

#[test]
fn past_capacity_the_encoder_sheds_load_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // One session, small batches and a queue of 64 rows: capacity is easy to pass.
    let mut encoder = one_session_encoder(dir.path(), &["--max-batch", "8", "--queue-rows", "64"]);
    let url = format!("{}/v1/encode/users", encoder.addr);
    let client = http();
    let one = heavy_request(1);
    let r = client.post(&url).json(&one).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let rss_before = rss_kib(encoder.pid());

    // 64 clients, each sending 4 users back to back: 256 rows wanted at once.
    let body = Arc::new(serde_json::to_vec(&heavy_request(4)).unwrap());
    let served = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let peak_rss = Arc::new(AtomicUsize::new(0));
    let stop_at = Instant::now() + Duration::from_secs(6);
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let (body, served, refused) = (body.clone(), served.clone(), refused.clone());
            let (client, url) = (client.clone(), url.clone());
            std::thread::spawn(move || {
                while Instant::now() < stop_at {
                    let t0 = Instant::now();
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body((*body).clone())
                        .send()
                        .expect("encoder answers");
                    match r.status().as_u16() {
                        200 => served.lock().unwrap().push(t0.elapsed()),
                        503 => {
                            let took = t0.elapsed();
                            assert!(
                                r.headers().contains_key("retry-after"),
                                "503 without Retry-After"
                            );
                            let e: Value = r.json().unwrap();
                            assert_eq!(e["error"]["code"], "overloaded", "{e}");
                            refused.lock().unwrap().push(took);
                        }
                        other => panic!("unexpected {other}: {}", r.text().unwrap_or_default()),
                    }
                }
            })
        })
        .collect();
    let pid = encoder.pid();
    while Instant::now() < stop_at {
        peak_rss.fetch_max(rss_kib(pid) as usize, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in clients {
        c.join().expect("client thread");
    }
    let median = |v: &Mutex<Vec<Duration>>| {
        let mut v = v.lock().unwrap().clone();
        v.sort();
        (v.len(), v.get(v.len() / 2).copied().unwrap_or_default())
    };
    let ((ok, served_p50), (shed, refused_p50)) = (median(&served), median(&refused));
    let peak = peak_rss.load(Ordering::Relaxed) as u64;
    eprintln!(
        "served {ok} (p50 {served_p50:?}), refused {shed} (p50 {refused_p50:?}); \
         RSS {rss_before} KiB before, peak {peak} KiB"
    );
    assert!(ok > 0, "nothing was served under load");
    assert!(
        shed > 0,
        "256 rows against a 64-row queue: some must be refused"
    );
    // A refusal does not wait in the queue: it comes back faster than a served request.
    assert!(
        refused_p50 < served_p50,
        "refusals ({refused_p50:?}) are no quicker than service ({served_p50:?})"
    );
    // Bounded: the queue holds at most 64 rows (~1 MiB of input), whatever the load.
    assert!(
        peak < rss_before + 256 * 1024,
        "RSS grew from {rss_before} KiB to {peak} KiB"
    );

    // Load gone: the queue drains and requests are served again.
    let stats = stats(&client, &encoder);
    assert_eq!(stats["queued_user_rows"], 0, "{stats}");
    for _ in 0..5 {
        let r = client.post(&url).json(&one).send().unwrap();
        assert_eq!(r.status(), 200);
    }
    encoder.kill();
}

#[test]
fn a_request_whose_deadline_passes_in_the_queue_gets_504() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = one_session_encoder(dir.path(), &[]);
    let url = format!("{}/v1/encode/users", encoder.addr);
    let client = http();
    // Keep the only session busy with large requests, then ask with a 1 ms deadline.
    let big = Arc::new(heavy_request(512));
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (client, url, big) = (client.clone(), url.clone(), big.clone());
            std::thread::spawn(move || client.post(&url).json(&*big).send().unwrap().status())
        })
        .collect();
    // Wait until rows are queued behind the running batch: at least 128 histories of
    // 64 events, far more than a millisecond of work.
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = stats(&client, &encoder);
        if stats["queued_user_rows"].as_u64().unwrap() >= 128 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "the big requests never queued: {stats}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut late = heavy_request(1);
    late["timeout_ms"] = 1.into();
    let r = client.post(&url).json(&late).send().unwrap();
    assert_eq!(r.status(), 504);
    let e: Value = r.json().unwrap();
    assert_eq!(e["error"]["code"], "deadline_exceeded");
    for b in busy {
        assert_eq!(b.join().unwrap(), 200);
    }
}
