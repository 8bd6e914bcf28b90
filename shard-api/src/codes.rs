//! Error codes of the shard API, written by the server and matched by clients: each one
//! is a constant here, never a string typed twice. Also the headers naming a leader and
//! how long a node's searches wait for their turn.

/// Header naming the leader's address on a `not_leader` answer (status 421).
pub const LEADER_HEADER: &str = "x-redrec-leader";

/// Header on a node's search answers: how long, in microseconds, its latest search waited
/// for a turn on its CPUs (what tells a busy replica from a stalled one).
pub const SEARCH_WAIT_HEADER: &str = "x-redrec-search-wait-us";

/// 421: this replica does not lead its group; [`LEADER_HEADER`] says who does, if known.
pub const NOT_LEADER: &str = "not_leader";
/// 404: the node hosts no replica of the group (the caller's view is stale).
pub const UNKNOWN_GROUP: &str = "unknown_group";
/// 503: the map places the group here but the replica is still opening.
pub const GROUP_OPENING: &str = "group_opening";
/// 400: the request is malformed or its points are invalid.
pub const INVALID_REQUEST: &str = "invalid_request";
/// 500: the storage engine failed.
pub const STORAGE_ERROR: &str = "storage_error";
/// 500: the server failed in a way it did not foresee.
pub const INTERNAL: &str = "internal";
/// 409: some of the items' slots are moving to another group: retry shortly.
pub const SLOT_MOVING: &str = "slot_moving";
/// 409: the group does not serve some of the items' slots: refresh the cluster map.
pub const WRONG_SLOT: &str = "wrong_slot";
/// 503: the write may or may not have been applied; retrying is safe.
pub const OUTCOME_UNKNOWN: &str = "outcome_unknown";
/// 503: the replica stopped.
pub const REPLICA_STOPPED: &str = "replica_stopped";
/// 503: the replica has not caught up with its group.
pub const NOT_READY: &str = "not_ready";
/// 503: no quorum confirmed a strong read in time.
pub const NO_QUORUM: &str = "no_quorum";
/// 400: the group holds the cluster map, not points.
pub const NOT_A_SHARD_GROUP: &str = "not_a_shard_group";
/// 503: the node has no cluster map yet.
pub const NO_CLUSTER_MAP: &str = "no_cluster_map";
/// 400: the map change is a step of the meta leader's own work.
pub const INTERNAL_COMMAND: &str = "internal_command";
/// 404: the node hosts no meta replica.
pub const NOT_A_META_MEMBER: &str = "not_a_meta_member";
/// 400: a membership change's action is neither `add` nor `remove`.
pub const INVALID_ACTION: &str = "invalid_action";
/// 400: adding a replica needs its node's address.
pub const MISSING_ADDR: &str = "missing_addr";
/// 507: the node's memory budget has no room for the points (or a moving slot's).
pub const MEMORY_BUDGET: &str = "memory_budget_exceeded";
/// 403: the node was not started with `--fault-injection`.
pub const FAULT_INJECTION_OFF: &str = "fault_injection_off";
/// 400: a fault plan out of range.
pub const INVALID_FAULT_PLAN: &str = "invalid_fault_plan";
