//! Interaction datasets as redrec reads them: items with text, users with their events
//! across scenarios and their held-out next items, as JSONL (`items.jsonl`,
//! `users.jsonl`, `meta.json`). Python training and Rust evaluation read the same files.
//! [`synthetic`] generates such a set; [`movielens`] converts MovieLens-100k to it.

pub mod movielens;
pub mod synthetic;
mod vocabulary;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const SCENARIOS: [&str; 3] = ["homefeed", "search", "ads"];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub title: String,
    pub category: String,
    pub tags: Vec<String>,
    /// What the item tower reads: title, category and tags in one string.
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub item_id: String,
    pub scenario: String,
    pub ts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub user_id: String,
    /// Oldest to newest.
    pub history: Vec<Event>,
    /// The next events after `history`, in the homefeed scenario; never items already seen.
    pub holdout: Vec<Event>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub generator: String,
    pub seed: u64,
    pub items: usize,
    pub users: usize,
    pub scenarios: Vec<String>,
}

pub fn write_jsonl<T: Serialize>(path: &Path, rows: impl IntoIterator<Item = T>) -> Result<()> {
    let mut w =
        BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
    for row in rows {
        serde_json::to_writer(&mut w, &row)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}
