//! The state machine of a shard group: committed log entries applied, in log order, to the
//! group's Qdrant shard. The applied index is persisted only after the shard has made the
//! writes durable, so a restart resumes from it and never loses an applied write. A crash
//! between the two re-applies a few entries on restart, which is harmless: upserts and
//! deletes by id are idempotent.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::eraftpb::{Entry, EntryType};
use serde::{Deserialize, Serialize};

use crate::api::Point;
use crate::store::{check_points, StoreError, VectorStore};

/// A write, as proposed to and replicated by the group's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Upsert(Vec<Point>),
    Delete(Vec<String>),
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("commands serialize")
    }

    pub fn decode(data: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(data)
    }
}

/// What applying one entry did, for the proposer waiting on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Points written or deleted.
    Write(usize),
    /// A leader's empty entry: nothing to do.
    Noop,
    /// A membership change, for the driver to hand to raft.
    ConfChange(Entry),
    /// The entry could not be applied (a bad command): the same on every replica.
    Rejected(String),
}

/// Consecutive upserts gathered into one shard write.
#[derive(Default)]
struct UpsertRun {
    points: Vec<Point>,
    ids: HashSet<String>,
    /// (entry index, points in it)
    entries: Vec<(u64, usize)>,
}

/// Most points in one gathered shard write.
const MAX_RUN_POINTS: usize = 8192;

impl UpsertRun {
    fn fits(&self, points: &[Point]) -> bool {
        self.points.len() + points.len() <= MAX_RUN_POINTS
            && points.iter().all(|p| !self.ids.contains(&p.id))
    }

    fn push(&mut self, index: u64, points: Vec<Point>) {
        self.entries.push((index, points.len()));
        self.ids.extend(points.iter().map(|p| p.id.clone()));
        self.points.extend(points);
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub index: u64,
    pub term: u64,
}

pub struct StateMachine {
    store: Arc<dyn VectorStore>,
    path: PathBuf,
    applied: AppliedState,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("shard: {0}")]
    Store(#[from] StoreError),
    #[error("applied index file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StateMachine {
    /// The machine over `store`, its applied index kept in `dir/applied.json`.
    pub fn open(store: Arc<dyn VectorStore>, dir: &Path) -> Result<Self, MachineError> {
        let path = dir.join("applied.json");
        let io = |source| MachineError::Io {
            path: path.clone(),
            source,
        };
        let applied = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AppliedState::default(),
            Err(e) => return Err(io(e)),
        };
        Ok(Self {
            store,
            path,
            applied,
        })
    }

    pub fn applied(&self) -> AppliedState {
        self.applied
    }

    pub fn store(&self) -> &Arc<dyn VectorStore> {
        &self.store
    }

    /// Applies committed entries past the applied index, in order, then persists the new
    /// applied index. Returns what each newly applied entry did.
    ///
    /// Runs of consecutive upserts touching distinct ids go to the shard as one write
    /// (one flush): the result is the same as one by one, and a busy leader commits
    /// entries in runs.
    pub fn apply(&mut self, entries: &[Entry]) -> Result<Vec<(u64, Applied)>, MachineError> {
        let mut out = Vec::new();
        let mut last = self.applied;
        let mut run = UpsertRun::default();
        let done = self.applied.index;
        for e in entries.iter().filter(|e| e.index > done) {
            let result = match e.get_entry_type() {
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    Some(Applied::ConfChange(e.clone()))
                }
                EntryType::EntryNormal if e.data.is_empty() => Some(Applied::Noop),
                EntryType::EntryNormal => match Command::decode(&e.data) {
                    Ok(Command::Upsert(points)) => match check_points(&points, self.store.dim()) {
                        Err(e) => Some(Applied::Rejected(e.to_string())),
                        Ok(()) => {
                            if !run.fits(&points) {
                                self.flush_run(&mut run, &mut out)?;
                            }
                            run.push(e.index, points);
                            None
                        }
                    },
                    Ok(Command::Delete(ids)) => {
                        self.flush_run(&mut run, &mut out)?;
                        Some(Applied::Write(self.store.delete(&ids)?))
                    }
                    Err(e) => Some(Applied::Rejected(format!("undecodable command: {e}"))),
                },
            };
            last = AppliedState {
                index: e.index,
                term: e.term,
            };
            if let Some(result) = result {
                // Whatever came before this entry is written before it.
                self.flush_run(&mut run, &mut out)?;
                out.push((e.index, result));
            }
        }
        self.flush_run(&mut run, &mut out)?;
        if last != self.applied {
            self.persist(last)?;
        }
        Ok(out)
    }

    fn flush_run(
        &mut self,
        run: &mut UpsertRun,
        out: &mut Vec<(u64, Applied)>,
    ) -> Result<(), MachineError> {
        if run.entries.is_empty() {
            return Ok(());
        }
        let run = std::mem::take(run);
        self.store.upsert(run.points)?;
        out.extend(
            run.entries
                .into_iter()
                .map(|(index, n)| (index, Applied::Write(n))),
        );
        Ok(())
    }

    fn marker(&self) -> PathBuf {
        self.path.with_file_name("restoring")
    }

    /// True when a snapshot restore was cut short: the shard holds part of a snapshot and
    /// must be emptied (with the log) before the replica starts.
    pub fn restore_interrupted(&self) -> bool {
        self.marker().exists()
    }

    /// Starts replacing the shard's contents with a snapshot: marks the replica as
    /// restoring (durably, first), then empties the shard.
    pub fn begin_restore(&mut self) -> Result<(), MachineError> {
        let marker = self.marker();
        let io = |source| MachineError::Io {
            path: marker.clone(),
            source,
        };
        fs::File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        sync_dir(&marker).map_err(io)?;
        self.store.clear()?;
        Ok(())
    }

    /// The shard holds the snapshot taken at `state`: record it and clear the mark.
    pub fn finish_restore(&mut self, state: AppliedState) -> Result<(), MachineError> {
        self.persist(state)?;
        let marker = self.marker();
        fs::remove_file(&marker)
            .and_then(|_| sync_dir(&marker))
            .map_err(|source| MachineError::Io {
                path: marker,
                source,
            })
    }

    /// Empties a replica whose restore was cut short (its log is emptied by the caller).
    pub fn reset(&mut self) -> Result<(), MachineError> {
        self.store.clear()?;
        self.finish_restore(AppliedState::default())
    }

    fn persist(&mut self, state: AppliedState) -> Result<(), MachineError> {
        let io = |source| MachineError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&serde_json::to_vec(&state).expect("serializes"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(io)?;
        sync_dir(&self.path).map_err(io)?;
        self.applied = state;
        Ok(())
    }
}

/// Makes a file's creation, rename or removal durable.
fn sync_dir(file: &Path) -> std::io::Result<()> {
    match file.parent() {
        Some(dir) => fs::File::open(dir).and_then(|d| d.sync_all()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EdgeStore;

    fn entry(index: u64, cmd: Option<Command>) -> Entry {
        Entry {
            index,
            term: 1,
            data: cmd.map(|c| c.encode()).unwrap_or_default().into(),
            ..Default::default()
        }
    }

    fn point(id: &str, x: f32) -> Point {
        let mut vector = vec![0.0; 4];
        vector[0] = x;
        Point {
            id: id.into(),
            vector,
            payload: Default::default(),
        }
    }

    #[test]
    fn applies_in_order_once_and_resumes_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let store: Arc<dyn VectorStore> =
                Arc::new(EdgeStore::open(&dir.path().join("shard"), 4).unwrap());
            StateMachine::open(store, dir.path()).unwrap()
        };
        let entries = vec![
            entry(1, None),
            entry(
                2,
                Some(Command::Upsert(vec![point("a", 1.0), point("b", 2.0)])),
            ),
            entry(3, Some(Command::Delete(vec!["a".into()]))),
            entry(4, Some(Command::Upsert(vec![point("c", f32::NAN)]))),
        ];
        {
            let mut m = open();
            let out = m.apply(&entries[..3]).unwrap();
            assert_eq!(
                out,
                vec![
                    (1, Applied::Noop),
                    (2, Applied::Write(2)),
                    (3, Applied::Write(1))
                ]
            );
            assert_eq!(m.applied().index, 3);
        }
        let mut m = open();
        assert_eq!(m.applied().index, 3);
        // Entries already applied are skipped; the bad one is rejected, not fatal.
        let out = m.apply(&entries).unwrap();
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], (4, Applied::Rejected(_))), "{out:?}");
        let ids: Vec<String> = m
            .store()
            .get(&["a".into(), "b".into()], false)
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, vec!["b".to_string()]);
    }

    #[test]
    fn runs_of_upserts_apply_as_one_write_and_keep_log_order() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn VectorStore> =
            Arc::new(EdgeStore::open(&dir.path().join("shard"), 4).unwrap());
        let mut m = StateMachine::open(store, dir.path()).unwrap();
        let entries = vec![
            entry(
                1,
                Some(Command::Upsert(vec![point("a", 1.0), point("b", 1.0)])),
            ),
            entry(2, Some(Command::Upsert(vec![point("c", 1.0)]))),
            // The same id again: must land after entry 1's, not be merged with it.
            entry(3, Some(Command::Upsert(vec![point("a", 2.0)]))),
            entry(4, Some(Command::Upsert(vec![point("", 1.0)]))),
            entry(5, Some(Command::Delete(vec!["b".into()]))),
            entry(6, Some(Command::Upsert(vec![point("b", 3.0)]))),
        ];
        let out = m.apply(&entries).unwrap();
        let kinds: Vec<_> = out.iter().map(|(i, a)| (*i, a.clone())).collect();
        assert_eq!(kinds[0], (1, Applied::Write(2)));
        assert_eq!(kinds[1], (2, Applied::Write(1)));
        assert_eq!(kinds[2], (3, Applied::Write(1)));
        assert!(matches!(kinds[3], (4, Applied::Rejected(_))));
        assert_eq!(kinds[4], (5, Applied::Write(1)));
        assert_eq!(kinds[5], (6, Applied::Write(1)));
        let got = m
            .store()
            .get(&["a".into(), "b".into(), "c".into()], true)
            .unwrap();
        let first: Vec<f32> = got.iter().map(|p| p.vector.as_ref().unwrap()[0]).collect();
        assert_eq!(first, vec![2.0, 3.0, 1.0]);
        assert_eq!(m.applied().index, 6);
    }
}
