"""Baseline for `redrec bench encoder`: one tower through raw onnxruntime in Python.

One session, run back to back at a fixed batch size. The user tower gets histories of the
same shape as redrec's bench; the item tower gets the same texts, tokenized by the same
tokenizer.json in each call (as redrec does) and padded to the longest in the batch.
Prints one JSON object: rows per second and latency percentiles.
"""

import argparse
import json
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tower", choices=["items", "users"], required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--len", type=int, required=True, help="tokens (items) or events (users)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--tokenizer", help="tokenizer.json (items)")
    ap.add_argument("--texts", help="file of texts, one per line (items)")
    ap.add_argument("--scenarios", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--provider", default="CPUExecutionProvider")
    a = ap.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.model, opts, providers=[a.provider])
    rng = np.random.default_rng(0)
    b, n = a.batch, a.len
    if a.tower == "items":
        tok = Tokenizer.from_file(a.tokenizer)
        texts = open(a.texts, encoding="utf-8").read().splitlines()
        batches = [list(rng.choice(texts, size=b)) for _ in range(64)]

        def feeds(i):
            encs = tok.encode_batch(batches[i % len(batches)], add_special_tokens=True)
            t = max(1, min(n, max(len(e.ids) for e in encs)))
            ids = np.zeros((b, t), dtype=np.int64)
            mask = np.zeros((b, t), dtype=np.int64)
            for r, e in enumerate(encs):
                row = e.ids[:t]
                ids[r, : len(row)] = row
                mask[r, : len(row)] = 1
            return {"input_ids": ids, "attention_mask": mask}

    else:
        h = rng.standard_normal((b, n, a.dim)).astype(np.float32)
        h /= np.linalg.norm(h, axis=-1, keepdims=True)
        fixed = {
            "history": h,
            "scenario": rng.integers(0, a.scenarios, size=(b, n), dtype=np.int64),
            "mask": np.ones((b, n), dtype=np.int64),
        }

        def feeds(i):
            return fixed

    i = 0
    end = time.perf_counter() + a.warmup
    while time.perf_counter() < end:
        sess.run(None, feeds(i))
        i += 1
    lat = []
    start = time.perf_counter()
    end = start + a.seconds
    while True:
        t0 = time.perf_counter()
        sess.run(None, feeds(i))
        i += 1
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        if t1 >= end:
            break
    elapsed = time.perf_counter() - start
    lat = np.array(lat) * 1000.0
    print(
        json.dumps(
            {
                "rows_per_s": len(lat) * b / elapsed,
                "requests_per_s": len(lat) / elapsed,
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "onnxruntime": ort.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
