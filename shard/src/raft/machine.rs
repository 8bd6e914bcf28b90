//! What the Raft driver needs of a replicated state machine, and the durable state file
//! machines keep their applied index in. Nothing here knows what the machine holds.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use raft::eraftpb::{Entry, Snapshot};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A state machine driven by a replica: committed entries in, in log order.
pub trait Machine: Send + 'static {
    /// The last entry applied (and durable).
    fn applied(&self) -> AppliedState;
    /// Applies committed entries past the applied index, in order; returns what each did.
    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<(u64, Applied)>, MachineError>;
    /// The machine's small state at its applied index, kept beside the log's snapshot
    /// point when the log is compacted, and sent with snapshots.
    fn snapshot_data(&self) -> Vec<u8>;
    /// Replaces the machine's state with `snapshot`'s: its data, and whatever bulk the
    /// machine fetches from the replica on node `leader` that sent it. Returns how many
    /// items were restored.
    fn restore(&mut self, snapshot: &Snapshot, leader: u64) -> Result<usize, MachineError>;
}

impl<M: Machine + ?Sized> Machine for Box<M> {
    fn applied(&self) -> AppliedState {
        (**self).applied()
    }
    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<(u64, Applied)>, MachineError> {
        (**self).apply(entries)
    }
    fn snapshot_data(&self) -> Vec<u8> {
        (**self).snapshot_data()
    }
    fn restore(&mut self, snapshot: &Snapshot, leader: u64) -> Result<usize, MachineError> {
        (**self).restore(snapshot, leader)
    }
}

/// What applying one entry did, for the proposer waiting on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Items written or deleted (or what else the machine counts).
    Write(usize),
    /// A leader's empty entry: nothing to do.
    Noop,
    /// A membership change, for the driver to hand to raft.
    ConfChange(Entry),
    /// The entry could not be applied (a bad command): the same on every replica.
    Rejected(String),
    /// A valid command the machine refused in its current state, the same on every
    /// replica; `code` says why, for the caller to act on (retry, refresh its view).
    Refused { code: &'static str, message: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub index: u64,
    pub term: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The machine's own storage failed.
    #[error("state machine: {0}")]
    State(String),
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// A machine's state file, or the default where there is none yet.
pub fn load_json<T: DeserializeOwned + Default>(path: &Path) -> Result<T, MachineError> {
    let io = |source| MachineError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(io(e)),
    }
}

/// Replaces a machine's state file durably: written aside, fsynced, renamed over.
pub fn store_json<T: Serialize>(path: &Path, value: &T) -> Result<(), MachineError> {
    let io = |source| MachineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(&serde_json::to_vec(value).expect("serializes"))
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    sync_dir(path).map_err(io)
}

/// Makes a file's creation, rename or removal durable.
pub fn sync_dir(file: &Path) -> std::io::Result<()> {
    match file.parent() {
        Some(dir) => fs::File::open(dir).and_then(|d| d.sync_all()),
        None => Ok(()),
    }
}
