//! A replica's handle: what callers on any thread give its driver (messages, proposals,
//! membership changes, ReadIndex requests) and read from it (its status, its applied
//! index). The driver's loop owns the other ends.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::eraftpb::{ConfChange, Message};
use redrec_shard_api::status::ReplicaStatus;
use tokio::sync::{oneshot, watch};

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
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("replica stopped")]
    Stopped,
    /// The machine refused the command in its current state (see [`Applied::Refused`]).
    #[error("refused: {code}: {message}")]
    Refused { code: &'static str, message: String },
}

pub(super) type Reply = oneshot::Sender<Result<usize, ProposeError>>;
pub(super) type IndexReply = oneshot::Sender<Result<u64, ProposeError>>;

pub(super) enum Input {
    Raft(Message),
    Propose(Vec<u8>, Reply),
    ConfChange(ConfChange, Reply),
    ReadIndex(IndexReply),
    SnapshotFailed(u64),
    TransferLeader(u64),
    Stop,
}

/// A replica's public face: hand it messages and proposals from any thread.
#[derive(Clone)]
pub struct Replica {
    group: u64,
    id: u64,
    tx: Sender<Input>,
    status: Arc<Mutex<ReplicaStatus>>,
    applied: watch::Receiver<u64>,
}

impl Replica {
    /// The handle of replica `id` of `group`, whose loop reads `tx` and publishes
    /// `status` and `applied`.
    pub(super) fn new(
        group: u64,
        id: u64,
        tx: Sender<Input>,
        status: Arc<Mutex<ReplicaStatus>>,
        applied: watch::Receiver<u64>,
    ) -> Self {
        Self {
            group,
            id,
            tx,
            status,
            applied,
        }
    }

    /// Asks the loop to stop (the driver does on drop).
    pub(super) fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
    }

    pub fn group(&self) -> u64 {
        self.group
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn status(&self) -> ReplicaStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn step(&self, m: Message) {
        let _ = self.tx.send(Input::Raft(m));
    }

    /// Proposes an encoded command (of whichever machine the group runs) and waits until
    /// it is committed by a majority and applied here.
    pub async fn propose(&self, cmd: Vec<u8>) -> Result<usize, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input::Propose(cmd, tx))
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Proposes a membership change and waits until it is applied here.
    pub async fn change_membership(&self, cc: ConfChange) -> Result<(), ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input::ConfChange(cc, tx))
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?.map(|_| ())
    }

    /// Waits until this replica has applied everything the group had committed when the
    /// call was made (Raft's ReadIndex, confirmed by a quorum of heartbeats): a read
    /// after it sees every write acknowledged before it.
    pub async fn catch_up(&self, timeout: Duration) -> Result<u64, ProposeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Input::ReadIndex(tx))
            .map_err(|_| ProposeError::Stopped)?;
        let index = match tokio::time::timeout_at(deadline, rx).await {
            Ok(r) => r.map_err(|_| ProposeError::Stopped)??,
            Err(_) => {
                return Err(ProposeError::Timeout(
                    "no quorum confirmed the read index".into(),
                ))
            }
        };
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout_at(deadline, async {
            applied.wait_for(|a| *a >= index).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok(index),
            Ok(false) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout(format!(
                "not caught up to index {index} in time"
            ))),
        }
    }

    /// Hands leadership to `to` (a graceful stop does this before exiting).
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.tx.send(Input::TransferLeader(to));
    }

    /// A snapshot for `node` could not be delivered: let the leader send another.
    pub fn snapshot_failed(&self, node: u64) {
        let _ = self.tx.send(Input::SnapshotFailed(node));
    }
}
