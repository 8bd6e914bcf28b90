//! The meta leader's worker: it carries the cluster map's intentions out, one step at a
//! time, each step idempotent so that a new meta leader resumes where the old one stopped.
//!
//! - A new cluster's first map comes from the seed nodes' configuration.
//! - A group becomes *managed* (its replicas enforce the slot table) before any slot moves.
//! - Enough free spare nodes form a new group (R replicas).
//! - While a rebalance is under way, the fullest group's slots move to the emptiest.
//!
//! A slot move from group A to group B, online:
//! 1. B marks the slots `incoming` (it takes copies only, and hides them from searches);
//! 2. A's points in those slots are copied to B page by page, while A still takes writes;
//! 3. A *fences* the slots: a log entry after which it refuses writes to them (the router
//!    retries them); everything A acknowledged is now in its shard;
//! 4. A and B are compared page by page (both scroll in point-id order) and B is made
//!    equal to A: the writes that raced the copy are caught up;
//! 5. the meta group flips the slots' owner to B (the map's new version);
//! 6. B owns the slots; 7. A drops its copy; 8. the move ends.
//!
//! Between 6 and 7 both groups serve the slots' items; the router deduplicates by id.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Weak;
use std::time::{Duration, Instant};

use redrec_shard_api::map::{ClusterMap, MetaCommand, MovePhase, SlotMove};
use redrec_shard_api::points::{Point, PointIds, PointKey, StoredPoint};
use redrec_shard_api::slots::{MigrateRequest, SlotState};
use redrec_shard_api::status::NodeStatus;
use redrec_shard_api::users::Keyspace;
use redrec_shard_api::{Group, ShardClient, ShardClientError};

/// What the mover needs of the node it runs on, and nothing more: the meta replica's
/// state and a way to propose (as Qdrant's shard transfer talks to consensus through a
/// trait instead of holding it).
pub trait MetaConsensus: Send + Sync + 'static {
    fn role(&self) -> MetaRole;
    /// Proposes a change to the map and waits until it applied; returns the new version.
    fn propose(&self, cmd: MetaCommand) -> impl Future<Output = Result<u64, String>> + Send;
    /// The first map of a new cluster, from the seed nodes' configuration.
    fn bootstrap_map(&self) -> MetaCommand;
}

/// Where this node stands in the meta group.
pub enum MetaRole {
    /// It hosts no meta replica (any more): the mover stops.
    Absent,
    Follower,
    /// It leads the meta group, whose map is this.
    Leader(Box<ClusterMap>),
}

const TICK: Duration = Duration::from_millis(150);
/// Longest one step (a call to a group, following its leader) may take.
const STEP: Duration = Duration::from_secs(20);
const PAGE: usize = 1024;

/// Works while `node` lives and hosts a meta replica, whenever that replica leads.
pub async fn run<C: MetaConsensus>(node: Weak<C>, http: reqwest::Client) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(node) = node.upgrade() else { return };
        let map = match node.role() {
            MetaRole::Absent => return,
            MetaRole::Follower => continue,
            MetaRole::Leader(map) => map,
        };
        let mover = Mover {
            node: node.as_ref(),
            http: &http,
        };
        if let Err(e) = mover.step(&map).await {
            tracing::warn!("cluster map work: {e}; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("meta proposal: {0}")]
    Meta(String),
    #[error("group {group}: {source}")]
    Group {
        group: u64,
        source: ShardClientError,
    },
    #[error("group {0}: scroll out of order")]
    Order(u64),
}

struct Mover<'a, C> {
    node: &'a C,
    http: &'a reqwest::Client,
}

impl<C: MetaConsensus> Mover<'_, C> {
    async fn propose(&self, cmd: MetaCommand) -> Result<u64, StepError> {
        let what = format!("{cmd:?}");
        self.node
            .propose(cmd)
            .await
            .map_err(|e| StepError::Meta(format!("{what}: {e}")))
    }

    /// One piece of work, the first one the map calls for.
    async fn step(&self, map: &ClusterMap) -> Result<(), StepError> {
        if !map.initialised() {
            self.propose(self.node.bootstrap_map()).await?;
            tracing::info!("cluster map initialised");
            return Ok(());
        }
        if let Some((&g, _)) = map.groups.iter().find(|(_, info)| !info.managed) {
            let owned = map.owned_by(g);
            self.client(map, g)
                .leader_call(deadline(), |c, left| {
                    let owned = owned.clone();
                    async move {
                        c.set_slots(map.version, owned, SlotState::Owned, left)
                            .await
                    }
                })
                .await
                .map_err(on(g))?;
            self.propose(MetaCommand::MarkManaged { group: g }).await?;
            tracing::info!(group = g, "group now enforces the slot table");
            return Ok(());
        }
        if let Some(m) = map.moves.first() {
            return self.run_move(map, m).await;
        }
        let free = map.free_nodes();
        let r = map.settings.replication;
        if free.len() >= r {
            let id = map.groups.keys().max().map_or(0, |g| g + 1);
            let replicas = free[..r].to_vec();
            self.propose(MetaCommand::CreateGroup { id, replicas })
                .await?;
            tracing::info!(group = id, "new group formed from spare nodes");
            return Ok(());
        }
        if map.rebalancing {
            match map.plan_move() {
                Some((slots, from, to)) => {
                    if let Err(why) = self.room_for(map, from, to, &slots).await {
                        tracing::error!(from, to, "rebalance stopped: {why}");
                        self.propose(MetaCommand::RebalanceDone).await?;
                        return Ok(());
                    }
                    tracing::info!(from, to, slots = slots.len(), "moving slots");
                    self.propose(MetaCommand::BeginMove { slots, from, to })
                        .await?;
                }
                None => {
                    self.propose(MetaCommand::RebalanceDone).await?;
                    tracing::info!(slots = ?map.slot_counts(), "slots balanced");
                }
            }
        }
        Ok(())
    }

    /// Whether every node hosting group `to` has room in its memory budget for what
    /// `slots` of group `from` hold (their share of its points, at its RAM per point).
    /// Only a node that says it has no room stops the move: one that cannot be asked (or
    /// a source that cannot say its size) does not.
    async fn room_for(
        &self,
        map: &ClusterMap,
        from: u64,
        to: u64,
        slots: &[u16],
    ) -> Result<(), String> {
        let ask = Duration::from_secs(5);
        let stats = self
            .client(map, from)
            .read(Instant::now() + ask, |c, left| async move {
                c.stats(left).await
            })
            .await;
        let source = match stats {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    group = from,
                    "size unknown, moving without a budget check: {e}"
                );
                return Ok(());
            }
        };
        let owned = map.owned_by(from).len().max(1);
        let moving = source.points * slots.len() / owned;
        let per_point = source.memory.ram_per_item(source.points).ceil() as u64;
        for n in &map.groups[&to].replicas {
            let Some(node) = map.nodes.get(n) else {
                continue;
            };
            match ShardClient::new(node.addr.clone(), self.http.clone())
                .node_status(ask)
                .await
            {
                Ok(status) => fits(&status, moving, per_point)?,
                Err(e) => tracing::warn!(node = n, "budget unknown: {e}"),
            }
        }
        Ok(())
    }

    /// Gives up move `m` (its target has no room): `from` owns its slots again, `to`
    /// drops whatever an earlier attempt copied, and the move leaves the map.
    async fn abort(&self, map: &ClusterMap, m: &SlotMove, why: &str) -> Result<(), StepError> {
        let (a, b) = (self.client(map, m.from), self.client(map, m.to));
        let v = map.version;
        set_slots(&a, v, &m.slots, SlotState::Owned)
            .await
            .map_err(on(m.from))?;
        let slots = m.slots.clone();
        b.leader_call(deadline(), |c, left| {
            let slots = slots.clone();
            async move { c.drop_slots(v, slots, left).await }
        })
        .await
        .map_err(on(m.to))?;
        self.propose(MetaCommand::AbortMove { id: m.id }).await?;
        metrics::counter!("redrec_slot_moves_total", "outcome" => "aborted").increment(1);
        tracing::error!(id = m.id, from = m.from, to = m.to, "move given up: {why}");
        Ok(())
    }

    /// A client of group `g`'s replicas, as the map places them.
    fn client(&self, map: &ClusterMap, g: u64) -> Group {
        let replicas = map.groups[&g]
            .replicas
            .iter()
            .filter_map(|n| map.nodes.get(n))
            .map(|n| ShardClient::replica(n.addr.clone(), g, self.http.clone()))
            .collect();
        Group::new(g as usize, replicas)
    }

    async fn run_move(&self, map: &ClusterMap, m: &SlotMove) -> Result<(), StepError> {
        let (a, b) = (self.client(map, m.from), self.client(map, m.to));
        let (v, ids) = (map.version, map.settings.collection.point_ids);
        let (err_a, err_b) = (on(m.from), on(m.to));
        let started = Instant::now();
        if m.phase == MovePhase::Copying {
            if let Err(why) = self.room_for(map, m.from, m.to, &m.slots).await {
                return self.abort(map, m, &why).await;
            }
            set_slots(&b, v, &m.slots, SlotState::Incoming)
                .await
                .map_err(err_b)?;
            // Items, then users' histories, of the moving slots.
            let mut copied = 0;
            for keyspace in [Keyspace::Items, Keyspace::Users] {
                copied += copy(&a, &b, ids, &m.slots, keyspace).await.map_err(err_a)?;
            }
            set_slots(&a, v, &m.slots, SlotState::Fenced)
                .await
                .map_err(err_a)?;
            let fenced = Instant::now();
            let mut caught_up = 0;
            for keyspace in [Keyspace::Items, Keyspace::Users] {
                caught_up += reconcile(&a, &b, ids, m, keyspace).await?;
            }
            self.propose(MetaCommand::FlipMove { id: m.id }).await?;
            tracing::info!(
                id = m.id,
                from = m.from,
                to = m.to,
                slots = m.slots.len(),
                copied,
                caught_up,
                fenced_ms = fenced.elapsed().as_millis() as u64,
                "slots flipped"
            );
        }
        set_slots(&b, v, &m.slots, SlotState::Owned)
            .await
            .map_err(err_b)?;
        let slots = m.slots.clone();
        let dropped = a
            .leader_call(deadline(), |c, left| {
                let slots = slots.clone();
                async move { c.drop_slots(v, slots, left).await }
            })
            .await
            .map_err(err_a)?;
        self.propose(MetaCommand::EndMove { id: m.id }).await?;
        metrics::counter!("redrec_slot_moves_total", "outcome" => "done").increment(1);
        metrics::counter!("redrec_slots_moved_total").increment(m.slots.len() as u64);
        tracing::info!(
            id = m.id,
            dropped,
            took_ms = started.elapsed().as_millis() as u64,
            "move done"
        );
        Ok(())
    }
}

/// Whether `moving` points at `per_point` bytes of RAM each fit in a node's budget.
fn fits(node: &NodeStatus, moving: usize, per_point: u64) -> Result<(), String> {
    let Some(limit) = node.budget else {
        return Ok(());
    };
    let used = node.memory.ram();
    let needed = used.saturating_add(per_point.saturating_mul(moving as u64));
    if needed > limit {
        return Err(format!(
            "node {} would need about {needed} bytes of RAM for {moving} more points; its \
             budget is {limit} and it holds {used}",
            node.node
        ));
    }
    Ok(())
}

/// Attributes a failed call to group `group`.
fn on(group: u64) -> impl Fn(ShardClientError) -> StepError + Copy {
    move |source| StepError::Group { group, source }
}

fn deadline() -> Instant {
    Instant::now() + STEP
}

async fn set_slots(
    g: &Group,
    version: u64,
    slots: &[u16],
    state: SlotState,
) -> Result<usize, ShardClientError> {
    g.leader_call(deadline(), |c, left| {
        let slots = slots.to_vec();
        async move { c.set_slots(version, slots, state, left).await }
    })
    .await
}

/// Reads group `g`'s points in `slots`, page by page, from its leader (the replica that
/// applied the last slot change).
struct Pages<'a> {
    group: &'a Group,
    /// How the group's stores (every store of the cluster) key their points.
    ids: PointIds,
    keyspace: Keyspace,
    slots: Vec<u16>,
    buf: VecDeque<StoredPoint>,
    cursor: Option<String>,
    done: bool,
    last: Option<PointKey>,
}

impl<'a> Pages<'a> {
    fn new(group: &'a Group, ids: PointIds, slots: &[u16], keyspace: Keyspace) -> Self {
        Self {
            group,
            ids,
            keyspace,
            slots: slots.to_vec(),
            buf: VecDeque::new(),
            cursor: None,
            done: false,
            last: None,
        }
    }

    async fn fill(&mut self) -> Result<(), ShardClientError> {
        while self.buf.is_empty() && !self.done {
            let (cursor, slots) = (self.cursor.clone(), self.slots.clone());
            let keyspace = self.keyspace;
            let page = self
                .group
                .leader_call(deadline(), |c, left| {
                    let (cursor, slots) = (cursor.clone(), slots.clone());
                    async move { c.scroll(keyspace, cursor, PAGE, Some(slots), left).await }
                })
                .await?;
            self.buf.extend(page.points);
            self.done = page.next.is_none();
            self.cursor = page.next;
        }
        Ok(())
    }

    /// The next point's key, `None` once the slots are read.
    async fn peek(&mut self) -> Result<Option<PointKey>, ShardClientError> {
        self.fill().await?;
        Ok(self.buf.front().map(|p| self.ids.key(&p.id)))
    }

    /// The next point, whose key [`Pages::peek`] gave; `Err(())` if there is none or the
    /// scroll went backwards (it must not: both sides of a comparison must come in
    /// point-id order).
    fn pop(&mut self, key: Option<PointKey>) -> Result<StoredPoint, ()> {
        let (p, key) = (self.buf.pop_front().ok_or(())?, key.ok_or(())?);
        if self.last.is_some_and(|l| l >= key) {
            return Err(());
        }
        self.last = Some(key);
        Ok(p)
    }

    async fn next_page(&mut self) -> Result<Vec<StoredPoint>, ShardClientError> {
        self.fill().await?;
        Ok(self.buf.drain(..).collect())
    }
}

fn to_point(p: StoredPoint) -> Option<Point> {
    Some(Point {
        vector: p.vector?,
        id: p.id,
        payload: p.payload,
    })
}

async fn migrate(b: &Group, req: MigrateRequest) -> Result<usize, ShardClientError> {
    if req.upsert.is_empty() && req.delete.is_empty() {
        return Ok(0);
    }
    b.leader_call(deadline(), |c, left| {
        let req = req.clone();
        async move { c.migrate(&req, left).await }
    })
    .await
}

/// Step 2: every point (of `keyspace`) A holds in the slots, into B.
async fn copy(
    a: &Group,
    b: &Group,
    ids: PointIds,
    slots: &[u16],
    keyspace: Keyspace,
) -> Result<usize, ShardClientError> {
    let mut pages = Pages::new(a, ids, slots, keyspace);
    let mut copied = 0;
    loop {
        let page = pages.next_page().await?;
        if page.is_empty() {
            return Ok(copied);
        }
        let upsert: Vec<Point> = page.into_iter().filter_map(to_point).collect();
        copied += upsert.len();
        migrate(
            b,
            MigrateRequest {
                upsert,
                delete: vec![],
                keyspace,
            },
        )
        .await?;
    }
}

/// Step 4: B made equal to the fenced A (in `keyspace`), comparing both in point-id
/// order; returns how many points had to be written or deleted.
async fn reconcile(
    a: &Group,
    b: &Group,
    ids: PointIds,
    m: &SlotMove,
    keyspace: Keyspace,
) -> Result<usize, StepError> {
    let (err_a, err_b) = (on(m.from), on(m.to));
    let (mut pa, mut pb) = (
        Pages::new(a, ids, &m.slots, keyspace),
        Pages::new(b, ids, &m.slots, keyspace),
    );
    let fresh = || MigrateRequest {
        keyspace,
        ..Default::default()
    };
    let mut batch = fresh();
    let mut changed = 0;
    loop {
        let ka = pa.peek().await.map_err(err_a)?;
        let kb = pb.peek().await.map_err(err_b)?;
        let order = match (ka, kb) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.cmp(&y),
        };
        match order {
            // Only at A: copy it.
            Ordering::Less => {
                let p = pa.pop(ka).map_err(|_| StepError::Order(m.from))?;
                batch.upsert.extend(to_point(p));
            }
            // Only at B: A deleted it meanwhile.
            Ordering::Greater => {
                let p = pb.pop(kb).map_err(|_| StepError::Order(m.to))?;
                batch.delete.push(p.id);
            }
            Ordering::Equal => {
                let x = pa.pop(ka).map_err(|_| StepError::Order(m.from))?;
                let y = pb.pop(kb).map_err(|_| StepError::Order(m.to))?;
                if x != y {
                    batch.upsert.extend(to_point(x));
                }
            }
        }
        if batch.upsert.len() + batch.delete.len() >= PAGE {
            changed += batch.upsert.len() + batch.delete.len();
            migrate(b, std::mem::replace(&mut batch, fresh()))
                .await
                .map_err(err_b)?;
        }
    }
    changed += batch.upsert.len() + batch.delete.len();
    migrate(b, batch).await.map_err(err_b)?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redrec_shard_api::points::Memory;

    fn node(budget: Option<u64>, ram: u64) -> NodeStatus {
        NodeStatus {
            node: 4,
            addr: "http://n4".into(),
            ready: true,
            groups: Vec::new(),
            points: 0,
            memory: Memory {
                vectors_ram: ram,
                ..Default::default()
            },
            budget,
            rss_bytes: None,
        }
    }

    #[test]
    fn a_move_fits_only_within_the_target_nodes_budget() {
        fits(&node(None, 10_000), 1_000_000, 512).unwrap();
        fits(&node(Some(10_000 + 100 * 512), 10_000), 100, 512).unwrap();
        let full = fits(&node(Some(10_000 + 100 * 512), 10_000), 101, 512).unwrap_err();
        assert!(full.contains("node 4") && full.contains("budget"), "{full}");
    }
}
