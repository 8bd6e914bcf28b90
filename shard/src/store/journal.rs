//! The store's own write-ahead journal. qdrant-edge writes a WAL it never replays, and its
//! flush (which makes segments durable) must not run while an index build swaps segments.
//! So a write is made durable here first — appended and fsynced — and only then applied
//! to the engine; the engine is flushed at checkpoints chosen by the indexer (between
//! builds), after which the journal is cut. On open, whatever the journal still holds is
//! applied again: upserts and deletes by id are idempotent.
//!
//! It is a `raft-engine` log (the same engine as the Raft logs), one per store.

use std::path::Path;
use std::sync::Arc;

use raft::eraftpb::Entry;
use raft_engine::{Command, Engine, LogBatch};
use serde::{Deserialize, Serialize};

use redrec_shard_api::points::Point;

use super::{StoreError, StoreResult};
use crate::logs::{open_journal, EntryExt};

/// The journal's one region in its engine.
const REGION: u64 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub enum Op {
    Upsert(Vec<Point>),
    Delete(Vec<String>),
}

pub struct Journal {
    engine: Arc<Engine>,
    /// Index of the next entry.
    next: u64,
    /// Entries written since the last checkpoint.
    pending: u64,
}

fn journal_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(format!("journal: {e}"))
}

impl Journal {
    /// Opens the journal in `dir` and returns the operations written since its last
    /// checkpoint, oldest first, for the caller to apply again.
    pub fn open(dir: &Path) -> StoreResult<(Self, Vec<Op>)> {
        let engine = open_journal(dir).map_err(journal_err)?;
        let mut ops = Vec::new();
        let (first, last) = (engine.first_index(REGION), engine.last_index(REGION));
        if let (Some(first), Some(last)) = (first, last) {
            let mut entries = Vec::new();
            engine
                .fetch_entries_to::<EntryExt>(REGION, first, last + 1, None, &mut entries)
                .map_err(journal_err)?;
            for e in entries {
                ops.push(serde_json::from_slice(&e.data).map_err(journal_err)?);
            }
        }
        let next = last.map_or(1, |l| l + 1);
        let pending = ops.len() as u64;
        Ok((
            Self {
                engine,
                next,
                pending,
            },
            ops,
        ))
    }

    /// Appends `op`, durable when it returns.
    pub fn append(&mut self, op: &Op) -> StoreResult<()> {
        let entry = Entry {
            index: self.next,
            data: serde_json::to_vec(op).map_err(journal_err)?.into(),
            ..Default::default()
        };
        let mut batch = LogBatch::default();
        batch
            .add_entries::<EntryExt>(REGION, &[entry])
            .map_err(journal_err)?;
        self.engine.write(&mut batch, true).map_err(journal_err)?;
        self.next += 1;
        self.pending += 1;
        Ok(())
    }

    /// Entries since the last checkpoint.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Forgets every entry: the engine has made them durable itself.
    pub fn checkpoint(&mut self) -> StoreResult<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let mut batch = LogBatch::default();
        batch.add_command(REGION, Command::Compact { index: self.next });
        self.engine.write(&mut batch, true).map_err(journal_err)?;
        self.pending = 0;
        self.engine.purge_expired_files().map_err(journal_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: &str) -> Op {
        Op::Upsert(vec![Point {
            id: id.into(),
            vector: vec![1.0, 0.0],
            payload: Default::default(),
        }])
    }

    #[test]
    fn replays_what_no_checkpoint_covered() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, ops) = Journal::open(dir.path()).unwrap();
        assert!(ops.is_empty());
        j.append(&upsert("a")).unwrap();
        j.checkpoint().unwrap();
        j.append(&upsert("b")).unwrap();
        j.append(&Op::Delete(vec!["b".into()])).unwrap();
        drop(j);

        let (j, ops) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.pending(), 2);
        assert!(matches!(&ops[0], Op::Upsert(p) if p[0].id == "b"));
        assert!(matches!(&ops[1], Op::Delete(ids) if ids == &["b"]));
    }

    #[test]
    fn checkpoints_keep_the_journal_small_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        // Floats that do not compress: about 100 MB written in all, cut every 40 writes.
        let points = |n: usize| -> Vec<Point> {
            (0..256)
                .map(|i| Point {
                    id: format!("p{i}"),
                    vector: (0..64)
                        .map(|d| ((n * 7919 + i * 64 + d) as f32).sqrt())
                        .collect(),
                    payload: Default::default(),
                })
                .collect()
        };
        for n in 0..600 {
            j.append(&Op::Upsert(points(n))).unwrap();
            if n % 40 == 39 {
                j.checkpoint().unwrap();
            }
        }
        let bytes: u64 = walkdir::WalkDir::new(dir.path())
            .into_iter()
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        assert!(bytes < 64 << 20, "{bytes} bytes on disk");
    }
}
