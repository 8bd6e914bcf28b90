//! Raft messages between shard processes over the internal HTTP API. Each peer node has a
//! bounded outbound queue drained by one task that batches what is waiting into a single
//! `POST /raft/v1/messages` and backs off while the peer is unreachable. A full queue
//! drops messages: Raft resends what matters (heartbeats, appends, votes). Replica ids are
//! node ids: a node hosts at most one replica of a group.
//!
//! Body: a sequence of frames, each `group: u64 LE`, `len: u32 LE`, then `len` bytes of a
//! protobuf-encoded `eraftpb::Message`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::mpsc;

use super::driver::{Replica, SnapshotSink, Transport};
use crate::store::Page;

const QUEUE: usize = 4096;
const MAX_BATCH_BYTES: usize = 8 << 20;

pub fn encode(batch: &[(u64, Message)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (group, m) in batch {
        let bytes = m.write_to_bytes().expect("raft messages serialize");
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

pub fn decode(mut body: &[u8]) -> Result<Vec<(u64, Message)>, String> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 12 {
            return Err("truncated frame header".into());
        }
        let group = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
        body = &body[12..];
        if body.len() < len {
            return Err("truncated frame".into());
        }
        let m = Message::parse_from_bytes(&body[..len]).map_err(|e| e.to_string())?;
        out.push((group, m));
        body = &body[len..];
    }
    Ok(out)
}

/// A peer's address and the queue its sender task drains.
type Peer = (String, mpsc::Sender<(u64, Message)>);

/// Points per page of a snapshot transfer.
const SNAPSHOT_PAGE: usize = 1024;

/// Outbound side: node id -> address, one queue and sender task per peer.
pub struct HttpTransport {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    peers: RwLock<HashMap<u64, Peer>>,
    /// Told when a snapshot message could not be delivered.
    inbox: Arc<Inbox>,
    /// Where learnt peers are kept across restarts.
    peer_file: Option<std::path::PathBuf>,
}

impl HttpTransport {
    pub fn new(
        http: reqwest::Client,
        runtime: tokio::runtime::Handle,
        inbox: Arc<Inbox>,
        peer_file: Option<std::path::PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Self {
            http,
            runtime,
            peers: RwLock::new(HashMap::new()),
            inbox,
            peer_file,
        })
    }

    /// Adds or moves a peer node.
    pub fn set_peer(&self, node: u64, addr: String) {
        let addr = addr.trim_end_matches('/').to_string();
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if peers.get(&node).is_some_and(|(a, _)| *a == addr) {
            return;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let http = self.http.clone();
        self.runtime
            .spawn(sender(http, addr.clone(), rx, self.inbox.clone()));
        // Replacing the sender ends the old task once its queue drains.
        peers.insert(node, (addr, tx));
    }

    pub fn peer_addr(&self, node: u64) -> Option<String> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        peers.get(&node).map(|(a, _)| a.clone())
    }

    pub fn peers(&self) -> HashMap<u64, String> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        peers.iter().map(|(n, (a, _))| (*n, a.clone())).collect()
    }

    fn save_peers(&self) {
        let Some(path) = &self.peer_file else { return };
        let body = serde_json::to_vec(&self.peers()).expect("peers serialize");
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, path)) {
            tracing::warn!("saving peers to {}: {e}", path.display());
        }
    }

    /// Peers saved by an earlier run.
    pub fn load_peers(path: &std::path::Path) -> HashMap<u64, String> {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

impl Transport for HttpTransport {
    fn add_peer(&self, node: u64, addr: &str) {
        self.set_peer(node, addr.to_string());
        self.save_peers();
    }

    /// Pulls the group's points from `from` page by page (`POST /v1/groups/{g}/scroll`),
    /// blocking this (driver) thread.
    fn fetch_snapshot(&self, group: u64, from: u64, sink: &mut SnapshotSink) -> Result<(), String> {
        let addr = self
            .peer_addr(from)
            .ok_or_else(|| format!("no address for node {from}"))?;
        let url = format!("{addr}/v1/groups/{group}/scroll");
        let mut cursor: Option<String> = None;
        loop {
            let body = serde_json::json!({"cursor": cursor, "limit": SNAPSHOT_PAGE});
            let page: Page = self.runtime.block_on(async {
                let resp = self
                    .http
                    .post(&url)
                    .timeout(Duration::from_secs(30))
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("{url} answered {}", resp.status()));
                }
                resp.json::<Page>().await.map_err(|e| e.to_string())
            })?;
            sink(page.points)?;
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(()),
            }
        }
    }

    fn send(&self, group: u64, messages: Vec<Message>) {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        for m in messages {
            let Some((_, tx)) = peers.get(&m.to) else {
                continue;
            };
            // Full or closed: drop it, Raft will resend (a snapshot once told).
            if let Err(e) = tx.try_send((group, m)) {
                let (group, m) = e.into_inner();
                self.inbox.undelivered(group, &m);
            }
        }
    }
}

async fn sender(
    http: reqwest::Client,
    addr: String,
    mut rx: mpsc::Receiver<(u64, Message)>,
    inbox: Arc<Inbox>,
) {
    let url = format!("{}/raft/v1/messages", addr.trim_end_matches('/'));
    let mut backoff = Duration::from_millis(20);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut bytes = batch[0].1.compute_size() as usize;
        while bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(m) => {
                    bytes += m.1.compute_size() as usize;
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        let sent = http
            .post(&url)
            .timeout(Duration::from_secs(5))
            .body(encode(&batch))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if sent {
            backoff = Duration::from_millis(20);
        } else {
            // The peer is down or partitioned: what was in flight is lost (Raft resends);
            // wait before trying again, and drop what piled up meanwhile.
            for (group, m) in &batch {
                inbox.undelivered(*group, m);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            while let Ok((group, m)) = rx.try_recv() {
                inbox.undelivered(group, &m);
            }
        }
    }
}

/// Inbound side: the replicas this node hosts, by group.
#[derive(Default)]
pub struct Inbox {
    replicas: RwLock<HashMap<u64, Replica>>,
}

impl Inbox {
    pub fn add(&self, replica: Replica) {
        self.replicas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(replica.group(), replica);
    }

    pub fn replica(&self, group: u64) -> Option<Replica> {
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        replicas.get(&group).cloned()
    }

    /// A message of `group` was dropped: a snapshot's sender must know, or it would wait
    /// for an answer that never comes.
    pub fn undelivered(&self, group: u64, m: &Message) {
        if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            if let Some(r) = self.replica(group) {
                r.snapshot_failed(m.to);
            }
        }
    }

    /// Hands each message to its group's replica; returns how many had none here.
    pub fn deliver(&self, batch: Vec<(u64, Message)>) -> usize {
        let replicas = self.replicas.read().unwrap_or_else(|p| p.into_inner());
        let mut unknown = 0;
        for (group, m) in batch {
            match replicas.get(&group) {
                Some(r) if r.id() == m.to => r.step(m),
                _ => unknown += 1,
            }
        }
        unknown
    }
}

/// `POST /raft/v1/messages` for this node's inbox.
pub fn routes(inbox: Arc<Inbox>) -> axum::Router {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::StatusCode;
    async fn receive(State(inbox): State<Arc<Inbox>>, body: Bytes) -> StatusCode {
        match decode(&body) {
            Ok(batch) => {
                inbox.deliver(batch);
                StatusCode::NO_CONTENT
            }
            Err(_) => StatusCode::BAD_REQUEST,
        }
    }
    axum::Router::new()
        .route("/raft/v1/messages", axum::routing::post(receive))
        .layer(axum::extract::DefaultBodyLimit::max(2 * MAX_BATCH_BYTES))
        .with_state(inbox)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Point;
    use crate::raft::driver::{Driver, DriverConfig, ProposeError};
    use crate::raft::log::{open_engine, RaftLog};
    use crate::raft::machine::{Command, StateMachine};
    use crate::store::{EdgeStore, VectorStore};
    use std::time::Instant;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let m = Message {
            from: 1,
            to: 2,
            term: 9,
            ..Default::default()
        };
        let batch = vec![(3, m.clone()), (4, m)];
        let back = decode(&encode(&batch)).unwrap();
        assert_eq!(back, batch);
        assert!(decode(&[1, 2, 3]).is_err());
        let mut cut = encode(&batch);
        cut.truncate(cut.len() - 1);
        assert!(decode(&cut).is_err());
    }

    /// Three nodes, each an HTTP server with one replica of group 7, over loopback.
    #[test]
    fn a_group_replicates_over_http() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let http = reqwest::Client::new();
        let mut addrs = HashMap::new();
        let mut inboxes = HashMap::new();
        for id in 1..=3u64 {
            let inbox = Arc::new(Inbox::default());
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            addrs.insert(id, format!("http://{}", listener.local_addr().unwrap()));
            let app = routes(inbox.clone());
            rt.spawn(async move { axum::serve(listener, app).await });
            inboxes.insert(id, inbox);
        }
        let drivers: Vec<Driver> = (1..=3u64)
            .map(|id| {
                let transport = HttpTransport::new(
                    http.clone(),
                    rt.handle().clone(),
                    inboxes[&id].clone(),
                    None,
                );
                for (peer, addr) in &addrs {
                    if *peer != id {
                        transport.set_peer(*peer, addr.clone());
                    }
                }
                let d = dir.path().join(format!("n{id}"));
                let log = RaftLog::open(open_engine(&d.join("log")).unwrap(), 7).unwrap();
                let store: Arc<dyn VectorStore> =
                    Arc::new(EdgeStore::open(&d.join("shard"), 4).unwrap());
                let machine = StateMachine::open(store, &d).unwrap();
                let cfg = DriverConfig {
                    tick: Duration::from_millis(20),
                    ..Default::default()
                };
                let driver =
                    Driver::start(7, id, &[1, 2, 3], log, machine, transport, cfg).unwrap();
                inboxes[&id].add(driver.replica().clone());
                driver
            })
            .collect();
        let until = Instant::now() + Duration::from_secs(10);
        let mut written = 0;
        while written < 10 {
            assert!(Instant::now() < until, "no progress over HTTP");
            let cmd = Command::Upsert(vec![Point {
                id: format!("p{written}"),
                vector: vec![0.0, 1.0, 0.0, 0.0],
                payload: Default::default(),
            }]);
            let leader = drivers.iter().find(|d| d.replica().status().is_leader);
            match leader.map(|d| rt.block_on(d.replica().propose(cmd))) {
                Some(Ok(1)) => written += 1,
                Some(Err(ProposeError::Rejected(m))) => panic!("{m}"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let want = drivers
            .iter()
            .map(|d| d.replica().status().commit)
            .max()
            .unwrap();
        while drivers.iter().any(|d| d.replica().status().applied < want) {
            assert!(Instant::now() < until, "followers did not apply");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
