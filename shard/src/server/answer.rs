//! A search's answer as the request's encoding carries it.

use redrec_shard_api::points::{PackedResults, SearchResponse};
use redrec_wire::compact::Format;

/// A search's answer in the shape its encoding carries: hits as objects in JSON, ids and
/// scores side by side in the compact encoding.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum SearchAnswer {
    Full(SearchResponse),
    Packed(PackedResults),
}

impl SearchAnswer {
    pub fn new(answer: SearchResponse, format: Format) -> Self {
        match format {
            Format::Json => Self::Full(answer),
            Format::Msgpack => Self::Packed(answer.into()),
        }
    }
}
