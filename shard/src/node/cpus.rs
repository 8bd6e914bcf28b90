//! The CPUs this node runs on, said so that routers can tell which replicas compete for
//! the same ones: the machine (the kernel's boot id, the same for every process and
//! container on it), the CPUs the node may run on, and the cgroup that caps its CPU time
//! if one does. Replicas that say the same share their CPUs: reading from more than one
//! of them adds no CPU to search with, only memory for the reads to touch.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The machine's boot id, which does not change while the process runs.
static BOOT_ID: LazyLock<Option<String>> = LazyLock::new(|| {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
});

/// How long a reading of the pool stands (it reads every thread's status).
const FRESH: Duration = Duration::from_secs(2);

/// The last reading of the pool, and when it was taken.
static LAST: Mutex<Option<(Instant, Option<String>)>> = Mutex::new(None);

/// This node's CPUs as the cluster map records them, or `None` where they cannot be told
/// (no `/proc`). The CPU set and the cgroup are read again once the last reading is
/// [`FRESH`] no more: both can change while the node runs.
pub fn pool() -> Option<String> {
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    match &*last {
        Some((at, pool)) if at.elapsed() < FRESH => pool.clone(),
        _ => {
            let pool = read_pool();
            *last = Some((Instant::now(), pool.clone()));
            pool
        }
    }
}

fn read_pool() -> Option<String> {
    let boot = BOOT_ID.as_deref()?;
    let cpus = allowed_cpus()?;
    let mut pool = format!("{boot} cpus {cpus}");
    if let Some(cgroup) = capped_cgroup() {
        pool.push_str(&format!(" cgroup {cgroup}"));
    }
    Some(pool)
}

/// The CPUs any of this process's threads may run on, in the kernel's list format
/// ("0-3,6"). Threads may be pinned apart (one pool for searches, another for the rest):
/// the node's CPUs are their union, the same whichever thread asks.
fn allowed_cpus() -> Option<String> {
    let me = procfs::process::Process::myself().ok()?;
    let mut cpus = BTreeSet::new();
    for task in me.tasks().ok()?.flatten() {
        // A thread that ended since the listing is passed over.
        let Ok(status) = task.status() else { continue };
        for (first, last) in status.cpus_allowed_list.unwrap_or_default() {
            cpus.extend(first..=last);
        }
    }
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for cpu in cpus {
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == cpu => *last = cpu,
            _ => ranges.push((cpu, cpu)),
        }
    }
    let list: Vec<String> = (ranges.iter())
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    (!list.is_empty()).then(|| list.join(","))
}

/// The cgroup (v2) whose `cpu.max` caps this process's CPU time, nearest first, by its
/// inode (one per cgroup, the same seen from inside a container): processes capped by
/// different cgroups do not share CPU time, whatever CPUs they run on.
fn capped_cgroup() -> Option<u64> {
    let root = Path::new("/sys/fs/cgroup");
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let mut dir: PathBuf = root.join(path.trim_start_matches('/'));
    // In a cgroup namespace the path is the container's own, its root here.
    if !dir.is_dir() {
        dir = root.to_path_buf();
    }
    while dir.starts_with(root) {
        let max = std::fs::read_to_string(dir.join("cpu.max")).unwrap_or_default();
        if max
            .split_whitespace()
            .next()
            .is_some_and(|quota| quota != "max")
        {
            return std::fs::metadata(&dir).ok().map(|m| m.ino());
        }
        if !dir.pop() {
            break;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_names_its_machine_and_cpus_the_same_each_time() {
        let Some(said) = pool() else {
            eprintln!("skipped: no /proc here");
            return;
        };
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        assert!(said.starts_with(boot.trim()), "{said}");
        assert!(said.contains(" cpus "), "{said}");
        assert_eq!(pool(), Some(said));
    }

    /// A thread pinned to one CPU names the same pool as the others (before, it named
    /// its own CPU, and a node whose threads were pinned apart re-registered each time
    /// a different thread looked).
    #[test]
    fn a_thread_pinned_apart_names_the_whole_pool() {
        use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
        use nix::unistd::Pid;
        let Some(said) = read_pool() else {
            eprintln!("skipped: no /proc here");
            return;
        };
        let mine = sched_getaffinity(Pid::from_raw(0)).unwrap();
        let allowed: Vec<usize> = (0..CpuSet::count())
            .filter(|&c| mine.is_set(c).unwrap_or(false))
            .collect();
        if allowed.len() < 2 {
            eprintln!("skipped: this process may run on one CPU only");
            return;
        }
        let from_pinned = std::thread::spawn(move || {
            let mut one = CpuSet::new();
            one.set(allowed[0]).unwrap();
            sched_setaffinity(Pid::from_raw(0), &one).unwrap();
            read_pool()
        })
        .join()
        .unwrap();
        assert_eq!(from_pinned, Some(said));
    }
}
