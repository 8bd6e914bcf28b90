//! The public API against its own OpenAPI document: schemathesis (installed by
//! `scripts/setup.sh --api`) generates requests from `/openapi.json` of a local cluster
//! with API keys on, and fails on any 5xx, any answer that does not match the document,
//! or any undocumented status. At least 1,000 requests, bounded in time.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const ADMIN: &str = "admin-key-for-the-schema-run";
const LIMIT: Duration = Duration::from_secs(300);

fn schemathesis() -> Option<PathBuf> {
    let path = std::env::var_os("REDREC_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".redrec/api-venv/bin/schemathesis")
        });
    path.exists().then_some(path)
}

#[test]
fn generated_requests_get_documented_answers_and_no_5xx() {
    let Some(tool) = schemathesis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is missing: scripts/setup.sh --api installs it"
        );
        eprintln!("skipped: schemathesis is not installed (scripts/setup.sh --api)");
        return;
    };
    // The router this test starts inherits the keys.
    std::env::set_var("REDREC_API_KEYS", format!("admin:{ADMIN}"));
    let dir = tempfile::tempdir().unwrap();
    let local = layout(dir.path())
        .cluster(3, 1, &["--sessions", "1"], "127.0.0.1:0", &[])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let base = local.router.addr.clone();
    let items: Vec<_> = (0..200)
        .map(|i| json!({"id": format!("s{i}"), "text": format!("item {i} | topic {}", i % 7)}))
        .collect();
    let resp = http()
        .post(format!("{base}/v1/items"))
        .header("x-api-key", ADMIN)
        .json(&json!({ "items": items }))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let started = Instant::now();
    let mut run = Command::new(&tool)
        .args(["run", &format!("{base}/openapi.json")])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance",
        ])
        .args([
            "--max-examples",
            "120",
            "--seed",
            "42",
            "--request-timeout",
            "10",
        ])
        .args(["--header", &format!("x-api-key: {ADMIN}")])
        .env("NO_COLOR", "1")
        // Its example cache goes to the scenario's temp dir, not the checkout.
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("schemathesis");
    while run.try_wait().unwrap().is_none() {
        if started.elapsed() > LIMIT {
            let _ = run.kill();
            panic!("schemathesis ran past {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = run.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    // "Test cases:" then "N generated, N passed".
    let generated: usize = report
        .lines()
        .find_map(|l| l.trim().split_once(" generated, ")?.0.parse().ok())
        .unwrap_or_else(|| panic!("no count in:\n{report}"));
    assert!(generated >= 1_000, "only {generated} requests:\n{report}");
    eprintln!(
        "schemathesis: {generated} requests in {:?}",
        started.elapsed()
    );
    local.stop();
}
