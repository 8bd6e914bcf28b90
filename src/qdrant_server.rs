//! Qdrant server processes on loopback, for `redrec eval`, `redrec bench cluster` and the
//! tests of the Qdrant backend: one server, or the peers of a distributed cluster, each on
//! free ports with its storage in its own directory, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::launch::free_port;

/// Longest a peer may take to answer `/readyz`.
const READY: Duration = Duration::from_secs(60);

/// The Qdrant binary: `$REDREC_QDRANT_BIN`, else `../shared/qdrant/qdrant` from the working
/// directory, where present.
pub fn binary() -> Option<PathBuf> {
    let p = std::env::var_os("REDREC_QDRANT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/qdrant/qdrant"));
    std::fs::canonicalize(p).ok().filter(|p| p.is_file())
}

/// One Qdrant process.
pub struct QdrantServer {
    /// The REST address (`http://127.0.0.1:PORT`).
    pub http: String,
    /// The gRPC address, what `redrec router --qdrant-url` takes.
    pub grpc: String,
    /// The cluster port of a distributed peer.
    pub p2p: Option<u16>,
    bin: PathBuf,
    dir: PathBuf,
    /// The first peer's p2p port, for a peer that joins a cluster.
    bootstrap: Option<u16>,
    child: Option<Child>,
}

impl Drop for QdrantServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl QdrantServer {
    /// A standalone server whose storage is `dir`.
    pub fn start(bin: &Path, dir: &Path) -> Result<Self> {
        Self::new(bin, dir, None, None)
    }

    /// A distributed peer: the first of a cluster (`bootstrap` none) or one joining the
    /// peer listening for peers on `bootstrap`.
    pub fn start_peer(bin: &Path, dir: &Path, bootstrap: Option<u16>) -> Result<Self> {
        Self::new(bin, dir, Some(free_port()), bootstrap)
    }

    fn new(bin: &Path, dir: &Path, p2p: Option<u16>, bootstrap: Option<u16>) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        // The process runs in `dir`: a relative path to the binary would not resolve there.
        let bin = std::fs::canonicalize(bin).with_context(|| format!("{}", bin.display()))?;
        let mut q = Self {
            http: format!("http://127.0.0.1:{}", free_port()),
            grpc: format!("http://127.0.0.1:{}", free_port()),
            p2p,
            bin,
            dir: dir.to_path_buf(),
            bootstrap,
            child: None,
        };
        q.run()?;
        Ok(q)
    }

    fn port(addr: &str) -> &str {
        addr.rsplit(':').next().unwrap_or_default()
    }

    /// Starts the process (again, on the same ports and storage, after [`Self::kill`]) and
    /// waits until it is ready.
    pub fn run(&mut self) -> Result<()> {
        let d = &self.dir;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("qdrant.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(d)
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__HTTP_PORT", Self::port(&self.http))
            .env("QDRANT__SERVICE__GRPC_PORT", Self::port(&self.grpc))
            .env("QDRANT__STORAGE__STORAGE_PATH", d.join("storage"))
            .env("QDRANT__STORAGE__SNAPSHOTS_PATH", d.join("snapshots"))
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .env("QDRANT_INIT_FILE_PATH", d.join(".qdrant-initialized"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(p2p) = self.p2p {
            cmd.env("QDRANT__CLUSTER__ENABLED", "true")
                .env("QDRANT__CLUSTER__P2P__PORT", p2p.to_string())
                .args(["--uri", &format!("http://127.0.0.1:{p2p}")]);
            if let Some(first) = self.bootstrap {
                cmd.args(["--bootstrap", &format!("http://127.0.0.1:{first}")]);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let until = Instant::now() + READY;
        loop {
            let ready = http.get(format!("{}/readyz", self.http)).send();
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!(
                    "qdrant exited ({status}); see {}",
                    self.dir.join("qdrant.log").display()
                );
            }
            if Instant::now() > until {
                bail!("qdrant at {} was not ready within {READY:?}", self.http);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`, and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A distributed Qdrant cluster of `peers` peers on loopback, each storing under `dir`;
/// returns once every peer is ready and the cluster has them all.
pub fn start_cluster(bin: &Path, dir: &Path, peers: usize) -> Result<Vec<QdrantServer>> {
    let first = QdrantServer::start_peer(bin, &dir.join("peer-1"), None)?;
    let seed = first.p2p;
    let mut all = vec![first];
    for i in 2..=peers {
        all.push(QdrantServer::start_peer(
            bin,
            &dir.join(format!("peer-{i}")),
            seed,
        )?);
    }
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let until = Instant::now() + READY;
    loop {
        let known = http
            .get(format!("{}/cluster", all[0].http))
            .send()
            .and_then(|r| r.json::<serde_json::Value>())
            .ok()
            .and_then(|v| v["result"]["peers"].as_object().map(|p| p.len()));
        if known == Some(peers) {
            return Ok(all);
        }
        if Instant::now() > until {
            bail!("the qdrant cluster did not gather {peers} peers within {READY:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
