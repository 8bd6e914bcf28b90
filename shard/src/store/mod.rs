//! The vector store behind a shard: a small trait, and its implementation on Qdrant's
//! embedded engine (`qdrant-edge`), so that the engine's version can move.

mod config;
pub mod edge;
mod footprint;
mod ids;
mod journal;
#[cfg(test)]
mod tests;

use redrec_shard_api::collection::Collection;
use redrec_shard_api::points::{Hit, Page, Point, SearchRequest, Stats, StoredPoint};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    BadRequest(String),
    #[error("storage engine: {0}")]
    Engine(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

pub trait VectorStore: Send + Sync + 'static {
    fn dim(&self) -> usize;
    /// Inserts or replaces points; durable when it returns.
    fn upsert(&self, points: Vec<Point>) -> StoreResult<usize>;
    /// Deletes points by item id; durable when it returns. Returns how many existed.
    fn delete(&self, ids: &[String]) -> StoreResult<usize>;
    /// Found points in request order; unknown ids are left out.
    fn get(&self, ids: &[String], with_vector: bool) -> StoreResult<Vec<StoredPoint>>;
    /// One top-k list per query vector.
    fn search(&self, request: &SearchRequest) -> StoreResult<Vec<Vec<Hit>>>;
    fn stats(&self) -> StoreResult<Stats>;
    /// A page of up to `limit` points (with vectors) in storage order, starting at `cursor`
    /// (from the previous page; `None` for the first), and the cursor of the next page.
    fn scroll(&self, cursor: Option<&str>, limit: usize) -> StoreResult<Page>;
    /// Takes new collection settings: searches use them at once, index builds from the
    /// next optimisation on (which rebuilds what was built with other settings).
    fn configure(&self, collection: &Collection) -> StoreResult<()>;
    /// The settings searches use now.
    fn collection(&self) -> Collection;

    /// Deletes every point; durable when it returns. Returns how many there were.
    fn clear(&self) -> StoreResult<usize> {
        let mut deleted = 0;
        loop {
            let page = self.scroll(None, 1024)?;
            if page.points.is_empty() {
                return Ok(deleted);
            }
            let items: Vec<String> = page.points.into_iter().map(|p| p.id).collect();
            deleted += self.delete(&items)?;
        }
    }
}

/// How many points a store holds and a checksum over their ids and vectors, to compare
/// replicas. Streamed page by page in scroll order, which is point-id order: the same on
/// every store holding the same items, so nothing needs holding or sorting.
pub fn digest(store: &dyn VectorStore) -> StoreResult<(usize, String)> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut points = 0;
    let mut cursor = None;
    loop {
        let page = store.scroll(cursor.as_deref(), 4096)?;
        points += page.points.len();
        for p in &page.points {
            hasher.update(&(p.id.len() as u64).to_le_bytes());
            hasher.update(p.id.as_bytes());
            for x in p.vector.iter().flatten() {
                hasher.update(&x.to_bits().to_le_bytes());
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok((points, format!("{:032x}", hasher.digest128()))),
        }
    }
}

/// See [`redrec_shard_api::points::check_vector`]: the same rule as the router's.
pub fn check_vector(vector: &[f32], dim: usize) -> StoreResult<()> {
    redrec_shard_api::points::check_vector(vector, dim).map_err(StoreError::BadRequest)
}

/// What every store refuses in an upsert, decided from the points alone (so replicas of a
/// group all decide alike): an empty id, or a vector breaking the vector rule.
pub fn check_points(points: &[Point], dim: usize) -> StoreResult<()> {
    for (i, p) in points.iter().enumerate() {
        if p.id.is_empty() {
            return Err(StoreError::BadRequest(format!(
                "points[{i}]: item id is empty"
            )));
        }
        check_vector(&p.vector, dim)
            .map_err(|e| StoreError::BadRequest(format!("points[{i}]: {e}")))?;
    }
    Ok(())
}
