//! `redrec eval` through the serving path (its own shard, encoder and router processes):
//! the shipped towers must rank the held-out next items better than popularity, on a
//! synthetic set none of them was trained on.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

#[test]
fn shipped_towers_beat_popularity_through_the_serving_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = synth(dir.path(), 1_500, 120, 21);
    let out = Command::new(BIN)
        .args(["eval", "--json", "--k", "100", "--data"])
        .arg(&data.dir)
        .arg("--dir")
        .arg(dir.path().join("eval"))
        .output()
        .expect("redrec eval");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["users"], 120);
    let models = &report["models"];
    for name in ["reference", "popularity", "mean-of-history"] {
        for metric in ["hr@10", "ndcg@10", "hr@100", "ndcg@100", "mrr"] {
            let v = models[name][metric].as_f64();
            assert!(
                v.is_some_and(|v| (0.0..=1.0).contains(&v)),
                "{name} {metric}: {report}"
            );
        }
    }
    let (tower, popular) = (&models["reference"], &models["popularity"]);
    for metric in ["hr@10", "ndcg@10", "mrr"] {
        assert!(
            tower[metric].as_f64() > popular[metric].as_f64(),
            "{metric}: towers {} vs popularity {}",
            tower[metric],
            popular[metric]
        );
    }
    eprintln!("{report}");
}
