//! `--pin`: the stores on cores of their own while the setups are measured. Shard, node and
//! Qdrant processes run on the upper half of the machine's CPUs; routers and the bench's
//! clients on the lower half, as when each tier has its own machine. Without it every
//! process shares every core, and a router's work lands on the cores the shards search on.
//! Loading and index builds, before the measurement, use every core (a store alone on its
//! machine would).

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The two halves of the CPUs: (front: routers and clients, back: stores).
#[derive(Debug, Clone)]
pub struct Placement {
    front: CpuSet,
    back: CpuSet,
    all: CpuSet,
}

impl Placement {
    pub fn halves() -> Result<Self> {
        let n = std::thread::available_parallelism()?.get();
        if n < 2 {
            bail!("--pin needs at least 2 CPUs, this machine has {n}");
        }
        let set = |cpus: std::ops::Range<usize>| {
            let mut s = CpuSet::new();
            for c in cpus {
                s.set(c)?;
            }
            Ok::<_, Errno>(s)
        };
        Ok(Self {
            front: set(0..n / 2)?,
            back: set(n / 2..n)?,
            all: set(0..n)?,
        })
    }

    /// Puts process `pid` (every thread it has; threads it starts later inherit) on the
    /// stores' half.
    pub fn store(&self, pid: i32) -> Result<()> {
        pin(pid, &self.back)
    }

    /// Puts process `pid` on the routers' and clients' half.
    pub fn front(&self, pid: i32) -> Result<()> {
        pin(pid, &self.front)
    }

    /// Lets process `pid` run on every CPU again.
    pub fn everywhere(&self, pid: i32) -> Result<()> {
        pin(pid, &self.all)
    }
}

fn pin(pid: i32, cpus: &CpuSet) -> Result<()> {
    let tasks = procfs::process::Process::new(pid)
        .and_then(|p| p.tasks())
        .with_context(|| format!("the threads of process {pid}"))?;
    // A thread that ends while they are listed is skipped.
    for tid in tasks.flatten().map(|t| t.tid) {
        match sched_setaffinity(Pid::from_raw(tid), cpus) {
            // A thread that ended meanwhile.
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("pinning thread {tid} of {pid}")),
        }
    }
    Ok(())
}
