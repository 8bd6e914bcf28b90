"""fp16 variant of exported towers, for GPUs: weights and activations in float16, inputs
and outputs still float32/int64 so the ONNX contract (and redrec) are unchanged.

    python encoder/train/export_fp16.py models/reference models/reference-fp16

Checks the result against the fp32 towers with ONNX Runtime on random inputs (cosine of
outputs > 0.999) where the CPU can run it, and writes a manifest with fresh checksums.
"""

import hashlib
import json
import os
import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnxconverter_common import float16


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def constants_to_initializers(model):
    kept = []
    for node in model.graph.node:
        value = [a for a in node.attribute if a.name == "value"]
        if node.op_type == "Constant" and value:
            t = onnx.TensorProto()
            t.CopyFrom(value[0].t)
            t.name = node.output[0]
            model.graph.initializer.append(t)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def fix_casts(model):
    """The converter retypes a Cast's output as float16 but leaves its `to` at float."""
    half = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in half:
            for a in node.attribute:
                if a.name == "to" and a.i == onnx.TensorProto.FLOAT:
                    a.i = onnx.TensorProto.FLOAT16


def feeds(tower, m, rng, b=4, n=12):
    if tower == "item_tower":
        return {
            "input_ids": rng.integers(5, 500, size=(b, n), dtype=np.int64),
            "attention_mask": np.ones((b, n), dtype=np.int64),
        }
    h = rng.standard_normal((b, n, m["dim"])).astype(np.float32)
    h /= np.linalg.norm(h, axis=-1, keepdims=True)
    return {
        "history": h,
        "scenario": rng.integers(0, len(m["scenarios"]), size=(b, n), dtype=np.int64),
        "mask": np.ones((b, n), dtype=np.int64),
    }


def main():
    src, dst = sys.argv[1], sys.argv[2]
    m = json.load(open(os.path.join(src, "manifest.json")))
    os.makedirs(dst, exist_ok=True)
    rng = np.random.default_rng(0)
    agreement = {}
    for tower in ("item_tower", "user_tower"):
        name = m[tower]["file"]
        model = onnx.load(os.path.join(src, name))
        # Stale shape annotations and Constant nodes (which the converter leaves in fp32)
        # make mistyped graphs: drop the former, turn the latter into initializers.
        del model.graph.value_info[:]
        constants_to_initializers(model)
        half = float16.convert_float_to_float16(model, keep_io_types=True)
        fix_casts(half)
        onnx.save(half, os.path.join(dst, name))
        x = feeds(tower, m, rng)
        full = ort.InferenceSession(os.path.join(src, name), providers=["CPUExecutionProvider"])
        fp16 = ort.InferenceSession(os.path.join(dst, name), providers=["CPUExecutionProvider"])
        a = full.run(None, x)[0].reshape(-1, m["dim"])
        b = fp16.run(None, x)[0].reshape(-1, m["dim"])
        cos = float(np.min(np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))))
        if cos < 0.999:
            sys.exit(f"{tower}: fp16 output differs from fp32 (min cosine {cos:.5f})")
        agreement[tower] = cos
    tok = m["item_tower"].get("tokenizer", "tokenizer.json")
    shutil.copy(os.path.join(src, tok), os.path.join(dst, tok))
    m["model_version"] = m["model_version"] + "-fp16"
    m["files"] = {f: sha256(os.path.join(dst, f)) for f in m["files"]}
    if "check" in m:
        # fp16 vectors agree with fp32 to a cosine of 0.999, not to 1e-3 per coordinate.
        m["check"]["max_abs_diff"] = 2e-2
    m["fp16"] = {"from": m["model_version"][: -len("-fp16")], "min_cosine_vs_fp32": agreement}
    json.dump(m, open(os.path.join(dst, "manifest.json"), "w"), indent=2)
    print(f"wrote {dst} ({m['model_version']}); min cosine vs fp32: {agreement}")


if __name__ == "__main__":
    main()
