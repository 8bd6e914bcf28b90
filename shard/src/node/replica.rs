//! One replica a node hosts: what it serves (a shard group's shard and slots, or the
//! meta group's cluster map), its Raft handle, and whether it has caught up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redrec_shard_api::map::ClusterMap;
use redrec_shard_api::slots::SlotGuard;
use redrec_shard_api::status::GroupStatus;

use crate::raft::driver::Driver;
use crate::raft::replica::Replica;
use crate::store::VectorStore;

/// What a hosted replica serves.
pub enum Kind {
    /// A shard group's replica: its Qdrant shard and the slots it serves.
    Shard {
        store: Arc<dyn VectorStore>,
        /// Users' histories.
        users: Arc<dyn VectorStore>,
        slots: Arc<RwLock<SlotGuard>>,
    },
    /// The meta group's replica: the cluster map.
    Meta { map: Arc<RwLock<ClusterMap>> },
}

/// One hosted replica: what it serves, for reads, and its Raft handle, for writes.
pub struct Hosted {
    pub id: u64,
    pub kind: Kind,
    pub replica: Replica,
    /// Set once a ReadIndex round confirmed this replica applied all the group had
    /// committed; cleared while it has no leader or restores a snapshot.
    caught_up: AtomicBool,
    _driver: Driver,
}

impl Hosted {
    /// A replica whose driver runs; not caught up until a ReadIndex round says so.
    pub fn new(id: u64, kind: Kind, driver: Driver) -> Self {
        Self {
            id,
            kind,
            replica: driver.replica().clone(),
            caught_up: AtomicBool::new(false),
            _driver: driver,
        }
    }

    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    pub fn store(&self) -> Option<&Arc<dyn VectorStore>> {
        match &self.kind {
            Kind::Shard { store, .. } => Some(store),
            Kind::Meta { .. } => None,
        }
    }

    /// A shard replica's store of users' histories.
    pub fn users(&self) -> Option<&Arc<dyn VectorStore>> {
        match &self.kind {
            Kind::Shard { users, .. } => Some(users),
            Kind::Meta { .. } => None,
        }
    }

    /// Runs `f` on the slots a shard replica serves (unmanaged: all), under its lock.
    pub fn with_slots<T>(&self, f: impl FnOnce(&SlotGuard) -> T) -> T {
        match &self.kind {
            Kind::Shard { slots, .. } => f(&slots.read().unwrap_or_else(|p| p.into_inner())),
            Kind::Meta { .. } => f(&SlotGuard::default()),
        }
    }

    /// The meta replica's cluster map.
    pub fn map(&self) -> Option<ClusterMap> {
        match &self.kind {
            Kind::Meta { map } => Some(map.read().unwrap_or_else(|p| p.into_inner()).clone()),
            Kind::Shard { .. } => None,
        }
    }

    pub fn status(&self) -> GroupStatus {
        GroupStatus {
            group: self.id,
            node: self.replica.id(),
            caught_up: self.caught_up(),
            raft: self.replica.status(),
            slots: self.with_slots(|s| s.states.is_some().then(|| s.counts())),
            store: self.store().and_then(|s| s.stats().ok()),
        }
    }
}

/// Keeps `caught_up` true only while the replica has a leader and has applied what the
/// group committed (checked by a ReadIndex round after every loss).
pub(super) async fn track_readiness(group: Weak<Hosted>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(g) = group.upgrade() else { return };
        let st = g.replica.status();
        if st.halted || st.restoring || st.leader.is_none() {
            g.caught_up.store(false, Ordering::Relaxed);
            continue;
        }
        if !g.caught_up() && g.replica.catch_up(Duration::from_secs(1)).await.is_ok() {
            let st = g.replica.status();
            g.caught_up
                .store(!st.restoring && st.leader.is_some(), Ordering::Relaxed);
        }
    }
}
