//! Users' histories as the shard groups keep them: events (a user touched an item in a
//! scenario at a time) written through a group's log, placed by the slot of the user id
//! as items are by theirs, each user's newest events kept.

use serde::{Deserialize, Serialize};

/// A user touched an item in a scenario at `ts` (seconds since the epoch). The same
/// (user, item, ts) twice is one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    pub user_id: String,
    pub item_id: String,
    pub scenario: String,
    pub ts: i64,
}

/// One event of a stored history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub item_id: String,
    pub scenario: String,
    pub ts: i64,
}

/// Events to add; each user keeps its newest `keep`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsRequest {
    pub keep: usize,
    pub events: Vec<UserEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsersRequest {
    pub ids: Vec<String>,
}

/// A user's stored events, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserHistory {
    pub user_id: String,
    pub events: Vec<StoredEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsersResponse {
    /// Users with a stored history, in request order; others are absent.
    pub users: Vec<UserHistory>,
}

/// Which of a group's stores a scroll or a slot move's copy is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keyspace {
    #[default]
    Items,
    Users,
}

impl Keyspace {
    pub fn is_items(&self) -> bool {
        *self == Self::Items
    }
}
