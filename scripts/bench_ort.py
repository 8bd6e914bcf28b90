"""Baseline for `redrec bench encoder`: one tower through raw onnxruntime in Python.

One session, run back to back at a fixed batch size on inputs of the same shapes as
redrec's bench. Prints one JSON object: rows per second and latency percentiles.
"""

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tower", choices=["items", "users"], required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--len", type=int, required=True, help="tokens (items) or events (users)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=1000)
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
        feeds = {
            "input_ids": rng.integers(5, a.vocab, size=(b, n), dtype=np.int64),
            "attention_mask": np.ones((b, n), dtype=np.int64),
        }
    else:
        h = rng.standard_normal((b, n, a.dim)).astype(np.float32)
        h /= np.linalg.norm(h, axis=-1, keepdims=True)
        feeds = {
            "history": h,
            "scenario": rng.integers(0, a.scenarios, size=(b, n), dtype=np.int64),
            "mask": np.ones((b, n), dtype=np.int64),
        }

    end = time.perf_counter() + a.warmup
    while time.perf_counter() < end:
        sess.run(None, feeds)
    lat = []
    start = time.perf_counter()
    end = start + a.seconds
    while True:
        t0 = time.perf_counter()
        sess.run(None, feeds)
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
