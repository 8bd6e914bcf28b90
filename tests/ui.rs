//! The dashboard in a real browser: headless Chromium loads `/ui` from a router over two
//! Raft groups and checks the map shows both groups and the try-it panel shows a user's
//! answer; with API keys on, the same page works with the key given to it. It saves a
//! screenshot (`$CARGO_TARGET_TMPDIR/ui.png`). Skipped, saying so, where Chromium is
//! absent (`scripts/setup.sh --ui` installs it).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::raft::eventually;
use support::*;

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REDREC_CHROMIUM") {
        return Some(p.into());
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("which").arg(name).output().ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().into())
        })
}

/// Chromium, headless, on `url`, with time for the page's calls; its flags added.
fn browse(chrome: &PathBuf, url: &str, flags: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=15000",
            "--window-size=1280,1200",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(flags)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_dashboard_shows_the_groups_and_a_try_it_answer_in_chromium() {
    let Some(chrome) = chromium() else {
        eprintln!("SKIPPED: no Chromium (run scripts/setup.sh --ui, or set REDREC_CHROMIUM)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = layout(dir.path())
        .cluster(
            2,
            3,
            &["--sessions", "1"],
            "127.0.0.1:0",
            &["--open-metrics"],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    let router = local.router.addr.clone();
    let data = synth(dir.path(), 300, 5, 3);
    let body = json!({"items": data.items.iter().map(|it| json!({
        "id": it["id"], "text": it["text"], "payload": {"title": it["title"], "category": it["category"]},
    })).collect::<Vec<_>>()});
    eventually(Duration::from_secs(30), "items ingested", || {
        post(&format!("{router}/v1/items"), &body).0 == 200
    });
    let user = &data.users[0];
    let events: Vec<Value> = recent_history(user, 12)
        .iter()
        .map(|e| json!({"user_id": "u0", "item_id": e["item_id"], "scenario": e["scenario"], "ts": e["ts"]}))
        .collect();
    let (s, b) = post(&format!("{router}/v1/events"), &json!({ "events": events }));
    assert_eq!(s, 200, "{b}");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("{router}/ui?user=u0");
    let dom = browse(&chrome, &url, &["--dump-dom"]);
    for g in 0..2 {
        assert!(
            dom.contains(&format!("data-group=\"{g}\"")),
            "group {g}: {dom}"
        );
    }
    let merged = dom.split("id=\"merged\"").nth(1).unwrap_or_default();
    assert!(merged.matches("class=\"item\"").count() >= 10, "{dom}");
    assert!(dom.contains("u0's history"), "{dom}");
    assert!(dom.contains("<span id=\"error\"></span>"), "{dom}");
    browse(
        &chrome,
        &url,
        &[&format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::metadata(&shot).expect("a screenshot");
    assert!(png.len() > 20_000, "{} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());

    // With keys on, the page is served to anyone and works with the key it is given.
    let meta = local
        .shards
        .iter()
        .map(|p| p.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let keyed = Proc::spawn(
        "router-keyed",
        &[
            "router",
            "--listen",
            "127.0.0.1:0",
            "--meta",
            &meta,
            "--encoder",
            &local.encoder.addr,
            "--api-keys",
            "read+write+admin:k3y-for-the-page",
        ],
        dir.path(),
    );
    let without = browse(
        &chrome,
        &format!("{}/ui?user=u0", keyed.addr),
        &["--dump-dom"],
    );
    assert!(without.contains("unauthenticated"), "{without}");
    let with = browse(
        &chrome,
        &format!("{}/ui?user=u0#key=k3y-for-the-page", keyed.addr),
        &["--dump-dom"],
    );
    assert!(with.contains("data-group=\"1\""), "{with}");
    assert!(with.contains("<span id=\"error\"></span>"), "{with}");
    local.stop();
}
