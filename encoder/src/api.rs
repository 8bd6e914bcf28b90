//! Wire types of the encoder's HTTP API.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Most texts or users one request may carry.
pub const MAX_BATCH: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeItemsRequest {
    pub texts: Vec<String>,
    /// Time the caller will wait; past it the request is dropped unrun (504).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeItemsResponse {
    pub vectors: Vec<Vec<f32>>,
    pub model_version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserInput {
    /// Item vectors, oldest to newest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Vec<f32>>,
    /// The same vectors packed, in place of `history`: D little-endian f32 per event,
    /// oldest first, base64 (standard alphabet, padded). A quarter of the bytes of the
    /// JSON numbers, and no float parsing on either side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_b64: Option<String>,
    /// One scenario name per history vector.
    pub scenarios: Vec<String>,
}

/// Vectors in the packed form: their floats little-endian, one after another, base64
/// (standard alphabet, padded).
pub fn pack<'a>(vectors: impl IntoIterator<Item = &'a [f32]>) -> String {
    let bytes: Vec<u8> = vectors
        .into_iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    BASE64.encode(bytes)
}

/// The vectors of `dim` floats in `b64`; a message for the caller when it is malformed.
pub fn unpack(b64: &str, dim: usize) -> Result<Vec<Vec<f32>>, String> {
    let bytes = BASE64
        .decode(b64.as_bytes())
        .map_err(|e| format!("not base64: {e}"))?;
    let row = 4 * dim;
    if dim == 0 || bytes.len() % row != 0 {
        return Err(format!(
            "{} bytes is not a whole number of {dim}-float vectors",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(row)
        .map(|v| {
            v.chunks_exact(4)
                .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
                .collect()
        })
        .collect())
}

impl UserInput {
    /// `vectors` in the packed form.
    pub fn packed(vectors: &[Vec<f32>], scenarios: Vec<String>) -> Self {
        Self {
            history: Vec::new(),
            history_b64: Some(pack(vectors.iter().map(Vec::as_slice))),
            scenarios,
        }
    }

    /// The history vectors of `dim` floats, from whichever form the caller sent; a
    /// message for the caller when the input is malformed.
    pub fn into_vectors(self, dim: usize) -> Result<Vec<Vec<f32>>, String> {
        let Some(b64) = self.history_b64 else {
            return Ok(self.history);
        };
        if !self.history.is_empty() {
            return Err("give history or history_b64, not both".into());
        }
        unpack(&b64, dim).map_err(|e| format!("history_b64: {e}"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeUsersRequest {
    pub users: Vec<UserInput>,
    /// Answer with `queries_b64` in place of `queries`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packed: bool,
    /// Time the caller will wait; past it the request is dropped unrun (504).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncodeUsersResponse {
    /// Per user, Q query vectors (empty when the request asked for `packed`).
    #[serde(default)]
    pub queries: Vec<Vec<Vec<f32>>>,
    /// Per user, its Q query vectors packed (see [`pack`]), when the request asked for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries_b64: Vec<String>,
    pub model_version: String,
}

impl EncodeUsersResponse {
    /// Each user's query vectors of `dim` floats, from whichever form the answer has.
    pub fn into_queries(self, dim: usize) -> Result<Vec<Vec<Vec<f32>>>, String> {
        if self.queries_b64.is_empty() {
            return Ok(self.queries);
        }
        self.queries_b64
            .iter()
            .map(|b64| unpack(b64, dim).map_err(|e| format!("queries_b64: {e}")))
            .collect()
    }
}

/// What `GET /v1/stats` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncoderStats {
    pub model_version: String,
    pub device: crate::runtime::Device,
    pub sessions: usize,
    pub batching: bool,
    pub max_batch: usize,
    pub max_wait_us: u64,
    pub queue_rows: usize,
    pub queued_item_rows: usize,
    pub queued_user_rows: usize,
    /// This encoder reads `history_b64` and answers `packed` requests. Absent (false) on
    /// encoders older than the packed form: their clients send JSON numbers.
    #[serde(default)]
    pub packed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_histories_round_trip_bit_for_bit() {
        let vectors = vec![
            vec![0.1f32, -2.5, f32::MIN_POSITIVE],
            vec![1e-30, 3.0, -0.0],
        ];
        let input = UserInput::packed(&vectors, vec!["search".into(); 2]);
        let json = serde_json::to_string(&input).unwrap();
        assert!(!json.contains("\"history\""), "{json}");
        let back: UserInput = serde_json::from_str(&json).unwrap();
        let got = back.into_vectors(3).unwrap();
        let bits =
            |v: &[Vec<f32>]| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
        assert_eq!(bits(&got), bits(&vectors));
    }

    #[test]
    fn packed_answers_unpack_to_the_plain_ones() {
        let queries = vec![
            vec![vec![0.5f32, -1.0], vec![0.25, 2.0]],
            vec![vec![3.0, 4.0], vec![-5.0, 6.5]],
        ];
        let packed = EncodeUsersResponse {
            queries: Vec::new(),
            queries_b64: queries
                .iter()
                .map(|u| pack(u.iter().map(Vec::as_slice)))
                .collect(),
            model_version: "v".into(),
        };
        let json = serde_json::to_string(&packed).unwrap();
        let back: EncodeUsersResponse = serde_json::from_str(&json).unwrap();
        assert_eq!(back.into_queries(2).unwrap(), queries);
        let plain = EncodeUsersResponse {
            queries: queries.clone(),
            queries_b64: Vec::new(),
            model_version: "v".into(),
        };
        assert!(!serde_json::to_string(&plain)
            .unwrap()
            .contains("queries_b64"));
        assert_eq!(plain.into_queries(2).unwrap(), queries);
    }

    #[test]
    fn malformed_packed_histories_are_the_callers_mistake() {
        let three = UserInput::packed(&[vec![1.0, 2.0, 3.0]], vec!["search".into()]);
        let msg = three.clone().into_vectors(2).unwrap_err();
        assert!(msg.contains("12 bytes"), "{msg}");
        let bad = UserInput {
            history_b64: Some("not base64!".into()),
            ..UserInput::default()
        };
        assert!(bad.into_vectors(3).unwrap_err().contains("history_b64"));
        let both = UserInput {
            history: vec![vec![1.0, 2.0, 3.0]],
            ..three
        };
        assert!(both.into_vectors(3).unwrap_err().contains("not both"));
        let plain = UserInput {
            history: vec![vec![1.0, 2.0, 3.0]],
            ..UserInput::default()
        };
        assert_eq!(plain.into_vectors(3).unwrap(), vec![vec![1.0, 2.0, 3.0]]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn packed_vectors_round_trip_bit_for_bit(
                dim in 1usize..80,
                rows in proptest::collection::vec(proptest::collection::vec(any::<f32>(), 80), 0..12),
            ) {
                let vectors: Vec<Vec<f32>> = rows.into_iter().map(|r| r[..dim].to_vec()).collect();
                let back = unpack(&pack(vectors.iter().map(Vec::as_slice)), dim).unwrap();
                let bits = |v: &[Vec<f32>]| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
                prop_assert_eq!(back.len(), vectors.len());
                prop_assert_eq!(bits(&back), bits(&vectors));
            }

            #[test]
            fn any_packed_text_unpacks_or_says_why(text in ".{0,200}", dim in 0usize..70) {
                match unpack(&text, dim) {
                    Ok(vectors) => prop_assert!(vectors.iter().all(|v| v.len() == dim)),
                    Err(message) => prop_assert!(!message.is_empty()),
                }
            }

            #[test]
            fn any_bytes_unpack_to_whole_vectors_or_an_error(
                bytes in proptest::collection::vec(any::<u8>(), 0..400),
                dim in 1usize..20,
            ) {
                let text = BASE64.encode(&bytes);
                match unpack(&text, dim) {
                    Ok(v) => prop_assert_eq!(v.len() * dim * 4, bytes.len()),
                    Err(_) => prop_assert!(bytes.len() % (4 * dim) != 0),
                }
            }
        }
    }
}
