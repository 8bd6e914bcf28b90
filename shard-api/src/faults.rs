//! Fault injection for tests and benches: a shard node started with `--fault-injection`
//! delays a chosen share of its reads (searches and gets) by a chosen time, as a slow
//! replica would be. Off unless that flag is given; the plan is set at run time with
//! `POST` [`FAULTS_PATH`].

use serde::{Deserialize, Serialize};

pub const FAULTS_PATH: &str = "/admin/v1/faults";

/// What a node's reads suffer. The default plan does nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// Share of reads delayed, 0 to 1.
    pub delay_share: f64,
    pub delay_ms: u64,
    /// Only reads of these groups (empty: every group on the node).
    #[serde(default)]
    pub groups: Vec<u64>,
}
