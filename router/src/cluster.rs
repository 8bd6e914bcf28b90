//! The shards a router talks to and how items map onto them.

use std::collections::BTreeMap;

use redrec_shard::client::ShardClient;

use crate::slots::SlotTable;

#[derive(Clone)]
pub struct Cluster {
    pub shards: Vec<ShardClient>,
    pub slots: SlotTable,
}

impl Cluster {
    /// A static list of shard addresses with slots spread evenly over them.
    pub fn fixed(addrs: &[String], http: reqwest::Client) -> Self {
        Self {
            shards: addrs
                .iter()
                .map(|a| ShardClient::new(a.clone(), http.clone()))
                .collect(),
            slots: SlotTable::even(addrs.len()),
        }
    }

    /// Groups values by the shard that owns their item id.
    pub fn by_shard<T>(
        &self,
        values: impl IntoIterator<Item = T>,
        id: impl Fn(&T) -> &str,
    ) -> BTreeMap<usize, Vec<T>> {
        let mut groups: BTreeMap<usize, Vec<T>> = BTreeMap::new();
        for v in values {
            groups
                .entry(self.slots.shard_of(id(&v)))
                .or_default()
                .push(v);
        }
        groups
    }
}
