//! The Raft driver of one replica of a shard group: a thread that ticks the clock, steps
//! incoming messages, takes proposals, and turns each Ready into (in this order) messages a
//! leader may send before persisting, applied committed entries, one synced log write,
//! and the messages that had to wait for it. The log ([`RaftLog`]) and the state machine
//! ([`StateMachine`]) know nothing of each other; only this loop moves data between them.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raft::eraftpb::{Entry, Message};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;

use super::log::{LogWrite, RaftLog};
use super::machine::{Applied, Command, MachineError, StateMachine};

/// Sends Raft messages to other replicas; best effort, Raft retries what is lost.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, group: u64, messages: Vec<Message>);
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProposeError {
    /// Not the leader; the hint, if known, is the leader's replica id.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<u64>),
    /// The outcome is unknown (leadership changed before the entry was applied here):
    /// the write may or may not have been committed. Retrying is safe (idempotent writes).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("replica stopped")]
    Stopped,
}

type Reply = oneshot::Sender<Result<usize, ProposeError>>;

enum Input {
    Raft(Message),
    Propose(Command, Reply),
    Stop,
}

/// A replica's public face: hand it messages and proposals from any thread.
#[derive(Clone)]
pub struct Replica {
    group: u64,
    id: u64,
    tx: Sender<Input>,
    status: Arc<Mutex<ReplicaStatus>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
}

impl Replica {
    pub fn group(&self) -> u64 {
        self.group
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn status(&self) -> ReplicaStatus {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn step(&self, m: Message) {
        let _ = self.tx.send(Input::Raft(m));
    }

    /// Proposes a write and waits until it is committed by a majority and applied here.
    pub async fn propose(&self, cmd: Command) -> Result<usize, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input::Propose(cmd, tx))
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }
}

/// The running replica; dropping it stops its thread.
pub struct Driver {
    replica: Replica,
    thread: Option<JoinHandle<()>>,
}

impl Driver {
    /// Starts replica `id` of `group` over its log and state machine. `voters` bootstraps
    /// a group whose log is empty; a replica with state ignores it.
    pub fn start(
        group: u64,
        id: u64,
        voters: &[u64],
        mut log: RaftLog,
        machine: StateMachine,
        transport: Arc<dyn Transport>,
        cfg: DriverConfig,
    ) -> raft::Result<Self> {
        if log.conf_state().voters.is_empty() && log.hard_state().term == 0 {
            let mut w = LogWrite::default();
            let cs = raft::eraftpb::ConfState {
                voters: voters.to_vec(),
                ..Default::default()
            };
            log.set_conf_state(&mut w, &cs)?;
            log.commit(w, true)?;
        }
        let raft_cfg = raft::Config {
            id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: machine.applied().index,
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
        let replica = Replica {
            group,
            id,
            tx,
            status: status.clone(),
        };
        let mut state = Loop {
            group,
            node,
            machine,
            transport,
            pending: HashMap::new(),
            next_proposal: 1,
            status,
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

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.replica.tx.send(Input::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Loop {
    group: u64,
    node: RawNode<RaftLog>,
    machine: StateMachine,
    transport: Arc<dyn Transport>,
    /// Proposals waiting for their entry to apply, by the id carried in its context.
    pending: HashMap<u64, (u64, Reply)>,
    next_proposal: u64,
    status: Arc<Mutex<ReplicaStatus>>,
}

impl Loop {
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
                // The log or the shard failed to persist: this replica must not go on.
                tracing::error!(group = self.group, "replica halted: {e}");
                break;
            }
        }
        self.fail_all("replica stopped");
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Raft(m) => {
                let _ = self.node.step(m);
            }
            Input::Propose(cmd, reply) => {
                if self.node.raft.state != StateRole::Leader {
                    let leader = self.node.raft.leader_id;
                    let _ = reply.send(Err(ProposeError::NotLeader(
                        (leader != 0).then_some(leader),
                    )));
                    return;
                }
                let id = self.next_proposal;
                self.next_proposal += 1;
                let term = self.node.raft.term;
                match self.node.propose(id.to_le_bytes().to_vec(), cmd.encode()) {
                    Ok(()) => {
                        self.pending.insert(id, (term, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ProposeError::Unknown(e.to_string())));
                    }
                }
            }
            Input::Stop => {}
        }
    }

    fn on_ready(&mut self) -> Result<(), MachineError> {
        if !self.node.has_ready() {
            self.publish();
            return Ok(());
        }
        let mut rd = self.node.ready();
        if !rd.messages().is_empty() {
            self.transport.send(self.group, rd.take_messages());
        }
        // Snapshots carry only metadata here; restoring a shard's points comes with the
        // snapshot transfer.
        self.apply(rd.take_committed_entries())?;
        let mut w = LogWrite::default();
        let store = self.node.mut_store();
        if !rd.entries().is_empty() {
            store.append(&mut w, rd.entries()).map_err(log_err)?;
        }
        if let Some(hs) = rd.hs() {
            store.set_hard_state(&mut w, hs).map_err(log_err)?;
        }
        store.commit(w, true).map_err(log_err)?;
        if !rd.persisted_messages().is_empty() {
            self.transport
                .send(self.group, rd.take_persisted_messages());
        }
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            let store = self.node.mut_store();
            let mut hs = store.hard_state().clone();
            hs.commit = commit;
            let mut w = LogWrite::default();
            store.set_hard_state(&mut w, &hs).map_err(log_err)?;
            store.commit(w, true).map_err(log_err)?;
        }
        if !light.messages().is_empty() {
            self.transport.send(self.group, light.take_messages());
        }
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        self.publish();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), MachineError> {
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
                self.apply_conf_change(e);
            }
            let Some(Some(id)) = contexts.get(&index) else {
                continue;
            };
            if let Some((_, reply)) = self.pending.remove(id) {
                let _ = reply.send(match applied {
                    Applied::Write(n) => Ok(n),
                    Applied::Rejected(m) => Err(ProposeError::Rejected(m)),
                    Applied::Noop | Applied::ConfChange(_) => Ok(0),
                });
            }
        }
        // Proposals from an older term whose entries can no longer be ours.
        let term = self.node.raft.term;
        if self.node.raft.state != StateRole::Leader {
            self.pending.retain(|_, (t, _)| *t == term);
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, e: &Entry) {
        use protobuf::Message as _;
        let cs = if e.get_entry_type() == raft::eraftpb::EntryType::EntryConfChangeV2 {
            raft::eraftpb::ConfChangeV2::parse_from_bytes(&e.data)
                .ok()
                .and_then(|cc| self.node.apply_conf_change(&cc).ok())
        } else {
            raft::eraftpb::ConfChange::parse_from_bytes(&e.data)
                .ok()
                .and_then(|cc| self.node.apply_conf_change(&cc).ok())
        };
        if let Some(cs) = cs {
            let store = self.node.mut_store();
            let mut w = LogWrite::default();
            if store.set_conf_state(&mut w, &cs).is_ok() {
                let _ = store.commit(w, true);
            }
        }
    }

    fn publish(&mut self) {
        let r = &self.node.raft;
        let term = r.term;
        // A replica that lost leadership cannot know whether its proposals commit.
        if r.state != StateRole::Leader && !self.pending.is_empty() {
            self.fail_all("leadership changed before the write applied");
        }
        let r = &self.node.raft;
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = ReplicaStatus {
            leader: (r.leader_id != 0).then_some(r.leader_id),
            is_leader: r.state == StateRole::Leader,
            term,
            commit: r.raft_log.committed,
            applied: self.machine.applied().index,
        };
    }

    fn fail_all(&mut self, why: &str) {
        for (_, (_, reply)) in self.pending.drain() {
            let _ = reply.send(Err(ProposeError::Unknown(why.into())));
        }
    }
}

fn log_err(e: raft::Error) -> MachineError {
    MachineError::Io {
        path: "raft log".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Point;
    use crate::raft::log::open_engine;
    use crate::store::{EdgeStore, VectorStore};
    use std::sync::RwLock;

    /// Delivers messages between replicas of this process, except to those cut off.
    #[derive(Default)]
    struct Loopback {
        replicas: RwLock<HashMap<u64, Replica>>,
        down: RwLock<Vec<u64>>,
    }

    impl Transport for Loopback {
        fn send(&self, _group: u64, messages: Vec<Message>) {
            let down = self.down.read().unwrap();
            let replicas = self.replicas.read().unwrap();
            for m in messages {
                if down.contains(&m.to) || down.contains(&m.from) {
                    continue;
                }
                if let Some(r) = replicas.get(&m.to) {
                    r.step(m);
                }
            }
        }
    }

    fn start(dir: &std::path::Path, id: u64, net: &Arc<Loopback>) -> Driver {
        let d = dir.join(format!("r{id}"));
        let log = RaftLog::open(open_engine(&d.join("log")).unwrap(), 1).unwrap();
        let store: Arc<dyn VectorStore> = Arc::new(EdgeStore::open(&d.join("shard"), 4).unwrap());
        let machine = StateMachine::open(store, &d).unwrap();
        let cfg = DriverConfig {
            tick: Duration::from_millis(20),
            ..Default::default()
        };
        let driver = Driver::start(1, id, &[1, 2, 3], log, machine, net.clone(), cfg).unwrap();
        net.replicas
            .write()
            .unwrap()
            .insert(id, driver.replica().clone());
        driver
    }

    fn leader(drivers: &[Driver]) -> Option<usize> {
        drivers.iter().position(|d| d.replica().status().is_leader)
    }

    fn wait_leader(drivers: &[Driver]) -> usize {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = leader(drivers) {
                return i;
            }
            assert!(Instant::now() < until, "no leader elected");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn upsert(id: &str) -> Command {
        Command::Upsert(vec![Point {
            id: id.into(),
            vector: vec![1.0, 0.0, 0.0, 0.0],
            payload: Default::default(),
        }])
    }

    #[test]
    fn three_replicas_elect_commit_and_survive_a_leader_restart() {
        let dir = tempfile::tempdir().unwrap();
        let net = Arc::new(Loopback::default());
        let mut drivers: Vec<Driver> = (1..=3).map(|id| start(dir.path(), id, &net)).collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let l = wait_leader(&drivers);
        for i in 0..20 {
            let r = rt.block_on(drivers[l].replica().propose(upsert(&format!("p{i}"))));
            assert_eq!(r, Ok(1));
        }
        let follower = (l + 1) % 3;
        assert!(matches!(
            rt.block_on(drivers[follower].replica().propose(upsert("x"))),
            Err(ProposeError::NotLeader(Some(_)))
        ));

        // Restart the leader: the others elect a new one; all 20 writes are there, and the
        // old leader catches up from its own log and the new leader's.
        let old_id = drivers[l].replica().id();
        drivers.remove(l);
        let l2 = wait_leader(&drivers);
        let r = rt.block_on(drivers[l2].replica().propose(upsert("after")));
        assert_eq!(r, Ok(1));
        drivers.push(start(dir.path(), old_id, &net));
        let until = Instant::now() + Duration::from_secs(10);
        let want = drivers[l2].replica().status().applied;
        while drivers.iter().any(|d| d.replica().status().applied < want) {
            assert!(Instant::now() < until, "replicas did not converge");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
