//! A node's memory budget: writes that would take its stores' RAM past the budget are
//! refused (507 `memory_budget_exceeded`) instead of the process growing until the kernel
//! kills it. The stores' RAM is what [`Memory::ram`] counts (vectors, quantized vectors,
//! HNSW graphs); the budget should leave room for the process itself.

use std::sync::Arc;

use redrec_shard_api::collection::{Collection, Quantization};
use redrec_shard_api::points::Memory;

use crate::store::VectorStore;

/// Below this many stored points, a point's RAM is estimated rather than measured.
const MEASURED_FROM: usize = 1_000;

#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryBudget {
    /// Bytes; `None`: no budget.
    pub limit: Option<u64>,
}

/// What a node's stores hold, added up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub points: usize,
    pub memory: Memory,
}

impl Usage {
    pub fn of<'a>(stores: impl IntoIterator<Item = &'a Arc<dyn VectorStore>>) -> Self {
        let mut usage = Self::default();
        for stats in stores.into_iter().filter_map(|s| s.stats().ok()) {
            usage.points += stats.points;
            usage.memory += stats.memory;
        }
        usage
    }
}

/// RAM one point costs under `c`, before there are enough to measure: its vector in RAM,
/// its quantized copy, and its HNSW links (about 2·m ids on the bottom layer).
pub fn estimate_per_point(dim: usize, c: &Collection) -> u64 {
    let vector = if c.on_disk { 0 } else { dim as u64 * 4 };
    let quantized = match c.quantization {
        Quantization::None => 0,
        Quantization::Int8 => dim as u64,
    };
    vector + quantized + 2 * c.hnsw_m as u64 * 4
}

impl MemoryBudget {
    /// Whether `adding` more points fit beside what `usage` holds.
    pub fn admit(
        &self,
        usage: &Usage,
        adding: usize,
        dim: usize,
        c: &Collection,
    ) -> Result<(), String> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        // The stores' files show what they hold only once flushed: the estimate is the
        // floor, the measure counts once there are enough points to trust it.
        let estimate = estimate_per_point(dim, c);
        let per_point = if usage.points >= MEASURED_FROM {
            estimate.max(usage.memory.ram().div_ceil(usage.points as u64))
        } else {
            estimate
        };
        let used = usage
            .memory
            .ram()
            .max(estimate.saturating_mul(usage.points as u64));
        let needed = used.saturating_add(per_point.saturating_mul(adding as u64));
        if needed > limit {
            return Err(format!(
                "the node's memory budget is {limit} bytes; its shards hold {used} bytes in \
                 RAM and {adding} more points would take about {needed}"
            ));
        }
        Ok(())
    }
}

/// The process's resident memory, from `/proc/self/status` (Linux).
pub fn rss_bytes() -> Option<u64> {
    let status = procfs::process::Process::myself().ok()?.status().ok()?;
    Some(status.vmrss? * 1024)
}

/// Refuses `adding` points beside `stores` under `budget`, as the API says it.
pub fn admit<'a>(
    budget: &MemoryBudget,
    stores: impl IntoIterator<Item = &'a Arc<dyn VectorStore>> + Clone,
    adding: usize,
) -> Result<(), String> {
    if budget.limit.is_none() {
        return Ok(());
    }
    let Some(first) = stores.clone().into_iter().next() else {
        return Ok(());
    };
    let (dim, collection) = (first.dim(), first.collection());
    budget.admit(&Usage::of(stores), adding, dim, &collection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_would_pass_the_limit() {
        let c = Collection::default();
        let per = estimate_per_point(64, &c);
        let budget = MemoryBudget {
            limit: Some(per * 100),
        };
        let empty = Usage::default();
        budget.admit(&empty, 100, 64, &c).unwrap();
        assert!(budget.admit(&empty, 101, 64, &c).is_err());
        // Measured once there are enough points.
        let measured = Usage {
            points: 2_000,
            memory: Memory {
                vectors_ram: 2_000 * per * 2,
                ..Default::default()
            },
        };
        let roomy = MemoryBudget {
            limit: Some(2_000 * per * 2 + 50 * per * 2),
        };
        roomy.admit(&measured, 50, 64, &c).unwrap();
        assert!(roomy.admit(&measured, 51, 64, &c).is_err());
        // Points not measured yet (unflushed) count at the estimate.
        let unflushed = Usage {
            points: 2_000,
            memory: Memory::default(),
        };
        assert!(budget.admit(&unflushed, 1, 64, &c).is_err());
        MemoryBudget::default()
            .admit(&measured, usize::MAX / 1024, 64, &c)
            .unwrap();
        let int8 = Collection {
            quantization: Quantization::Int8,
            on_disk: true,
            ..c
        };
        assert!(estimate_per_point(64, &int8) < per);
    }
}
