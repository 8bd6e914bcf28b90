//! `raft-engine`, opened one way for everything a node logs: the Raft logs of its groups
//! (one engine per process) and each store's write-ahead journal (one per store), all as
//! `eraftpb::Entry` records.

use std::sync::Arc;

use raft::eraftpb::Entry;
use raft_engine::{Engine, MessageExt};

#[derive(Clone)]
pub struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// Opens (creating) the engine kept in `dir`.
pub fn open_engine(dir: &std::path::Path) -> Result<Arc<Engine>, raft_engine::Error> {
    std::fs::create_dir_all(dir)?;
    let cfg = raft_engine::Config {
        dir: dir.to_string_lossy().into_owned(),
        ..Default::default()
    };
    Ok(Arc::new(Engine::open(cfg)?))
}
