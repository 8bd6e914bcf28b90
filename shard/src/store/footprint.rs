//! Where a store's bytes are, read from the engine's files: each segment's original
//! vectors, quantized vectors, HNSW graph and payloads, and whether its vectors are held
//! in RAM or memory-mapped (from the segment's own config, so segments still built with
//! older settings count as what they are).

use std::path::Path;

use redrec_shard_api::points::Memory;
use walkdir::WalkDir;

/// What one file under a segment holds.
enum Part {
    Vectors,
    Quantized,
    Index,
    Payloads,
    Other,
}

fn part(rel: &Path) -> Part {
    let mut parts = rel.components().map(|c| c.as_os_str().to_string_lossy());
    match parts.next().as_deref() {
        Some(d) if d.starts_with("vector_storage") => {
            if rel.to_string_lossy().contains("quantized") {
                Part::Quantized
            } else {
                Part::Vectors
            }
        }
        Some(d) if d.starts_with("vector_index") => Part::Index,
        Some(d) if d.starts_with("payload") => Part::Payloads,
        _ => Part::Other,
    }
}

/// Whether a segment holds its original vectors in RAM, by its `segment.json`.
fn vectors_in_ram(segment: &Path) -> bool {
    let config = std::fs::read(segment.join("segment.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let storage = config
        .as_ref()
        .and_then(|c| c.pointer("/config/vector_data/storage_type"))
        .or_else(|| {
            config
                .as_ref()
                .and_then(|c| c.pointer("/config/vector_data//storage_type"))
        });
    match storage.and_then(|s| s.as_str()) {
        Some(s) => s == "Memory" || s.starts_with("InRam"),
        None => true,
    }
}

/// Bytes a file takes on disk (a sparse, preallocated mmap counts what it holds).
fn size(meta: &std::fs::Metadata) -> u64 {
    (std::os::unix::fs::MetadataExt::blocks(meta) * 512).min(meta.len())
}

fn files(dir: &Path) -> impl Iterator<Item = (walkdir::DirEntry, u64)> {
    WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            let bytes = size(&e.metadata().ok()?);
            Some((e, bytes))
        })
}

/// Measures the store kept in `dir`.
pub fn measure(dir: &Path) -> Memory {
    let mut m = Memory {
        disk: files(dir).map(|(_, bytes)| bytes).sum(),
        ..Default::default()
    };
    let segments = dir.join("segments");
    let Ok(listing) = std::fs::read_dir(&segments) else {
        return m;
    };
    for segment in listing.filter_map(Result::ok).map(|e| e.path()) {
        let in_ram = vectors_in_ram(&segment);
        for (entry, bytes) in files(&segment) {
            let Ok(rel) = entry.path().strip_prefix(&segment) else {
                continue;
            };
            match part(rel) {
                Part::Vectors if in_ram => m.vectors_ram += bytes,
                Part::Vectors => m.vectors_disk += bytes,
                Part::Quantized => m.quantized += bytes,
                Part::Index => m.index += bytes,
                Part::Payloads => m.payloads += bytes,
                Part::Other => {}
            }
        }
    }
    m
}
