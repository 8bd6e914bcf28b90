//! The `router-qdrant` setup: a router on the Qdrant backend (`--qdrant-url`), the
//! collection made with the bench's settings.

use std::path::Path;

use anyhow::Result;
use redrec_shard_api::collection::{Collection, Quantization};

use super::qdrant::{Qdrant, COLLECTION};
use super::{Bench, Built, Setup};

/// The router's `--qdrant-*` flags for a collection made with `c`'s settings.
fn router_flags(c: &Collection, shards: usize) -> Vec<String> {
    let mut flags = vec![
        format!("--qdrant-collection={COLLECTION}"),
        format!("--qdrant-shards={shards}"),
        format!("--qdrant-hnsw-m={}", c.hnsw_m),
        format!("--qdrant-hnsw-ef-construct={}", c.hnsw_ef_construct),
        format!("--qdrant-ef={}", c.ef),
        format!("--qdrant-oversampling={}", c.oversampling),
        format!("--qdrant-indexing-threshold-kb={}", c.indexing_threshold_kb),
    ];
    if c.quantization == Quantization::Int8 {
        flags.push("--qdrant-quantization=int8".into());
    }
    if c.on_disk {
        flags.push("--qdrant-vectors-on-disk".into());
    }
    flags
}

impl Bench {
    /// A router keeping the items in a Qdrant collection of G shards (the router's Qdrant
    /// backend, over gRPC): ingest through the router, wait for Qdrant's indexes, measure.
    pub(super) async fn router_qdrant(&mut self, bin: &Path) -> Result<()> {
        let g = self.a.groups;
        let dir = self.root.join("router-qdrant");
        let q = Qdrant::start(bin, &dir, true, self.http.clone()).await?;
        let layout = self.layout("router-qdrant")?;
        let mut args = vec![
            "router".to_string(),
            "--listen=127.0.0.1:0".into(),
            format!("--qdrant-url={}", q.grpc),
        ];
        args.extend(router_flags(&self.collection, g));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let router = layout.start("router", &args)?;
        let label = format!("router + Qdrant, {g} shards");
        let rate = self.router_ingest(&label, &router).await?;
        let settle = self
            .settle(&format!("{label}: indexing"), || q.settled())
            .await?;
        let target = self.router_target(&router);
        let built = Built {
            ingest_per_s: Some(rate),
            settle_s: Some(settle),
            vector_ram_per_item: None,
        };
        let pids = [q.pid()];
        self.ready(
            Setup::RouterQdrant,
            &label,
            &target,
            Some(router.pid()),
            &pids,
            built,
        );
        self.procs.push(router);
        self.qdrants.push(q);
        Ok(())
    }
}
