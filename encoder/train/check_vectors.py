"""Adds the known-vector check to a tower directory's manifest from its ONNX item tower, for
towers exported before train.py wrote one (train.py writes it from PyTorch on every export).

Usage: check_vectors.py MODEL_DIR ITEMS_JSONL [MAX_ABS_DIFF]
"""

import json
import os
import sys

import onnxruntime as ort
from tokenizers import Tokenizer

from train import CHECK_MAX_ABS_DIFF, check_entry, load_jsonl, tokenize


def main():
    model_dir, items_path = sys.argv[1], sys.argv[2]
    max_abs_diff = float(sys.argv[3]) if len(sys.argv) > 3 else CHECK_MAX_ABS_DIFF
    path = os.path.join(model_dir, "manifest.json")
    m = json.load(open(path))
    tok = Tokenizer.from_file(os.path.join(model_dir, m["item_tower"].get("tokenizer", "tokenizer.json")))
    texts = [it["text"] for it in load_jsonl(items_path)[:3]]
    ids, mask = tokenize(tok, texts, m["max_tokens"])
    session = ort.InferenceSession(os.path.join(model_dir, m["item_tower"]["file"]), providers=["CPUExecutionProvider"])
    vectors = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    m["check"] = check_entry(texts, vectors, max_abs_diff)
    with open(path, "w") as f:
        json.dump(m, f, indent=2)
        f.write("\n")
    print(f"{path}: check of {len(texts)} texts")


if __name__ == "__main__":
    main()
