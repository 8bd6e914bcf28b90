//! The meta group's state machine: the cluster map, persisted whole after every applied
//! batch (it is small), and sent whole in snapshots.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use raft::eraftpb::{Entry, EntryType, Snapshot};
use redrec_shard_api::map::{ClusterMap, MetaCommand};
use serde::{Deserialize, Serialize};

use crate::raft::machine::{load_json, store_json, Applied, AppliedState, Machine, MachineError};

/// What `meta/state.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    applied: AppliedState,
    map: ClusterMap,
}

pub struct MetaMachine {
    path: PathBuf,
    applied: AppliedState,
    map: Arc<RwLock<ClusterMap>>,
}

impl MetaMachine {
    pub fn open(dir: &Path) -> Result<Self, MachineError> {
        let path = dir.join("state.json");
        fs::create_dir_all(dir).map_err(|source| MachineError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let persisted: Persisted = load_json(&path)?;
        Ok(Self {
            path,
            applied: persisted.applied,
            map: Arc::new(RwLock::new(persisted.map)),
        })
    }

    /// The map as of the applied index, shared with readers.
    pub fn map(&self) -> Arc<RwLock<ClusterMap>> {
        self.map.clone()
    }

    fn read(&self) -> ClusterMap {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn persist(&mut self, applied: AppliedState, map: ClusterMap) -> Result<(), MachineError> {
        let persisted = Persisted { applied, map };
        store_json(&self.path, &persisted)?;
        self.applied = applied;
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = persisted.map;
        Ok(())
    }
}

impl Machine for MetaMachine {
    fn applied(&self) -> AppliedState {
        self.applied
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<(u64, Applied)>, MachineError> {
        let mut map = self.read();
        let mut out = Vec::new();
        let mut last = self.applied;
        for e in entries.iter().filter(|e| e.index > self.applied.index) {
            let result = match e.get_entry_type() {
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    Applied::ConfChange(e.clone())
                }
                EntryType::EntryNormal if e.data.is_empty() => Applied::Noop,
                EntryType::EntryNormal => match serde_json::from_slice::<MetaCommand>(&e.data) {
                    Ok(cmd) => match map.apply(cmd) {
                        Ok(()) => Applied::Write(map.version as usize),
                        Err(m) => Applied::Rejected(m),
                    },
                    Err(err) => Applied::Rejected(format!("undecodable command: {err}")),
                },
            };
            last = AppliedState {
                index: e.index,
                term: e.term,
            };
            out.push((e.index, result));
        }
        if last != self.applied {
            self.persist(last, map)?;
        }
        Ok(out)
    }

    fn snapshot_data(&self) -> Vec<u8> {
        serde_json::to_vec(&self.read()).expect("serializes")
    }

    fn restore(&mut self, snapshot: &Snapshot, _leader: u64) -> Result<usize, MachineError> {
        let map: ClusterMap = serde_json::from_slice(&snapshot.data)
            .map_err(|e| MachineError::Snapshot(format!("undecodable cluster map: {e}")))?;
        let meta = snapshot.get_metadata();
        self.persist(
            AppliedState {
                index: meta.index,
                term: meta.term,
            },
            map,
        )?;
        Ok(1)
    }
}
