//! The one HTTP client of the shard API, for routers, tools and the meta leader's mover:
//! [`request`] makes a call and decodes the JSON error or the `not_leader` redirect,
//! [`ShardClient`] is one lone shard or one replica of a group, and [`call_leader`] finds
//! the member of a Raft group that acts (following `not_leader` hints). A group of
//! replicas as a whole is [`crate::group::Group`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redrec_wire::compact::{self, Format, MSGPACK};
use redrec_wire::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codes::{LEADER_HEADER, SEARCH_WAIT_HEADER, SLOT_MOVING, UNKNOWN_GROUP, WRONG_SLOT};
use crate::points::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, GroupsFound, GroupsSearch,
    PackedResults, Page, Point, ScrollRequest, SearchRequest, SearchResponse, Stats, StoredPoint,
    UpsertRequest, UpsertResponse,
};
use crate::reads::Load;
use crate::slots::{DropSlotsRequest, MigrateRequest, SetSlotsRequest, SlotState, WriteResponse};
use crate::status::{Digest, GroupStatus, NodeStatus};
use crate::users::{EventsRequest, Keyspace, UserHistory, UsersRequest, UsersResponse};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardClientError {
    /// Not reached, timed out, or broke off: the shard may or may not have acted.
    #[error("shard {addr} unavailable: {message}")]
    Unavailable { addr: String, message: String },
    /// The replica asked does not lead its group; `leader` is where the leader listens,
    /// when the replica knows.
    #[error("shard {addr} is not the group's leader (leader: {leader:?})")]
    NotLeader {
        addr: String,
        leader: Option<String>,
    },
    /// The shard answered with an error.
    #[error("shard {addr} answered {status}: {code}: {message}")]
    Rejected {
        addr: String,
        status: u16,
        code: String,
        message: String,
    },
}

impl ShardClientError {
    /// The request itself was at fault, so every group would refuse it alike. A replica
    /// that does not host the group (`unknown_group`) is the caller's view of the cluster
    /// being out of date, not a fault of the request.
    pub fn is_client_error(&self) -> bool {
        matches!(self, Self::Rejected { status, code, .. }
            if (400..500).contains(status) && code != UNKNOWN_GROUP)
    }

    /// The group refused a write to slots it does not serve: `Some(true)` while they are
    /// moving (retry shortly), `Some(false)` when misrouted (refresh the cluster map).
    pub fn wrong_slot(&self) -> Option<bool> {
        match self {
            Self::Rejected {
                status: 409, code, ..
            } if code == SLOT_MOVING => Some(true),
            Self::Rejected {
                status: 409, code, ..
            } if code == WRONG_SLOT => Some(false),
            _ => None,
        }
    }

    /// The node answered with a 5xx of its own.
    pub fn is_server_error(&self) -> bool {
        matches!(self, Self::Rejected { status, .. } if *status >= 500)
    }

    /// Another replica may succeed where this one did not: it was unreachable, is not
    /// the leader, is not ready (503), or does not host the group (any more, or yet).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable { .. } | Self::NotLeader { .. } => true,
            Self::Rejected { status, code, .. } => *status == 503 || code == UNKNOWN_GROUP,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ShardClient {
    addr: String,
    /// `addr` plus the API prefix: `/v1` for a lone shard, `/v1/groups/{g}` for a replica.
    base: String,
    http: reqwest::Client,
    /// What this replica's search answers said of its load (shared by the clones).
    load: Arc<Load>,
}

impl ShardClient {
    /// A lone (unreplicated) shard at `addr`, like `http://127.0.0.1:7001`; `http` is
    /// shared so connections are pooled.
    pub fn new(addr: impl Into<String>, http: reqwest::Client) -> Self {
        let addr = addr.into().trim_end_matches('/').to_string();
        Self {
            base: format!("{addr}/v1"),
            addr,
            http,
            load: Arc::default(),
        }
    }

    /// The replica of group `group` hosted by the shard node at `addr`.
    pub fn replica(addr: impl Into<String>, group: u64, http: reqwest::Client) -> Self {
        let addr = addr.into().trim_end_matches('/').to_string();
        Self {
            base: format!("{addr}/v1/groups/{group}"),
            addr,
            http,
            load: Arc::default(),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// What the replica's search answers said of its load.
    pub fn load(&self) -> &Load {
        &self.load
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ShardClientError> {
        let url = format!("{}{}", self.base, path);
        request(&self.http, &self.addr, &url, body, timeout).await
    }

    pub async fn upsert(
        &self,
        points: Vec<Point>,
        timeout: Duration,
    ) -> Result<usize, ShardClientError> {
        let r: UpsertResponse = self
            .call("/points/upsert", Some(&UpsertRequest { points }), timeout)
            .await?;
        Ok(r.upserted)
    }

    pub async fn delete(
        &self,
        ids: Vec<String>,
        timeout: Duration,
    ) -> Result<usize, ShardClientError> {
        let r: DeleteResponse = self
            .call("/points/delete", Some(&DeleteRequest { ids }), timeout)
            .await?;
        Ok(r.deleted)
    }

    pub async fn get(
        &self,
        ids: Vec<String>,
        with_vector: bool,
        timeout: Duration,
    ) -> Result<Vec<StoredPoint>, ShardClientError> {
        let url = format!("{}/points/get", self.base);
        let body = GetRequest { ids, with_vector };
        let (r, bytes): (GetResponse, usize) = exchange(
            &self.http,
            &self.addr,
            &url,
            Some(&body),
            timeout,
            Format::Json,
            None,
        )
        .await?;
        metrics::counter!("redrec_shard_read_bytes_total").increment(bytes as u64);
        Ok(r.points)
    }

    /// A search, in the compact encoding both ways.
    pub async fn search(
        &self,
        request: &SearchRequest,
        timeout: Duration,
    ) -> Result<SearchResponse, ShardClientError> {
        let url = format!("{}/search", self.base);
        let packed: PackedResults = self.read_packed(&url, request, timeout).await?;
        Ok(packed.into())
    }

    /// Searches of several groups this node hosts, in one call (compact encoding).
    pub async fn search_groups(
        &self,
        request: &GroupsSearch,
        timeout: Duration,
    ) -> Result<GroupsFound, ShardClientError> {
        let url = format!("{}/v1/search/groups", self.addr);
        self.read_packed(&url, request, timeout).await
    }

    /// A read in the compact encoding both ways, its answer counted in
    /// `redrec_shard_read_bytes_total` (as gets' are).
    async fn read_packed<B: Serialize, T: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ShardClientError> {
        let (answer, bytes) = exchange(
            &self.http,
            &self.addr,
            url,
            Some(body),
            timeout,
            Format::Msgpack,
            Some(&self.load),
        )
        .await?;
        metrics::counter!("redrec_shard_read_bytes_total").increment(bytes as u64);
        Ok(answer)
    }

    pub async fn stats(&self, timeout: Duration) -> Result<Stats, ShardClientError> {
        self.call::<(), _>("/stats", None, timeout).await
    }

    /// Raft status of a replica (not served by a lone shard).
    pub async fn status(&self, timeout: Duration) -> Result<GroupStatus, ShardClientError> {
        self.call::<(), _>("/status", None, timeout).await
    }

    /// A page of a replica's points (of `keyspace`), with vectors, optionally only those
    /// in `slots`.
    pub async fn scroll(
        &self,
        keyspace: Keyspace,
        cursor: Option<String>,
        limit: usize,
        slots: Option<Vec<u16>>,
        timeout: Duration,
    ) -> Result<Page, ShardClientError> {
        let req = ScrollRequest {
            cursor,
            limit,
            slots,
            keyspace,
        };
        self.call("/scroll", Some(&req), timeout).await
    }

    /// Adds users' events (through the group's log; on the leader).
    pub async fn add_events(
        &self,
        req: &EventsRequest,
        timeout: Duration,
    ) -> Result<usize, ShardClientError> {
        let r: WriteResponse = self.call("/events", Some(req), timeout).await?;
        Ok(r.written)
    }

    /// The stored histories of users `ids` (those that have one).
    pub async fn histories(
        &self,
        ids: Vec<String>,
        timeout: Duration,
    ) -> Result<Vec<UserHistory>, ShardClientError> {
        let r: UsersResponse = self
            .call("/users/get", Some(&UsersRequest { ids }), timeout)
            .await?;
        Ok(r.users)
    }

    /// Removes everything stored about users `ids`; how many had a history.
    pub async fn forget_users(
        &self,
        ids: Vec<String>,
        timeout: Duration,
    ) -> Result<usize, ShardClientError> {
        let r: WriteResponse = self
            .call("/users/delete", Some(&UsersRequest { ids }), timeout)
            .await?;
        Ok(r.written)
    }

    /// Sets the state of `slots` in the group (through its log; on the leader).
    pub async fn set_slots(
        &self,
        version: u64,
        slots: Vec<u16>,
        state: SlotState,
        timeout: Duration,
    ) -> Result<usize, ShardClientError> {
        let req = SetSlotsRequest {
            version,
            slots,
            state,
        };
        let r: WriteResponse = self.call("/slots", Some(&req), timeout).await?;
        Ok(r.written)
    }

    /// Drops `slots` from the group: they become absent and their points are deleted.
    pub async fn drop_slots(
        &self,
        version: u64,
        slots: Vec<u16>,
        timeout: Duration,
    ) -> Result<usize, ShardClientError> {
        let req = DropSlotsRequest { version, slots };
        let r: WriteResponse = self.call("/slots/drop", Some(&req), timeout).await?;
        Ok(r.written)
    }

    /// A slot move's copies, applied to the group's `incoming` slots only.
    pub async fn migrate(
        &self,
        req: &MigrateRequest,
        timeout: Duration,
    ) -> Result<usize, ShardClientError> {
        let r: WriteResponse = self.call("/migrate", Some(req), timeout).await?;
        Ok(r.written)
    }

    /// A shard node's status and its replicas' (`GET /v1/node`; call it on a client made
    /// with [`ShardClient::new`] for the node's address).
    pub async fn node_status(&self, timeout: Duration) -> Result<NodeStatus, ShardClientError> {
        self.call::<(), _>("/node", None, timeout).await
    }

    /// Count and checksum of a replica's points (not served by a lone shard).
    pub async fn digest(&self, timeout: Duration) -> Result<Digest, ShardClientError> {
        self.call::<(), _>("/digest", None, timeout).await
    }
}

/// One call to a shard node: `GET url` without a body, else `POST` of it as JSON. A
/// `not_leader` answer (421) becomes [`ShardClientError::NotLeader`] with the leader the
/// node names, any other error answer [`ShardClientError::Rejected`] with its JSON error's
/// code; `addr` names the node in errors.
pub async fn request<B: Serialize, T: DeserializeOwned>(
    http: &reqwest::Client,
    addr: &str,
    url: &str,
    body: Option<&B>,
    timeout: Duration,
) -> Result<T, ShardClientError> {
    Ok(exchange(http, addr, url, body, timeout, Format::Json, None)
        .await?
        .0)
}

/// [`request`] with the body sent in `format`; the answer decoded as its `Content-Type`
/// says, with its size in bytes. A successful answer's [`SEARCH_WAIT_HEADER`] goes to
/// `load`, if given, with the time the request was sent.
async fn exchange<B: Serialize, T: DeserializeOwned>(
    http: &reqwest::Client,
    addr: &str,
    url: &str,
    body: Option<&B>,
    timeout: Duration,
    format: Format,
    load: Option<&Load>,
) -> Result<(T, usize), ShardClientError> {
    let unavailable = |e: &dyn std::fmt::Display| ShardClientError::Unavailable {
        addr: addr.to_string(),
        message: e.to_string(),
    };
    let req = match (body, format) {
        (Some(b), Format::Json) => http.post(url).json(b),
        (Some(b), Format::Msgpack) => http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, MSGPACK)
            .body(compact::encode(b).map_err(|e| unavailable(&e))?),
        (None, _) => http.get(url),
    };
    let req = redrec_wire::trace::inject(req);
    let sent = Instant::now();
    let resp = req
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| unavailable(&redrec_wire::error::with_causes(&e)))?;
    let status = resp.status();
    if status == reqwest::StatusCode::MISDIRECTED_REQUEST {
        let leader = resp
            .headers()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        return Err(ShardClientError::NotLeader {
            addr: addr.to_string(),
            leader,
        });
    }
    let answered_in = Format::of_content_type(
        resp.headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let waited = load.filter(|_| status.is_success()).and_then(|load| {
        let us = resp.headers().get(SEARCH_WAIT_HEADER)?.to_str().ok()?;
        Some((load, Duration::from_micros(us.parse().ok()?)))
    });
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| unavailable(&redrec_wire::error::with_causes(&e)))?;
    if let Some((load, waited)) = waited {
        load.answered(sent, waited);
    }
    if !status.is_success() {
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                "unknown".into(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ),
        };
        return Err(ShardClientError::Rejected {
            addr: addr.to_string(),
            status: status.as_u16(),
            code,
            message,
        });
    }
    let decoded = match answered_in {
        Format::Json => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
        Format::Msgpack => compact::decode(&bytes).map_err(|e| e.to_string()),
    };
    decoded
        .map(|v| (v, bytes.len()))
        .map_err(|e| unavailable(&format!("undecodable answer: {e}")))
}

/// `POST`: adds or removes a replica of group `g` (a
/// [`crate::status::MembershipRequest`]), on the group's leader.
pub fn replicas_path(g: u64) -> String {
    format!("/admin/v1/groups/{g}/replicas")
}

/// Longest a membership change may take to apply.
pub const MEMBERSHIP_CALL: Duration = Duration::from_secs(15);

/// Pause before another round over members none of which could act.
const ROUND_PAUSE: Duration = Duration::from_millis(300);

/// Calls `path` on the members of a Raft group at `addrs` until one acts: a `not_leader`
/// answer sends the call to the leader it names, an unreachable or unready member
/// (5xx, `unknown_group`, `not_leader` without a hint) to the next one, a few rounds
/// over all of them; a client error ends it. For calls only a leader serves: map changes
/// on the meta group, membership changes on a shard group.
pub async fn call_leader<B: Serialize, T: DeserializeOwned>(
    http: &reqwest::Client,
    addrs: &[String],
    path: &str,
    body: Option<&B>,
    timeout: Duration,
) -> Result<T, ShardClientError> {
    let members: Vec<String> = addrs
        .iter()
        .map(|a| a.trim_end_matches('/').to_string())
        .collect();
    let mut queue: VecDeque<String> = members.iter().cloned().collect();
    let mut last = ShardClientError::Unavailable {
        addr: format!("{members:?}"),
        message: "no member known".into(),
    };
    for _ in 0..3 * members.len().max(1) + 3 {
        let Some(addr) = queue.pop_front() else {
            tokio::time::sleep(ROUND_PAUSE).await;
            queue.extend(members.iter().cloned());
            continue;
        };
        let url = format!("{addr}{path}");
        match request(http, &addr, &url, body, timeout).await {
            Ok(v) => return Ok(v),
            Err(ShardClientError::NotLeader {
                leader: Some(leader),
                ..
            }) if leader != addr => queue.push_front(leader),
            Err(e) if e.is_retryable() || e.is_server_error() => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16, code: &str) -> ShardClientError {
        ShardClientError::Rejected {
            addr: "127.0.0.1:1".into(),
            status,
            code: code.into(),
            message: String::new(),
        }
    }

    #[test]
    fn a_replica_without_the_group_is_a_stale_view_not_a_bad_request() {
        let unknown = rejected(404, UNKNOWN_GROUP);
        assert!(!unknown.is_client_error());
        assert!(unknown.is_retryable());

        let bad = rejected(400, crate::codes::INVALID_REQUEST);
        assert!(bad.is_client_error());
        assert!(!bad.is_retryable());

        let opening = rejected(503, crate::codes::GROUP_OPENING);
        assert!(!opening.is_client_error());
        assert!(opening.is_retryable());
    }

    #[tokio::test]
    async fn a_transport_error_says_why_it_failed() {
        // A port nothing listens on: bound, then released.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let client = ShardClient::new(format!("http://{addr}"), reqwest::Client::new());
        let e = client.stats(Duration::from_secs(5)).await.unwrap_err();
        assert!(e.is_retryable());
        let message = e.to_string().to_lowercase();
        assert!(message.contains("refused"), "{message}");
    }
}
