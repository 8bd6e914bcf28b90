//! The state machine of a shard group: committed log entries applied, in log order, to the
//! group's Qdrant shard. The applied index is persisted only after the shard has made the
//! writes durable, so a restart resumes from it and never loses an applied write. A crash
//! between the two re-applies a few entries on restart, which is harmless: upserts and
//! deletes by id are idempotent.
//!
//! The machine also keeps the group's [`SlotGuard`]: which slots it serves. A client write
//! touching a slot the group does not own is refused at apply time, so every replica
//! refuses the same writes, and a slot fenced for a move takes no write after the fence's
//! entry.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use raft::eraftpb::{Entry, EntryType, Snapshot};
use redrec_shard_api::codes::{SLOT_MOVING, WRONG_SLOT};
use redrec_shard_api::points::{Point, StoredPoint};
use redrec_shard_api::slots::{slot_of, SlotGuard, SlotState};
use redrec_shard_api::users::{Keyspace, UserEvent};
use serde::{Deserialize, Serialize};

use super::snapshot::SnapshotSource;
use crate::raft::machine::{
    load_json, store_json, sync_dir, Applied, AppliedState, Machine, MachineError,
};
use crate::store::{check_points, StoreError, VectorStore};

/// A write, as proposed to and replicated by the group's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Upsert(Vec<Point>),
    Delete(Vec<String>),
    /// Sets the state of some slots (a step of a slot move); the first assignment makes
    /// the group managed, every other slot `Absent`.
    SetSlots {
        version: u64,
        slots: Vec<u16>,
        state: SlotState,
    },
    /// A slot move's copies: applied to `Incoming` slots only, so a late copy can never
    /// overwrite what clients wrote once the slot is owned here.
    Migrate {
        upsert: Vec<Point>,
        delete: Vec<String>,
        #[serde(default)]
        keyspace: Keyspace,
    },
    /// The end of a move out: the slots become `Absent` and their points are deleted.
    DropSlots {
        version: u64,
        slots: Vec<u16>,
    },
    /// Users' events, each user keeping its newest `keep`.
    Events {
        keep: usize,
        events: Vec<UserEvent>,
    },
    /// Everything stored about these users goes.
    ForgetUsers(Vec<String>),
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("commands serialize")
    }

    pub fn decode(data: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(data)
    }
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

/// What `applied.json` holds: the applied point and the slots served at it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    #[serde(flatten)]
    applied: AppliedState,
    #[serde(default)]
    slots: SlotGuard,
}

pub struct StateMachine {
    group: u64,
    store: Arc<dyn VectorStore>,
    /// Users' histories (`dir/users`).
    users: Arc<dyn VectorStore>,
    /// Where a snapshot's points come from.
    source: Arc<dyn SnapshotSource>,
    path: PathBuf,
    applied: AppliedState,
    /// Shared with the replica's readers, which hide slots not served here.
    slots: Arc<RwLock<SlotGuard>>,
}

impl From<StoreError> for MachineError {
    fn from(e: StoreError) -> Self {
        MachineError::State(e.to_string())
    }
}

impl StateMachine {
    /// The machine of group `group` over `store`, its applied index kept in
    /// `dir/applied.json`; snapshots' points are pulled from `source`.
    pub fn open(
        group: u64,
        store: Arc<dyn VectorStore>,
        source: Arc<dyn SnapshotSource>,
        dir: &Path,
    ) -> Result<Self, MachineError> {
        let path = dir.join("applied.json");
        let persisted: Persisted = load_json(&path)?;
        let users = crate::users::open(&dir.join("users"), store.collection().point_ids)
            .map_err(|e| MachineError::State(format!("users' store: {e:#}")))?;
        Ok(Self {
            group,
            store,
            users: Arc::new(users),
            source,
            path,
            applied: persisted.applied,
            slots: Arc::new(RwLock::new(persisted.slots)),
        })
    }

    pub fn store(&self) -> &Arc<dyn VectorStore> {
        &self.store
    }

    pub fn users(&self) -> &Arc<dyn VectorStore> {
        &self.users
    }

    fn keyspace(&self, keyspace: Keyspace) -> &Arc<dyn VectorStore> {
        match keyspace {
            Keyspace::Items => &self.store,
            Keyspace::Users => &self.users,
        }
    }

    /// The slots this group serves, as of the applied index.
    pub fn slots(&self) -> Arc<RwLock<SlotGuard>> {
        self.slots.clone()
    }

    fn guard(&self) -> std::sync::RwLockReadGuard<'_, SlotGuard> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    fn guard_mut(&self) -> std::sync::RwLockWriteGuard<'_, SlotGuard> {
        self.slots.write().unwrap_or_else(|p| p.into_inner())
    }

    /// `None` when every id may be written by clients; else why not.
    fn refuse<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Option<Applied> {
        let guard = self.guard();
        guard.states.as_ref()?;
        let mut moving = false;
        let mut refused = false;
        for id in ids {
            match guard.of(id) {
                SlotState::Owned => {}
                SlotState::Incoming | SlotState::Fenced => (moving, refused) = (true, true),
                SlotState::Absent => refused = true,
            }
        }
        let version = guard.version;
        refused.then(|| match moving {
            true => Applied::Refused {
                code: SLOT_MOVING,
                message: format!(
                    "is moving some of these items' slots (map version {version}); retry shortly"
                ),
            },
            false => Applied::Refused {
                code: WRONG_SLOT,
                message: format!(
                    "does not serve some of these items' slots (map version {version}); \
                     refresh the cluster map"
                ),
            },
        })
    }

    /// Applies a slot move's copies to the slots still `Incoming` here.
    fn migrate(
        &self,
        upsert: Vec<Point>,
        delete: Vec<String>,
        keyspace: Keyspace,
    ) -> Result<usize, MachineError> {
        let (upsert, delete): (Vec<Point>, Vec<String>) = {
            let guard = self.guard();
            let incoming = |id: &str| guard.of(id) == SlotState::Incoming;
            (
                upsert.into_iter().filter(|p| incoming(&p.id)).collect(),
                delete.into_iter().filter(|id| incoming(id)).collect(),
            )
        };
        let store = self.keyspace(keyspace);
        let mut n = 0;
        if !upsert.is_empty() {
            n += store.upsert(upsert)?;
        }
        if !delete.is_empty() {
            n += store.delete(&delete)?;
        }
        Ok(n)
    }

    /// Marks `slots` absent and deletes their points and users.
    fn drop_slots(&self, version: u64, slots: &[u16]) -> Result<usize, MachineError> {
        self.guard_mut().set(version, slots, SlotState::Absent);
        let wanted: HashSet<usize> = slots.iter().map(|&s| s as usize).collect();
        let mut n = 0;
        for store in [&self.store, &self.users] {
            let mut ids = Vec::new();
            let mut cursor = None;
            loop {
                let page = store.scroll(cursor.as_deref(), 4096)?;
                ids.extend(
                    page.points
                        .into_iter()
                        .filter(|p| wanted.contains(&slot_of(&p.id)))
                        .map(|p| p.id),
                );
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            for chunk in ids.chunks(4096) {
                n += store.delete(chunk)?;
            }
        }
        Ok(n)
    }

    fn apply_one(&mut self, cmd: Command) -> Result<Applied, MachineError> {
        Ok(match cmd {
            Command::Delete(ids) => match self.refuse(ids.iter().map(String::as_str)) {
                Some(refused) => refused,
                None => Applied::Write(self.store.delete(&ids)?),
            },
            Command::SetSlots {
                version,
                slots,
                state,
            } => {
                self.guard_mut().set(version, &slots, state);
                Applied::Write(slots.len())
            }
            Command::Migrate {
                upsert,
                delete,
                keyspace,
            } => match check_points(&upsert, self.keyspace(keyspace).dim()) {
                Err(e) => Applied::Rejected(e.to_string()),
                Ok(()) => Applied::Write(self.migrate(upsert, delete, keyspace)?),
            },
            Command::Events { keep, events } => {
                match self.refuse(events.iter().map(|e| e.user_id.as_str())) {
                    Some(refused) => refused,
                    None => match crate::users::add(self.users.as_ref(), events, keep) {
                        Err(StoreError::BadRequest(m)) => Applied::Rejected(m),
                        r => Applied::Write(r?),
                    },
                }
            }
            Command::ForgetUsers(ids) => match self.refuse(ids.iter().map(String::as_str)) {
                Some(refused) => refused,
                None => Applied::Write(self.users.delete(&ids)?),
            },
            Command::DropSlots { version, slots } => {
                Applied::Write(self.drop_slots(version, &slots)?)
            }
            Command::Upsert(_) => unreachable!("upserts are gathered into runs"),
        })
    }
}

impl Machine for StateMachine {
    fn applied(&self) -> AppliedState {
        self.applied
    }

    /// Applies committed entries past the applied index, in order, then persists the new
    /// applied index. Returns what each newly applied entry did.
    ///
    /// Runs of consecutive upserts touching distinct ids go to the shard as one write
    /// (one flush): the result is the same as one by one, and a busy leader commits
    /// entries in runs.
    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<(u64, Applied)>, MachineError> {
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
                        Ok(()) => match self.refuse(points.iter().map(|p| p.id.as_str())) {
                            Some(refused) => Some(refused),
                            None => {
                                if !run.fits(&points) {
                                    self.flush_run(&mut run, &mut out)?;
                                }
                                run.push(e.index, points);
                                None
                            }
                        },
                    },
                    Ok(cmd) => {
                        // Whatever came before this entry is written before it.
                        self.flush_run(&mut run, &mut out)?;
                        Some(self.apply_one(cmd)?)
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

    fn snapshot_data(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.guard()).expect("serializes")
    }

    /// Empties the shard (behind the restore mark), takes the snapshot's slots, and pulls
    /// the leader's points; a failed pull starts over, a few times. The pages may already
    /// hold writes past the snapshot's index, which is harmless: every write replaces or
    /// removes whole points by id, so replaying the log on top converges to the leader's.
    fn restore(&mut self, snapshot: &Snapshot, leader: u64) -> Result<usize, MachineError> {
        let meta = snapshot.get_metadata();
        let slots: SlotGuard = if snapshot.data.is_empty() {
            SlotGuard::default()
        } else {
            serde_json::from_slice(&snapshot.data)
                .map_err(|e| MachineError::Snapshot(format!("undecodable slot state: {e}")))?
        };
        self.begin_restore()?;
        *self.guard_mut() = slots;
        let points = std::cell::Cell::new(0usize);
        let mut attempt = 0;
        'pull: loop {
            for keyspace in [Keyspace::Items, Keyspace::Users] {
                let store = self.keyspace(keyspace).clone();
                let mut sink = |page: Vec<StoredPoint>| -> Result<(), String> {
                    let page: Vec<Point> = page
                        .into_iter()
                        .filter_map(|p| {
                            Some(Point {
                                vector: p.vector?,
                                id: p.id,
                                payload: p.payload,
                            })
                        })
                        .collect();
                    points.set(points.get() + page.len());
                    store.upsert(page).map(|_| ()).map_err(|e| e.to_string())
                };
                match self.source.pull(self.group, leader, keyspace, &mut sink) {
                    Ok(()) => continue,
                    Err(e) if attempt < 5 => {
                        attempt += 1;
                        tracing::warn!("snapshot pull failed ({e}); retrying");
                        self.store.clear()?;
                        self.users.clear()?;
                        points.set(0);
                        std::thread::sleep(std::time::Duration::from_millis(200 << attempt));
                        continue 'pull;
                    }
                    Err(e) => return Err(MachineError::Snapshot(e)),
                }
            }
            break;
        }
        self.finish_restore(AppliedState {
            index: meta.index,
            term: meta.term,
        })?;
        Ok(points.get())
    }
}

impl StateMachine {
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
    fn begin_restore(&mut self) -> Result<(), MachineError> {
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
        self.users.clear()?;
        Ok(())
    }

    /// The shard holds the snapshot taken at `state`: record it and clear the mark.
    fn finish_restore(&mut self, state: AppliedState) -> Result<(), MachineError> {
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
        self.users.clear()?;
        *self.guard_mut() = SlotGuard::default();
        self.finish_restore(AppliedState::default())
    }

    fn persist(&mut self, state: AppliedState) -> Result<(), MachineError> {
        let persisted = Persisted {
            applied: state,
            slots: self.guard().clone(),
        };
        store_json(&self.path, &persisted)?;
        self.applied = state;
        Ok(())
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
