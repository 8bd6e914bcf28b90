//! The Raft driver of one replica of a group: a thread that ticks the clock, steps
//! incoming messages, takes proposals, and turns each Ready into (in this order) messages a
//! leader may send before persisting, a restored snapshot, applied committed entries, one
//! synced log write, and the messages that had to wait for it. The log ([`RaftLog`]) and
//! the state machine ([`Machine`]) know nothing of each other; only this loop moves data
//! between them. Callers talk to the loop through its [`Replica`] handle.
//!
//! Snapshots are logical: the metadata says "everything up to index I" and carries the
//! machine's small state; the machine fetches its bulk from the leader itself (see
//! [`Machine::restore`]).

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, ConfChangeType, Entry, Message, Snapshot, SnapshotMetadata};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::watch;

pub use redrec_shard_api::status::ReplicaStatus;

use super::log::{LogWrite, RaftLog};
use super::machine::{Applied, Machine, MachineError};
use super::replica::{IndexReply, Input, ProposeError, Replica, Reply};

/// A new group's first configuration: a snapshot at this index, in this term. A replica
/// whose commit index is past it has seen the group elect a leader and commit.
pub const BOOTSTRAP_INDEX: u64 = 1;
const BOOTSTRAP_TERM: u64 = 1;

/// Sends Raft messages to other replicas; best effort, Raft retries what is lost.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, group: u64, messages: Vec<Message>);

    /// Learns where a node listens (from a committed membership change).
    fn add_peer(&self, _node: u64, _addr: &str) {}
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Applied entries kept in the log before it is compacted; a follower further behind
    /// than this is caught up by a snapshot.
    pub compact_after: u64,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            compact_after: 10_000,
        }
    }
}

/// The running replica; dropping it stops its thread.
pub struct Driver {
    replica: Replica,
    thread: Option<JoinHandle<()>>,
}

impl Driver {
    /// Starts replica `id` of `group` over its log and state machine. `voters` bootstraps
    /// a group whose log is empty; a replica with state ignores it. A replica joining a
    /// running group gets no voters: it starts empty and waits for the leader to catch it
    /// up (after the group added it as a member).
    pub fn start<M: Machine>(
        group: u64,
        id: u64,
        voters: &[u64],
        mut log: RaftLog,
        machine: M,
        transport: Arc<dyn Transport>,
        cfg: DriverConfig,
    ) -> raft::Result<Self> {
        if log.conf_state().voters.is_empty()
            && log.snapshot_metadata().index == 0
            && voters.contains(&id)
        {
            // The first configuration is a snapshot at index 1 (as TiKV bootstraps), not a
            // bare conf state: the log then starts at 2, so a replica that joins later with
            // an empty log (added, or re-added after losing its data) is always sent a
            // snapshot, which carries the group's configuration. Replayed from index 1
            // instead, the membership changes would apply to its empty configuration and
            // could leave it the sole voter of one of its own (two leaders). The snapshot
            // carries the empty machine's state, what a joiner restores before replaying
            // the log from index 2.
            let mut w = LogWrite::default();
            let mut meta = SnapshotMetadata {
                index: BOOTSTRAP_INDEX,
                term: BOOTSTRAP_TERM,
                ..Default::default()
            };
            meta.set_conf_state(raft::eraftpb::ConfState {
                voters: voters.to_vec(),
                ..Default::default()
            });
            let mut snapshot = Snapshot {
                data: machine.snapshot_data().into(),
                ..Default::default()
            };
            snapshot.set_metadata(meta);
            log.apply_snapshot(&mut w, &snapshot)?;
            log.commit(w, true)?;
        }
        // A group created before logs began with that snapshot still holds entry 1: what
        // the machine applied is dropped from it, so that from now on a joiner is sent a
        // snapshot here too.
        if raft::Storage::first_index(&log)? == 1 && machine.applied().index > 0 {
            let (meta, data) = snapshot_point(&log, &machine);
            let mut w = LogWrite::default();
            log.compact(&mut w, &meta, &data)?;
            log.commit(w, true)?;
        }
        // Entries the machine applied are committed, even where a crash kept the log's
        // commit index from being written; raft only needs a floor it can check.
        let applied = machine.applied().index.min(log.hard_state().commit);
        let raft_cfg = raft::Config {
            id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied,
            max_size_per_msg: 4 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&raft_cfg, log, &logger)?;
        let (tx, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(ReplicaStatus::default()));
        let (applied_tx, applied_rx) = watch::channel(machine.applied().index);
        let replica = Replica::new(group, id, tx, status.clone(), applied_rx);
        let mut state = Loop {
            group,
            node,
            machine,
            transport,
            pending: HashMap::new(),
            reads: HashMap::new(),
            next_proposal: 1,
            status,
            applied: applied_tx,
            compact_after: cfg.compact_after.max(1),
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-g{group}-r{id}"))
            .spawn(move || state.run(rx, cfg.tick))
            .map_err(raft::Error::Io)?;
        Ok(Self {
            replica,
            thread: Some(thread),
        })
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }
}

/// The snapshot point a compaction leaves: the machine's applied entry, the group's
/// configuration, and the machine's small state.
fn snapshot_point<M: Machine>(log: &RaftLog, machine: &M) -> (SnapshotMetadata, Vec<u8>) {
    let applied = machine.applied();
    let mut meta = SnapshotMetadata {
        index: applied.index,
        term: applied.term,
        ..Default::default()
    };
    meta.set_conf_state(log.conf_state().clone());
    (meta, machine.snapshot_data())
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.replica.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Loop<M> {
    group: u64,
    node: RawNode<RaftLog>,
    machine: M,
    transport: Arc<dyn Transport>,
    /// Proposals waiting for their entry to apply, by the id carried in its context.
    pending: HashMap<u64, (u64, Reply)>,
    /// ReadIndex requests waiting for a quorum, by the id carried in their context.
    reads: HashMap<u64, IndexReply>,
    next_proposal: u64,
    status: Arc<Mutex<ReplicaStatus>>,
    applied: watch::Sender<u64>,
    compact_after: u64,
}

#[derive(Debug, thiserror::Error)]
enum HaltError {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("raft log: {0}")]
    Log(#[from] raft::Error),
}

impl<M: Machine> Loop<M> {
    fn run(&mut self, rx: Receiver<Input>, tick: Duration) {
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(input) => {
                    self.handle(input);
                    // Drain what else is queued before the (costly) Ready.
                    while let Ok(more) = rx.try_recv() {
                        if matches!(more, Input::Stop) {
                            return self.fail_all("replica stopped");
                        }
                        self.handle(more);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick += tick;
            }
            if let Err(e) = self.on_ready() {
                // The log or the machine failed to persist: this replica must not go on.
                tracing::error!(group = self.group, "replica halted: {e}");
                self.status.lock().unwrap_or_else(|p| p.into_inner()).halted = true;
                break;
            }
        }
        self.fail_all("replica stopped");
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_proposal;
        self.next_proposal += 1;
        id
    }

    fn not_leader(&self) -> Option<ProposeError> {
        (self.node.raft.state != StateRole::Leader).then(|| {
            let leader = self.node.raft.leader_id;
            ProposeError::NotLeader((leader != 0).then_some(leader))
        })
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Raft(m) => {
                // A leader that believes this replica holds more than it does (its data was
                // lost) would make raft-rs panic; the replica has to be re-added instead.
                let last = self.node.raft.raft_log.last_index();
                if m.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat && m.commit > last {
                    tracing::warn!(
                        group = self.group,
                        commit = m.commit,
                        last,
                        "the leader counts on entries this replica lost; it must be re-added"
                    );
                    return;
                }
                let _ = self.node.step(m);
            }
            Input::Propose(cmd, reply) => {
                self.propose(reply, ProposeError::Unknown, |node, ctx| {
                    node.propose(ctx, cmd)
                })
            }
            // Refused typically because another membership change is still pending.
            Input::ConfChange(cc, reply) => {
                self.propose(reply, ProposeError::Rejected, |node, ctx| {
                    node.propose_conf_change(ctx, cc)
                })
            }
            Input::ReadIndex(reply) => {
                let id = self.next_id();
                // A follower forwards it to the leader; with no leader it is dropped and
                // the caller times out.
                self.node.read_index(id.to_le_bytes().to_vec());
                self.reads.insert(id, reply);
            }
            Input::SnapshotFailed(node) => {
                self.node.report_snapshot(node, SnapshotStatus::Failure);
            }
            Input::TransferLeader(to) => self.node.transfer_leader(to),
            Input::Stop => {}
        }
    }

    /// Proposes through `f` (on the leader only) and keeps `reply` until the entry,
    /// tagged with a fresh id in its context, is applied.
    fn propose(
        &mut self,
        reply: Reply,
        refused: fn(String) -> ProposeError,
        f: impl FnOnce(&mut RawNode<RaftLog>, Vec<u8>) -> raft::Result<()>,
    ) {
        if let Some(e) = self.not_leader() {
            let _ = reply.send(Err(e));
            return;
        }
        let id = self.next_id();
        let term = self.node.raft.term;
        match f(&mut self.node, id.to_le_bytes().to_vec()) {
            Ok(()) => {
                metrics::counter!("redrec_raft_proposals_total", "group" => self.group.to_string())
                    .increment(1);
                self.pending.insert(id, (term, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(refused(e.to_string())));
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), HaltError> {
        if !self.node.has_ready() {
            self.publish();
            return Ok(());
        }
        let mut rd = self.node.ready();
        if !rd.messages().is_empty() {
            self.count_snapshots(rd.messages());
            self.transport.send(self.group, rd.take_messages());
        }
        if !rd.snapshot().is_empty() {
            let snapshot = rd.snapshot().clone();
            self.restore(&snapshot)?;
        }
        for rs in rd.take_read_states() {
            let id = <[u8; 8]>::try_from(&rs.request_ctx[..])
                .ok()
                .map(u64::from_le_bytes);
            if let Some(reply) = id.and_then(|id| self.reads.remove(&id)) {
                let _ = reply.send(Ok(rs.index));
            }
        }
        // Persist before applying: the applied index on disk must never pass the
        // commit index on disk, or a restart would find it out of range.
        let mut w = LogWrite::default();
        let store = self.node.mut_store();
        if !rd.entries().is_empty() {
            store.append(&mut w, rd.entries())?;
        }
        if let Some(hs) = rd.hs() {
            store.set_hard_state(&mut w, hs)?;
        }
        store.commit(w, true)?;
        self.apply(rd.take_committed_entries())?;
        if !rd.persisted_messages().is_empty() {
            self.count_snapshots(rd.persisted_messages());
            self.transport
                .send(self.group, rd.take_persisted_messages());
        }
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            let store = self.node.mut_store();
            let mut hs = store.hard_state().clone();
            hs.commit = commit;
            let mut w = LogWrite::default();
            store.set_hard_state(&mut w, &hs)?;
            store.commit(w, true)?;
        }
        if !light.messages().is_empty() {
            self.transport.send(self.group, light.take_messages());
        }
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        self.maybe_compact()?;
        self.publish();
        Ok(())
    }

    /// Replaces the machine's state with the leader's and the log with the snapshot
    /// point. (A machine that can be caught halfway must mark it durably and start over.)
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), HaltError> {
        let meta = snapshot.get_metadata();
        let from = self.node.raft.leader_id;
        tracing::info!(
            group = self.group,
            index = meta.index,
            from,
            "restoring a snapshot"
        );
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restoring = true;
        let started = Instant::now();
        let items = self.machine.restore(snapshot, from)?;
        metrics::counter!("redrec_raft_snapshots_restored_total", "group" => self.group.to_string())
            .increment(1);
        let store = self.node.mut_store();
        let mut w = LogWrite::default();
        store.apply_snapshot(&mut w, snapshot)?;
        store.commit(w, true)?;
        self.applied.send_replace(meta.index);
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restoring = false;
        tracing::info!(
            group = self.group,
            index = meta.index,
            items,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot restored"
        );
        Ok(())
    }

    /// Once enough applied entries pile up, drops them from the log: the machine holds
    /// them, and the applied point becomes the snapshot a lagging follower is sent.
    fn maybe_compact(&mut self) -> Result<(), HaltError> {
        let applied = self.machine.applied();
        let store = self.node.mut_store();
        if applied.index < store.snapshot_metadata().index + self.compact_after {
            return Ok(());
        }
        let (meta, data) = snapshot_point(store, &self.machine);
        let mut w = LogWrite::default();
        store.compact(&mut w, &meta, &data)?;
        store.commit(w, false)?;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), HaltError> {
        if entries.is_empty() {
            return Ok(());
        }
        let contexts: HashMap<u64, Option<u64>> = entries
            .iter()
            .map(|e| {
                let id = <[u8; 8]>::try_from(&e.context[..])
                    .ok()
                    .map(u64::from_le_bytes);
                (e.index, id)
            })
            .collect();
        for (index, applied) in self.machine.apply(&entries)? {
            if let Applied::ConfChange(e) = &applied {
                self.apply_conf_change(e)?;
                // Whoever waits on it reads the new membership from the status.
                self.publish();
            }
            let Some(Some(id)) = contexts.get(&index) else {
                continue;
            };
            if let Some((_, reply)) = self.pending.remove(id) {
                let _ = reply.send(match applied {
                    Applied::Write(n) => Ok(n),
                    Applied::Rejected(m) => Err(ProposeError::Rejected(m)),
                    Applied::Refused { code, message } => {
                        Err(ProposeError::Refused { code, message })
                    }
                    Applied::Noop | Applied::ConfChange(_) => Ok(0),
                });
            }
        }
        self.applied.send_replace(self.machine.applied().index);
        // Proposals from an older term whose entries can no longer be ours.
        let term = self.node.raft.term;
        if self.node.raft.state != StateRole::Leader {
            self.pending.retain(|_, (t, _)| *t == term);
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry) -> Result<(), HaltError> {
        use protobuf::Message as _;
        let cc = match ConfChange::parse_from_bytes(&e.data) {
            Ok(cc) => cc,
            Err(err) => {
                tracing::error!(group = self.group, "undecodable membership change: {err}");
                return Ok(());
            }
        };
        if cc.get_change_type() == ConfChangeType::AddNode && !cc.context.is_empty() {
            self.transport
                .add_peer(cc.node_id, &String::from_utf8_lossy(&cc.context));
        }
        let cs = match self.node.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(err) => {
                tracing::warn!(group = self.group, "membership change refused: {err}");
                return Ok(());
            }
        };
        tracing::info!(group = self.group, voters = ?cs.voters, "membership changed");
        let store = self.node.mut_store();
        let mut w = LogWrite::default();
        store.set_conf_state(&mut w, &cs)?;
        store.commit(w, true)?;
        Ok(())
    }

    /// Snapshots this replica sends (to followers too far behind for the log).
    fn count_snapshots(&self, messages: &[Message]) {
        let n = messages
            .iter()
            .filter(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
            .count();
        if n > 0 {
            metrics::counter!("redrec_raft_snapshots_sent_total", "group" => self.group.to_string())
                .increment(n as u64);
        }
    }

    fn publish(&mut self) {
        // A replica that lost leadership cannot know whether its proposals commit.
        if self.node.raft.state != StateRole::Leader && !self.pending.is_empty() {
            self.fail_all("leadership changed before the write applied");
        }
        self.reads.retain(|_, r| !r.is_closed());
        let mut voters = self.node.store().conf_state().voters.clone();
        voters.sort_unstable();
        let r = &self.node.raft;
        let status = ReplicaStatus {
            leader: (r.leader_id != 0).then_some(r.leader_id),
            is_leader: r.state == StateRole::Leader,
            term: r.term,
            commit: r.raft_log.committed,
            applied: self.machine.applied().index,
            first_index: r.raft_log.first_index(),
            voters,
            restoring: false,
            halted: false,
        };
        let group = self.group.to_string();
        metrics::gauge!("redrec_raft_unapplied_entries", "group" => group.clone())
            .set(status.commit.saturating_sub(status.applied) as f64);
        let mut current = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.leader.is_some() && status.leader != current.leader {
            metrics::counter!("redrec_raft_leader_changes_total", "group" => group).increment(1);
        }
        *current = status;
    }

    fn fail_all(&mut self, why: &str) {
        for (_, (_, reply)) in self.pending.drain() {
            let _ = reply.send(Err(ProposeError::Unknown(why.into())));
        }
    }
}
