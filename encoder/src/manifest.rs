//! The manifest that travels with a pair of towers: dimensions, scenarios, queries,
//! default query mixing per target scenario, and where the files are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::EncoderError;

pub const MODELS_ENV: &str = "REDREC_MODELS";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TowerFiles {
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    pub inputs: Vec<String>,
    pub output: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub model_version: String,
    /// D: the dimension of item and query vectors.
    pub dim: usize,
    /// L: the longest history the user tower reads.
    pub max_history: usize,
    /// T: the most tokens of item text the item tower reads.
    pub max_tokens: usize,
    /// Scenario names; a scenario's index is what the user tower reads.
    pub scenarios: Vec<String>,
    /// Q names, one per query vector the user tower emits.
    pub query_names: Vec<String>,
    /// Per target scenario, a non-negative weight per query (0 leaves a query out).
    pub mixing: BTreeMap<String, Vec<f32>>,
    pub item_tower: TowerFiles,
    pub user_tower: TowerFiles,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub training: serde_json::Value,
    /// Item vectors the training pipeline computed for a few texts: the encoder must
    /// reproduce them (tokenizer and tower together) before it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<KnownVectors>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnownVectors {
    pub texts: Vec<String>,
    pub item_embedding: Vec<Vec<f32>>,
    /// The largest difference allowed in any coordinate.
    pub max_abs_diff: f32,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Self, EncoderError> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| EncoderError::Model(format!("{}: {e}", path.display())))?;
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| EncoderError::Model(format!("{}: {e}", path.display())))?;
        m.validate()?;
        Ok(m)
    }

    pub fn queries(&self) -> usize {
        self.query_names.len()
    }

    pub fn scenario_index(&self, name: &str) -> Option<usize> {
        self.scenarios.iter().position(|s| s == name)
    }

    /// Query weights for a target scenario (all ones where the manifest names none).
    pub fn weights(&self, scenario: &str) -> Vec<f32> {
        self.mixing
            .get(scenario)
            .cloned()
            .unwrap_or_else(|| vec![1.0; self.queries()])
    }

    fn validate(&self) -> Result<(), EncoderError> {
        let bad = |m: String| Err(EncoderError::Contract(m));
        if self.dim == 0 || self.max_history == 0 || self.max_tokens == 0 {
            return bad("dim, max_history and max_tokens must be positive".into());
        }
        if self.scenarios.is_empty() || self.query_names.is_empty() {
            return bad("scenarios and query_names must not be empty".into());
        }
        for (scenario, w) in &self.mixing {
            if self.scenario_index(scenario).is_none() {
                return bad(format!("mixing names unknown scenario {scenario:?}"));
            }
            if w.len() != self.queries()
                || w.iter().any(|x| !x.is_finite() || *x < 0.0)
                || w.iter().all(|x| *x == 0.0)
            {
                return bad(format!(
                    "mixing for {scenario:?} needs {} non-negative weights, not all zero",
                    self.queries()
                ));
            }
        }
        if let Some(c) = &self.check {
            if c.texts.len() != c.item_embedding.len()
                || c.item_embedding.iter().any(|v| v.len() != self.dim)
            {
                return bad(format!(
                    "check needs one {}-d item_embedding per text",
                    self.dim
                ));
            }
        }
        Ok(())
    }
}

/// Where the reference towers are, when no directory is given.
pub fn default_dir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os(MODELS_ENV) {
        candidates.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.extend(dir.ancestors().map(|a| a.join("models/reference")));
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd.join("models/reference"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/reference"));
    candidates.push(PathBuf::from("/opt/redrec/models/reference"));
    candidates
        .iter()
        .find(|p| p.join("manifest.json").is_file())
        .cloned()
        .unwrap_or_else(|| PathBuf::from("models/reference"))
}
