//! MovieLens-100k, read from the installed `recbole` package, in redrec's dataset layout.

use std::fs;
use std::path::Path;

use anyhow::{ensure, Context, Result};

use super::{write_jsonl, Event, Item, Meta, User};

/// MovieLens-100k as shipped inside PyPI's `recbole` package, converted to the synthetic
/// set's layout: one scenario (`homefeed`), items as "title (year) genres", each user's
/// ratings in time order with the last `window` held out. GroupLens' terms forbid
/// redistributing the data: it is read from the installed package, never committed.
pub fn convert(source: &Path, out: &Path, split: Split) -> Result<(usize, usize)> {
    let read = |name: &str| -> Result<Vec<Vec<String>>> {
        let path = source.join(name);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let text: String = bytes.iter().map(|&b| b as char).collect();
        Ok(text
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect())
    };
    let mut items = Vec::new();
    for row in read("ml-100k.item")? {
        ensure!(row.len() >= 4, "ml-100k.item: short row {row:?}");
        let genres: Vec<String> = row[3].split_whitespace().map(str::to_lowercase).collect();
        let title = row[1].trim().to_string();
        items.push(Item {
            id: format!("ml{}", row[0]),
            text: format!("{title} ({}) {}", row[2], genres.join(" ")),
            category: genres.first().cloned().unwrap_or_else(|| "unknown".into()),
            tags: genres,
            title,
        });
    }
    let mut by_user: std::collections::BTreeMap<u64, Vec<(u64, String)>> = Default::default();
    for row in read("ml-100k.inter")? {
        ensure!(row.len() >= 4, "ml-100k.inter: short row {row:?}");
        let user: u64 = row[0].parse().context("user id")?;
        let ts = row[3].parse::<f64>().context("timestamp")? as u64;
        by_user
            .entry(user)
            .or_default()
            .push((ts, format!("ml{}", row[1])));
    }
    let (window, keep) = match split {
        Split::LastWindow(w) => (w.max(1), w.max(1) + 1),
        // A test item, a validation item and something to learn from.
        Split::LeaveOneOut => (1, 3),
    };
    let timeline = |mut events: Vec<(u64, String)>| {
        match split {
            // By time, then id: ties keep one order.
            Split::LastWindow(_) => events.sort(),
            // By time, ties in file order (a stable sort), as RecBole orders them.
            Split::LeaveOneOut => events.sort_by_key(|(ts, _)| *ts),
        }
        events
    };
    let users: Vec<(u64, Vec<(u64, String)>)> = by_user
        .into_iter()
        .filter(|(_, events)| events.len() >= keep)
        .map(|(user, events)| (user, timeline(events)))
        .collect();
    let event = |(ts, item_id): (u64, String)| Event {
        item_id,
        scenario: "homefeed".into(),
        ts,
    };
    let items_len = items.len();
    let write = |dir: &Path, users: Vec<User>| -> Result<usize> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_jsonl(&dir.join("items.jsonl"), &items)?;
        write_jsonl(&dir.join("users.jsonl"), &users)?;
        let meta = Meta {
            generator: "redrec dataset movielens (MovieLens-100k from recbole)".into(),
            seed: 0,
            items: items_len,
            users: users.len(),
            scenarios: vec!["homefeed".into()],
        };
        fs::write(dir.join("meta.json"), serde_json::to_vec_pretty(&meta)?)?;
        Ok(users.len())
    };
    // Each user's timeline without its last `cut` events, the next `window` held out.
    let held_out = |cut: usize| -> Vec<User> {
        users
            .iter()
            .map(|(user, events)| {
                let mut events = events[..events.len() - cut].to_vec();
                let holdout = events.split_off(events.len() - window);
                User {
                    user_id: format!("u{user}"),
                    history: events.into_iter().map(event).collect(),
                    holdout: holdout.into_iter().map(event).collect(),
                }
            })
            .collect()
    };
    let n = write(out, held_out(0))?;
    if split == Split::LeaveOneOut {
        // What models learn from: the timelines without their test item, the validation
        // item (the one before it) held out.
        write(&out.join("train"), held_out(1))?;
    }
    Ok((items_len, n))
}

/// How a user's ratings are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The last N ratings held out.
    LastWindow(usize),
    /// RecBole's leave-one-out: by timestamp (ties in file order), the last rating is the
    /// test item, the one before it validation; `train/` holds the timelines without the
    /// test item, for training.
    LeaveOneOut,
}

pub fn recbole_ml100k() -> Result<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("REDREC_RECBOLE_DIR") {
        return Ok(dir.into());
    }
    let venv = Path::new(".redrec/data-venv/bin/python");
    let python = if venv.exists() {
        venv.to_path_buf()
    } else {
        "python3".into()
    };
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import importlib.util, os; s = importlib.util.find_spec('recbole'); print(os.path.dirname(s.origin) if s else '')",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        !root.is_empty(),
        "the recbole package is not installed: run scripts/setup.sh --movielens"
    );
    Ok(Path::new(&root).join("dataset_example/ml-100k"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::read_jsonl;

    #[test]
    fn movielens_layout_holds_out_each_users_last_window() {
        // A made-up fixture in recbole's format (not GroupLens data).
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("ml-100k.item"),
            "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n\
             1\tAlpha\t1990\tDrama\n2\tBeta\t1991\tComedy Drama\n3\tGamma\t1992\tAction\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("ml-100k.inter"),
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\n\
             7\t3\t4\t300\n7\t1\t5\t100\n7\t2\t3\t200\n8\t1\t2\t50\n",
        )
        .unwrap();
        let out = dir.path().join("out");
        assert_eq!(
            convert(dir.path(), &out, Split::LastWindow(1)).unwrap(),
            (3, 1)
        );
        let items: Vec<Item> = read_jsonl(&out.join("items.jsonl")).unwrap();
        assert_eq!(items[1].text, "Beta (1991) comedy drama");
        let users: Vec<User> = read_jsonl(&out.join("users.jsonl")).unwrap();
        // User 8 has nothing to hold out; user 7's newest rating is held out.
        assert_eq!(users.len(), 1);
        let ids = |e: &[Event]| e.iter().map(|e| e.item_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&users[0].history), ["ml1", "ml2"]);
        assert_eq!(ids(&users[0].holdout), ["ml3"]);
    }

    #[test]
    fn recbole_protocol_leaves_the_last_rating_out_ties_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("ml-100k.item"),
            "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n\
             1\tA\t1990\tDrama\n2\tB\t1991\tDrama\n3\tC\t1992\tAction\n4\tD\t1993\tAction\n",
        )
        .unwrap();
        // User 7 rated 4 and 2 at the same second, 4 first in the file; user 8 too little.
        fs::write(
            dir.path().join("ml-100k.inter"),
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\n\
             7\t3\t4\t100\n7\t4\t5\t300\n7\t2\t3\t300\n7\t1\t3\t200\n8\t1\t2\t50\n8\t2\t2\t60\n",
        )
        .unwrap();
        let out = dir.path().join("out");
        assert_eq!(
            convert(dir.path(), &out, Split::LeaveOneOut).unwrap(),
            (4, 1)
        );
        let ids = |e: &[Event]| e.iter().map(|e| e.item_id.clone()).collect::<Vec<_>>();
        let test: Vec<User> = read_jsonl(&out.join("users.jsonl")).unwrap();
        assert_eq!(ids(&test[0].history), ["ml3", "ml1", "ml4"]);
        assert_eq!(ids(&test[0].holdout), ["ml2"]);
        let train: Vec<User> = read_jsonl(&out.join("train/users.jsonl")).unwrap();
        assert_eq!(ids(&train[0].history), ["ml3", "ml1"]);
        assert_eq!(ids(&train[0].holdout), ["ml4"]);
    }
}
