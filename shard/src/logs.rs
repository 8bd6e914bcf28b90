//! `raft-engine`, opened one way for everything a node logs: the Raft logs of its groups
//! (one engine per process) and each store's write-ahead journal (one per store), all as
//! `eraftpb::Entry` records.

use std::sync::Arc;

use raft::eraftpb::Entry;
use raft_engine::{Engine, MessageExt, ReadableSize};

#[derive(Clone)]
pub struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// Opens (creating) the engine kept in `dir`, with raft-engine's defaults (the Raft logs).
pub fn open_engine(dir: &std::path::Path) -> Result<Arc<Engine>, raft_engine::Error> {
    open_with(raft_engine::Config {
        dir: dir.to_string_lossy().into_owned(),
        ..Default::default()
    })
}

/// Opens a store's journal in `dir`: small files, purged once they pass a few of them, so
/// that what checkpoints cut off leaves the disk (raft-engine's defaults keep up to 10 GB).
pub fn open_journal(dir: &std::path::Path) -> Result<Arc<Engine>, raft_engine::Error> {
    open_with(raft_engine::Config {
        dir: dir.to_string_lossy().into_owned(),
        target_file_size: ReadableSize::mb(8),
        purge_threshold: ReadableSize::mb(32),
        ..Default::default()
    })
}

fn open_with(cfg: raft_engine::Config) -> Result<Arc<Engine>, raft_engine::Error> {
    std::fs::create_dir_all(&cfg.dir)?;
    Ok(Arc::new(Engine::open(cfg)?))
}
