//! Building each setup: its processes started on free ports, its stores loaded (or, with
//! `--reuse`, found loaded) and indexed; then it waits, serving, for its measurement.

use std::time::Duration;

use anyhow::Result;
use redrec_shard_api::ShardClient;

use super::load::{self, Target};
use super::qdrant::Qdrant;
use super::{Bench, Built, Setup, DIM};
use redrec::launch::Proc;

impl Bench {
    /// A lone shard searched directly, then through a router.
    pub(super) async fn lone(&mut self, with_router: bool, only_router: bool) -> Result<()> {
        let flags = self.a.collection.to_args();
        self.lone_with(Setup::Lone, "lone shard", flags, with_router, only_router)
            .await
    }

    /// The lone shard with int8 vectors in RAM and the originals on disk.
    pub(super) async fn lone_int8(&mut self) -> Result<()> {
        let mut args = self.a.collection.clone();
        args.quantization = redrec_shard_api::collection::Quantization::Int8;
        args.vectors_on_disk = true;
        self.lone_with(
            Setup::LoneInt8,
            "lone shard, int8 + on disk",
            args.to_args(),
            false,
            false,
        )
        .await
    }

    async fn lone_with(
        &mut self,
        setup: Setup,
        label: &str,
        flags: Vec<String>,
        with_router: bool,
        only_router: bool,
    ) -> Result<()> {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let layout = self.layout(&label.replace([' ', ',', '+'], "-"))?;
        let shards = layout.lone_shards(1, &flags)?;
        let client = ShardClient::new(shards[0].addr.clone(), self.http.clone());
        let rate = match self.loaded(std::slice::from_ref(&client), 1).await? {
            true => None,
            false => Some(
                self.ingest(label, |from, len| {
                    let (client, points) = (client.clone(), self.points(from, len));
                    async move {
                        client.upsert(points, Duration::from_secs(60)).await?;
                        Ok(())
                    }
                })
                .await?,
            ),
        };
        let settle = self
            .settle_stores(label, std::slice::from_ref(&client), self.data.len())
            .await?;
        let vector_ram = self.vector_ram(std::slice::from_ref(&client), 1).await;
        // The rows that did not ingest carry only the memory.
        let ram = Built {
            vector_ram_per_item: vector_ram,
            ..Built::default()
        };
        let pids = [shards[0].pid()];
        if !only_router {
            let json = Target::ShardJson {
                http: self.http.clone(),
                addr: shards[0].addr.clone(),
            };
            let (target, row_label) = match setup {
                Setup::Lone => (&json, format!("{label} (JSON)")),
                _ => (&Target::Shard(client.clone()), label.to_string()),
            };
            let built = Built {
                ingest_per_s: rate,
                settle_s: Some(settle),
                vector_ram_per_item: vector_ram,
            };
            self.ready(setup, &row_label, target, None, &pids, built);
            if setup == Setup::Lone {
                let compact = format!("{label} (compact encoding)");
                let target = Target::Shard(client);
                self.ready(Setup::LoneCompact, &compact, &target, None, &pids, ram);
            }
        }
        if with_router {
            let router = self.start_router(&layout, "--shards", &[shards[0].addr.clone()])?;
            let label = "router + 1 lone shard";
            let target = self.router_target(&router);
            self.ready(
                Setup::Router1,
                label,
                &target,
                Some(router.pid()),
                &pids,
                ram,
            );
            self.procs.extend(shards);
            self.procs.push(router);
        } else {
            self.procs.extend(shards);
        }
        Ok(())
    }

    pub(super) async fn router_lone(&mut self) -> Result<()> {
        self.routed(Setup::RouterLone).await
    }

    pub(super) async fn router_raft(&mut self) -> Result<()> {
        self.routed(Setup::RouterRaft).await
    }

    /// A router over G lone shards, or over G Raft groups on 3 nodes (R=3): ingest
    /// through the router, wait for every store's indexes, measure.
    async fn routed(&mut self, setup: Setup) -> Result<()> {
        let g = self.a.groups;
        let flags = self.a.collection.to_args();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let raft = setup == Setup::RouterRaft;
        let layout = self.layout(if raft { "router-raft" } else { "router-lone" })?;
        let shards = match raft {
            true => layout.shard_nodes(3, g, &flags)?,
            false => layout.lone_shards(g, &flags)?,
        };
        let addrs: Vec<String> = shards.iter().map(|s| s.addr.clone()).collect();
        let router =
            self.start_router(&layout, if raft { "--meta" } else { "--shards" }, &addrs)?;
        let label = match raft {
            true => format!("router + {g} Raft groups (R=3)"),
            false => format!("router + {g} lone shards"),
        };
        // Every store: each node's replica of every group, or each lone shard.
        let stores: Vec<ShardClient> = match raft {
            true => addrs
                .iter()
                .flat_map(|a| {
                    (0..g as u64).map(|grp| ShardClient::replica(a.clone(), grp, self.http.clone()))
                })
                .collect(),
            false => addrs
                .iter()
                .map(|a| ShardClient::new(a.clone(), self.http.clone()))
                .collect(),
        };
        let copies = if raft { 3 } else { 1 };
        let rate = match self.loaded(&stores, copies).await? {
            true => None,
            false => Some(self.router_ingest(&label, &router).await?),
        };
        let settle = self
            .settle_stores(&label, &stores, self.data.len() * copies)
            .await?;
        if raft {
            self.settle(&format!("{label}: readiness"), || {
                load::all_ready(&self.http, &addrs)
            })
            .await?;
        }
        let pids: Vec<i32> = shards.iter().map(Proc::pid).collect();
        let target = self.router_target(&router);
        let built = Built {
            ingest_per_s: rate,
            settle_s: Some(settle),
            vector_ram_per_item: self.vector_ram(&stores, copies).await,
        };
        self.ready(setup, &label, &target, Some(router.pid()), &pids, built);
        self.procs.extend(shards);
        self.procs.push(router);
        Ok(())
    }

    pub(super) async fn qdrant(&mut self, bin: &std::path::Path, shards: usize) -> Result<()> {
        let dir = self.root.join(format!("qdrant-{shards}"));
        let q = Qdrant::start(bin, &dir, !self.a.reuse, self.http.clone()).await?;
        let label = format!(
            "Qdrant, {shards} shard{}",
            if shards > 1 { "s" } else { "" }
        );
        let wanted = (self.data.len() as u64, shards as u64);
        let reused = self.a.reuse && q.holds().await? == Some(wanted);
        if self.a.reuse && !reused {
            eprintln!(
                "  --reuse: {label} does not hold the {} items: loading them",
                wanted.0
            );
            q.remove().await?;
        }
        let rate = match reused {
            true => None,
            false => {
                q.create(DIM, shards, &self.collection).await?;
                let q = &q;
                let rate = self
                    .ingest(&label, |from, len| {
                        let data = self.data.clone();
                        async move {
                            let vectors: Vec<&[f32]> =
                                (from..from + len).map(|i| data.item(i)).collect();
                            q.upsert(from, &vectors).await
                        }
                    })
                    .await?;
                Some(rate)
            }
        };
        let settle = self
            .settle(&format!("{label}: indexing"), || q.settled())
            .await?;
        q.check(DIM).await?;
        let setup = match shards {
            1 => Setup::Qdrant1,
            _ => Setup::QdrantG,
        };
        let built = Built {
            ingest_per_s: rate,
            settle_s: Some(settle),
            vector_ram_per_item: None,
        };
        let target = q.target(&self.collection);
        self.ready(setup, &label, &target, None, &[q.pid()], built);
        self.qdrants.push(q);
        Ok(())
    }
}
