//! `redrec cluster top`: a router's view of the cluster, refreshed in the terminal: each
//! group's slots, points, RAM per item, leader and how far each replica is behind it;
//! requests per second and p99 per route; hedged reads, partial answers and encoder
//! errors. The same figures as `/ui`, from the same `/v1/cluster` and `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct TopArgs {
    /// The router to ask (http://host:port).
    #[arg(long, env = "REDREC_ROUTER", default_value = "http://127.0.0.1:8080")]
    router: String,
    /// An API key with the `admin` scope, when the router has keys.
    #[arg(long, env = "REDREC_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0)]
    interval_s: f64,
    /// Print two samples `interval` apart (rates need two) and exit, without clearing the
    /// screen.
    #[arg(long)]
    once: bool,
}

pub type Labels = BTreeMap<String, String>;

/// The samples of `name` in Prometheus text, with their labels.
pub fn samples(text: &str, name: &str) -> Vec<(Labels, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split("\",")
                .filter_map(|kv| {
                    let (k, v) = kv.split_once("=\"")?;
                    Some((k.to_string(), v.trim_end_matches('"').to_string()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// What one scrape of `/metrics` says, summed by route.
#[derive(Default)]
struct Scrape {
    at: Option<Instant>,
    requests: BTreeMap<String, f64>,
    /// route -> le -> count
    buckets: BTreeMap<String, BTreeMap<String, f64>>,
    reads: f64,
    hedges: f64,
    won: f64,
    partial: f64,
    searches: f64,
    encoder: BTreeMap<String, f64>,
}

impl Scrape {
    fn of(text: &str) -> Self {
        let sum = |name: &str| samples(text, name).iter().map(|(_, v)| v).sum::<f64>();
        let mut s = Scrape {
            at: Some(Instant::now()),
            reads: sum("redrec_group_reads_total"),
            hedges: sum("redrec_hedged_reads_total"),
            won: sum("redrec_hedged_reads_won_total"),
            searches: sum("redrec_recommend_coverage_ratio_count"),
            ..Default::default()
        };
        for (l, v) in samples(text, "redrec_http_requests_total") {
            *s.requests.entry(l["path"].clone()).or_default() += v;
        }
        for (l, v) in samples(text, "redrec_http_request_duration_seconds_bucket") {
            *s.buckets
                .entry(l["path"].clone())
                .or_default()
                .entry(l["le"].clone())
                .or_default() += v;
        }
        for (l, v) in samples(text, "redrec_recommend_coverage_ratio_bucket") {
            if l.get("le").map(String::as_str) == Some("0.99") {
                s.partial += v;
            }
        }
        for (l, v) in samples(text, "redrec_encoder_errors_total") {
            *s.encoder.entry(l["code"].clone()).or_default() += v;
        }
        s
    }
}

/// The p99 (upper bucket bound, ms) of what `now` holds more than `before` for a route.
fn p99(now: &BTreeMap<String, f64>, before: Option<&BTreeMap<String, f64>>) -> Option<f64> {
    let delta = |le: &str| {
        now.get(le).copied().unwrap_or(0.0) - before.and_then(|b| b.get(le)).copied().unwrap_or(0.0)
    };
    let total = delta("+Inf");
    if total <= 0.0 {
        return None;
    }
    let mut les: Vec<(f64, &String)> = now
        .keys()
        .map(|le| (le.parse::<f64>().unwrap_or(f64::INFINITY), le))
        .collect();
    les.sort_by(|a, b| a.0.total_cmp(&b.0));
    les.into_iter()
        .find(|(_, le)| delta(le) >= 0.99 * total)
        .map(|(bound, _)| bound * 1000.0)
}

fn render(a: &TopArgs, cluster: &Value, now: &Scrape, before: &Scrape) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "redrec cluster top: {} (every {} s)\nmodel {} · {} groups · {} items{}",
        a.router,
        a.interval_s,
        cluster["model_version"].as_str().unwrap_or("?"),
        cluster["shards"].as_array().map_or(0, Vec::len),
        cluster["points"],
        cluster["map"]["version"]
            .as_u64()
            .map_or(String::new(), |v| format!(" · map v{v}")),
    );
    let _ = writeln!(
        out,
        "\n{:<6} {:>6} {:>10} {:>9}  replicas (* leader, entries behind)",
        "group", "slots", "points", "RAM/item"
    );
    for g in cluster["shards"].as_array().into_iter().flatten() {
        let replicas = g["replicas"].as_array().cloned().unwrap_or_default();
        let lead = replicas.iter().find(|r| r["leader"] == true);
        let mut line = String::new();
        for r in &replicas {
            let lag = match (
                lead.and_then(|l| l["applied"].as_u64()),
                r["applied"].as_u64(),
            ) {
                _ if r["up"] != true => "down".to_string(),
                (Some(l), Some(a)) => l.saturating_sub(a).to_string(),
                _ => "?".into(),
            };
            let star = if r["leader"] == true { "*" } else { "" };
            let _ = write!(
                line,
                "{star}{} ({lag})  ",
                r["addr"].as_str().unwrap_or("?")
            );
        }
        if replicas.is_empty() {
            line = g["addr"].as_str().unwrap_or("?").to_string();
        }
        let ram = g["ram_per_item"]
            .as_f64()
            .map_or("-".into(), |b| format!("{b:.0} B"));
        let _ = writeln!(
            out,
            "{:<6} {:>6} {:>10} {:>9}  {line}",
            g["group"].to_string(),
            g["slots"].to_string(),
            g["points"].to_string(),
            ram
        );
    }
    let secs = match (now.at, before.at) {
        (Some(n), Some(b)) => n.duration_since(b).as_secs_f64(),
        _ => 0.0,
    };
    let rate = |n: f64, b: f64| {
        if secs > 0.0 {
            format!("{:.1}", (n - b) / secs)
        } else {
            "-".into()
        }
    };
    let _ = writeln!(out, "\n{:<28} {:>9} {:>9}", "route", "req/s", "p99 ms");
    for (route, n) in &now.requests {
        let b = before.requests.get(route).copied().unwrap_or(0.0);
        let p = now
            .buckets
            .get(route)
            .and_then(|b| p99(b, before.buckets.get(route)))
            .filter(|_| secs > 0.0)
            .map_or("-".into(), |p| format!("{p:.1}"));
        let _ = writeln!(out, "{route:<28} {:>9} {p:>9}", rate(*n, b));
    }
    let share = |x: f64, of: f64| if of > 0.0 { 100.0 * x / of } else { 0.0 };
    let encoder: Vec<String> = now
        .encoder
        .iter()
        .map(|(code, n)| {
            format!(
                "{code} {}",
                rate(*n, before.encoder.get(code).copied().unwrap_or(0.0))
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "\nhedged reads {:.2}% (won {:.0}%) · partial answers {:.2}% · encoder errors/s: {}",
        share(now.hedges - before.hedges, now.reads - before.reads),
        share(now.won - before.won, now.hedges - before.hedges),
        share(now.partial - before.partial, now.searches - before.searches),
        if encoder.is_empty() {
            "none".into()
        } else {
            encoder.join(", ")
        },
    );
    out
}

async fn fetch(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    key: Option<&str>,
) -> Result<String> {
    let mut req = http
        .get(format!("{base}{path}"))
        .timeout(Duration::from_secs(5));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let r = req.send().await.with_context(|| format!("{base}{path}"))?;
    let status = r.status();
    let text = r.text().await?;
    anyhow::ensure!(status.is_success(), "{path}: {status} {text}");
    Ok(text)
}

pub async fn top(a: TopArgs, http: reqwest::Client) -> Result<()> {
    let base = a.router.trim_end_matches('/').to_string();
    let interval = Duration::from_secs_f64(a.interval_s.max(0.2));
    let mut before = Scrape::default();
    let mut shown = 0;
    loop {
        let (cluster, metrics) = tokio::try_join!(
            fetch(&http, &base, "/v1/cluster", a.api_key.as_deref()),
            fetch(&http, &base, "/metrics", a.api_key.as_deref())
        )?;
        let cluster: Value = serde_json::from_str(&cluster)?;
        let now = Scrape::of(&metrics);
        let screen = render(&a, &cluster, &now, &before);
        if a.once {
            if shown == 1 {
                print!("{screen}");
                return Ok(());
            }
        } else {
            // Clear the screen, cursor home.
            print!("\x1b[2J\x1b[H{screen}");
        }
        shown += 1;
        before = now;
        tokio::time::sleep(interval).await;
    }
}
