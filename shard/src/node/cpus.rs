//! The CPUs this node runs on, said so that routers can tell which replicas compete for
//! the same ones: the machine (the kernel's boot id, the same for every process and
//! container on it), the CPUs the node may run on, and the cgroup that caps its CPU time
//! if one does. Replicas that say the same share their CPUs: reading from more than one
//! of them adds no CPU to search with, only memory for the reads to touch.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// The machine's boot id, which does not change while the process runs.
static BOOT_ID: LazyLock<Option<String>> = LazyLock::new(|| {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
});

/// This node's CPUs as the cluster map records them, or `None` where they cannot be told
/// (no `/proc`). The CPU set and the cgroup are read again each call: both can change
/// while the node runs.
pub fn pool() -> Option<String> {
    let boot = BOOT_ID.as_deref()?;
    // This thread's: pinning a process pins each of its threads.
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let cpus = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut pool = format!("{boot} cpus {cpus}");
    if let Some(cgroup) = capped_cgroup() {
        pool.push_str(&format!(" cgroup {cgroup}"));
    }
    Some(pool)
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
}
