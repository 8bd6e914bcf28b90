//! What nodes, replicas and groups say about themselves: `GET /v1/node`,
//! `GET /v1/groups/{g}/status` and `/digest`, and membership changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::points::{Memory, Stats};
use crate::slots::SlotState;

/// `GET /v1/node`: a node and its replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: u64,
    pub addr: String,
    pub ready: bool,
    pub groups: Vec<GroupStatus>,
    /// Points in the node's shard replicas, added up.
    #[serde(default)]
    pub points: usize,
    /// Where the node's shard replicas keep their bytes, added up.
    #[serde(default)]
    pub memory: Memory,
    /// The node's memory budget (bytes), if it has one.
    #[serde(default)]
    pub budget: Option<u64>,
    /// The process's resident memory, where the OS says it.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
}

/// One replica of a group, as its node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: u64,
    pub node: u64,
    pub caught_up: bool,
    #[serde(flatten)]
    pub raft: ReplicaStatus,
    /// A shard replica's slots by state (absent for the meta group and unmanaged groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<BTreeMap<SlotState, usize>>,
    /// A shard replica's points, index and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<Stats>,
}

/// A replica's Raft state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    /// First index still in the log (earlier ones are compacted into the snapshot point).
    pub first_index: u64,
    pub voters: Vec<u64>,
    /// A snapshot is being restored: the replica's contents are incomplete.
    pub restoring: bool,
    /// The replica stopped on a storage error and serves nothing.
    pub halted: bool,
}

/// What a replica holds, in a form replicas can compare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub points: usize,
    /// xxh3 over every (id, vector bits) pair, in id order.
    pub checksum: String,
    /// The replica's applied index when the digest was taken.
    pub applied: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipRequest {
    /// `add` or `remove`.
    pub action: String,
    pub node: u64,
    /// Where the added node listens (needed to add).
    #[serde(default)]
    pub addr: Option<String>,
}
