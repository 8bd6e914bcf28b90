//! The ONNX contract a tower must meet (input and output names, element types, the static
//! dimensions D and Q), checked when the towers load.

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use crate::error::EncoderError;
use crate::manifest::Manifest;

/// The ONNX contract: names, element types and the static dimensions D and Q.
pub fn check(m: &Manifest, items: &Session, users: &Session) -> Result<(), EncoderError> {
    use TensorElementType::{Float32, Int64};
    let (d, q) = (m.dim as i64, m.queries() as i64);
    let (inputs, outputs) = io(items);
    let names: Vec<&str> = m.item_tower.inputs.iter().map(String::as_str).collect();
    if names != ["input_ids", "attention_mask"] || m.item_tower.output != "item_embedding" {
        return Err(EncoderError::Contract(
            "item tower names differ from the ONNX contract".into(),
        ));
    }
    check_io(
        "item tower inputs",
        &inputs,
        &[
            ("input_ids", Int64, vec![-1, -1]),
            ("attention_mask", Int64, vec![-1, -1]),
        ],
    )?;
    check_io(
        "item tower outputs",
        &outputs,
        &[("item_embedding", Float32, vec![-1, d])],
    )?;
    let (inputs, outputs) = io(users);
    let names: Vec<&str> = m.user_tower.inputs.iter().map(String::as_str).collect();
    if names != ["history", "scenario", "mask"] || m.user_tower.output != "queries" {
        return Err(EncoderError::Contract(
            "user tower names differ from the ONNX contract".into(),
        ));
    }
    check_io(
        "user tower inputs",
        &inputs,
        &[
            ("history", Float32, vec![-1, -1, d]),
            ("scenario", Int64, vec![-1, -1]),
            ("mask", Int64, vec![-1, -1]),
        ],
    )?;
    check_io(
        "user tower outputs",
        &outputs,
        &[("queries", Float32, vec![-1, q, d])],
    )
}

fn check_io(
    what: &str,
    got: &[(String, ValueType)],
    want: &[(&str, TensorElementType, Vec<i64>)],
) -> Result<(), EncoderError> {
    if got.len() != want.len() {
        return Err(EncoderError::Contract(format!(
            "{what}: {} tensors, expected {}",
            got.len(),
            want.len()
        )));
    }
    for ((name, ty), (want_name, want_ty, want_shape)) in got.iter().zip(want) {
        let shape: Vec<i64> = ty
            .tensor_shape()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let ok_shape = shape.len() == want_shape.len()
            && shape.iter().zip(want_shape).all(|(g, w)| *w < 0 || g == w);
        if name != want_name || ty.tensor_type() != Some(*want_ty) || !ok_shape {
            return Err(EncoderError::Contract(format!(
                "{what}: found {name} {:?} {shape:?}, expected {want_name} {want_ty:?} {want_shape:?} (-1: any)",
                ty.tensor_type()
            )));
        }
    }
    Ok(())
}

/// Names and types of a session's inputs and outputs.
type Signature = Vec<(String, ValueType)>;

fn io(session: &Session) -> (Signature, Signature) {
    let f = |o: &ort::value::Outlet| (o.name().to_string(), o.dtype().clone());
    (
        session.inputs().iter().map(f).collect(),
        session.outputs().iter().map(f).collect(),
    )
}
