//! A shard group replicated by the Raft driver: replicas in one process over a loopback
//! network (election, commit, restart, snapshot catch-up), and over real HTTP.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, ConfChangeType, Message};
use redrec_shard_api::points::Point;

use super::machine::{Command, StateMachine};
use super::snapshot::{NoSource, Sink, SnapshotSource};
use crate::raft::driver::{Driver, DriverConfig, Transport};
use crate::raft::log::{open_engine, RaftLog};
use crate::raft::replica::{ProposeError, Replica};
use crate::raft::transport::{router, HttpTransport, Inbox};
use crate::store::edge::EdgeStore;
use crate::store::VectorStore;

mod loopback {
    use super::*;
    use redrec_shard_api::users::Keyspace;

    /// Delivers messages between replicas of this process, except to those cut off.
    #[derive(Default)]
    struct Loopback {
        replicas: RwLock<HashMap<u64, Replica>>,
        stores: RwLock<HashMap<u64, Arc<dyn VectorStore>>>,
        down: RwLock<Vec<u64>>,
    }

    impl SnapshotSource for Loopback {
        fn pull(
            &self,
            _group: u64,
            from: u64,
            keyspace: Keyspace,
            sink: &mut Sink,
        ) -> Result<(), String> {
            if keyspace == Keyspace::Users {
                return Ok(()); // These tests write no users' events.
            }
            let store = self.stores.read().unwrap()[&from].clone();
            let mut cursor = None;
            loop {
                let page = store
                    .scroll(cursor.as_deref(), 3)
                    .map_err(|e| e.to_string())?;
                sink(page.points)?;
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(()),
                }
            }
        }
    }

    impl Transport for Loopback {
        fn send(&self, _group: u64, messages: Vec<Message>) {
            let down = self.down.read().unwrap();
            let replicas = self.replicas.read().unwrap();
            for m in messages {
                if down.contains(&m.to) || down.contains(&m.from) {
                    continue;
                }
                if let Some(r) = replicas.get(&m.to) {
                    r.step(m);
                }
            }
        }
    }

    fn start(dir: &std::path::Path, id: u64, net: &Arc<Loopback>) -> Driver {
        start_with(dir, id, net, &[1, 2, 3])
    }

    fn start_with(dir: &std::path::Path, id: u64, net: &Arc<Loopback>, voters: &[u64]) -> Driver {
        start_compacting(dir, id, net, voters, 5)
    }

    /// A replica whose log is never compacted in a test's time.
    fn start_late(dir: &std::path::Path, id: u64, net: &Arc<Loopback>, voters: &[u64]) -> Driver {
        start_compacting(dir, id, net, voters, 10_000)
    }

    fn start_compacting(
        dir: &std::path::Path,
        id: u64,
        net: &Arc<Loopback>,
        voters: &[u64],
        compact_after: u64,
    ) -> Driver {
        let d = dir.join(format!("r{id}"));
        let log = RaftLog::open(open_engine(&d.join("log")).unwrap(), 1).unwrap();
        let store: Arc<dyn VectorStore> =
            Arc::new(EdgeStore::open(&d.join("shard"), 4, &Default::default()).unwrap());
        net.stores.write().unwrap().insert(id, store.clone());
        let machine = StateMachine::open(1, store, net.clone(), &d).unwrap();
        let cfg = DriverConfig {
            tick: Duration::from_millis(20),
            compact_after,
            ..Default::default()
        };
        let driver = Driver::start(1, id, voters, log, machine, net.clone(), cfg).unwrap();
        net.replicas
            .write()
            .unwrap()
            .insert(id, driver.replica().clone());
        driver
    }

    fn leader(drivers: &[Driver]) -> Option<usize> {
        drivers.iter().position(|d| d.replica().status().is_leader)
    }

    fn wait_leader(drivers: &[Driver]) -> usize {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = leader(drivers) {
                return i;
            }
            assert!(Instant::now() < until, "no leader elected");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn upsert(id: &str) -> Vec<u8> {
        Command::Upsert(vec![Point {
            id: id.into(),
            vector: vec![1.0, 0.0, 0.0, 0.0],
            payload: Default::default(),
        }])
        .encode()
    }

    /// Stops a replica and lets go of its shard (the engine locks its files while open).
    fn stop(drivers: &mut Vec<Driver>, i: usize, net: &Loopback) {
        let id = drivers.remove(i).replica().id();
        net.stores.write().unwrap().remove(&id);
    }

    fn count(net: &Loopback, id: u64) -> usize {
        net.stores.read().unwrap()[&id].stats().unwrap().points
    }

    #[test]
    fn three_replicas_elect_commit_survive_a_leader_restart_and_restore_a_wiped_one() {
        let dir = tempfile::tempdir().unwrap();
        let net = Arc::new(Loopback::default());
        let mut drivers: Vec<Driver> = (1..=3).map(|id| start(dir.path(), id, &net)).collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let l = wait_leader(&drivers);
        for i in 0..20 {
            let r = rt.block_on(drivers[l].replica().propose(upsert(&format!("p{i}"))));
            assert_eq!(r, Ok(1));
        }
        let follower = (l + 1) % 3;
        assert!(matches!(
            rt.block_on(drivers[follower].replica().propose(upsert("x"))),
            Err(ProposeError::NotLeader(Some(_)))
        ));
        // A follower's ReadIndex goes through the leader and waits for its own apply.
        let index = rt
            .block_on(drivers[follower].replica().catch_up(Duration::from_secs(5)))
            .unwrap();
        assert!(drivers[follower].replica().status().applied >= index);
        assert!(
            drivers[l].replica().status().first_index > 5,
            "log not compacted"
        );

        // Restart the leader: the others elect a new one; all 20 writes are there, and the
        // old leader catches up from its own log and the new leader's.
        let old_id = drivers[l].replica().id();
        stop(&mut drivers, l, &net);
        let l2 = wait_leader(&drivers);
        let r = rt.block_on(drivers[l2].replica().propose(upsert("after")));
        assert_eq!(r, Ok(1));
        drivers.push(start(dir.path(), old_id, &net));
        let until = Instant::now() + Duration::from_secs(10);
        let want = drivers[l2].replica().status().applied;
        while drivers.iter().any(|d| d.replica().status().applied < want) {
            assert!(Instant::now() < until, "replicas did not converge");
            std::thread::sleep(Duration::from_millis(10));
        }

        // Wipe a follower: it is removed and added back as a new member, and as the log
        // it needs is compacted away, the leader sends it a snapshot.
        let l3 = wait_leader(&drivers);
        let f = (l3 + 1) % 3;
        let fid = drivers[f].replica().id();
        stop(&mut drivers, f, &net);
        std::fs::remove_dir_all(dir.path().join(format!("r{fid}"))).unwrap();
        let change = |kind: ConfChangeType| ConfChange {
            change_type: kind,
            node_id: fid,
            ..Default::default()
        };
        let l = wait_leader(&drivers);
        rt.block_on(
            drivers[l]
                .replica()
                .change_membership(change(ConfChangeType::RemoveNode)),
        )
        .unwrap();
        for i in 0..10 {
            let l = wait_leader(&drivers);
            let r = rt.block_on(drivers[l].replica().propose(upsert(&format!("q{i}"))));
            assert_eq!(r, Ok(1));
        }
        drivers.push(start_with(dir.path(), fid, &net, &[]));
        let l = wait_leader(&drivers);
        rt.block_on(
            drivers[l]
                .replica()
                .change_membership(change(ConfChangeType::AddNode)),
        )
        .unwrap();
        let lid = drivers[wait_leader(&drivers)].replica().id();
        // The points arrive page by page before the restore completes: wait for both.
        let restored = || {
            let st = drivers.last().unwrap().replica().status();
            !st.restoring && st.first_index > 1 && st.applied >= want
        };
        while count(&net, fid) != count(&net, lid) || count(&net, fid) != 31 || !restored() {
            assert!(
                Instant::now() < until + Duration::from_secs(10),
                "no snapshot catch-up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = drivers.last().unwrap().replica().status();
        assert!(!status.halted, "{status:?}");
    }

    /// A bootstrap voter that comes up only after the other two formed the group (and
    /// is re-added, as an empty replica of a group holding data is), before any
    /// compaction: it must learn the group's configuration, never replay the membership
    /// changes from index 1 onto an empty one and end the sole voter of a group of its own.
    #[test]
    fn a_late_voter_joining_an_uncompacted_group_learns_its_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let net = Arc::new(Loopback::default());
        let mut drivers: Vec<Driver> = (1..=2)
            .map(|id| start_late(dir.path(), id, &net, &[1, 2, 3]))
            .collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        for i in 0..5 {
            let l = wait_leader(&drivers);
            let r = rt.block_on(drivers[l].replica().propose(upsert(&format!("p{i}"))));
            assert_eq!(r, Ok(1));
        }
        drivers.push(start_late(dir.path(), 3, &net, &[]));
        for kind in [ConfChangeType::RemoveNode, ConfChangeType::AddNode] {
            let l = wait_leader(&drivers);
            let change = ConfChange {
                change_type: kind,
                node_id: 3,
                ..Default::default()
            };
            rt.block_on(drivers[l].replica().change_membership(change))
                .unwrap();
        }
        let l = wait_leader(&drivers);
        rt.block_on(drivers[l].replica().propose(upsert("after")))
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        let caught_up = || {
            let (st, lead) = (drivers[2].replica().status(), drivers[l].replica().status());
            st.applied >= lead.applied && !st.restoring && count(&net, 3) == 6
        };
        while !caught_up() {
            assert!(Instant::now() < until, "the late voter did not catch up");
            std::thread::sleep(Duration::from_millis(20));
        }
        for d in &drivers {
            let st = d.replica().status();
            assert_eq!(
                st.voters,
                vec![1, 2, 3],
                "replica {}: {st:?}",
                d.replica().id()
            );
        }
        let leaders = drivers.iter().filter(|d| d.replica().status().is_leader);
        assert_eq!(leaders.count(), 1);
    }

    /// A replica whose log began without the bootstrap snapshot (a group created by an
    /// earlier build) drops what its machine applied when it starts, so that a joiner is
    /// sent a snapshot rather than the log from index 1; it goes on committing.
    #[test]
    fn a_log_that_still_holds_its_first_entry_is_compacted_at_start() {
        use crate::raft::log::LogWrite;
        use crate::raft::machine::Machine;
        use raft::eraftpb::{ConfState, Entry, HardState};

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("r1");
        let mut log = RaftLog::open(open_engine(&d.join("log")).unwrap(), 1).unwrap();
        let entries: Vec<Entry> = (1..=3)
            .map(|index| Entry {
                index,
                term: 1,
                ..Default::default()
            })
            .collect();
        let mut w = LogWrite::default();
        let voters = ConfState {
            voters: vec![1],
            ..Default::default()
        };
        log.set_conf_state(&mut w, &voters).unwrap();
        log.append(&mut w, &entries).unwrap();
        let hs = HardState {
            term: 1,
            vote: 1,
            commit: 3,
            ..Default::default()
        };
        log.set_hard_state(&mut w, &hs).unwrap();
        log.commit(w, true).unwrap();
        let store: Arc<dyn VectorStore> =
            Arc::new(EdgeStore::open(&d.join("shard"), 4, &Default::default()).unwrap());
        let mut machine = StateMachine::open(1, store, Arc::new(NoSource), &d).unwrap();
        machine.apply(&entries).unwrap();
        assert_eq!(machine.applied().index, 3);

        let net = Arc::new(Loopback::default());
        let cfg = DriverConfig {
            tick: Duration::from_millis(20),
            ..Default::default()
        };
        let driver = Driver::start(1, 1, &[1], log, machine, net, cfg).unwrap();
        let drivers = [driver];
        let l = wait_leader(&drivers);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let r = rt.block_on(drivers[l].replica().propose(upsert("after")));
        assert_eq!(r, Ok(1));
        let status = drivers[l].replica().status();
        assert_eq!(status.first_index, 4, "{status:?}");
        assert_eq!(status.voters, vec![1]);
    }
}

mod over_http {
    use super::*;

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
            let app = router(inbox.clone(), &Default::default());
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
                    Arc::new(EdgeStore::open(&d.join("shard"), 4, &Default::default()).unwrap());
                let machine = StateMachine::open(7, store, Arc::new(NoSource), &d).unwrap();
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
            match leader.map(|d| rt.block_on(d.replica().propose(cmd.encode()))) {
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
