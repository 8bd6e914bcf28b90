//! The durable Raft log of one shard group's replica, on TiKV's `raft-engine`: entries,
//! hard state, conf state and the metadata of the last snapshot, all written in one
//! batch per Ready and fsynced before anything is sent or acknowledged. Many groups share
//! one engine (one per process), each under its own region id. Implements `raft::Storage`.

use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command, Engine, LogBatch};

pub use crate::logs::{open_engine, EntryExt};

const HARD_STATE: &[u8] = b"hard_state";
const CONF_STATE: &[u8] = b"conf_state";
const SNAPSHOT: &[u8] = b"snapshot_meta";
/// The state machine's own small state at the snapshot point (see [`crate::raft::machine::Machine::snapshot_data`]).
const SNAPSHOT_DATA: &[u8] = b"snapshot_data";

/// What a Ready asks to persist, gathered into one atomic, synced write.
#[derive(Default)]
pub struct LogWrite {
    batch: LogBatch,
    snapshot: Option<SnapshotMetadata>,
    compact_to: Option<u64>,
}

pub struct RaftLog {
    engine: Arc<Engine>,
    group: u64,
    /// Cached: what the engine holds under the keys above.
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
}

fn storage_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl RaftLog {
    /// Opens group `group`'s log, empty the first time.
    pub fn open(engine: Arc<Engine>, group: u64) -> raft::Result<Self> {
        let get = |key: &[u8]| engine.get(group, key);
        let hard_state = match get(HARD_STATE) {
            Some(b) => HardState::parse_from_bytes(&b).map_err(storage_err)?,
            None => HardState::default(),
        };
        let conf_state = match get(CONF_STATE) {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(storage_err)?,
            None => ConfState::default(),
        };
        let snapshot = match get(SNAPSHOT) {
            Some(b) => SnapshotMetadata::parse_from_bytes(&b).map_err(storage_err)?,
            None => SnapshotMetadata::default(),
        };
        Ok(Self {
            engine,
            group,
            hard_state,
            conf_state,
            snapshot,
        })
    }

    pub fn group(&self) -> u64 {
        self.group
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Index and term of the last snapshot the log was compacted to or restored from.
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot
    }

    pub fn append(&self, w: &mut LogWrite, entries: &[Entry]) -> raft::Result<()> {
        w.batch
            .add_entries::<EntryExt>(self.group, entries)
            .map_err(storage_err)
    }

    pub fn set_hard_state(&self, w: &mut LogWrite, hs: &HardState) -> raft::Result<()> {
        w.batch
            .put_message(self.group, HARD_STATE.to_vec(), hs)
            .map_err(storage_err)?;
        Ok(())
    }

    pub fn set_conf_state(&self, w: &mut LogWrite, cs: &ConfState) -> raft::Result<()> {
        w.batch
            .put_message(self.group, CONF_STATE.to_vec(), cs)
            .map_err(storage_err)?;
        Ok(())
    }

    /// A snapshot replaces the whole log: entries go, its metadata and conf state stay,
    /// and the hard state reaches at least its term and index.
    /// (`Clean` drops every key of the group, so the hard state is written again; a newer
    /// one set later in the same batch wins.)
    pub fn apply_snapshot(&self, w: &mut LogWrite, snapshot: &Snapshot) -> raft::Result<()> {
        let meta = snapshot.get_metadata();
        w.batch.add_command(self.group, Command::Clean);
        let mut hs = self.hard_state.clone();
        if meta.term > hs.term {
            // No vote was cast in a term this replica had not reached.
            (hs.term, hs.vote) = (meta.term, 0);
        }
        hs.commit = hs.commit.max(meta.index);
        self.set_hard_state(w, &hs)?;
        self.set_snapshot(w, meta, &snapshot.data)?;
        self.set_conf_state(w, meta.get_conf_state())
    }

    /// Empties the log of a replica whose state machine was emptied, keeping its term and
    /// vote (so it never votes twice in a term): it will be caught up from a leader.
    pub fn reset(&mut self) -> raft::Result<()> {
        let mut w = LogWrite::default();
        w.batch.add_command(self.group, Command::Clean);
        let mut hs = self.hard_state.clone();
        hs.commit = 0;
        self.set_hard_state(&mut w, &hs)?;
        self.commit(w, true)?;
        self.conf_state = ConfState::default();
        self.snapshot = SnapshotMetadata::default();
        Ok(())
    }

    /// Fsyncs nothing new; lets the engine drop files holding only compacted entries.
    pub fn purge(engine: &Engine) {
        if let Err(e) = engine.purge_expired_files() {
            tracing::warn!("raft log purge: {e}");
        }
    }

    /// Drops entries up to and including `meta.index`, which the state machine has
    /// applied and made durable; `meta` becomes the log's snapshot point, and `data` (the
    /// machine's small state at that point) travels with the snapshot.
    pub fn compact(
        &self,
        w: &mut LogWrite,
        meta: &SnapshotMetadata,
        data: &[u8],
    ) -> raft::Result<()> {
        self.set_snapshot(w, meta, data)?;
        w.compact_to = Some(meta.index + 1);
        Ok(())
    }

    fn set_snapshot(
        &self,
        w: &mut LogWrite,
        meta: &SnapshotMetadata,
        data: &[u8],
    ) -> raft::Result<()> {
        w.batch
            .put_message(self.group, SNAPSHOT.to_vec(), meta)
            .map_err(storage_err)?;
        w.batch
            .put(self.group, SNAPSHOT_DATA.to_vec(), data.to_vec())
            .map_err(storage_err)?;
        w.snapshot = Some(meta.clone());
        Ok(())
    }

    /// Writes (and, with `sync`, fsyncs) what `w` gathered, then updates the caches.
    pub fn commit(&mut self, mut w: LogWrite, sync: bool) -> raft::Result<()> {
        if let Some(index) = w.compact_to {
            w.batch.add_command(self.group, Command::Compact { index });
        }
        if !w.batch.is_empty() {
            self.engine.write(&mut w.batch, sync).map_err(storage_err)?;
        }
        let get = |key: &[u8]| self.engine.get(self.group, key);
        if let Some(b) = get(HARD_STATE) {
            self.hard_state = HardState::parse_from_bytes(&b).map_err(storage_err)?;
        }
        if let Some(b) = get(CONF_STATE) {
            self.conf_state = ConfState::parse_from_bytes(&b).map_err(storage_err)?;
        }
        if let Some(meta) = w.snapshot {
            self.snapshot = meta;
        }
        Ok(())
    }

    /// Entries in the engine, as (first, last); `None` when all are compacted away.
    fn span(&self) -> Option<(u64, u64)> {
        let first = self.engine.first_index(self.group)?;
        let last = self.engine.last_index(self.group)?;
        // Entries at or below the snapshot point are dead even if not yet purged.
        let first = first.max(self.snapshot.index + 1);
        (first <= last).then_some((first, last))
    }

    fn first(&self) -> u64 {
        self.span().map_or(self.snapshot.index + 1, |(f, _)| f)
    }

    fn last(&self) -> u64 {
        self.span().map_or(self.snapshot.index, |(_, l)| l)
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        if low == high {
            return Ok(out);
        }
        let max = max_size.into().map(|m| m as usize);
        self.engine
            .fetch_entries_to::<EntryExt>(self.group, low, high, max, &mut out)
            .map_err(storage_err)?;
        // raft-rs wants at least one entry, whatever its size.
        if out.is_empty() {
            self.engine
                .fetch_entries_to::<EntryExt>(self.group, low, low + 1, None, &mut out)
                .map_err(storage_err)?;
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self
            .engine
            .get_entry::<EntryExt>(self.group, idx)
            .map_err(storage_err)?
        {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// The snapshot's metadata and the machine's small state: a shard's points are
    /// streamed to the follower separately, in chunks, by the transport.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut s = Snapshot {
            data: self
                .engine
                .get(self.group, SNAPSHOT_DATA)
                .unwrap_or_default()
                .into(),
            ..Default::default()
        };
        let mut meta = self.snapshot.clone();
        meta.set_conf_state(self.conf_state.clone());
        s.set_metadata(meta);
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    #[test]
    fn entries_and_states_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = open_engine(dir.path()).unwrap();
            let mut log = RaftLog::open(engine, 7).unwrap();
            let mut w = LogWrite::default();
            log.append(&mut w, &(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>())
                .unwrap();
            let hs = HardState {
                term: 1,
                vote: 2,
                commit: 4,
                ..Default::default()
            };
            log.set_hard_state(&mut w, &hs).unwrap();
            let cs = ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            };
            log.set_conf_state(&mut w, &cs).unwrap();
            log.commit(w, true).unwrap();
        }
        let engine = open_engine(dir.path()).unwrap();
        let log = RaftLog::open(engine, 7).unwrap();
        let st = log.initial_state().unwrap();
        assert_eq!(
            (st.hard_state.term, st.hard_state.vote, st.hard_state.commit),
            (1, 2, 4)
        );
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (1, 5)
        );
        let got = log.entries(2, 5, None, ctx()).unwrap();
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(&got[0].data[..], b"e2");
        assert!(matches!(
            log.entries(2, 7, None, ctx()),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
    }

    #[test]
    fn a_conflicting_append_replaces_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open(open_engine(dir.path()).unwrap(), 1).unwrap();
        let mut w = LogWrite::default();
        log.append(&mut w, &(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .unwrap();
        log.commit(w, true).unwrap();
        let mut w = LogWrite::default();
        log.append(&mut w, &[entry(3, 2), entry(4, 2)]).unwrap();
        log.commit(w, true).unwrap();
        assert_eq!(log.last_index().unwrap(), 4);
        assert_eq!(log.term(3).unwrap(), 2);
        assert_eq!(log.term(2).unwrap(), 1);
    }

    #[test]
    fn compaction_and_snapshots_move_the_first_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open(open_engine(dir.path()).unwrap(), 3).unwrap();
        let mut w = LogWrite::default();
        log.append(&mut w, &(1..=10).map(|i| entry(i, 2)).collect::<Vec<_>>())
            .unwrap();
        log.commit(w, true).unwrap();

        let meta = SnapshotMetadata {
            index: 6,
            term: 2,
            ..Default::default()
        };
        let mut w = LogWrite::default();
        log.compact(&mut w, &meta, b"machine state at 6").unwrap();
        log.commit(w, true).unwrap();
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (7, 10)
        );
        // The machine's state travels with the snapshot.
        let snap = log.snapshot(0, 2).unwrap();
        assert_eq!(
            (snap.get_metadata().index, &snap.data[..]),
            (6, &b"machine state at 6"[..])
        );
        assert_eq!(log.term(6).unwrap(), 2);
        assert!(matches!(
            log.entries(5, 8, None, ctx()),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(log.entries(7, 11, None, ctx()).unwrap().len(), 4);

        // A snapshot from a leader far ahead replaces everything.
        let mut meta = SnapshotMetadata {
            index: 100,
            term: 5,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![1, 2, 3];
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(meta);
        snapshot.data = b"leader state at 100".to_vec().into();
        let mut w = LogWrite::default();
        log.apply_snapshot(&mut w, &snapshot).unwrap();
        log.commit(w, true).unwrap();
        assert_eq!(
            &log.snapshot(0, 2).unwrap().data[..],
            b"leader state at 100"
        );
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (101, 100)
        );
        assert_eq!(log.term(100).unwrap(), 5);
        assert_eq!(log.conf_state().voters, vec![1, 2, 3]);
        let mut w = LogWrite::default();
        log.append(&mut w, &[entry(101, 5)]).unwrap();
        log.commit(w, true).unwrap();
        assert_eq!(log.last_index().unwrap(), 101);

        // And all of it holds after a reopen.
        drop(log);
        let log = RaftLog::open(open_engine(dir.path()).unwrap(), 3).unwrap();
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (101, 101)
        );
        assert_eq!(log.snapshot(0, 0).unwrap().get_metadata().index, 100);
    }
}
