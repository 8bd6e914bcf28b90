//! Calls to the meta group, which holds the cluster map: reading the newest map, and
//! proposing changes through whichever member leads.

use std::time::Duration;

use crate::client::{call_leader, ShardClientError};
use crate::map::{ClusterMap, MetaCommand};

/// `GET`: the cluster map a node holds.
pub const MAP_PATH: &str = "/v1/meta/map";
/// `POST`: a change to the cluster map, on the meta leader.
pub const COMMANDS_PATH: &str = "/admin/v1/cluster/commands";

/// Longest one call to a meta member may take (a map change waits for its commit).
const CALL: Duration = Duration::from_secs(12);

/// Proposes `cmd` through the meta members at `addrs` (the leader found from any of them)
/// and returns the map version it made.
pub async fn propose(
    http: &reqwest::Client,
    addrs: &[String],
    cmd: &MetaCommand,
) -> Result<u64, ShardClientError> {
    #[derive(serde::Deserialize)]
    struct Applied {
        version: u64,
    }
    let a: Applied = call_leader(http, addrs, COMMANDS_PATH, Some(cmd), CALL).await?;
    Ok(a.version)
}

/// The map of the first member at `addrs` that answers.
pub async fn map(http: &reqwest::Client, addrs: &[String]) -> Result<ClusterMap, ShardClientError> {
    call_leader::<(), ClusterMap>(http, addrs, MAP_PATH, None, CALL).await
}

/// The newest initialised map any of `addrs` holds (members may lag a little; a router
/// or node takes the highest version it is shown).
pub async fn fetch_map(
    http: &reqwest::Client,
    addrs: &[String],
) -> Result<ClusterMap, ShardClientError> {
    let asks = addrs.iter().map(|a| async move {
        crate::client::request::<(), ClusterMap>(
            http,
            a,
            &format!("{}{MAP_PATH}", a.trim_end_matches('/')),
            None,
            CALL,
        )
        .await
        .ok()
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .filter(ClusterMap::initialised)
        .max_by_key(|m| m.version)
        .ok_or_else(|| ShardClientError::Unavailable {
            addr: format!("{addrs:?}"),
            message: "no initialised cluster map".into(),
        })
}
