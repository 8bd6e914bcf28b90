//! A node's injected faults (see [`redrec_shard_api::faults`]): off unless the node was
//! started with them allowed, and then only what the last plan set says.

use std::sync::RwLock;
use std::time::Duration;

use redrec_shard_api::faults::FaultPlan;

#[derive(Debug, Default)]
pub struct Faults {
    allowed: bool,
    plan: RwLock<FaultPlan>,
}

impl Faults {
    pub fn new(allowed: bool) -> Self {
        Self {
            allowed,
            plan: RwLock::default(),
        }
    }

    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// Sets the plan; refused unless faults are allowed, or when it makes no sense.
    pub fn set(&self, plan: FaultPlan) -> Result<(), String> {
        if !self.allowed {
            return Err(
                "fault injection is off on this node (start it with --fault-injection)".into(),
            );
        }
        if !(0.0..=1.0).contains(&plan.delay_share) || plan.delay_ms > 60_000 {
            return Err("delay_share must be within 0..1 and delay_ms at most 60000".into());
        }
        tracing::warn!(?plan, "fault injection plan set");
        *self.plan.write().unwrap_or_else(|p| p.into_inner()) = plan;
        Ok(())
    }

    /// Waits as the plan says a read of group `g` should (usually not at all).
    pub async fn delay(&self, g: u64) {
        if !self.allowed {
            return;
        }
        let delay = {
            let plan = self.plan.read().unwrap_or_else(|p| p.into_inner());
            let hit = plan.delay_ms > 0
                && (plan.groups.is_empty() || plan.groups.contains(&g))
                && rand::random::<f64>() < plan.delay_share;
            hit.then(|| Duration::from_millis(plan.delay_ms))
        };
        if let Some(d) = delay {
            metrics::counter!("redrec_injected_delays_total").increment(1);
            tokio::time::sleep(d).await;
        }
    }
}
