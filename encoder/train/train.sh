#!/usr/bin/env bash
# Reproduces models/reference: synthetic training data (seed 7) -> train -> ONNX export + parity check.
# Usage: encoder/train/train.sh [extra train.py flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${REDREC_TRAIN_VENV:-.redrec/train-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r encoder/train/requirements.txt
fi
data=.redrec/train-data
cargo run -q -- dataset synth --out "$data" --items 20000 --users 6000 --seed 7
"$venv/bin/python" encoder/train/train.py --data "$data" --out models/reference \
  --command "encoder/train/train.sh $*" "$@"
# The same towers in fp16 (float32 inputs and outputs), for GPUs.
"$venv/bin/python" encoder/train/export_fp16.py models/reference models/reference-fp16
