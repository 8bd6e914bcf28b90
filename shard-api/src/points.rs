//! Points and searches on the shard's internal HTTP API: what is written, read, searched
//! and scrolled, and how an item id becomes a point id.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::users::Keyspace;

pub type Payload = Map<String, Value>;

/// The payload key under which a point keeps an item id that is not its point id (see
/// [`PointIds`]); callers may not write it.
pub const ID_KEY: &str = "_redrec_id";
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x7265_6472_6563_4000_8000_6974_656d_7321);

/// The longest a stored or query vector may be (L2 norm). With both sides at most this
/// long, a score (a dot product) stays within ±1e12 whatever the dimension, so scores
/// are always finite numbers; the towers' vectors have norm 1.
pub const MAX_NORM: f64 = 1e6;

/// What any vector redrec stores or searches with must be: `dim` components, each finite,
/// and an L2 norm of at most [`MAX_NORM`]. The error says which rule it broke.
pub fn check_vector(vector: &[f32], dim: usize) -> Result<(), String> {
    if vector.len() != dim {
        return Err(format!(
            "vector has {} dimensions, expected {dim}",
            vector.len()
        ));
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err("vector has a NaN or infinite component".into());
    }
    let norm = vector
        .iter()
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>()
        .sqrt();
    if norm > MAX_NORM {
        return Err(format!(
            "vector has norm {norm:.3e}, more than the {MAX_NORM:.0e} allowed"
        ));
    }
    Ok(())
}

/// The UUID an item id is hashed to (v5, in redrec's namespace).
pub fn point_uuid(item_id: &str) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, item_id.as_bytes())
}

/// How a store turns item ids into point ids; fixed when the store is created (a store
/// records it beside its files), and the same on every store of a cluster, since a slot
/// move compares two stores in point-id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointIds {
    /// Every id hashed to a UUID ([`point_uuid`]), the id itself kept in the payload: how
    /// stores and clusters made before `direct` keep them.
    Hashed,
    /// An id written in canonical decimal below 2^64 ("0", "42"; not "042") is its own
    /// point id, so a search answers it without reading any payload; other ids hashed.
    Direct,
    /// As `direct`, and an id of 1 to [`MAX_PACKED`] lowercase hex digits (a 24-digit
    /// ObjectId, a 16-digit hash) is packed whole into its point id ([`packed_uuid`]), so
    /// it too is answered without a payload read and keeps no copy of itself in the
    /// payload; other ids hashed. What new clusters use.
    Packed,
}

/// The most hex digits an id packed into a point id may have.
pub const MAX_PACKED: usize = 29;

/// The UUID version a packed id's point id carries (RFC 9562's custom layout); a hashed
/// id's is 5, so the two never meet.
const PACKED_VERSION: u128 = 8;

/// Bits of a UUID the packing may use: all but the version (4) and variant (2) bits.
const LOW_BITS: u32 = 62;
const MID_BITS: u32 = 12;

/// `item_id` packed into a UUID, when it is 1 to [`MAX_PACKED`] lowercase hex digits:
/// its length (5 bits) and its digits (4 bits each, from the top) in the 122 bits a
/// version 8 UUID leaves free. [`unpacked_id`] gives it back.
pub fn packed_uuid(item_id: &str) -> Option<Uuid> {
    let digits = item_id.as_bytes();
    if digits.is_empty()
        || digits.len() > MAX_PACKED
        || !digits
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let mut v = (digits.len() as u128) << (4 * MAX_PACKED);
    for (i, &b) in digits.iter().enumerate() {
        let nibble = (b as char).to_digit(16).expect("checked above") as u128;
        v |= nibble << (4 * (MAX_PACKED - 1 - i));
    }
    let high = v >> (LOW_BITS + MID_BITS);
    let mid = (v >> LOW_BITS) & ((1 << MID_BITS) - 1);
    let low = v & ((1 << LOW_BITS) - 1);
    Some(Uuid::from_u128(
        high << 80 | PACKED_VERSION << 76 | mid << 64 | 0b10 << 62 | low,
    ))
}

/// Whether `point` has a packed id's layout (its version and variant): a hashed id's
/// UUID never has.
pub fn is_packed(point: &Uuid) -> bool {
    let u = point.as_u128();
    (u >> 76) & 0xf == PACKED_VERSION && (u >> 62) & 0b11 == 0b10
}

/// The item id a point id of [`packed_uuid`]'s holds; `None` for any other UUID.
pub fn unpacked_id(point: &Uuid) -> Option<String> {
    if !is_packed(point) {
        return None;
    }
    let u = point.as_u128();
    let high = u >> 80;
    let mid = (u >> 64) & ((1 << MID_BITS) - 1);
    let low = u & ((1 << LOW_BITS) - 1);
    let v = high << (LOW_BITS + MID_BITS) | mid << LOW_BITS | low;
    let len = (v >> (4 * MAX_PACKED)) as usize;
    if !(1..=MAX_PACKED).contains(&len) || v & ((1 << (4 * (MAX_PACKED - len))) - 1) != 0 {
        return None;
    }
    let id: String = (0..len)
        .map(|i| {
            let nibble = (v >> (4 * (MAX_PACKED - 1 - i))) & 0xf;
            char::from_digit(nibble as u32, 16).expect("a nibble")
        })
        .collect();
    Some(id)
}

impl PointIds {
    /// What a map or store that names no scheme was made with.
    pub fn legacy() -> Self {
        Self::Hashed
    }

    /// The point id of `item_id`. Scrolls return points in this key's order: numbers
    /// (ascending) before UUIDs, as Qdrant orders its point ids.
    pub fn key(self, item_id: &str) -> PointKey {
        let decimal = || decimal_id(item_id).map(PointKey::Num);
        let own = match self {
            Self::Hashed => None,
            Self::Direct => decimal(),
            Self::Packed => decimal().or_else(|| packed_uuid(item_id).map(PointKey::Uuid)),
        };
        own.unwrap_or_else(|| PointKey::Uuid(point_uuid(item_id)))
    }
}

/// A point id, ordered as scrolls return them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PointKey {
    Num(u64),
    Uuid(Uuid),
}

/// `item_id` as a number when it is written the one way [`u64::to_string`] writes it.
pub fn decimal_id(item_id: &str) -> Option<u64> {
    let canonical = item_id.bytes().all(|b| b.is_ascii_digit())
        && (item_id == "0" || !item_id.starts_with('0'));
    canonical.then(|| item_id.parse().ok()).flatten()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub id: String,
    pub vector: Vec<f32>,
    #[serde(default)]
    pub payload: Payload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpsertRequest {
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpsertResponse {
    pub upserted: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// How many of the ids existed before the delete.
    pub deleted: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    pub ids: Vec<String>,
    #[serde(default)]
    pub with_vector: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredPoint {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    #[serde(default)]
    pub payload: Payload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetResponse {
    /// Found points only, in request order; missing ids are absent.
    pub points: Vec<StoredPoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchRequest {
    /// Q query vectors; each gets its own top-k list.
    pub queries: Vec<Vec<f32>>,
    pub k: usize,
    /// A Qdrant filter (`{"must": [...], "should": [...], "must_not": [...]}`).
    #[serde(default)]
    pub filter: Option<Value>,
    /// Item ids never to return (e.g. what the user has already seen).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// HNSW beam width; the shard's default when absent.
    #[serde(default)]
    pub ef: Option<usize>,
    /// `strong`: read on the group's leader after a ReadIndex round, so every write
    /// acknowledged before the request is seen. Default: any caught-up replica.
    #[serde(default, skip_serializing_if = "Consistency::is_default")]
    pub consistency: Consistency,
    /// Whether hits carry their payloads (default). A router merging many lists asks for
    /// ids and scores only, then fetches the payloads of the winners.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub with_payload: bool,
}

impl SearchRequest {
    /// The top `k` of each of `queries` by the shard's defaults: no filter, nothing
    /// excluded, ids and scores only.
    pub fn nearest(queries: Vec<Vec<f32>>, k: usize) -> Self {
        Self {
            queries,
            k,
            filter: None,
            exclude: Vec::new(),
            ef: None,
            consistency: Consistency::default(),
            with_payload: false,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    #[default]
    Any,
    Strong,
}

impl Consistency {
    pub fn is_default(&self) -> bool {
        *self == Self::Any
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrollRequest {
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default = "default_page")]
    pub limit: usize,
    /// Only points in these slots (a page may then hold fewer than `limit`, even none,
    /// before the last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Vec<u16>>,
    /// Items (default) or users' histories (as points: the user id, a placeholder vector,
    /// the events in the payload).
    #[serde(default, skip_serializing_if = "Keyspace::is_items")]
    pub keyspace: Keyspace,
}

fn default_page() -> usize {
    1024
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    #[serde(default)]
    pub payload: Payload,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchResponse {
    /// One list per query, best first.
    pub results: Vec<Vec<Hit>>,
}

/// Several groups' searches in one call to a node hosting a replica of each
/// (`POST /v1/search/groups`): the same queries in every group, each group leaving out
/// its own excluded ids. Reads any caught-up replica (`consistency` must be `any`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupsSearch {
    pub groups: Vec<u64>,
    /// Per group, in the order of `groups`: the ids it leaves out.
    pub exclude: Vec<Vec<String>>,
    /// The queries, `k`, filter, `ef` and payload choice (its `exclude` is not used).
    pub search: SearchRequest,
}

/// A [`GroupsSearch`]'s answer: per group, in request order, its lists or why this node
/// could not search it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupsFound {
    pub groups: Vec<GroupFound>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupFound {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lists: Option<PackedResults>,
    /// The error's status, code and message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<(u16, String, String)>,
}

/// A search's answer in the compact encoding: per query, its ids and its scores side by
/// side, and payloads only where a hit has one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackedResults {
    pub lists: Vec<PackedList>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PackedList {
    pub ids: Vec<String>,
    pub scores: Vec<f32>,
    /// `(position, payload)` for the hits whose payload is not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payloads: Vec<(u32, Payload)>,
}

impl From<SearchResponse> for PackedResults {
    fn from(r: SearchResponse) -> Self {
        let lists = r
            .results
            .into_iter()
            .map(|hits| {
                let mut list = PackedList::default();
                for (i, h) in hits.into_iter().enumerate() {
                    list.ids.push(h.id);
                    list.scores.push(h.score);
                    if !h.payload.is_empty() {
                        list.payloads.push((i as u32, h.payload));
                    }
                }
                list
            })
            .collect();
        Self { lists }
    }
}

impl From<PackedResults> for SearchResponse {
    fn from(p: PackedResults) -> Self {
        let results = p
            .lists
            .into_iter()
            .map(|list| {
                let mut hits: Vec<Hit> = list
                    .ids
                    .into_iter()
                    .zip(list.scores)
                    .map(|(id, score)| Hit {
                        id,
                        score,
                        payload: Payload::new(),
                    })
                    .collect();
                for (i, payload) in list.payloads {
                    if let Some(h) = hits.get_mut(i as usize) {
                        h.payload = payload;
                    }
                }
                hits
            })
            .collect();
        Self { results }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub points: usize,
    pub segments: usize,
    pub indexed_vectors: usize,
    pub dim: usize,
    /// An index build is running (writes are still taken meanwhile).
    #[serde(default)]
    pub indexing: bool,
    /// Runs of the optimisers that rebuilt segments (index builds, merges), finished since
    /// the store opened: a build too short to be seen running still counts here.
    #[serde(default)]
    pub builds: u64,
    /// Writes have paused and the optimisers found nothing left to do: the segments are
    /// what the store settles into (a build or merge may still start with the next write).
    #[serde(default)]
    pub settled: bool,
    #[serde(default)]
    pub memory: Memory,
}

/// Where a store's bytes are: what it holds in RAM and what stays on disk (memory-mapped,
/// read through the page cache). Taken from the engine's files and the collection
/// settings, so it counts data, not allocator overhead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Original vectors held in RAM.
    pub vectors_ram: u64,
    /// Original vectors memory-mapped from disk.
    pub vectors_disk: u64,
    /// Quantized vectors (always in RAM).
    pub quantized: u64,
    /// HNSW graphs (in RAM).
    pub index: u64,
    /// Payloads and their indexes (on disk).
    pub payloads: u64,
    /// Everything the store keeps on disk, logs included.
    pub disk: u64,
}

impl Memory {
    /// Bytes the store holds in RAM.
    pub fn ram(&self) -> u64 {
        self.vectors_ram + self.quantized + self.index
    }

    /// RAM bytes per stored item (0 when empty).
    pub fn ram_per_item(&self, points: usize) -> f64 {
        if points == 0 {
            0.0
        } else {
            self.ram() as f64 / points as f64
        }
    }
}

impl std::ops::AddAssign for Memory {
    fn add_assign(&mut self, o: Self) {
        self.vectors_ram += o.vectors_ram;
        self.vectors_disk += o.vectors_disk;
        self.quantized += o.quantized;
        self.index += o.index;
        self.payloads += o.payloads;
        self.disk += o.disk;
    }
}

/// One page of a scroll over a shard, in point-id order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Page {
    pub points: Vec<StoredPoint>,
    /// Where the next page starts; `None` after the last page.
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_decimals_are_their_own_point_ids() {
        for (id, n) in [("0", 0), ("42", 42), ("18446744073709551615", u64::MAX)] {
            assert_eq!(decimal_id(id), Some(n), "{id}");
            assert_eq!(PointIds::Direct.key(id), PointKey::Num(n));
            assert_eq!(PointIds::Hashed.key(id), PointKey::Uuid(point_uuid(id)));
        }
        for id in [
            "",
            "042",
            "00",
            "-1",
            "+1",
            "1e3",
            " 1",
            "18446744073709551616",
            "i1",
        ] {
            assert_eq!(decimal_id(id), None, "{id:?}");
            assert_eq!(PointIds::Direct.key(id), PointKey::Uuid(point_uuid(id)));
        }
        // Numbers first, in numeric order, as Qdrant scrolls.
        let mut keys: Vec<PointKey> = ["i1", "10", "9", "a"]
            .iter()
            .map(|id| PointIds::Direct.key(id))
            .collect();
        keys.sort();
        assert_eq!(keys[..2], [PointKey::Num(9), PointKey::Num(10)]);
        assert!(matches!(keys[2], PointKey::Uuid(_)));
    }

    #[test]
    fn hex_ids_pack_into_point_ids_and_back() {
        let oid = "65a1f0c2e4b0a1b2c3d4e5f6";
        for id in ["0", "042", "00", "f", oid, "0123456789abcdef0123456789abc"] {
            let u = packed_uuid(id).unwrap_or_else(|| panic!("{id} packs"));
            assert_eq!(u.get_version_num(), 8, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(unpacked_id(&u).as_deref(), Some(id));
        }
        assert_eq!(
            PointIds::Packed.key(oid),
            PointKey::Uuid(packed_uuid(oid).unwrap())
        );
        // Decimals stay numbers; what does not pack is hashed, and no hash unpacks.
        assert_eq!(PointIds::Packed.key("42"), PointKey::Num(42));
        for id in ["", "A1", "item-1", "g", &"a".repeat(MAX_PACKED + 1)] {
            assert_eq!(packed_uuid(id), None, "{id:?}");
            assert_eq!(PointIds::Packed.key(id), PointKey::Uuid(point_uuid(id)));
            assert_eq!(unpacked_id(&point_uuid(id)), None);
        }
        // Distinct ids, distinct point ids (lengths differ: "0" and "00").
        let keys: std::collections::HashSet<_> = ["0", "00", "000", "1", "01", "10"]
            .iter()
            .map(|id| packed_uuid(id))
            .collect();
        assert_eq!(keys.len(), 6);
    }

    #[test]
    fn vectors_keep_scores_finite() {
        assert!(check_vector(&[0.6, 0.8], 2).is_ok());
        assert!(check_vector(&[0.6], 2).unwrap_err().contains("dimensions"));
        assert!(check_vector(&[f32::NAN, 0.0], 2).is_err());
        // Finite but huge: two such vectors would score past f32's range.
        let huge = [3e38f32, 3e38];
        assert!(huge.iter().fold(0f32, |s, x| s + x * x).is_infinite());
        assert!(check_vector(&huge, 2).unwrap_err().contains("norm"));
        // At the bound, the largest score is finite in f32.
        let edge = [MAX_NORM as f32, 0.0];
        assert!(check_vector(&edge, 2).is_ok());
        assert!((edge[0] * edge[0]).is_finite());
    }
}
