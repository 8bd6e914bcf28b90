//! The embedded store: reads and writes, reopening, index builds that never hold writes,
//! settings taking effect, memory accounting.

use serde_json::{json, Value};

use std::sync::atomic::Ordering;

use redrec_shard_api::collection::{Collection, Quantization};
use redrec_shard_api::points::{Payload, Point, SearchRequest};

use super::edge::lock;
use super::edge::EdgeStore;
use super::*;

fn unit(dim: usize, hot: usize) -> Vec<f32> {
    (0..dim)
        .map(|i| if i == hot { 1.0 } else { 0.01 })
        .collect()
}

fn point(id: &str, v: Vec<f32>, category: &str) -> Point {
    let mut payload = Payload::new();
    payload.insert("category".into(), json!(category));
    Point {
        id: id.into(),
        vector: v,
        payload,
    }
}

#[test]
fn upsert_get_search_filter_exclude_delete_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::open(dir.path(), 8, &Default::default()).unwrap();
    store
        .upsert(vec![
            point("a", unit(8, 0), "x"),
            point("b", unit(8, 1), "y"),
            point("c", unit(8, 0), "y"),
        ])
        .unwrap();
    let got = store
        .get(&["b".into(), "zz".into(), "a".into()], true)
        .unwrap();
    assert_eq!(
        got.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["b", "a"]
    );
    assert_eq!(got[1].vector.as_deref(), Some(unit(8, 0).as_slice()));
    assert_eq!(got[0].payload["category"], "y");

    let req = |filter: Option<Value>, exclude: Vec<String>| SearchRequest {
        queries: vec![unit(8, 0), unit(8, 1)],
        k: 2,
        filter,
        exclude,
        ef: None,
        consistency: Default::default(),
        with_payload: true,
    };
    let res = store.search(&req(None, vec![])).unwrap();
    assert!(res
        .iter()
        .flatten()
        .all(|h| h.payload.contains_key("category")));
    // Without payloads: the same ids and scores, nothing else.
    let bare = store
        .search(&SearchRequest {
            with_payload: false,
            ..req(None, vec![])
        })
        .unwrap();
    assert!(bare.iter().flatten().all(|h| h.payload.is_empty()));
    let ids = |r: &[Vec<redrec_shard_api::points::Hit>]| -> Vec<Vec<(String, f32)>> {
        r.iter()
            .map(|l| l.iter().map(|h| (h.id.clone(), h.score)).collect())
            .collect()
    };
    assert_eq!(ids(&bare), ids(&res));
    assert_eq!(res.len(), 2);
    let mut first: Vec<_> = res[0].iter().map(|h| h.id.as_str()).collect();
    first.sort();
    assert_eq!(first, ["a", "c"]);
    assert_eq!(res[1][0].id, "b");

    let filtered = store
        .search(&req(
            Some(json!({"must":[{"key":"category","match":{"value":"y"}}]})),
            vec![],
        ))
        .unwrap();
    assert!(filtered
        .iter()
        .flatten()
        .all(|h| h.payload["category"] == "y"));
    let excluded = store.search(&req(None, vec!["a".into()])).unwrap();
    assert!(excluded.iter().flatten().all(|h| h.id != "a"));
    assert!(matches!(
        store.search(&req(Some(json!({"must": 5})), vec![])),
        Err(StoreError::BadRequest(_))
    ));

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.scroll(cursor.as_deref(), 2).unwrap();
        assert!(page.points.iter().all(|p| p.vector.is_some()));
        seen.extend(page.points.into_iter().map(|p| p.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["a", "b", "c"]);

    assert_eq!(store.delete(&["a".into(), "nope".into()]).unwrap(), 1);
    drop(store);
    let reopened = EdgeStore::open(dir.path(), 8, &Default::default()).unwrap();
    assert_eq!(reopened.stats().unwrap().points, 2);
    assert!(reopened.get(&["a".into()], false).unwrap().is_empty());
    assert!(EdgeStore::open(dir.path(), 16, &Default::default()).is_err());
    assert_eq!(reopened.clear().unwrap(), 2);
    assert_eq!(reopened.stats().unwrap().points, 0);
}

#[test]
fn rejects_bad_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::open(dir.path(), 4, &Default::default()).unwrap();
    assert!(matches!(
        store.upsert(vec![point("a", vec![1.0; 3], "x")]),
        Err(StoreError::BadRequest(_))
    ));
    assert!(matches!(
        store.upsert(vec![point("a", vec![f32::NAN; 4], "x")]),
        Err(StoreError::BadRequest(_))
    ));
    assert_eq!(store.stats().unwrap().points, 0);
}

/// Deterministic pseudo-random unit vectors around a few centres (like item embeddings).
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..16)
        .map(|_| (0..dim).map(|_| next()).collect())
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[i % centres.len()];
            let v: Vec<f32> = c.iter().map(|x| x + 0.3 * next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect()
}

fn points(vectors: &[Vec<f32>], from: usize) -> Vec<Point> {
    vectors
        .iter()
        .enumerate()
        .map(|(i, v)| Point {
            id: format!("p{}", from + i),
            vector: v.clone(),
            payload: Payload::new(),
        })
        .collect()
}

/// Polls `done` every 100 ms for at most `limit`.
fn wait_for(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    done()
}

fn small_threshold() -> Collection {
    Collection {
        // 64 KiB: 512 vectors of 32 floats.
        indexing_threshold_kb: 64,
        ..Default::default()
    }
}

#[test]
fn writes_are_acknowledged_during_an_index_build() {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::open(dir.path(), 32, &small_threshold()).unwrap();
    let vectors = clustered(40_000, 32, 1);
    let mut during_build = 0;
    for (i, chunk) in vectors.chunks(500).enumerate() {
        let before = (
            store.core.indexing.load(Ordering::SeqCst),
            store.core.runs.load(Ordering::SeqCst),
        );
        store.upsert(points(chunk, i * 500)).unwrap();
        let after = (
            store.core.indexing.load(Ordering::SeqCst),
            store.core.runs.load(Ordering::SeqCst),
        );
        // The build that was running when the write began still runs now it is done.
        if before.0 && after.0 && before.1 == after.1 {
            during_build += 1;
        }
    }
    assert!(
        during_build > 0,
        "no write was acknowledged while an index build ran"
    );
    assert!(
        wait_for(std::time::Duration::from_secs(120), || {
            let s = store.stats().unwrap();
            s.indexed_vectors >= s.points / 2 && !s.indexing
        }),
        "the points were not indexed: {:?}",
        store.stats().unwrap()
    );
    let stats = store.stats().unwrap();
    assert_eq!(stats.points, vectors.len());
    // The builds were counted, and no more than the optimisation runs.
    assert!(stats.builds > 0, "{stats:?}");
    assert!(stats.builds <= store.core.runs.load(Ordering::SeqCst));
    // Every point finds itself.
    for i in (0..vectors.len()).step_by(997) {
        let hits = store
            .search(&SearchRequest::nearest(vec![vectors[i].clone()], 1))
            .unwrap();
        assert_eq!(hits[0][0].id, format!("p{i}"));
    }
}

#[test]
fn acknowledged_writes_survive_a_crash_before_any_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::open(dir.path(), 8, &Default::default()).unwrap();
    let vectors = clustered(300, 8, 2);
    store.upsert(points(&vectors, 0)).unwrap();
    store.delete(&["p7".into()]).unwrap();
    // A crash image: the files as they are while no checkpoint can run (it needs the
    // journal), so the engine holds what it has not flushed only in memory.
    let copy = tempfile::tempdir().unwrap();
    {
        let journal = lock(&store.core.journal);
        assert!(journal.pending() > 0);
        for entry in walkdir::WalkDir::new(dir.path()) {
            let entry = entry.unwrap();
            let to = copy
                .path()
                .join(entry.path().strip_prefix(dir.path()).unwrap());
            if entry.file_type().is_dir() {
                std::fs::create_dir_all(&to).unwrap();
            } else {
                std::fs::copy(entry.path(), &to).unwrap();
            }
        }
    }
    let reopened = EdgeStore::open(copy.path(), 8, &Default::default()).unwrap();
    assert_eq!(reopened.stats().unwrap().points, 299);
    assert!(reopened.get(&["p7".into()], false).unwrap().is_empty());
    assert_eq!(
        reopened.get(&["p8".into()], true).unwrap()[0]
            .vector
            .as_deref(),
        Some(vectors[8].as_slice())
    );
}

#[test]
fn int8_on_disk_takes_effect_and_cuts_vector_ram() {
    let vectors = clustered(20_000, 32, 3);
    let open = |c: &Collection| {
        let dir = tempfile::tempdir().unwrap();
        let store = EdgeStore::open(dir.path(), 32, c).unwrap();
        for (i, chunk) in vectors.chunks(2000).enumerate() {
            store.upsert(points(chunk, i * 2000)).unwrap();
        }
        assert!(wait_for(std::time::Duration::from_secs(120), || {
            let s = store.stats().unwrap();
            s.indexed_vectors == s.points && !s.indexing
        }));
        (dir, store)
    };
    let (_a, f32_ram) = open(&small_threshold());
    let compact = Collection {
        quantization: Quantization::Int8,
        on_disk: true,
        ..small_threshold()
    };
    let (_b, int8_disk) = open(&compact);
    let (m32, m8) = (
        f32_ram.stats().unwrap().memory,
        int8_disk.stats().unwrap().memory,
    );
    let raw = (vectors.len() * 32 * 4) as u64;
    assert!(m32.vectors_ram >= raw, "{m32:?}");
    assert_eq!(m32.quantized, 0, "{m32:?}");
    assert!(m8.vectors_disk >= raw, "{m8:?}");
    assert!(m8.quantized >= raw / 4, "{m8:?}");
    assert!(
        (m8.vectors_ram + m8.quantized) * 3 < m32.vectors_ram,
        "int8 on disk: {m8:?}, f32 in RAM: {m32:?}"
    );
    assert!(m32.index > 0 && m32.disk > m32.vectors_ram);

    // Changed later, the settings are applied by the next optimisation.
    f32_ram.configure(&compact).unwrap();
    assert!(
        wait_for(std::time::Duration::from_secs(120), || {
            let m = f32_ram.stats().unwrap().memory;
            m.quantized >= raw / 4 && m.vectors_ram < raw / 8
        }),
        "reconfigured: {:?}",
        f32_ram.stats().unwrap().memory
    );
    let mut cosine = compact.clone();
    cosine.distance = redrec_shard_api::collection::Distance::Cosine;
    assert!(matches!(
        f32_ram.configure(&cosine),
        Err(StoreError::BadRequest(_))
    ));
}

#[test]
fn a_stream_onto_the_indexed_catalogue_caps_merges_and_a_load_does_not() {
    use super::config::{segment_cap_kb, Writes, QUIET};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::open(dir.path(), 32, &small_threshold()).unwrap();
    let vectors = clustered(9_000, 32, 4);
    let at_rest = Some(segment_cap_kb(Writes::AtRest));
    let stream_cap = |store: &EdgeStore| {
        Some(segment_cap_kb(Writes::Streaming {
            vector_bytes: store.stats().unwrap().points as u64 * 32 * 4,
        }))
    };
    let settle = || {
        assert!(
            wait_for(QUIET + Duration::from_secs(60), || {
                store.stats().unwrap().settled
            }),
            "the store never settled: {:?}",
            store.stats().unwrap()
        );
    };
    // A load into an empty store is not a stream: until its first build is done, the
    // engine merges as it would at rest.
    store.upsert(points(&vectors[..3_000], 0)).unwrap();
    let built = wait_for(Duration::from_secs(60), || {
        // The cap is read first: if no build had finished after it, it was the load's.
        let cap = store.core.merge_cap();
        let built = store.stats().unwrap().builds > 0;
        assert!(built || cap == at_rest, "a load was capped");
        built
    });
    assert!(
        built,
        "the load was never built: {:?}",
        store.stats().unwrap()
    );
    // Writes that go on at once, without a pause, stream onto what the indexer caught up
    // with: at this size the cap is the floor whatever the store holds.
    assert_ne!(stream_cap(&store), at_rest);
    let mut next = 3_000;
    while next < 6_000 && store.core.merge_cap() != stream_cap(&store) {
        store
            .upsert(points(&vectors[next..next + 30], next))
            .unwrap();
        next += 30;
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(
        store.core.merge_cap(),
        stream_cap(&store),
        "a stream that followed a load without a pause was never capped"
    );
    assert!(!store.stats().unwrap().settled, "writes kept coming");
    settle();
    // After it settled, a stream onto the settled catalogue is capped too.
    let mut capped = false;
    for chunk in vectors[6_000..].chunks(300) {
        store.upsert(points(chunk, next)).unwrap();
        next += chunk.len();
        assert!(!store.stats().unwrap().settled, "a write just came");
        // The indexer sets the cap at its next turn.
        capped |= store.core.merge_cap() == stream_cap(&store);
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(capped, "the stream's merge cap was never set");
    settle();
    let stats = store.stats().unwrap();
    assert_eq!(stats.points, next);
    assert!(!stats.indexing);
    assert_eq!(store.core.merge_cap(), at_rest);
    store.upsert(points(&vectors[..1], 0)).unwrap();
    assert!(!store.stats().unwrap().settled);
}

/// Under `direct`, a decimal id is its own point id: hits are named without reading
/// payloads, other ids keep theirs in the payload, scrolls go numbers first. A store made
/// before schemes were recorded keeps hashing whatever it is asked.
#[test]
fn decimal_ids_are_point_ids_and_old_stores_keep_hashing() {
    use redrec_shard_api::points::{PointIds, ID_KEY};
    let ids = ["42", "7", "042", "item-a", "18446744073709551615"];
    let search = |store: &EdgeStore, with_payload: bool, exclude: &[&str]| {
        let queries = (0..ids.len()).map(|i| unit(8, i)).collect();
        let exclude = exclude.iter().map(|s| s.to_string()).collect();
        store
            .search(&SearchRequest {
                exclude,
                with_payload,
                ..SearchRequest::nearest(queries, ids.len())
            })
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let direct = Collection {
            point_ids: PointIds::Direct,
            ..Default::default()
        };
        let store = EdgeStore::open(dir.path(), 8, &direct).unwrap();
        assert_eq!(store.collection().point_ids, PointIds::Direct);
        let pts = (ids.iter().enumerate()).map(|(i, id)| point(id, unit(8, i), "x"));
        store.upsert(pts.collect()).unwrap();
        for with_payload in [false, true] {
            let res = search(&store, with_payload, &[]);
            let top: Vec<&str> = res.iter().map(|hits| hits[0].id.as_str()).collect();
            assert_eq!(top, ids, "with_payload {with_payload}");
            assert!(res.iter().flatten().all(|h| !h.payload.contains_key(ID_KEY)
                && h.payload.contains_key("category") == with_payload));
        }
        let left: Vec<String> = search(&store, false, &["42", "item-a"])
            .into_iter()
            .flatten()
            .map(|h| h.id)
            .collect();
        assert!(!left.is_empty() && left.iter().all(|id| id != "42" && id != "item-a"));
        // One point a page, across the numbers' end.
        let (mut cursor, mut seen) = (None, vec![]);
        loop {
            let page = store.scroll(cursor.as_deref(), 1).unwrap();
            seen.extend(page.points.into_iter().map(|p| p.id));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen[..3], ["7", "42", "18446744073709551615"]);
        let mut hashed = seen[3..].to_vec();
        hashed.sort();
        assert_eq!(hashed, ["042", "item-a"]);
        let gone = ["7".into(), "item-a".into(), "8".into()];
        assert_eq!(store.delete(&gone).unwrap(), 2);
    }
    // Reopened under another scheme: the store keeps its own.
    let hashed = Collection {
        point_ids: PointIds::Hashed,
        ..Default::default()
    };
    let store = EdgeStore::open(dir.path(), 8, &hashed).unwrap();
    assert_eq!(store.collection().point_ids, PointIds::Direct);
    let got = store.get(&["42".into(), "042".into(), "7".into()], false);
    let got: Vec<String> = got.unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(got, ["42", "042"]);
    assert_eq!(digest(&store).unwrap().0, 3);
    drop(store);

    // A store whose scheme file is missing was made before schemes: every id hashed.
    let old = tempfile::tempdir().unwrap();
    {
        let store = EdgeStore::open(old.path(), 8, &hashed).unwrap();
        store.upsert(vec![point("42", unit(8, 0), "x")]).unwrap();
    }
    std::fs::remove_file(old.path().join("point-ids")).unwrap();
    let store = EdgeStore::open(old.path(), 8, &Default::default()).unwrap();
    assert_eq!(store.collection().point_ids, PointIds::Hashed);
    let res = search(&store, false, &[]);
    assert_eq!(res[0][0].id, "42");
    assert!(res[0][0].payload.is_empty());
    assert_eq!(store.get(&["42".into()], false).unwrap().len(), 1);
}

/// Under `packed` (new stores), an id of hex digits is packed into its point id: the
/// engine keeps no copy of it in the payload, hits are named without reading payloads,
/// and reads, scrolls and deletes give it back; other ids are hashed and kept as before.
#[test]
fn hex_ids_are_packed_into_point_ids() {
    use redrec_shard_api::points::{PointIds, ID_KEY};
    let oid = "65a1f0c2e4b0a1b2c3d4e5f6";
    let ids = [oid, "042", "42", "Item-A"];
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::open(dir.path(), 8, &Default::default()).unwrap();
    assert_eq!(store.collection().point_ids, PointIds::Packed);
    let pts = (ids.iter().enumerate()).map(|(i, id)| point(id, unit(8, i), "x"));
    store.upsert(pts.collect()).unwrap();
    let engine = store.core.engine().unwrap();
    let shard = engine.as_ref().unwrap();
    let kept: Vec<bool> = (ids.iter())
        .map(|id| ids::kept_in_payload(shard, PointIds::Packed, id))
        .collect();
    drop(engine);
    assert_eq!(kept, [false, false, false, true]);
    let queries = (0..ids.len()).map(|i| unit(8, i)).collect();
    let res = store.search(&SearchRequest::nearest(queries, 2)).unwrap();
    let top: Vec<&str> = res.iter().map(|hits| hits[0].id.as_str()).collect();
    assert_eq!(top, ids);
    let all: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let got = store.get(&all, true).unwrap();
    let mut named: Vec<&str> = got.iter().map(|p| p.id.as_str()).collect();
    named.sort();
    let mut want = ids.to_vec();
    want.sort();
    assert_eq!(named, want);
    assert!(got
        .iter()
        .all(|p| !p.payload.contains_key(ID_KEY) && p.vector.is_some()));
    let page = store.scroll(None, 10).unwrap();
    let mut scrolled: Vec<&str> = page.points.iter().map(|p| p.id.as_str()).collect();
    scrolled.sort();
    assert_eq!(scrolled, want);
    assert_eq!(store.delete(&[oid.into(), "Item-A".into()]).unwrap(), 2);
    assert_eq!(digest(&store).unwrap().0, 2);
}
