//! `redrec eval`: leave-last-window-out evaluation through a real local cluster (shards,
//! encoder and router processes, the production code path). For each user, the history
//! goes to `/v1/recommend`; the held-out next items are looked for in the answer, over the
//! whole catalogue. Baselines in the same run: popularity (most frequent items in the
//! histories) and mean-of-history (the mean of the history's item vectors as the only
//! query, through `/v1/search`, no user tower).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};

use redrec::dataset::{self, Item, User};
use redrec::launch::Layout;

use crate::demo;

#[derive(Args)]
pub struct EvalArgs {
    /// Dataset directory in `redrec dataset synth`'s layout (items.jsonl, users.jsonl with
    /// each user's held-out next items).
    #[arg(long)]
    data: PathBuf,
    /// Tower directories to evaluate, comma-separated; each is named by its directory.
    #[arg(long, value_delimiter = ',', default_value = "models/reference")]
    models: Vec<PathBuf>,
    /// Evaluate only the first N users with a held-out window.
    #[arg(long)]
    users: Option<usize>,
    /// The scenario recommended for.
    #[arg(long, default_value = "homefeed")]
    scenario: String,
    /// Length of each ranked list (the largest cut-off).
    #[arg(long, default_value_t = 1000)]
    k: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Where the clusters keep their data and logs (wiped at start).
    #[arg(long, default_value = ".redrec/eval")]
    dir: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// How the towers' queries are merged (`max`, `quota`, `mmr`), comma-separated: a row
    /// each.
    #[arg(long, value_delimiter = ',', default_value = "max")]
    merges: Vec<String>,
    /// `mmr_lambda` of the `mmr` merge (the router's default when unset).
    #[arg(long)]
    mmr_lambda: Option<f32>,
    /// Where the items are kept, comma-separated for a row each: `embedded` (3 lone
    /// shards) or `qdrant` (a Qdrant server with a 3-shard collection).
    #[arg(long, value_delimiter = ',', default_value = "embedded")]
    backends: Vec<Storage>,
    /// The Qdrant server binary (default: `../shared/qdrant/qdrant` where present).
    #[arg(long, env = "REDREC_QDRANT_BIN")]
    qdrant_bin: Option<PathBuf>,
}

/// Where an evaluated cluster keeps its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Storage {
    Embedded,
    Qdrant,
}

/// The newest history events whose categories count as a user's interests.
const INTERESTS_WINDOW: usize = 64;

/// Items' categories, for the coverage of a user's interests in the top 10.
struct Categories(HashMap<String, String>);

impl Categories {
    fn of_user(&self, u: &User) -> BTreeSet<String> {
        u.history
            .iter()
            .rev()
            .take(INTERESTS_WINDOW)
            .filter_map(|e| self.0.get(&e.item_id).cloned())
            .collect()
    }

    fn of_list(&self, ranked: &[String]) -> BTreeSet<String> {
        ranked
            .iter()
            .take(10)
            .filter_map(|id| self.0.get(id).cloned())
            .collect()
    }
}

const CUTOFFS: [usize; 3] = [10, 100, 1000];

/// Sums of per-user metrics.
#[derive(Default, Clone)]
struct Tally {
    users: usize,
    hr: [f64; 3],
    ndcg: [f64; 3],
    mrr: f64,
    mrr10: f64,
    /// Share of the user's interests (categories of the newest history events) among the
    /// top 10's categories; and how many categories the top 10 holds.
    interests: f64,
    categories: f64,
}

impl Tally {
    fn add(&mut self, ranked: &[String], u: &User, cats: &Categories) {
        let (interests, shown) = (cats.of_user(u), cats.of_list(ranked));
        if !interests.is_empty() {
            self.interests +=
                interests.intersection(&shown).count() as f64 / interests.len() as f64;
        }
        self.categories += shown.len() as f64;
        let relevant = relevant(u);
        let relevant = &relevant;
        self.users += 1;
        let hits: Vec<usize> = ranked
            .iter()
            .enumerate()
            .filter(|(_, id)| relevant.contains(*id))
            .map(|(i, _)| i + 1)
            .collect();
        for (c, &cut) in CUTOFFS.iter().enumerate() {
            let within: Vec<usize> = hits.iter().copied().filter(|&r| r <= cut).collect();
            if !within.is_empty() {
                self.hr[c] += 1.0;
            }
            let dcg: f64 = within.iter().map(|&r| 1.0 / (r as f64 + 1.0).log2()).sum();
            let ideal: f64 = (1..=relevant.len().min(cut))
                .map(|r| 1.0 / (r as f64 + 1.0).log2())
                .sum();
            self.ndcg[c] += dcg / ideal;
        }
        if let Some(&first) = hits.first() {
            self.mrr += 1.0 / first as f64;
            if first <= 10 {
                self.mrr10 += 1.0 / first as f64;
            }
        }
    }

    fn report(&self, k: usize) -> serde_json::Map<String, Value> {
        let n = self.users.max(1) as f64;
        let mut out = serde_json::Map::new();
        for (c, &cut) in CUTOFFS.iter().enumerate().filter(|(_, &cut)| cut <= k) {
            out.insert(format!("hr@{cut}"), json!(self.hr[c] / n));
            out.insert(format!("ndcg@{cut}"), json!(self.ndcg[c] / n));
        }
        out.insert("mrr@10".into(), json!(self.mrr10 / n));
        out.insert("mrr".into(), json!(self.mrr / n));
        out.insert("interests@10".into(), json!(self.interests / n));
        out.insert("categories@10".into(), json!(self.categories / n));
        out
    }
}

#[derive(Serialize)]
struct Report {
    dataset: String,
    users: usize,
    items: usize,
    models: serde_json::Map<String, Value>,
}

fn model_name(dir: &std::path::Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

pub async fn run(a: EvalArgs) -> Result<()> {
    if a.k == 0 {
        bail!("--k must be at least 1");
    }
    let items: Vec<Item> = dataset::read_jsonl(&a.data.join("items.jsonl"))?;
    let all_users: Vec<User> = dataset::read_jsonl(&a.data.join("users.jsonl"))?;
    let users: Vec<User> = all_users
        .iter()
        .filter(|u| !u.holdout.is_empty() && !u.history.is_empty())
        .take(a.users.unwrap_or(usize::MAX))
        .cloned()
        .collect();
    if users.is_empty() {
        bail!("no user in {} has a held-out window", a.data.display());
    }
    for m in &a.merges {
        if !["max", "quota", "mmr"].contains(&m.as_str()) {
            bail!("--merges takes max, quota and mmr, not {m:?}");
        }
    }
    let cats = Categories(
        items
            .iter()
            .map(|i| (i.id.clone(), i.category.clone()))
            .collect(),
    );
    let mut models = serde_json::Map::new();
    models.insert(
        "popularity".into(),
        Value::Object(popularity(&all_users, &users, a.k, &cats).report(a.k)),
    );
    for (i, dir) in a.models.iter().enumerate() {
        for (j, &storage) in a.backends.iter().enumerate() {
            let name = match storage {
                Storage::Embedded => model_name(dir),
                Storage::Qdrant => format!("{} on qdrant", model_name(dir)),
            };
            let first = i == 0 && j == 0;
            let (towers, mean) =
                evaluate(&a, dir, &name, storage, &items, &users, &cats, first).await?;
            for (merge, tower) in a.merges.iter().zip(towers) {
                let row = match a.merges.len() {
                    1 => name.clone(),
                    _ => format!("{name} ({merge})"),
                };
                models.insert(row, Value::Object(tower.report(a.k)));
            }
            if let Some(mean) = mean {
                models.insert("mean-of-history".into(), Value::Object(mean.report(a.k)));
            }
        }
    }
    let report = Report {
        dataset: a.data.display().to_string(),
        users: users.len(),
        items: items.len(),
        models,
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!(
        "{} ({} users, {} items, whole-catalogue ranking)",
        r.dataset, r.users, r.items
    );
    let keys: Vec<String> = r
        .models
        .values()
        .next()
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    print!("| model |");
    for k in &keys {
        print!(" {k} |");
    }
    println!();
    println!("|---|{}", "---:|".repeat(keys.len()));
    for (name, m) in &r.models {
        print!("| {name} |");
        for k in &keys {
            print!(" {:.4} |", m[k].as_f64().unwrap_or(f64::NAN));
        }
        println!();
    }
}

/// Items ranked by how often they appear in every user's history; each user gets the
/// top `k` of those not already in their history.
fn popularity(all: &[User], users: &[User], k: usize, cats: &Categories) -> Tally {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for u in all {
        for e in &u.history {
            *counts.entry(e.item_id.as_str()).or_default() += 1;
        }
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut tally = Tally::default();
    for u in users {
        let seen: BTreeSet<&str> = u.history.iter().map(|e| e.item_id.as_str()).collect();
        let list: Vec<String> = ranked
            .iter()
            .filter(|(id, _)| !seen.contains(id))
            .take(k)
            .map(|(id, _)| id.to_string())
            .collect();
        tally.add(&list, u, cats);
    }
    tally
}

fn relevant(u: &User) -> BTreeSet<String> {
    u.holdout.iter().map(|e| e.item_id.clone()).collect()
}

fn ids(answer: &Value) -> Vec<String> {
    answer["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value> {
    let resp = http.post(url).json(body).send().await?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{url} answered {status}: {v}");
    }
    Ok(v)
}

/// Starts a cluster on `dir`'s towers (3 lone shards, or a Qdrant server with 3 shards),
/// ingests the catalogue through its item tower, and ranks every user's next items with
/// the user tower (and, with `mean`, with the mean of the history's item vectors).
#[allow(clippy::too_many_arguments)]
async fn evaluate(
    a: &EvalArgs,
    models: &std::path::Path,
    name: &str,
    storage: Storage,
    items: &[Item],
    users: &[User],
    cats: &Categories,
    mean: bool,
) -> Result<(Vec<Tally>, Option<Tally>)> {
    let root = a.dir.join(name.replace(' ', "-"));
    let qdrant_bin = match storage {
        Storage::Embedded => None,
        Storage::Qdrant => Some(
            a.qdrant_bin
                .clone()
                .or_else(redrec::qdrant_server::binary)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--backends qdrant needs --qdrant-bin (no ../shared/qdrant/qdrant)"
                    )
                })?,
        ),
    };
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let layout = Layout::of_current_exe(&root)?;
    let (m, max_k) = (models.to_string_lossy().into_owned(), a.k.to_string());
    let (cluster, qdrant) = tokio::task::spawn_blocking(move || {
        let mut router = vec![
            "--user-cache",
            "0",
            "--max-k",
            &max_k,
            "--deadline-ms",
            "30000",
        ];
        let towers = ["--models", m.as_str()];
        match qdrant_bin {
            None => Ok((layout.cluster(3, 1, &towers, "127.0.0.1:0", &router)?, None)),
            Some(bin) => {
                let q =
                    redrec::qdrant_server::QdrantServer::start(&bin, &layout.dir.join("qdrant"))?;
                router.extend(["--qdrant-shards", "3"]);
                let local = layout.on_qdrant(&q.grpc, &towers, "127.0.0.1:0", &router)?;
                anyhow::Ok((local, Some(q)))
            }
        }
    })
    .await??;
    let base = cluster.router.addr.clone();
    let result = async {
        let http = reqwest::Client::new();
        eprintln!(
            "{name}: cluster up ({storage:?}, 3 shards); ingesting {} items",
            items.len()
        );
        demo::ingest(&http, &base, items).await?;

        let mut towers = Vec::new();
        for merge in &a.merges {
            let label = format!("{name} ({merge})");
            let tally = rank_users(&http, users, &label, a.concurrency, cats, |u| {
                let mut body = json!({
                    "history": u.history, "scenario": a.scenario, "k": a.k,
                    "exclude_seen": true, "merge": merge,
                });
                if let (Some(l), "mmr") = (a.mmr_lambda, merge.as_str()) {
                    body["mmr_lambda"] = json!(l);
                }
                (format!("{base}/v1/recommend"), body)
            })
            .await?;
            towers.push(tally);
        }
        let mean = if mean {
            Some(mean_of_history(a, &http, &base, users, cats).await?)
        } else {
            None
        };
        anyhow::Ok((towers, mean))
    }
    .await;
    tokio::task::spawn_blocking(move || {
        cluster.stop();
        drop(qdrant);
    })
    .await?;
    result
}

/// The mean of the newest `max_history` history vectors (as the towers see them), as the
/// only query.
async fn mean_of_history(
    a: &EvalArgs,
    http: &reqwest::Client,
    base: &str,
    users: &[User],
    cats: &Categories,
) -> Result<Tally> {
    let manifest: Value = http
        .get(format!("{base}/v1/cluster"))
        .send()
        .await?
        .json()
        .await?;
    let window = manifest["max_history"].as_u64().unwrap_or(64) as usize;
    let wanted: BTreeSet<&str> = users
        .iter()
        .flat_map(|u| {
            u.history
                .iter()
                .rev()
                .take(window)
                .map(|e| e.item_id.as_str())
        })
        .collect();
    let fetched: Vec<Result<(String, Vec<f32>)>> = stream::iter(wanted)
        .map(|id| async move {
            let v: Value = http
                .get(format!("{base}/v1/items/{id}"))
                .send()
                .await?
                .json()
                .await?;
            let vector = v["vector"]
                .as_array()
                .context("item without a vector")?
                .iter()
                .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                .collect();
            Ok((id.to_string(), vector))
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let vectors: HashMap<String, Vec<f32>> = fetched.into_iter().collect::<Result<_>>()?;
    rank_users(http, users, "mean-of-history", a.concurrency, cats, |u| {
        let recent: Vec<&Vec<f32>> = u
            .history
            .iter()
            .rev()
            .take(window)
            .filter_map(|e| vectors.get(&e.item_id))
            .collect();
        let dim = recent.first().map_or(0, |v| v.len());
        let mut mean = vec![0f32; dim];
        for v in &recent {
            for (m, x) in mean.iter_mut().zip(v.iter()) {
                *m += x;
            }
        }
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        mean.iter_mut().for_each(|x| *x /= norm);
        let seen: BTreeSet<&str> = u.history.iter().map(|e| e.item_id.as_str()).collect();
        let body = json!({"vectors": [mean], "k": a.k, "exclude": seen});
        (format!("{base}/v1/search"), body)
    })
    .await
}

/// Sends each user's request (a URL and a body), `concurrency` at a time, and scores the
/// ranked ids that come back against the user's held-out items.
async fn rank_users(
    http: &reqwest::Client,
    users: &[User],
    label: &str,
    concurrency: usize,
    cats: &Categories,
    request: impl Fn(&User) -> (String, Value),
) -> Result<Tally> {
    let bar = ProgressBar::new(users.len() as u64).with_style(ProgressStyle::with_template(
        "{msg} {bar:40} {pos}/{len} users ({per_sec}, eta {eta})",
    )?);
    bar.set_message(format!("ranking with {label}"));
    let results: Vec<Result<Vec<String>>> = stream::iter(users)
        .map(|u| {
            let (url, body) = request(u);
            let bar = bar.clone();
            async move {
                let answer = post(http, &url, &body).await?;
                bar.inc(1);
                Ok(ids(&answer))
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let mut tally = Tally::default();
    for (u, r) in users.iter().zip(results) {
        tally.add(&r?, u, cats);
    }
    Ok(tally)
}
