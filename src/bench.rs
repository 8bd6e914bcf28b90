//! `redrec bench encoder`: throughput and latency of the towers, in-process and over HTTP,
//! against baselines measured in the same run: the same ONNX files through raw
//! `onnxruntime` in Python at the same batch sizes, and redrec with batching disabled.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redrec_encoder::{BatchConfig, Encoder, EncoderClient, EncoderHandle, Towers, UserHistory};
use serde::Serialize;

use redrec::dataset::synthetic::Catalogue;

use crate::cli::roles::TowerArgs;

#[derive(Args, Clone)]
pub struct EncoderBenchArgs {
    #[command(flatten)]
    towers: TowerArgs,
    /// Seconds each measurement runs (after a warm-up of a fifth of it).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Batch sizes of the equal-batch comparison with raw onnxruntime.
    #[arg(long, value_delimiter = ',', default_value = "1,32,256")]
    batch_sizes: Vec<usize>,
    /// Concurrent single-row requests of the batching comparison.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Events per user history.
    #[arg(long, default_value_t = 32)]
    history: usize,
    /// Times each comparison is repeated, its setups taking turns; the ratios reported
    /// are the median over rounds, with their spread, so a slow spell of a shared machine
    /// lands on both sides of a ratio instead of one.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Which towers to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "users,items")]
    tower: Vec<Tower>,
    /// Python with numpy and onnxruntime for the raw baseline (scripts/setup.sh --bench
    /// installs one); without it that baseline is skipped and the report says so.
    #[arg(long, env = "REDREC_BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// Also print the results as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Tower {
    Users,
    Items,
}

#[derive(Debug, Clone, Serialize)]
struct Measurement {
    tower: Tower,
    setup: String,
    batch: usize,
    concurrency: usize,
    rows_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    sessions: usize,
    intra_threads: usize,
    model_version: String,
    rounds: u32,
    measurements: Vec<Measurement>,
    ratios: Vec<Ratio>,
    notes: Vec<String>,
}

/// One ratio of two setups, measured once per round.
#[derive(Debug, Serialize)]
struct Ratio {
    name: String,
    rounds: Vec<f64>,
}

/// The median of `v` (NaN when empty).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Report {
    fn ratio(&mut self, name: String, value: f64) {
        let name = name.to_lowercase();
        match self.ratios.iter_mut().find(|r| r.name == name) {
            Some(r) => r.rounds.push(value),
            None => self.ratios.push(Ratio {
                name,
                rounds: vec![value],
            }),
        }
    }
}

/// Inputs shared by every setup: real item texts, and histories of their vectors.
struct Workload {
    texts: Vec<String>,
    users: Vec<UserHistory>,
}

impl Workload {
    fn build(encoder: &Encoder, history: usize) -> Result<Self> {
        let cat = Catalogue::generate(4000, 11)?;
        let texts: Vec<String> = cat.items.into_iter().map(|i| i.text).collect();
        let vectors = encoder.encode_items(&texts[..2000])?;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let scenarios = encoder.manifest().scenarios.len() as i64;
        let users = (0..512)
            .map(|_| UserHistory {
                vectors: (0..history)
                    .map(|_| vectors.choose(&mut rng).cloned().unwrap_or_default())
                    .collect(),
                scenarios: (0..history)
                    .map(|_| rng.random_range(0..scenarios))
                    .collect(),
            })
            .collect();
        Ok(Self { texts, users })
    }

    fn texts(&self, rng: &mut ChaCha8Rng, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| self.texts.choose(rng).cloned().unwrap_or_default())
            .collect()
    }

    fn users(&self, rng: &mut ChaCha8Rng, n: usize) -> Vec<UserHistory> {
        (0..n)
            .map(|_| self.users.choose(rng).cloned().unwrap_or_default())
            .collect()
    }
}

/// Runs `concurrency` loops of requests of `batch` rows for `seconds` after a warm-up.
async fn drive(
    handle: &EncoderHandle,
    work: &Arc<Workload>,
    tower: Tower,
    batch: usize,
    concurrency: usize,
    seconds: f64,
) -> Result<(f64, Histogram<u64>, u64)> {
    let run = crate::bench_load::closed_loop(concurrency, seconds, |c| {
        let (handle, work) = (handle.clone(), work.clone());
        let mut rng = ChaCha8Rng::seed_from_u64(c as u64);
        move || {
            let handle = handle.clone();
            let ok = match tower {
                Tower::Users => {
                    let users = work.users(&mut rng, batch);
                    futures::future::Either::Left(async move {
                        handle.encode_users(users, None).await.is_ok()
                    })
                }
                Tower::Items => {
                    let texts = work.texts(&mut rng, batch);
                    futures::future::Either::Right(async move {
                        handle.encode_items(texts, None).await.is_ok()
                    })
                }
            };
            async move { ok.await.then_some(batch as u64) }
        }
    })
    .await?;
    Ok((run.per_second(), run.hist, run.errors))
}

fn measurement(
    tower: Tower,
    setup: &str,
    batch: usize,
    concurrency: usize,
    (rows_per_s, hist, errors): (f64, Histogram<u64>, u64),
) -> Measurement {
    let m = Measurement {
        tower,
        setup: setup.into(),
        batch,
        concurrency,
        rows_per_s,
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    };
    eprintln!(
        "  {:<6} {:<34} batch {:>4} × {:>3} concurrent: {:>9.0} rows/s  p50 {:>7.2} ms  p99 {:>7.2} ms{}",
        format!("{tower:?}").to_lowercase(),
        setup,
        batch,
        concurrency,
        m.rows_per_s,
        m.p50_ms,
        m.p99_ms,
        if errors > 0 {
            format!("  ({errors} errors)")
        } else {
            String::new()
        }
    );
    m
}

/// An encoder HTTP server in this process, on a free loopback port, and a client of it.
async fn serve(
    towers: Arc<Towers>,
    http: &reqwest::Client,
) -> Result<(EncoderHandle, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = redrec_encoder::server::router(towers, &Default::default());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let client = EncoderClient::connect(
        &format!("http://{addr}"),
        http.clone(),
        Duration::from_secs(30),
    )
    .await?;
    Ok((EncoderHandle::Remote(client), task))
}

fn default_python() -> Option<PathBuf> {
    let here = std::env::current_dir().ok()?;
    here.ancestors()
        .map(|d| d.join(".redrec/bench-venv/bin/python"))
        .find(|p| p.exists())
}

#[derive(serde::Deserialize)]
struct PyResult {
    rows_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One raw-onnxruntime measurement; `items` is the tokenizer and a file of texts.
struct PyRun<'a> {
    python: &'a Path,
    model: PathBuf,
    tower: Tower,
    batch: usize,
    len: usize,
    threads: usize,
    items: Option<(PathBuf, PathBuf)>,
    seconds: f64,
}

fn python_baseline(r: PyRun<'_>) -> Result<PyResult> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_ort.py");
    let mut cmd = std::process::Command::new(r.python);
    cmd.arg(&script)
        .arg("--model")
        .arg(&r.model)
        .args([
            "--tower",
            if r.tower == Tower::Users {
                "users"
            } else {
                "items"
            },
        ])
        .args(["--batch", &r.batch.to_string(), "--len", &r.len.to_string()])
        .args(["--threads", &r.threads.to_string()])
        .args(["--seconds", &r.seconds.to_string()])
        .args(["--warmup", &(r.seconds / 5.0).to_string()]);
    if let Some((tokenizer, texts)) = &r.items {
        cmd.arg("--tokenizer")
            .arg(tokenizer)
            .arg("--texts")
            .arg(texts);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", r.python.display()))?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

pub fn machine() -> String {
    use procfs::Current;
    let cpu = procfs::CpuInfo::current()
        .ok()
        .and_then(|c| c.model_name(0).map(|m| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} cores available")
}

pub async fn encoder(a: EncoderBenchArgs) -> Result<()> {
    let towers = a.towers.config();
    let encoder = towers.load().await?;
    let m = encoder.manifest().clone();
    let dir = towers.models.clone();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let work = Arc::new({
        let e = encoder.clone();
        let history = a.history;
        tokio::task::spawn_blocking(move || Workload::build(&e, history)).await??
    });
    let mut report = Report {
        machine: machine(),
        sessions: encoder.sessions(),
        intra_threads: towers.encoder.intra_threads,
        model_version: m.model_version.clone(),
        rounds: a.rounds,
        measurements: Vec::new(),
        ratios: Vec::new(),
        notes: Vec::new(),
    };
    eprintln!(
        "redrec bench encoder: {} · {} sessions × {} threads · towers {} · {} rounds",
        report.machine, report.sessions, report.intra_threads, m.model_version, a.rounds
    );
    let python = a.python.clone().or_else(default_python);
    if python.is_none() {
        report.notes.push(
            "raw onnxruntime baseline skipped: no Python found (scripts/setup.sh --bench)".into(),
        );
    }
    let batching = towers.batching.clone();
    let unbatched = BatchConfig {
        enabled: false,
        ..batching.clone()
    };
    let sessions = encoder.sessions();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    // The texts the item tower reads, for the raw baseline to tokenize as redrec does.
    let texts_file = tempfile::NamedTempFile::new()?;
    std::fs::write(texts_file.path(), work.texts.join("\n"))?;
    let tokenizer = dir.join(
        m.item_tower
            .tokenizer
            .clone()
            .unwrap_or_else(|| "tokenizer.json".into()),
    );

    for &tower in &a.tower {
        // Equal batch sizes: as many requests in flight as sessions, each one batch.
        eprintln!("{tower:?} tower, equal batch sizes:");
        for (b, round) in a
            .batch_sizes
            .iter()
            .flat_map(|&b| (0..a.rounds).map(move |r| (b, r)))
        {
            if a.rounds > 1 {
                eprintln!("  round {}/{}:", round + 1, a.rounds);
            }
            let towers = Arc::new(Towers::new(encoder.clone(), unbatched.clone()));
            let local = EncoderHandle::Local(towers.clone());
            let r = drive(&local, &work, tower, b, sessions, a.seconds).await?;
            let ours = measurement(tower, "redrec in-process", b, sessions, r);
            let (remote, server) = serve(towers.clone(), &http).await?;
            let r = drive(&remote, &work, tower, b, sessions, a.seconds).await?;
            let over_http = measurement(tower, "redrec over HTTP", b, sessions, r);
            server.abort();
            if let Some(py) = &python {
                let run = PyRun {
                    python: py,
                    model: match tower {
                        Tower::Users => dir.join(&m.user_tower.file),
                        Tower::Items => dir.join(&m.item_tower.file),
                    },
                    tower,
                    batch: b,
                    len: match tower {
                        Tower::Users => a.history.min(m.max_history),
                        Tower::Items => m.max_tokens,
                    },
                    threads: cores,
                    items: (tower == Tower::Items)
                        .then(|| (tokenizer.clone(), texts_file.path().to_path_buf())),
                    seconds: a.seconds,
                };
                let raw = tokio::task::block_in_place(|| python_baseline(run));
                match raw {
                    Ok(raw) => {
                        let setup = format!("raw onnxruntime (Python, {cores} threads)");
                        eprintln!(
                            "  {:<6} {:<34} batch {:>4} ×   1 concurrent: {:>9.0} rows/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
                            format!("{tower:?}").to_lowercase(),
                            setup,
                            b,
                            raw.rows_per_s,
                            raw.p50_ms,
                            raw.p99_ms
                        );
                        report.ratio(
                            format!("{tower:?} batch {b}: redrec in-process / raw onnxruntime"),
                            ours.rows_per_s / raw.rows_per_s,
                        );
                        report.ratio(
                            format!("{tower:?} batch {b}: redrec over HTTP / raw onnxruntime"),
                            over_http.rows_per_s / raw.rows_per_s,
                        );
                        report.measurements.push(Measurement {
                            tower,
                            setup,
                            batch: b,
                            concurrency: 1,
                            rows_per_s: raw.rows_per_s,
                            p50_ms: raw.p50_ms,
                            p99_ms: raw.p99_ms,
                            errors: 0,
                        });
                    }
                    Err(e) => report
                        .notes
                        .push(format!("raw onnxruntime baseline failed: {e}")),
                }
            }
            report.measurements.push(ours);
            report.measurements.push(over_http);
        }

        // Many concurrent single-row requests: dynamic batching against none.
        let c = a.concurrency;
        eprintln!("{tower:?} tower, {c} concurrent single-row requests:");
        for round in 0..a.rounds {
            if a.rounds > 1 {
                eprintln!("  round {}/{}:", round + 1, a.rounds);
            }
            let mut by_setup = Vec::new();
            for (name, cfg) in [("batching", &batching), ("no batching", &unbatched)] {
                let towers = Arc::new(Towers::new(encoder.clone(), cfg.clone()));
                let local = EncoderHandle::Local(towers.clone());
                let r = drive(&local, &work, tower, 1, c, a.seconds).await?;
                let inproc = measurement(tower, &format!("redrec in-process, {name}"), 1, c, r);
                let (remote, server) = serve(towers.clone(), &http).await?;
                let r = drive(&remote, &work, tower, 1, c, a.seconds).await?;
                let over_http = measurement(tower, &format!("redrec over HTTP, {name}"), 1, c, r);
                server.abort();
                by_setup.push((inproc.rows_per_s, over_http.rows_per_s));
                report.measurements.push(inproc);
                report.measurements.push(over_http);
            }
            report.ratio(
                format!("{tower:?} {c} concurrent: batching / no batching, in-process"),
                by_setup[0].0 / by_setup[1].0,
            );
            report.ratio(
                format!("{tower:?} {c} concurrent: batching / no batching, over HTTP"),
                by_setup[0].1 / by_setup[1].1,
            );
        }
    }

    println!("\nthroughput (median of {} rounds):", a.rounds);
    let mut seen: Vec<(Tower, &str, usize, usize)> = Vec::new();
    for m in &report.measurements {
        let key = (m.tower, m.setup.as_str(), m.batch, m.concurrency);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let rows = report
            .measurements
            .iter()
            .filter(|x| (x.tower, x.setup.as_str(), x.batch, x.concurrency) == key)
            .map(|x| x.rows_per_s)
            .collect();
        println!(
            "  {:<6} {:<36} batch {:>4} × {:>3} concurrent: {:>9.0} rows/s",
            format!("{:?}", m.tower).to_lowercase(),
            m.setup,
            m.batch,
            m.concurrency,
            median(rows)
        );
    }

    println!(
        "\nratios (same run; median of {} rounds, then the lowest and highest):",
        a.rounds
    );
    for r in &report.ratios {
        let (lo, hi) = r
            .rounds
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        println!(
            "  {:<62} {:>6.2}×   ({lo:.2}–{hi:.2})",
            r.name,
            median(r.rounds.clone())
        );
    }
    for n in &report.notes {
        println!("  note: {n}");
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
