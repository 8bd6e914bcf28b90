//! Raft messages between node processes over HTTP. Each peer node has a
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

use axum::http::Method;
use protobuf::Message as _;
use raft::eraftpb::Message;
use redrec_wire::auth::{Access, Guard, Route};
use tokio::sync::mpsc;

use super::driver::Transport;
use super::replica::Replica;

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

/// `POST /raft/v1/messages`, into this node's inbox (internal: the cluster credential).
pub fn routes() -> Vec<Route<Arc<Inbox>>> {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::StatusCode;
    async fn receive(
        State(inbox): State<Arc<Inbox>>,
        body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    ) -> Result<StatusCode, redrec_wire::HttpError> {
        // A body over the limit, or one that broke off, is the JSON error too.
        let body = body.map_err(|r| {
            redrec_wire::HttpError::new(r.status(), "invalid_raft_frame", r.body_text())
        })?;
        let batch = decode(&body)
            .map_err(|e| redrec_wire::HttpError::bad_request("invalid_raft_frame", e))?;
        inbox.deliver(batch);
        Ok(StatusCode::NO_CONTENT)
    }
    vec![Route::new(
        Method::POST,
        "/raft/v1/messages",
        Access::Cluster,
        axum::routing::post(receive),
    )]
}

/// The router of [`routes`], checked by `guard`.
pub fn router(inbox: Arc<Inbox>, guard: &Guard) -> axum::Router {
    redrec_wire::auth::build(routes(), guard)
        .layer(axum::extract::DefaultBodyLimit::max(2 * MAX_BATCH_BYTES))
        .with_state(inbox)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_body_decodes_or_is_refused_without_panic(
                body in proptest::collection::vec(any::<u8>(), 0..600),
            ) {
                if let Ok(batch) = decode(&body) {
                    // What decodes encodes back to a body that decodes alike.
                    prop_assert_eq!(decode(&encode(&batch)).unwrap(), batch);
                }
            }

            #[test]
            fn frames_round_trip(
                frames in proptest::collection::vec(
                    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
                    0..20,
                ),
            ) {
                let batch: Vec<(u64, Message)> = frames
                    .into_iter()
                    .map(|(group, from, to, term, commit)| {
                        let m = Message { from, to, term, commit, ..Default::default() };
                        (group, m)
                    })
                    .collect();
                prop_assert_eq!(decode(&encode(&batch)).unwrap(), batch.clone());
                // Cut anywhere inside, the body is refused, never misread.
                let body = encode(&batch);
                if !body.is_empty() {
                    prop_assert!(decode(&body[..body.len() - 1]).is_err());
                }
            }
        }
    }
}
