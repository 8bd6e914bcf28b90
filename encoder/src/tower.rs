//! The two towers: item text -> D-d vector (tokenized here), and a history of item
//! vectors with scenarios -> Q query vectors, run on pooled ONNX Runtime sessions and
//! checked at load against their manifest.

use std::path::Path;
use std::sync::Arc;

use ndarray::{Array2, Array3};
use ort::value::TensorRef;
use tokenizers::Tokenizer;

use crate::contract;
use crate::error::EncoderError;
use crate::manifest::Manifest;
use crate::pool::{EncoderConfig, Pool};
use crate::runtime::Device;

/// One user's events, oldest to newest: item vectors and their scenario indices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserHistory {
    pub vectors: Vec<Vec<f32>>,
    pub scenarios: Vec<i64>,
}

pub struct Encoder {
    manifest: Manifest,
    tokenizer: Tokenizer,
    items: Pool,
    users: Pool,
    device: Device,
}

impl Encoder {
    /// Loads the towers in `dir` and checks them against its manifest.
    pub fn load(dir: &Path, cfg: &EncoderConfig) -> Result<Self, EncoderError> {
        let manifest = Manifest::load(dir)?;
        let tok_file = manifest
            .item_tower
            .tokenizer
            .clone()
            .unwrap_or_else(|| "tokenizer.json".into());
        let tokenizer = Tokenizer::from_file(dir.join(&tok_file))
            .map_err(|e| EncoderError::Model(format!("{}: {e}", dir.join(&tok_file).display())))?;
        let (items, item_device) = Pool::load(&dir.join(&manifest.item_tower.file), cfg)?;
        let (users, user_device) = Pool::load(&dir.join(&manifest.user_tower.file), cfg)?;
        let device = if item_device == user_device {
            item_device
        } else {
            Device::Cpu
        };
        let encoder = Self {
            manifest,
            tokenizer,
            items,
            users,
            device,
        };
        contract::check(
            &encoder.manifest,
            &encoder.items.session(),
            &encoder.users.session(),
        )?;
        encoder.check_known_vectors()?;
        Ok(encoder)
    }

    /// Encodes the manifest's check texts and compares with the vectors training computed,
    /// which catches a tokenizer that is not the one the tower was trained with.
    fn check_known_vectors(&self) -> Result<(), EncoderError> {
        let Some(check) = &self.manifest.check else {
            return Ok(());
        };
        let got = self.encode_items(&check.texts)?;
        for ((text, want), got) in check.texts.iter().zip(&check.item_embedding).zip(&got) {
            let diff = want
                .iter()
                .zip(got)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            if diff > check.max_abs_diff {
                return Err(EncoderError::Contract(format!(
                    "the item tower gives {text:?} a vector {diff:.2e} away from the manifest's \
                     check (at most {:.0e}): tokenizer.json or item_tower.onnx is not what \
                     the towers were trained with",
                    check.max_abs_diff
                )));
            }
        }
        Ok(())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Where the towers actually run (CUDA falls back to the CPU when unusable).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Sessions per tower: one batch worker each.
    pub fn sessions(&self) -> usize {
        self.items.sessions.len()
    }

    /// Item texts -> one D-d vector each (L2-normalised by the tower).
    pub fn encode_items(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EncoderError> {
        let tokens = self.tokenize(texts)?;
        self.run_items(None, &tokens)
    }

    /// Token ids of each text, with the special tokens its tokenizer adds (a pretrained
    /// backbone's [CLS] and [SEP], say; as in training), cut to the tower's T.
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Vec<i64>>, EncoderError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EncoderError::Input(format!("tokenizing: {e}")))?;
        let t = self.manifest.max_tokens;
        Ok(encodings
            .iter()
            .map(|e| {
                e.get_ids()
                    .iter()
                    .take(t)
                    .map(|&id| i64::from(id))
                    .collect()
            })
            .collect())
    }

    /// Runs the item tower over tokenized texts, padded to the longest; `worker` picks
    /// the session (see [`crate::batcher`]).
    pub fn run_items(
        &self,
        worker: Option<usize>,
        tokens: &[Vec<i64>],
    ) -> Result<Vec<Vec<f32>>, EncoderError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let t = tokens
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .clamp(1, self.manifest.max_tokens);
        let mut ids = Array2::<i64>::zeros((tokens.len(), t));
        let mut mask = Array2::<i64>::zeros((tokens.len(), t));
        for (row, text) in tokens.iter().enumerate() {
            for (col, id) in text.iter().take(t).enumerate() {
                ids[[row, col]] = *id;
                mask[[row, col]] = 1;
            }
        }
        let d = self.manifest.dim;
        self.items.with(worker, |s| {
            let out = s.run(ort::inputs![
                "input_ids" => TensorRef::from_array_view(&ids)?,
                "attention_mask" => TensorRef::from_array_view(&mask)?,
            ])?;
            let (shape, data) = out["item_embedding"].try_extract_tensor::<f32>()?;
            if shape.len() != 2 || shape[1] as usize != d || shape[0] as usize != tokens.len() {
                return Err(EncoderError::Contract(format!(
                    "item tower returned shape {shape:?}"
                )));
            }
            Ok(data.chunks(d).map(<[f32]>::to_vec).collect())
        })
    }

    /// Histories -> Q query vectors of D each, per user. Histories longer than the
    /// tower's L keep their newest L events.
    pub fn encode_users(&self, users: &[UserHistory]) -> Result<Vec<Vec<Vec<f32>>>, EncoderError> {
        for (u, h) in users.iter().enumerate() {
            self.check_user(u, h)?;
        }
        self.run_users(None, users)
    }

    /// Validates histories and keeps the newest L events of each, so that their length
    /// is what the tower reads (the batcher buckets rows by it).
    pub fn check_users(&self, users: Vec<UserHistory>) -> Result<Vec<UserHistory>, EncoderError> {
        let max_l = self.manifest.max_history;
        users
            .into_iter()
            .enumerate()
            .map(|(u, mut h)| {
                self.check_user(u, &h)?;
                let skip = h.vectors.len().saturating_sub(max_l);
                h.vectors.drain(..skip);
                h.scenarios.drain(..skip);
                Ok(h)
            })
            .collect()
    }

    fn check_user(&self, u: usize, h: &UserHistory) -> Result<(), EncoderError> {
        let d = self.manifest.dim;
        let n_scen = self.manifest.scenarios.len() as i64;
        if h.vectors.is_empty() || h.vectors.len() != h.scenarios.len() {
            return Err(EncoderError::Input(format!(
                "user {u}: needs one scenario per history vector, at least one"
            )));
        }
        if h.vectors
            .iter()
            .any(|v| v.len() != d || v.iter().any(|x| !x.is_finite()))
        {
            return Err(EncoderError::Input(format!(
                "user {u}: history vectors must be {d} finite floats"
            )));
        }
        if h.scenarios.iter().any(|s| !(0..n_scen).contains(s)) {
            return Err(EncoderError::Input(format!(
                "user {u}: scenario index out of 0..{n_scen}"
            )));
        }
        Ok(())
    }

    /// Runs the user tower over validated histories, each cut to its newest L events and
    /// padded to the longest.
    pub fn run_users(
        &self,
        worker: Option<usize>,
        users: &[UserHistory],
    ) -> Result<Vec<Vec<Vec<f32>>>, EncoderError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let (d, q) = (self.manifest.dim, self.manifest.queries());
        let l = users
            .iter()
            .map(|h| h.vectors.len())
            .max()
            .unwrap_or(1)
            .clamp(1, self.manifest.max_history);
        let mut history = Array3::<f32>::zeros((users.len(), l, d));
        let mut scenario = Array2::<i64>::zeros((users.len(), l));
        let mut mask = Array2::<i64>::zeros((users.len(), l));
        for (row, h) in users.iter().enumerate() {
            let skip = h.vectors.len().saturating_sub(l);
            let events = h.vectors.iter().zip(&h.scenarios).skip(skip);
            for (col, (v, s)) in events.enumerate() {
                if v.len() != d {
                    return Err(EncoderError::Input(format!(
                        "user {row}: vector of {}",
                        v.len()
                    )));
                }
                history
                    .slice_mut(ndarray::s![row, col, ..])
                    .assign(&ndarray::ArrayView1::from(v.as_slice()));
                scenario[[row, col]] = *s;
                mask[[row, col]] = 1;
            }
        }
        self.users.with(worker, |s| {
            let out = s.run(ort::inputs![
                "history" => TensorRef::from_array_view(&history)?,
                "scenario" => TensorRef::from_array_view(&scenario)?,
                "mask" => TensorRef::from_array_view(&mask)?,
            ])?;
            let (shape, data) = out["queries"].try_extract_tensor::<f32>()?;
            if shape.len() != 3
                || shape[0] as usize != users.len()
                || shape[1] as usize != q
                || shape[2] as usize != d
            {
                return Err(EncoderError::Contract(format!(
                    "user tower returned shape {shape:?}"
                )));
            }
            Ok(data
                .chunks(q * d)
                .map(|user| user.chunks(d).map(<[f32]>::to_vec).collect())
                .collect())
        })
    }
}

impl crate::batcher::Row for UserHistory {
    fn positions(&self) -> usize {
        self.vectors.len()
    }
}

pub type SharedEncoder = Arc<Encoder>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::default_dir;
    use sha2::{Digest, Sha256};

    fn norm(v: &[f32]) -> f32 {
        v.iter().map(|x| x * x).sum::<f32>().sqrt()
    }

    #[test]
    fn shipped_towers_match_their_manifest() {
        let dir = default_dir();
        let encoder = Encoder::load(
            &dir,
            &EncoderConfig {
                sessions: 1,
                intra_threads: 1,
                device: Device::Cpu,
            },
        )
        .unwrap();
        let m = encoder.manifest();
        assert_eq!((m.dim, m.queries()), (64, 3));
        assert_eq!(m.scenarios, ["homefeed", "search", "ads"]);
        for (file, want) in &m.files {
            let got = format!(
                "{:x}",
                Sha256::digest(std::fs::read(dir.join(file)).unwrap())
            );
            assert_eq!(&got, want, "{file} differs from the manifest's checksum");
        }
        assert!(m.files.contains_key("item_tower.onnx") && m.files.contains_key("user_tower.onnx"));
    }

    /// The shipped towers in a directory of their own, to tamper with.
    fn copy_of_shipped_towers() -> tempfile::TempDir {
        let src = default_dir();
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "item_tower.onnx",
            "user_tower.onnx",
            "tokenizer.json",
            "manifest.json",
        ] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        dir
    }

    #[test]
    fn a_manifest_that_lies_about_the_towers_is_refused() {
        let dir = copy_of_shipped_towers();
        let path = dir.path().join("manifest.json");
        let mut m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        m["dim"] = 32.into();
        std::fs::write(&path, m.to_string()).unwrap();
        let err = Encoder::load(dir.path(), &EncoderConfig::default())
            .err()
            .expect("dim 32 must be refused");
        assert!(matches!(err, EncoderError::Contract(_)), "{err}");
        m["dim"] = 64.into();
        m["query_names"] = serde_json::json!(["only"]);
        m["mixing"] = serde_json::json!({});
        std::fs::write(&path, m.to_string()).unwrap();
        assert!(matches!(
            Encoder::load(dir.path(), &EncoderConfig::default()),
            Err(EncoderError::Contract(_))
        ));
    }

    #[test]
    fn a_tokenizer_the_towers_were_not_trained_with_is_refused() {
        let dir = copy_of_shipped_towers();
        assert!(Encoder::load(dir.path(), &EncoderConfig::default()).is_ok());
        // The same vocabulary, but every text now starts with a special token.
        let path = dir.path().join("tokenizer.json");
        let mut tok: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let unk = serde_json::json!({"SpecialToken": {"id": "[UNK]", "type_id": 0}});
        let a = serde_json::json!({"Sequence": {"id": "A", "type_id": 0}});
        let b = serde_json::json!({"Sequence": {"id": "B", "type_id": 0}});
        tok["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [unk, a],
            "pair": [unk, a, b],
            "special_tokens": {"[UNK]": {"id": "[UNK]", "ids": [1], "tokens": ["[UNK]"]}},
        });
        std::fs::write(&path, tok.to_string()).unwrap();
        let err = Encoder::load(dir.path(), &EncoderConfig::default())
            .err()
            .expect("a tokenizer that adds a token must be refused");
        assert!(
            matches!(&err, EncoderError::Contract(m) if m.contains("check")),
            "{err}"
        );
    }

    #[test]
    fn towers_emit_normalised_vectors_independent_of_batching() {
        let encoder = Encoder::load(&default_dir(), &EncoderConfig::default()).unwrap();
        let texts: Vec<String> = [
            "espresso grinder roast | coffee | beans",
            "trail summit boots | hiking",
            "a",
        ]
        .map(String::from)
        .to_vec();
        let batch = encoder.encode_items(&texts).unwrap();
        assert_eq!(batch.len(), 3);
        for (i, v) in batch.iter().enumerate() {
            assert!((norm(v) - 1.0).abs() < 1e-4);
            let alone = encoder.encode_items(&texts[i..=i]).unwrap();
            let diff = v
                .iter()
                .zip(&alone[0])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-4, "padding changed item {i} by {diff}");
        }
        let short = UserHistory {
            vectors: batch[..1].to_vec(),
            scenarios: vec![0],
        };
        let long = UserHistory {
            vectors: batch.clone(),
            scenarios: vec![0, 1, 2],
        };
        let both = encoder.encode_users(&[short.clone(), long]).unwrap();
        assert_eq!((both.len(), both[0].len(), both[0][0].len()), (2, 3, 64));
        let alone = encoder.encode_users(&[short]).unwrap();
        let diff = both[0]
            .iter()
            .flatten()
            .zip(alone[0].iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "padding changed a user's queries by {diff}");
        assert!(both.iter().flatten().all(|q| (norm(q) - 1.0).abs() < 1e-4));
        let bad = UserHistory {
            vectors: batch[..1].to_vec(),
            scenarios: vec![7],
        };
        assert!(matches!(
            encoder.encode_users(&[bad]),
            Err(EncoderError::Input(_))
        ));
    }

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b))
    }

    fn sample_outputs(encoder: &Encoder) -> (Vec<Vec<f32>>, Vec<Vec<Vec<f32>>>) {
        let texts: Vec<String> = (0..8)
            .map(|i| format!("item {i} | roast grinder trail summit | tag{i}"))
            .collect();
        let items = encoder.encode_items(&texts).unwrap();
        let user = UserHistory {
            vectors: items.clone(),
            scenarios: (0..8).map(|i| i % 3).collect(),
        };
        let users = encoder.encode_users(&[user]).unwrap();
        (items, users)
    }

    /// Asks for CUDA. Where no GPU is usable (no `cuda` feature, a CPU-only library, no
    /// device) the towers must fall back to the CPU and give the CPU's answers; where one
    /// is, they must run on it and agree with the CPU.
    #[test]
    fn cuda_runs_on_a_gpu_or_falls_back_to_the_cpu() {
        let cpu = Encoder::load(&default_dir(), &EncoderConfig::default()).unwrap();
        let cfg = EncoderConfig {
            device: Device::Cuda,
            ..EncoderConfig::default()
        };
        let cuda = Encoder::load(&default_dir(), &cfg).unwrap();
        let (want_items, want_users) = sample_outputs(&cpu);
        let (items, users) = sample_outputs(&cuda);
        let worst = items
            .iter()
            .zip(&want_items)
            .chain(users[0].iter().zip(&want_users[0]))
            .map(|(a, b)| cosine(a, b))
            .fold(1.0, f32::min);
        if cuda.device() == Device::Cpu {
            eprintln!("no usable GPU: checked the CPU fallback");
            assert_eq!((items, users), (want_items, want_users));
        } else {
            assert!(worst > 0.999, "GPU and CPU disagree: cosine {worst}");
        }
    }

    #[test]
    fn fp16_towers_agree_with_fp32() {
        let dir = default_dir().with_file_name("reference-fp16");
        let fp16 = Encoder::load(&dir, &EncoderConfig::default()).unwrap();
        for (file, want) in &fp16.manifest().files {
            let got = format!(
                "{:x}",
                Sha256::digest(std::fs::read(dir.join(file)).unwrap())
            );
            assert_eq!(&got, want, "{file} differs from the manifest's checksum");
        }
        let fp32 = Encoder::load(&default_dir(), &EncoderConfig::default()).unwrap();
        let (items16, users16) = sample_outputs(&fp16);
        let (items32, users32) = sample_outputs(&fp32);
        let worst = items16
            .iter()
            .zip(&items32)
            .chain(users16[0].iter().zip(&users32[0]))
            .map(|(a, b)| cosine(a, b))
            .fold(1.0, f32::min);
        assert!(worst > 0.999, "fp16 towers drift from fp32: cosine {worst}");
    }
}
