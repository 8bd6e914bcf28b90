//! A Qdrant server (the binary given, on free ports, its storage under the bench's data
//! directory) and the collection the bench loads into it, with the same HNSW and
//! quantization settings the redrec setups use.

use std::path::Path;

use anyhow::{bail, Result};
use redrec_shard_api::collection::{Collection, Quantization};
use serde_json::{json, Value};

use redrec::qdrant_server::QdrantServer;

use super::load::{post, Target};

pub const COLLECTION: &str = "bench";

pub struct Qdrant {
    /// The REST address.
    pub addr: String,
    /// The gRPC address (`redrec router --qdrant-url`).
    pub grpc: String,
    server: QdrantServer,
    http: reqwest::Client,
}

impl Qdrant {
    /// Starts `bin` with its storage in `dir`: emptied first if `fresh`, else what an
    /// earlier run left there.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        fresh: bool,
        http: reqwest::Client,
    ) -> Result<Qdrant> {
        if fresh && dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let (bin, path) = (bin.to_path_buf(), dir.to_path_buf());
        let server =
            tokio::task::spawn_blocking(move || QdrantServer::start(&bin, &path)).await??;
        Ok(Qdrant {
            addr: server.http.clone(),
            grpc: server.grpc.clone(),
            server,
            http,
        })
    }

    /// Removes the collection, if it exists.
    pub async fn remove(&self) -> Result<()> {
        let url = format!("{}/collections/{COLLECTION}", self.addr);
        let r = self.http.delete(&url).send().await?;
        if !r.status().is_success() && r.status() != reqwest::StatusCode::NOT_FOUND {
            bail!("removing the collection: {}", r.text().await?);
        }
        Ok(())
    }

    /// The points and shards of the collection, if it exists.
    pub async fn holds(&self) -> Result<Option<(u64, u64)>> {
        let url = format!("{}/collections/{COLLECTION}", self.addr);
        let r = self.http.get(&url).send().await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let info: Value = r.error_for_status()?.json().await?;
        let result = &info["result"];
        let points = result["points_count"].as_u64();
        let shards = result["config"]["params"]["shard_number"].as_u64();
        Ok(points.zip(shards))
    }

    pub fn pid(&self) -> i32 {
        self.server.pid().map_or(0, |p| p as i32)
    }

    /// Creates the collection: `shards` shards, dot product, `c`'s HNSW, quantization and
    /// vector storage.
    pub async fn create(&self, dim: usize, shards: usize, c: &Collection) -> Result<()> {
        let mut body = json!({
            "vectors": { "size": dim, "distance": "Dot", "on_disk": c.on_disk },
            "shard_number": shards,
            "hnsw_config": {
                "m": c.hnsw_m,
                "ef_construct": c.hnsw_ef_construct,
                "full_scan_threshold": c.full_scan_threshold_kb(),
            },
            "optimizers_config": { "indexing_threshold": c.indexing_threshold_kb },
        });
        if c.quantization == Quantization::Int8 {
            body["quantization_config"] =
                json!({ "scalar": { "type": "int8", "quantile": 0.99, "always_ram": true } });
        }
        let url = format!("{}/collections/{COLLECTION}", self.addr);
        let r = self.http.put(&url).json(&body).send().await?;
        if !r.status().is_success() {
            bail!("creating the collection: {}", r.text().await?);
        }
        Ok(())
    }

    /// Upserts items `from..` (ids are their indices), acknowledged once applied.
    pub async fn upsert(&self, from: usize, vectors: &[&[f32]]) -> Result<()> {
        let points: Vec<Value> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| json!({ "id": from + i, "vector": v }))
            .collect();
        let url = format!("{}/collections/{COLLECTION}/points?wait=true", self.addr);
        let r = self
            .http
            .put(&url)
            .json(&json!({ "points": points }))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("upsert: {}", r.text().await?);
        }
        Ok(())
    }

    /// Whether the collection's optimisations are done (status green).
    pub async fn settled(&self) -> Result<bool> {
        let url = format!("{}/collections/{COLLECTION}", self.addr);
        let info: Value = self.http.get(&url).send().await?.json().await?;
        Ok(info["result"]["status"] == "green")
    }

    /// Searches the collection with `c`'s search settings.
    pub fn target(&self, c: &Collection) -> Target {
        let mut params = json!({ "hnsw_ef": c.ef });
        if c.quantization == Quantization::Int8 {
            params["quantization"] = json!({ "rescore": true, "oversampling": c.oversampling });
        }
        Target::Qdrant {
            http: self.http.clone(),
            addr: self.addr.clone(),
            collection: COLLECTION.into(),
            params,
        }
    }

    /// Checks the server answers searches (the collection exists and has points).
    pub async fn check(&self, dim: usize) -> Result<()> {
        let url = format!("{}/collections/{COLLECTION}/points/search", self.addr);
        post(
            &self.http,
            &url,
            &json!({ "vector": vec![0.0; dim], "limit": 1 }),
        )
        .await?;
        Ok(())
    }
}
